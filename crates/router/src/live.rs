//! The live state of every target as one process sees it: health (consecutive
//! failures and a cool-down), time to first token (exponentially weighted) and
//! load (the provider's in-flight requests against its concurrency cap).
//!
//! Fed by [`Observation`]s that every worker broadcasts after each call, so all
//! ingresses learn from every call in the cluster, and by the load the ingress
//! reads from each provider's JetStream consumer. [`LiveTable::at`] gives a
//! [`Live`] view at one instant for a routing decision.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Serialize;
use sy_config::HealthConfig;
use sy_protocol::{ErrorCode, Observation, Outcome};

use crate::Live;

/// Weight of the newest sample in the moving averages.
pub const EWMA_ALPHA: f64 = 0.3;
/// Load older than this is ignored (the poller stopped or lags).
pub const LOAD_FRESH_MS: u64 = 5_000;

/// What is known about one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetLive {
    /// Moving average of the time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Moving average of the whole call, ms.
    pub duration_ms: Option<f64>,
    /// Successful calls seen.
    pub ok: u64,
    /// Failed calls seen.
    pub failed: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Skipped until then (Unix ms) after too many consecutive failures.
    pub unhealthy_until_unix_ms: Option<u64>,
    /// The latest failure's code.
    pub last_error: Option<ErrorCode>,
    /// When the latest failure's call ended (Unix ms, the worker's clock):
    /// successes that ended before it do not heal the target.
    pub last_failed_unix_ms: Option<u64>,
    /// The last calls, newest in bit 0 (1 = failed).
    #[serde(skip)]
    pub recent: u64,
    /// How many calls `recent` holds (at most the window).
    #[serde(skip)]
    pub recent_calls: u32,
    /// Forced by an operator: `Some(false)` off, `Some(true)` on whatever
    /// its health; `None` as its health says.
    pub forced: Option<bool>,
    /// When the latest observation arrived (Unix ms).
    pub last_seen_unix_ms: u64,
}

impl TargetLive {
    /// Whether the last calls of a `window` all succeeded and no failure
    /// streak is open (see [`LiveTable::quiet`]).
    fn quiet(&self, window: u32) -> bool {
        self.recent & last_calls(window) == 0 && self.consecutive_failures == 0
    }
}

/// The bits of `recent` that hold the last `n` calls.
fn last_calls(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// A provider's load, from its worker pool's consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Load {
    /// Requests taken by workers and not finished.
    pub in_flight: u64,
    /// Requests waiting for a worker.
    pub queued: u64,
    /// The cluster-wide cap (the consumer's max_ack_pending).
    pub cap: u64,
    /// When it was read (Unix ms).
    pub read_unix_ms: u64,
}

/// One target in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRow {
    /// Provider entry.
    pub provider: String,
    /// Upstream model.
    pub model: String,
    /// Whether routers may pick it now.
    pub healthy: bool,
    /// What is known.
    #[serde(flatten)]
    pub state: TargetLive,
}

/// One provider's load in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderLoad {
    /// Provider entry.
    pub provider: String,
    /// Its load.
    #[serde(flatten)]
    pub load: Load,
}

/// The whole table at one instant (`GET /v1/route/targets`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When it was taken.
    pub now_unix_ms: u64,
    /// Every target seen, by provider and model.
    pub targets: Vec<TargetRow>,
    /// Every provider's load, by name.
    pub providers: Vec<ProviderLoad>,
}

/// Every target's live state; cheap to read, shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct LiveTable {
    health: HealthConfig,
    targets: RwLock<HashMap<String, HashMap<String, TargetLive>>>,
    load: RwLock<HashMap<String, Load>>,
}

impl LiveTable {
    /// An empty table with these health rules.
    pub fn new(health: HealthConfig) -> Self {
        LiveTable {
            health,
            ..LiveTable::default()
        }
    }

