//! What every handler of one ingress process shares: the bus, the reply
//! router, the keys, the routing table (swapped whole on reload), the limits
//! and the stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sy_bus::{Bus, ReplyRouter};

use sy_config::routing::RouterConfig;
use sy_config::{Config, ModelRoute};

use crate::{batch, intake};

pub(crate) struct AppState {
    pub(crate) bus: Bus,
    pub(crate) replies: ReplyRouter,
    pub(crate) ingress_id: String,
    /// Keys from the config file (development keys): token → name.
    pub(crate) keys: HashMap<String, String>,
    /// Tenants' keys, from the control plane (when `[tenants]` is on).
    pub(crate) tenants: Option<Arc<sy_control::feed::LiveKeys>>,
    /// The admin API (when `[tenants]` is on): its tokens are refused on `/v1`.
    pub(crate) admin: Option<Arc<sy_control::admin::Admin>>,
    pub(crate) routing: std::sync::RwLock<Arc<Routing>>,
    pub(crate) max_body_bytes: usize,
    /// The largest multipart upload (audio).
    pub(crate) max_upload_bytes: usize,
    /// Bounds on connections and on bodies being received.
    pub(crate) limits: Arc<intake::Limits>,
    pub(crate) request_timeout: std::time::Duration,
    pub(crate) clickhouse: Option<sy_config::ClickhouseConfig>,
    pub(crate) classifier: Arc<sy_classifier::Classifier>,
    pub(crate) providers: std::collections::BTreeMap<String, sy_config::ProviderConfig>,
    /// `[billing] markup_percent` in parts per billion: what an org without
    /// a plan or multipliers pays over cost.
    pub(crate) markup_ppb: i64,
    pub(crate) live: Arc<sy_router::live::LiveTable>,
    /// The `Idempotency-Key` store; none if NATS refused to create it.
    pub(crate) idempotency: Option<async_nats::jetstream::kv::Store>,
    /// Batch records and files; none if NATS refused to create them.
    pub(crate) batches: Option<Arc<batch::Stores>>,
    /// Rate limits in Redis (when `[redis]` is configured).
    pub(crate) rate_limits: Option<Arc<crate::ratelimit::RateLimits>>,
    /// The bearer token `GET /metrics` needs (`[metrics] token`), if any.
    pub(crate) metrics_token: Option<sy_config::Secret>,
    /// What the identities a provider sees are keyed with.
    pub(crate) identity_secret: crate::pseudonym::IdentitySecret,
    /// The response cache (when `[cache]` is on).
    pub(crate) cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Pipeline runs' records; none if NATS refused to create their bucket.
    pub(crate) pipeline_runs: Option<async_nats::jetstream::kv::Store>,
    /// The blob store (generated images), opened by the first request
    /// that needs it.
    pub(crate) blobs: tokio::sync::OnceCell<async_nats::jetstream::object_store::ObjectStore>,
    /// What links to generated images are signed with (the same on every
    /// ingress of one config).
    pub(crate) image_links_secret: [u8; 32],
}

impl AppState {
    /// The caller a stored key id (a batch's) stands for now: a file key by
    /// name, a tenant's live key by id; none once the key is gone (revoked,
    /// or removed from the file).
    pub(crate) fn caller_by_key_id(&self, key_id: &str) -> Option<crate::extract::Caller> {
        if self.keys.values().any(|name| name == key_id) {
            return Some(crate::extract::Caller {
                key_id: key_id.to_owned(),
                grant: None,
            });
        }
        let id = uuid::Uuid::parse_str(key_id).ok()?;
        let grant = self.tenants.as_ref()?.grant_of(id)?;
        Some(crate::extract::Caller {
            key_id: key_id.to_owned(),
            grant: Some(grant),
        })
    }

    /// The pipeline clients call as `model`, if it is one: the config file's,
    /// else the admin API's.
    pub(crate) fn pipeline(&self, model: &str) -> Option<Arc<sy_config::pipeline::Pipeline>> {
        if !model.starts_with(sy_config::pipeline::PREFIX) {
            return None;
        }
        if let Some(p) = self.routing().pipelines.get(model) {
            return Some(p.clone());
        }
        self.tenants.as_ref()?.pipelines().get(model).cloned()
    }

    /// The routing table now (models and routers); a reload swaps it whole.
    pub(crate) fn routing(&self) -> Arc<Routing> {
        match self.routing.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// What a request is routed by; swapped whole on reload.
pub(crate) struct Routing {
    pub models: HashMap<String, ModelRoute>,
    pub routers: BTreeMap<String, RouterConfig>,
    /// Pipelines by the model name clients use (`pipeline:<name>`).
    pub pipelines: HashMap<String, Arc<sy_config::pipeline::Pipeline>>,
}

impl Routing {
    /// True when some model or router sends requests to `model` at `provider`.
    pub fn serves(&self, provider: &str, model: &str) -> bool {
        self.models
            .values()
            .flat_map(|m| &m.targets)
            .any(|t| t.provider == provider && t.model == model)
            || self
                .routers
                .values()
                .flat_map(|r| &r.routes)
                .flat_map(|r| &r.targets)
                .any(|t| t.provider == provider && t.model == model)
    }

    pub fn from_config(config: &Config) -> Routing {
        Routing {
            models: config
                .models
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            routers: config.routers.clone(),
            pipelines: config
                .pipelines
                .iter()
                .map(|(name, p)| (sy_config::pipeline::model_name(name), Arc::new(p.clone())))
                .collect(),
        }
    }
}
