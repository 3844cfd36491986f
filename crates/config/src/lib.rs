//! Switchyard's configuration: TOML text → [`RawConfig`] → validated [`Config`].
//!
//! The file says what the operator wrote; [`Config`] says what the program may
//! assume: socket addresses, URLs and durations are parsed, every route's targets
//! name a configured provider, names are valid NATS subject tokens, secrets are
//! wrapped in [`Secret`] (printed as `***`). `${VAR}` in the text is replaced from
//! an [`EnvSource`] before parsing (`${VAR:-default}` gives a default, `$${` is a
//! literal `${`). Every problem is reported with its key path
//! (`providers.openai.base_url: not a URL`), all at once, by [`Config::load`];
//! `switchyard config check` prints them. The JSON Schema of the file is
//! `schemas/config.schema.json`. No I/O beyond reading the file (and
//! `credentials.master_key_file` when set).

pub mod cache;
mod env;
mod error;
pub mod pipeline;
pub mod price;
mod raw;
pub mod routing;
mod settings;
mod validate;

pub use cache::{CacheConfig, RawCache};
pub use env::{EnvSource, MapEnv, ProcessEnv, interpolate};
pub use error::{ConfigError, ConfigErrors, LoadError};
pub use raw::{
    RawAccounting, RawAdminToken, RawBatch, RawBilling, RawClickhouse, RawConfig, RawCredentials,
    RawHealth, RawKey, RawLimitDefaults, RawLimitSet, RawLimits, RawLog, RawMetrics, RawModel,
    RawNats, RawPostgres, RawPrice, RawProvider, RawRedis, RawServer, RawStripe, RawTarget,
    RawTenants, RawTracing,
};
pub use settings::{
    ADMIN_ROLES, AccountingConfig, AdminToken, ApiKey, BatchConfig, BillingConfig,
    ClickhouseConfig, Config, CredentialsConfig, HealthConfig, LimitSet, LimitsConfig, LogConfig,
    MAX_LIMIT, MAX_RUNNING_BATCHES, MetricsConfig, ModelRoute, NatsConfig, PROVIDER_KINDS,
    PostgresConfig, ProviderConfig, ProviderKind, RedisConfig, RoutePolicy, Secret, ServerConfig,
    StripeCheckoutConfig, StripeConfig, TRACE_PROTOCOLS, Target, TenantsConfig, TracingConfig,
    YOOKASSA_NOTIFICATION_RANGES, YookassaConfig,
};

use std::path::Path;

impl Config {
    /// Every model name the config knows: its models and routers (`auto`,
    /// `auto:<name>`), the models' targets' upstream models, the providers' priced
    /// and described models. What a metric's model label may be.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        names.extend(self.models.keys().cloned());
        for route in self.models.values() {
            names.extend(route.targets.iter().map(|t| t.model.clone()));
        }
        names.extend(self.routers.keys().cloned());
        names.extend(self.pipelines.keys().map(|p| pipeline::model_name(p)));
        for p in self.providers.values() {
            names.extend(p.prices.keys().cloned());
            names.extend(p.models.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    /// Reads, interpolates, parses and validates the file at `path`.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, env)
    }

    /// Interpolates, parses and validates TOML text.
    pub fn from_toml(text: &str, env: &dyn EnvSource) -> Result<Config, LoadError> {
        let text = interpolate(text, env).map_err(LoadError::Invalid)?;
        let raw = RawConfig::parse(&text)?;
        Config::validate(raw).map_err(LoadError::Invalid)
    }
}

impl RawConfig {
    /// Parses TOML text, naming the key path of the first problem.
    pub fn parse(text: &str) -> Result<RawConfig, LoadError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| LoadError::Syntax {
            message: e.message().to_owned(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            LoadError::Invalid(ConfigErrors(vec![ConfigError::new(path, message)]))
        })
    }
}

#[cfg(test)]
mod tests;