    /// Folds in one call's result, or a summary of `o.calls` successes,
    /// received at `now_ms`.
    ///
    /// Successes arrive late (a worker sums them for up to
    /// a tenth of a second) and out of order with other workers' failures, so
    /// a success heals the target (clears its failure count and cool-down)
    /// only if its call ended no earlier than the latest failure's: a late
    /// summary of calls made before a failure must not reopen a target that
    /// failed after them.
    ///
    /// Returns whether the target is [quiet](LiveTable::quiet) now (false
    /// for a neutral result, which is not folded in).
    pub fn observe(&self, o: &Observation, now_ms: u64) -> bool {
        if o.outcome == Outcome::Neutral {
            return false;
        }
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        let t = targets
            .entry(o.provider.clone())
            .or_default()
            .entry(o.model.clone())
            .or_default();
        t.last_seen_unix_ms = now_ms;
        let window = self.health.window.clamp(1, 64);
        let n = o.calls.max(1);
        // A summary's calls are all successes: `n` zero bits (a failure is one call).
        let shifted = if n >= 64 { 0 } else { t.recent << n };
        t.recent = shifted | u64::from(o.outcome == Outcome::Failed);
        t.recent_calls = t.recent_calls.saturating_add(n).min(window);
        match o.outcome {
            Outcome::Ok => {
                t.ok += u64::from(n);
                if t.last_failed_unix_ms.is_none_or(|f| o.at_unix_ms >= f) {
                    t.consecutive_failures = 0;
                    t.unhealthy_until_unix_ms = None;
                }
                // As if each of the `n` calls had taken the mean.
                let weight = 1.0 - (1.0 - EWMA_ALPHA).powi(i32::try_from(n).unwrap_or(i32::MAX));
                let toward =
                    |old: Option<f64>, x: f64| Some(old.map_or(x, |v| v + weight * (x - v)));
                let first = o.ttft_ms.unwrap_or(o.duration_ms);
                t.ttft_ms = toward(t.ttft_ms, first as f64);
                t.duration_ms = toward(t.duration_ms, o.duration_ms as f64);
            }
            Outcome::Failed => {
                t.failed += 1;
                t.consecutive_failures = t.consecutive_failures.saturating_add(1);
                t.last_error = o.error_code;
                t.last_failed_unix_ms = Some(
                    t.last_failed_unix_ms
                        .map_or(o.at_unix_ms, |f| f.max(o.at_unix_ms)),
                );
                let failed = (t.recent & last_calls(window)).count_ones();
                let flapping = t.recent_calls >= self.health.min_calls
                    && f64::from(failed) >= self.health.error_rate * f64::from(t.recent_calls);
                if t.consecutive_failures >= self.health.failure_threshold || flapping {
                    t.unhealthy_until_unix_ms =
                        Some(now_ms + self.health.cool_down.as_millis() as u64);
                }
            }
            Outcome::Neutral => {}
        }
        t.quiet(window)
    }

    /// Whether the target's last calls (the health window) all succeeded:
    /// then a worker may send its successes summed (`Observation::calls`)
    /// without changing what any table concludes. Once one of them failed,
    /// each call is sent on its own again, so that consecutive failures are
    /// counted between the successes as they happened.
    pub fn quiet(&self, provider: &str, model: &str) -> bool {
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        let window = self.health.window.clamp(1, 64);
        targets
            .get(provider)
            .and_then(|m| m.get(model))
            .is_some_and(|t| t.quiet(window))
    }

    /// An operator forced the target off (`Some(false)`), on (`Some(true)`), or
    /// back to its health (`None`).
    pub fn force(&self, provider: &str, model: &str, forced: Option<bool>) {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        targets
            .entry(provider.to_owned())
            .or_default()
            .entry(model.to_owned())
            .or_default()
            .forced = forced;
    }

    /// Records `provider`'s load as read at `now_ms`.
    pub fn set_load(&self, provider: &str, load: Load) {
        let mut all = self.load.write().unwrap_or_else(|e| e.into_inner());
        all.insert(provider.to_owned(), load);
    }

