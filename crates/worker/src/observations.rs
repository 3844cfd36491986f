//! What this worker's calls say about their targets, sent to every ingress
//! and worker (`<ns>.live.<provider>`, core NATS, at most once).
//!
//! A failure goes out as soon as its call ends: it may close a target. While
//! a target is quiet (the last calls of its health window all succeeded, as
//! this worker's table, fed by every worker, says), its successes are summed
//! and go out together every [`FLUSH_EVERY`], one message (`calls` of them,
//! mean times, the latest end) however many calls answered in that time:
//! under load one publish and one delivery to each subscriber stand for
//! hundreds of calls instead of one each. Once a call to it failed anywhere,
//! each success goes out on its own again, and a failure sends the target's
//! summed successes first, so every table counts consecutive failures
//! between the successes as they came. A receiver folds a summary in as that
//! many successes and lets it heal a target only if its latest call ended
//! no earlier than the target's latest failure
//! (`sy_router::live::LiveTable::observe`). This worker's own table has each
//! call at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sy_bus::Bus;
use sy_protocol::{Observation, Outcome};

/// How long a success waits to go out with the others to its target.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The process's outgoing observations (see the module's docs).
pub(crate) struct Observations {
    bus: Bus,
    worker_id: String,
    /// Successes not sent yet, by provider and upstream model.
    pending: Mutex<HashMap<String, HashMap<String, Sum>>>,
}

/// Successes to one target since the last flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sum {
    calls: u32,
    /// Of each call's time to first token, or its duration when none came.
    first_ms: u64,
    duration_ms: u64,
    latest_unix_ms: u64,
}

impl Observations {
    /// Starts the flush task (it ends when the returned value is dropped).
    pub(crate) fn start(bus: Bus, worker_id: String) -> Arc<Observations> {
        let me = Arc::new(Observations {
            bus,
            worker_id,
            pending: Mutex::default(),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(me) = weak.upgrade() else { break };
                me.flush().await;
            }
        });
        me
    }

    /// Sends `o`: a success to a `quiet` target with the next flush, anything
    /// else now, after the successes to its target summed so far.
    pub(crate) async fn send(&self, o: Observation, quiet: bool) {
        if o.outcome == Outcome::Ok && quiet {
            self.add(o);
            return;
        }
        let before = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .get_mut(&o.provider)
                .and_then(|models| models.remove(&o.model))
        };
        if let Some(sum) = before {
            let s = summary(
                o.provider.clone(),
                o.model.clone(),
                self.worker_id.clone(),
                sum,
            );
            self.publish(&s).await;
        }
        self.publish(&o).await;
    }

    fn add(&self, o: Observation) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // The observation is ours: its strings become the keys, or are dropped.
        let sum = pending
            .entry(o.provider)
            .or_default()
            .entry(o.model)
            .or_default();
        let calls = o.calls.max(1);
        sum.calls = sum.calls.saturating_add(calls);
        let first = o.ttft_ms.unwrap_or(o.duration_ms);
        sum.first_ms = sum
            .first_ms
            .saturating_add(first.saturating_mul(calls.into()));
        sum.duration_ms = sum
            .duration_ms
            .saturating_add(o.duration_ms.saturating_mul(calls.into()));
        sum.latest_unix_ms = sum.latest_unix_ms.max(o.at_unix_ms);
    }

    /// Sends every target's summed successes.
    pub(crate) async fn flush(&self) {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (provider, models) in taken {
            for (model, sum) in models {
                let o = summary(provider.clone(), model, self.worker_id.clone(), sum);
                self.publish(&o).await;
            }
        }
    }

    async fn publish(&self, o: &Observation) {
        // At most once: a lost observation only delays what routers learn.
        if let Err(e) = self.bus.publish_observation(o).await {
            tracing::debug!(error = %e, "Live observation not sent.");
        }
    }
}

