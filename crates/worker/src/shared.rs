//! What every request of one provider pool shares, and the messages in hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sy_bus::Bus;
use sy_config::ProviderConfig;
use sy_providers::AnyProvider;
use sy_router::live::LiveTable;

use crate::CancelRegistry;

/// What every request of one provider pool shares.
pub(crate) struct Shared {
    pub bus: Bus,
    pub provider: ProviderConfig,
    pub adapter: AnyProvider,
    pub cancels: CancelRegistry,
    pub progress_every: Duration,
    pub worker_id: String,
    pub markup_ppb: i64,
    /// Every provider entry (context windows for fallback choices).
    pub all_providers: Arc<BTreeMap<String, ProviderConfig>>,
    /// Live target health, shared with every ingress through observations.
    pub live: Arc<LiveTable>,
    /// What this worker's calls say about their targets, on their way to the others.
    pub observations: Arc<crate::observations::Observations>,
    /// Billed price of a batch item relative to an interactive call, ppb.
    pub batch_price_ppb: i64,
    /// Deliveries of a batch item before JetStream gives it up (`[batch] max_deliver`).
    pub batch_max_deliver: u32,
    /// Batch items whose result could not be stored: nak'd, not acked.
    pub unsettled: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Completion marks of interactive requests (see `done`).
    pub done: Arc<crate::done::DoneMarks>,
    /// Where usage events are stored (by group commit, see `usage_sink`).
    pub usage: crate::usage_sink::UsageSink,
    /// Request messages this process is handling now (by message id).
    pub in_hand: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Provider credentials from the control plane (an org's own, or global),
    /// when `[credentials]` is on; the entry's own key otherwise.
    pub credentials: Option<Arc<sy_control::credentials::CredentialTable>>,
    /// The blob store (generated images), opened by the first call that
    /// needs it.
    pub blobs: tokio::sync::OnceCell<async_nats::jetstream::object_store::ObjectStore>,
}

/// A message in hand; forgotten when dropped.
pub(crate) struct InHand<'a>(pub(crate) &'a Shared, pub(crate) String);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if let Ok(mut h) = self.0.in_hand.lock() {
            h.remove(&self.1);
        }
    }
}