    /// Every target's state and every provider's load at `now_ms`, for operators.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<TargetRow> = targets
            .iter()
            .flat_map(|(p, models)| {
                models.iter().map(move |(m, s)| TargetRow {
                    provider: p.clone(),
                    model: m.clone(),
                    healthy: match s.forced {
                        Some(on) => on,
                        None => s.unhealthy_until_unix_ms.is_none_or(|u| u <= now_ms),
                    },
                    state: s.clone(),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        let load = self.load.read().unwrap_or_else(|e| e.into_inner());
        let mut providers: Vec<ProviderLoad> = load
            .iter()
            .map(|(p, l)| ProviderLoad {
                provider: p.clone(),
                load: *l,
            })
            .collect();
        providers.sort_by(|a, b| a.provider.cmp(&b.provider));
        Snapshot {
            now_unix_ms: now_ms,
            targets: rows,
            providers,
        }
    }

    /// The table as it stands at `now_ms`, for one decision.
    pub fn at(&self, now_ms: u64) -> LiveAt<'_> {
        LiveAt {
            table: self,
            now_ms,
        }
    }

    fn with<R>(&self, provider: &str, model: &str, f: impl FnOnce(&TargetLive) -> R) -> Option<R> {
        let targets = self.targets.read().unwrap_or_else(|e| e.into_inner());
        targets.get(provider).and_then(|m| m.get(model)).map(f)
    }
}

/// A [`LiveTable`] at one instant.
#[derive(Debug, Clone, Copy)]
pub struct LiveAt<'a> {
    table: &'a LiveTable,
    now_ms: u64,
}

impl LiveAt<'_> {
    /// Why a new request for `provider`/`model` should not be queued there now:
    /// its provider's queue is at `max_queue`, or the estimated wait (rounds
    /// of the queue through the concurrency cap, times the target's average
    /// call) exceeds `budget_ms`, the time the request has left.
    pub fn shed(
        &self,
        provider: &str,
        model: &str,
        max_queue: Option<u64>,
        budget_ms: u64,
    ) -> Option<String> {
        let load = {
            let all = self.table.load.read().unwrap_or_else(|e| e.into_inner());
            *all.get(provider)?
        };
        if self.now_ms.saturating_sub(load.read_unix_ms) > LOAD_FRESH_MS || load.queued == 0 {
            return None;
        }
        if let Some(max) = max_queue.filter(|m| load.queued >= *m) {
            return Some(format!(
                "{} requests queued for {provider} (limit {max})",
                load.queued
            ));
        }
        let avg = self
            .table
            .with(provider, model, |t| t.duration_ms)
            .flatten()?;
        let rounds = load.queued.div_ceil(load.cap.max(1));
        let wait = rounds as f64 * avg;
        (wait > budget_ms as f64).then(|| {
            format!(
                "estimated wait {:.0} ms for {provider} exceeds the {budget_ms} ms left",
                wait
            )
        })
    }
}

impl LiveAt<'_> {
    /// True when `provider`/`model`'s breaker is half open: its cool-down has
    /// passed and no call has succeeded since. The next call is a probe, made
    /// once: a failure opens the breaker again at once.
    pub fn half_open(&self, provider: &str, model: &str) -> bool {
        self.table
            .with(provider, model, |t| {
                t.forced.is_none() && t.unhealthy_until_unix_ms.is_some_and(|u| u <= self.now_ms)
            })
            .unwrap_or(false)
    }
}