/// One message for `sum`'s calls.
fn summary(provider: String, model: String, worker_id: String, sum: Sum) -> Observation {
    let calls = u64::from(sum.calls.max(1));
    Observation {
        provider,
        model,
        worker_id,
        outcome: Outcome::Ok,
        error_code: None,
        ttft_ms: Some(sum.first_ms / calls),
        duration_ms: sum.duration_ms / calls,
        at_unix_ms: sum.latest_unix_ms,
        calls: sum.calls.max(1),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use futures::StreamExt;

    use super::*;

    fn seen(
        provider: &str,
        model: &str,
        outcome: Outcome,
        ttft: Option<u64>,
        duration: u64,
        at: u64,
    ) -> Observation {
        Observation {
            provider: provider.into(),
            model: model.into(),
            worker_id: "w".into(),
            outcome,
            error_code: (outcome == Outcome::Failed)
                .then_some(sy_protocol::ErrorCode::ProviderError),
            ttft_ms: ttft,
            duration_ms: duration,
            at_unix_ms: at,
            calls: 1,
        }
    }

    async fn next(live: &mut (impl futures::Stream<Item = Observation> + Unpin)) -> Observation {
        tokio::time::timeout(Duration::from_secs(2), live.next())
            .await
            .expect("an observation within 2 s")
            .expect("the subscription stays open")
    }

    /// Successes go out as one summary per target within a flush, with mean
    /// times and the latest end; a failure goes out at once, ahead of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn successes_go_out_summed_per_target_and_failures_at_once() {
        let (bus, client) = crate::test_bus().await;
        let mut live = bus.subscribe_live().await.expect("subscription");
        client.flush().await.expect("flush");
        let out = Observations::start(bus, "w1".into());
        let sent = Instant::now();
        out.send(seen("p", "a", Outcome::Ok, Some(10), 40, 1_000), true)
            .await;
        out.send(seen("p", "a", Outcome::Ok, None, 30, 3_000), true)
            .await;
        out.send(seen("p", "a", Outcome::Ok, Some(50), 60, 2_000), true)
            .await;
        out.send(seen("q", "b", Outcome::Ok, Some(7), 9, 500), true)
            .await;
        out.send(seen("p", "c", Outcome::Failed, None, 5, 2_500), true)
            .await;
        let first = next(&mut live).await;
        assert_eq!(
            (
                first.model.as_str(),
                first.outcome,
                first.calls,
                first.at_unix_ms
            ),
            ("c", Outcome::Failed, 1, 2_500),
            "the failure first, alone (no success to its target waited): {first:?}"
        );
        let mut summaries = [next(&mut live).await, next(&mut live).await];
        summaries.sort_by(|x, y| x.provider.cmp(&y.provider));
        let a = &summaries[0];
        assert_eq!(
            (
                a.provider.as_str(),
                a.model.as_str(),
                a.worker_id.as_str(),
                a.outcome
            ),
            ("p", "a", "w1", Outcome::Ok)
        );
        // Means: first token (or the whole call when none came) 30, duration 43.
        assert_eq!(
            (a.calls, a.ttft_ms, a.duration_ms, a.at_unix_ms),
            (3, Some(30), 43, 3_000)
        );
        let b = &summaries[1];
        assert_eq!(
            (b.provider.as_str(), b.calls, b.ttft_ms, b.duration_ms),
            ("q", 1, Some(7), 9)
        );
        assert!(
            sent.elapsed() < FLUSH_EVERY * 5,
            "within a flush or two: {:?}",
            sent.elapsed()
        );
        // Nothing more: each success went out once.
        assert!(
            tokio::time::timeout(FLUSH_EVERY * 3, live.next())
                .await
                .is_err(),
            "no second summary"
        );
        // A failure to a target with successes waiting sends them first; a
        // success to a target that is not quiet goes out at once, alone.
        out.send(seen("p", "a", Outcome::Ok, Some(10), 20, 4_000), true)
            .await;
        out.send(seen("p", "a", Outcome::Ok, Some(30), 40, 4_001), true)
            .await;
        out.send(seen("p", "a", Outcome::Failed, None, 5, 4_002), true)
            .await;
        out.send(seen("p", "a", Outcome::Ok, Some(8), 9, 4_003), false)
            .await;
        let got = [
            next(&mut live).await,
            next(&mut live).await,
            next(&mut live).await,
        ];
        let said: Vec<_> = got
            .iter()
            .map(|o| (o.outcome, o.calls, o.at_unix_ms))
            .collect();
        assert_eq!(
            said,
            [
                (Outcome::Ok, 2, 4_001),
                (Outcome::Failed, 1, 4_002),
                (Outcome::Ok, 1, 4_003)
            ],
            "{got:?}"
        );
        assert!(
            tokio::time::timeout(FLUSH_EVERY * 3, live.next())
                .await
                .is_err(),
            "nothing left to flush"
        );
    }
}
