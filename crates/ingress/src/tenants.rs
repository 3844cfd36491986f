//! The tenants' keys this ingress authenticates from: loaded from the control
//! plane's database at start, then kept current over NATS by `sy_control::feed`.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sy_bus::Bus;
use sy_config::Config;
use sy_control::admin::roles::Role;
use sy_control::admin::{Admin, AdminToken, Credentials};
use sy_control::feed::{self, LiveKeys, Notifier};
use sy_control::key::Pepper;
use sy_control::sealed::{self, Keyring};
use sy_control::store::Store;

use crate::IngressError;

/// Connects to the control plane, loads every live key and follows their
/// changes, and makes the admin API over the same store (its writes
/// announce key changes to every ingress). Fails when `[tenants]` is on and
/// the keys cannot be loaded: an ingress never serves with a table it could
/// not fill.
pub(crate) async fn follow(
    config: &Config,
    bus: &Bus,
) -> Result<(Arc<LiveKeys>, Arc<Admin>), IngressError> {
    let (Some(tenants), Some(postgres)) = (&config.tenants, &config.postgres) else {
        return Err(IngressError::Tenants("[tenants] needs [postgres]".into()));
    };
    let fail = |e: &dyn std::fmt::Display| IngressError::Tenants(e.to_string());
    let pepper = Pepper::new(tenants.key_pepper.expose().as_bytes()).map_err(|e| fail(&e))?;
    let options = PgConnectOptions::from_str(postgres.url.expose()).map_err(|e| fail(&e))?;
    let store = Store::connect(options, pepper, &tenants.key_env)
        .await
        .map_err(|e| fail(&e))?;
    let store = store.announcing(
        Notifier::new(bus.client().clone(), bus.subjects().key_notices())
            .with_credentials(bus.subjects().credential_notices()),
    );
    let credentials = keyring(config)?.map(|keys| Credentials {
        keys,
        providers: config.providers.keys().cloned().collect(),
    });
    if let Some(c) = &credentials {
        tokio::spawn(reseal(store.clone(), c.keys.clone(), tenants.resync));
    }
    let mut admin = Admin::new(
        store.clone(),
        admin_tokens(config)?,
        credentials,
        config.clickhouse.clone(),
    );
    // Price version 0: the config file's prices, for the admin API.
    let base_prices = config
        .providers
        .values()
        .flat_map(|p| {
            p.prices.iter().map(|(model, price)| {
                (
                    format!("{}/{model}", p.name),
                    sy_config::price::to_raw(price),
                )
            })
        })
        .collect();
    admin = admin
        .with_base_prices(base_prices)
        .with_trace_viewer(config.tracing.viewer_url.clone());
    if let Some(topups) =
        sy_control::payments::Topups::from_config(&config.billing).map_err(|e| fail(&e))?
    {
        admin = admin.with_topups(topups);
    }
    let keys = feed::follow(
        store,
        bus.client().clone(),
        bus.subjects().key_notices(),
        tenants.resync,
    )
    .await
    .map_err(|e| fail(&format!("{e} (has `switchyard migrate` run?)")))?;
    Ok((keys, admin))
}

/// The master keys provider credentials are sealed with, if configured.
pub(crate) fn keyring(config: &Config) -> Result<Option<Keyring>, IngressError> {
    config
        .credentials
        .as_ref()
        .map(sealed::keyring_of)
        .transpose()
        .map_err(|e| IngressError::Tenants(e.to_string()))
}

/// Re-seals, under the current master key, every credential sealed under an
/// older one: at start, then every `every` (a master key rotation goes on
/// while the deployment serves; rows are re-sealed one short transaction at
/// a time, and both versions open meanwhile).
async fn reseal(store: Store, keys: Keyring, every: std::time::Duration) {
    loop {
        match store.reseal_credentials(&keys, 1_000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                credentials = n,
                version = keys.current_version(),
                "Re-sealed provider credentials under the current master key."
            ),
            Err(error) => {
                tracing::warn!(%error, "Re-sealing provider credentials failed; retrying.")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The config's admin tokens (validated there: known roles, UUID org ids).
fn admin_tokens(config: &Config) -> Result<Vec<AdminToken>, IngressError> {
    config
        .admin_tokens
        .iter()
        .map(|t| {
            let role = Role::parse(&t.role)
                .ok_or_else(|| IngressError::Tenants(format!("admin token role {}", t.role)))?;
            let org_id = t
                .org_id
                .as_deref()
                .map(uuid::Uuid::parse_str)
                .transpose()
                .map_err(|e| IngressError::Tenants(e.to_string()))?;
            Ok(AdminToken::new(&t.name, t.token.expose(), role, org_id))
        })
        .collect()
}