impl Live for LiveAt<'_> {
    fn unhealthy(&self, provider: &str, model: &str) -> Option<String> {
        self.table
            .with(provider, model, |t| {
                match t.forced {
                    Some(false) => return Some("disabled by an operator".to_owned()),
                    Some(true) => return None,
                    None => {}
                }
                let until = t.unhealthy_until_unix_ms.filter(|u| *u > self.now_ms)?;
                let why = if t.consecutive_failures >= self.table.health.failure_threshold {
                    format!("{} consecutive failures", t.consecutive_failures)
                } else {
                    let window = t.recent_calls;
                    format!(
                        "{} of the last {window} calls failed",
                        (t.recent & last_calls(window)).count_ones()
                    )
                };
                Some(format!(
                    "unhealthy: {why}{}, retried in {:.1} s",
                    t.last_error
                        .map(|c| format!(" (last: {})", c.as_str()))
                        .unwrap_or_default(),
                    (until - self.now_ms) as f64 / 1000.0
                ))
            })
            .flatten()
    }

    fn saturated(&self, provider: &str) -> bool {
        let load = self.table.load.read().unwrap_or_else(|e| e.into_inner());
        load.get(provider).is_some_and(|l| {
            self.now_ms.saturating_sub(l.read_unix_ms) <= LOAD_FRESH_MS
                && l.in_flight >= l.cap
                && l.queued > 0
        })
    }

    fn latency_ms(&self, provider: &str, model: &str) -> Option<f64> {
        self.table.with(provider, model, |t| t.ttft_ms).flatten()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn obs(provider: &str, outcome: Outcome, ttft: u64) -> Observation {
        Observation {
            provider: provider.into(),
            model: "m".into(),
            worker_id: "w".into(),
            outcome,
            error_code: (outcome == Outcome::Failed).then_some(ErrorCode::ProviderError),
            ttft_ms: Some(ttft),
            duration_ms: ttft * 2,
            at_unix_ms: 0,
            calls: 1,
        }
    }

    /// `calls` successes summed, the latest ending at `at`.
    fn summary(calls: u32, ttft: u64, at: u64) -> Observation {
        Observation {
            calls,
            at_unix_ms: at,
            ..obs("a", Outcome::Ok, ttft)
        }
    }

    /// A failure ending at `at`.
    fn failure(at: u64) -> Observation {
        Observation {
            at_unix_ms: at,
            ..obs("a", Outcome::Failed, 0)
        }
    }

    #[test]
    fn a_summary_of_successes_counts_as_that_many_calls() {
        let t = table();
        t.observe(&obs("a", Outcome::Ok, 100), 1);
        // Three calls at a mean of 200 ms move the average as three calls of
        // 200 would: 100 + (1 − 0.7³) × 100.
        t.observe(&summary(3, 200, 5), 6);
        let want = 100.0 + (1.0 - 0.7f64.powi(3)) * 100.0;
        assert!((t.at(6).latency_ms("a", "m").unwrap() - want).abs() < 1e-9);
        let row = &t.snapshot(6).targets[0];
        assert_eq!(row.state.ok, 4);
        // The window holds the summary's calls as successes: two failures in
        // the last calls are 2 of a full window, not 2 of 3.
        let flappy = LiveTable::new(HealthConfig {
            failure_threshold: 100,
            window: 4,
            min_calls: 4,
            error_rate: 0.5,
            cool_down: Duration::from_secs(10),
        });
        flappy.observe(&summary(3, 10, 1), 1);
        flappy.observe(&failure(2), 2);
        assert_eq!(flappy.at(2).unhealthy("a", "m"), None, "1 of 4 failed");
        flappy.observe(&failure(3), 3);
        assert!(flappy.at(3).unhealthy("a", "m").is_some(), "2 of 4 failed");
        flappy.observe(&summary(64, 10, 4), 4);
        assert_eq!(flappy.at(4).unhealthy("a", "m"), None);
        flappy.observe(&failure(5), 5);
        assert_eq!(flappy.at(5).unhealthy("a", "m"), None, "1 of 4 failed");
    }

    #[test]
    fn a_target_is_quiet_while_its_window_holds_no_failure() {
        let t = LiveTable::new(HealthConfig {
            window: 4,
            ..HealthConfig::default()
        });
        assert!(!t.quiet("a", "m"), "never seen");
        assert!(
            t.observe(&obs("a", Outcome::Ok, 10), 1),
            "observe says so too"
        );
        assert!(t.quiet("a", "m"));
        assert!(!t.observe(&failure(2), 2));
        assert!(!t.quiet("a", "m"));
        for at in 3..6 {
            t.observe(&summary(1, 10, at), at);
            assert!(!t.quiet("a", "m"), "the failure is still in the window");
        }
        t.observe(&summary(1, 10, 6), 6);
        assert!(t.quiet("a", "m"), "four successes since");
        assert!(!t.quiet("a", "other"));
    }

    #[test]
    fn a_late_summary_of_calls_that_ended_before_a_failure_does_not_heal() {
        let t = table();
        for at in [1_000, 1_001, 1_002] {
            t.observe(&failure(at), 1_010);
        }
        assert!(t.at(1_010).unhealthy("a", "m").is_some());
        // Another worker's successes, all before the last failure, arrive after it.
        t.observe(&summary(5, 10, 1_001), 1_050);
        assert!(
            t.at(1_050).unhealthy("a", "m").is_some(),
            "calls that ended before the failure say nothing about after it"
        );
        assert_eq!(t.snapshot(1_050).targets[0].state.ok, 5, "still counted");
        // One that ended at or after it heals.
        t.observe(&summary(2, 10, 1_002), 1_060);
        assert_eq!(t.at(1_060).unhealthy("a", "m"), None);
        assert_eq!(t.snapshot(1_060).targets[0].state.consecutive_failures, 0);
    }

    fn table() -> LiveTable {
        LiveTable::new(HealthConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
            ..HealthConfig::default()
        })
    }

    #[test]
    fn latency_is_an_exponentially_weighted_average_of_successes() {
        let t = table();
        assert_eq!(t.at(0).latency_ms("a", "m"), None);
        t.observe(&obs("a", Outcome::Ok, 100), 1);
        assert_eq!(t.at(1).latency_ms("a", "m"), Some(100.0));
        t.observe(&obs("a", Outcome::Ok, 200), 2);
        // 100 + 0.3 × (200 − 100)
        assert!((t.at(2).latency_ms("a", "m").unwrap() - 130.0).abs() < 1e-9);
        // Failures and neutral results leave it alone.
        t.observe(&obs("a", Outcome::Failed, 5000), 3);
        t.observe(&obs("a", Outcome::Neutral, 5000), 4);
        assert!((t.at(4).latency_ms("a", "m").unwrap() - 130.0).abs() < 1e-9);
        assert_eq!(t.at(4).latency_ms("a", "other"), None);
    }

    #[test]
    fn consecutive_failures_make_a_target_unhealthy_for_the_cool_down() {
        let t = table();
        t.observe(&obs("a", Outcome::Failed, 0), 1_000);
        t.observe(&obs("a", Outcome::Failed, 0), 1_000);
        assert_eq!(t.at(1_000).unhealthy("a", "m"), None, "below the threshold");
        // A success in between resets the count.
        t.observe(&obs("a", Outcome::Ok, 10), 1_000);
        t.observe(&obs("a", Outcome::Failed, 0), 1_000);
        t.observe(&obs("a", Outcome::Failed, 0), 1_000);
        assert_eq!(t.at(1_000).unhealthy("a", "m"), None);
        t.observe(&obs("a", Outcome::Failed, 0), 2_000);
        let why = t.at(2_000).unhealthy("a", "m").unwrap();
        assert!(
            why.contains("3 consecutive failures (last: provider_error)"),
            "{why}"
        );
        assert!(t.at(11_999).unhealthy("a", "m").is_some());
        // After the cool-down it gets traffic again; one more failure closes it at once.
        assert_eq!(t.at(12_000).unhealthy("a", "m"), None);
        t.observe(&obs("a", Outcome::Failed, 0), 12_500);
        assert!(t.at(12_500).unhealthy("a", "m").is_some());
        // A success (another worker's, say) makes it healthy immediately.
        t.observe(&obs("a", Outcome::Ok, 10), 13_000);
        assert_eq!(t.at(13_000).unhealthy("a", "m"), None);
        let row = &t.snapshot(13_000).targets[0];
        assert!(row.healthy);
        assert_eq!((row.state.ok, row.state.failed), (2, 6));
        // Other targets are unaffected.
        assert_eq!(t.at(2_000).unhealthy("b", "m"), None);
    }

    #[test]
    fn saturation_needs_a_full_cap_a_queue_and_a_fresh_reading() {
        let t = table();
        let load = |in_flight, queued, read| Load {
            in_flight,
            queued,
            cap: 4,
            read_unix_ms: read,
        };
        assert!(!t.at(0).saturated("a"), "unknown load");
        t.set_load("a", load(4, 0, 1_000));
        assert!(!t.at(1_000).saturated("a"), "full but nothing waits");
        t.set_load("a", load(3, 9, 1_000));
        assert!(!t.at(1_000).saturated("a"), "a free slot");
        t.set_load("a", load(4, 1, 1_000));
        assert!(t.at(1_000).saturated("a"));
        assert!(!t.at(1_000 + LOAD_FRESH_MS + 1).saturated("a"), "stale");
        let snap = t.snapshot(1_000);
        assert!(snap.targets.is_empty());
        assert_eq!(
            snap.providers,
            vec![ProviderLoad {
                provider: "a".into(),
                load: load(4, 1, 1_000)
            }]
        );
    }

    #[test]
    fn shedding_on_queue_depth_and_on_a_deadline_that_cannot_be_met() {
        let t = table();
        let load = |queued| Load {
            in_flight: 4,
            queued,
            cap: 4,
            read_unix_ms: 1_000,
        };
        assert_eq!(
            t.at(1_000).shed("a", "m", Some(10), 1_000),
            None,
            "no load known"
        );
        t.set_load("a", load(10));
        let why = t.at(1_000).shed("a", "m", Some(10), 60_000).unwrap();
        assert!(
            why.starts_with("10 requests queued for a (limit 10)"),
            "{why}"
        );
        assert_eq!(t.at(1_000).shed("a", "m", Some(11), 60_000), None);
        // 10 queued through a cap of 4 is 3 rounds of the 200 ms average call.
        t.observe(&obs("a", Outcome::Ok, 100), 1_000);
        assert!(t.at(1_000).shed("a", "m", None, 599).is_some());
        assert_eq!(t.at(1_000).shed("a", "m", None, 600), None);
        assert_eq!(
            t.at(1_000 + LOAD_FRESH_MS + 1).shed("a", "m", Some(1), 1),
            None,
            "stale load sheds nothing"
        );
    }

    #[test]
    fn a_flapping_target_is_taken_out_by_its_error_rate() {
        let t = table(); // threshold 3, error rate 0.5 over 20, 10 calls minimum
        let mut now = 0;
        for i in 0..9 {
            now += 1;
            let o = if i % 2 == 0 {
                Outcome::Failed
            } else {
                Outcome::Ok
            };
            t.observe(&obs("a", o, 10), now);
        }
        assert_eq!(t.at(now).unhealthy("a", "m"), None, "fewer than 10 calls");
        t.observe(&obs("a", Outcome::Ok, 10), now);
        t.observe(&obs("a", Outcome::Failed, 10), now);
        let why = t.at(now).unhealthy("a", "m").unwrap();
        assert!(
            why.starts_with("unhealthy: 6 of the last 11 calls failed"),
            "{why}"
        );
    }

    #[test]
    fn an_operator_override_beats_health() {
        let t = table();
        t.force("a", "m", Some(false));
        assert_eq!(
            t.at(0).unhealthy("a", "m").as_deref(),
            Some("disabled by an operator")
        );
        for _ in 0..5 {
            t.observe(&obs("b", Outcome::Failed, 0), 0);
        }
        t.force("b", "m", Some(true));
        assert_eq!(t.at(0).unhealthy("b", "m"), None, "forced on");
        t.force("b", "m", None);
        assert!(t.at(0).unhealthy("b", "m").is_some(), "back to its health");
        let snap = t.snapshot(0);
        assert!(!snap.targets[0].healthy && !snap.targets[1].healthy);
    }
}
