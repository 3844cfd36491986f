//! The tenants' keys this ingress authenticates from: loaded from the control
//! plane's database at start, then kept current over NATS by `sy_control::feed`.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sy_bus::Bus;
use sy_config::Config;
use sy_control::feed::{self, LiveKeys};
use sy_control::key::Pepper;
use sy_control::store::Store;

use crate::IngressError;

/// Connects to the control plane, loads every live key and follows their
/// changes. Fails when `[tenants]` is on and the keys cannot be loaded: an
/// ingress never serves with a table it could not fill.
pub(crate) async fn follow(config: &Config, bus: &Bus) -> Result<Arc<LiveKeys>, IngressError> {
    let (Some(tenants), Some(postgres)) = (&config.tenants, &config.postgres) else {
        return Err(IngressError::Tenants("[tenants] needs [postgres]".into()));
    };
    let fail = |e: &dyn std::fmt::Display| IngressError::Tenants(e.to_string());
    let pepper = Pepper::new(tenants.key_pepper.expose().as_bytes()).map_err(|e| fail(&e))?;
    let options = PgConnectOptions::from_str(postgres.url.expose()).map_err(|e| fail(&e))?;
    let store = Store::connect(options, pepper, &tenants.key_env)
        .await
        .map_err(|e| fail(&e))?;
    let keys = feed::follow(
        store,
        bus.client().clone(),
        bus.subjects().key_notices(),
        tenants.resync,
    )
    .await
    .map_err(|e| fail(&format!("{e} (has `switchyard migrate` run?)")))?;
    Ok(keys)
}
