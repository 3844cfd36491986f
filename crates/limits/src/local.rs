//! The fallback while Redis is unreachable: the same limits counted in this
//! process alone, each one divided by the number of live ingress replicas
//! (at least 1 each), so that the replicas together stay within the limit.
//! Same model as the Redis script (GCRA over a minute for requests and
//! tokens, a count for requests in flight), on this process's monotonic clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::{Ask, Decision, Kind, Remaining, Scope};

const WINDOW_US: f64 = 60_000_000.0;

/// Local buckets and in-flight counts, by scope.
#[derive(Debug)]
pub struct LocalLimiter {
    origin: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Theoretical arrival time (µs since `origin`) by bucket key.
    tat: HashMap<String, f64>,
    /// Requests in flight by scope prefix.
    in_flight: HashMap<String, u32>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            origin: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }
}

/// This replica's share of `limit`: `limit / replicas`, at least 1.
pub fn share(limit: u32, replicas: u32) -> u32 {
    (limit / replicas.max(1)).max(1)
}

impl LocalLimiter {
    /// Admits `ask` against every one of `scopes` with each limit divided
    /// among `replicas`, all or nothing (a concurrency slot taken here is
    /// given back by [`LocalLimiter::release`]).
    pub fn admit(&self, ask: Ask<'_>, scopes: &[Scope], replicas: u32) -> Decision {
        let now = self.origin.elapsed().as_micros() as f64;
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        struct Plan {
            req: Option<(String, f64, f64)>,
            tok: Option<(String, f64, f64)>,
        }
        let mut plans = Vec::with_capacity(scopes.len());
        for (i, s) in scopes.iter().enumerate() {
            let mut p = Plan {
                req: None,
                tok: None,
            };
            let buckets = [
                (s.limits.rpm, 1u32, "rpm", Kind::Requests),
                (s.limits.tpm, ask.tokens, "tpm", Kind::Tokens),
            ];
            for (limit, cost, name, kind) in buckets {
                let Some(limit) = limit else { continue };
                if cost == 0 {
                    continue;
                }
                let limit = share(limit, replicas);
                let step = WINDOW_US / f64::from(limit);
                let key = format!("{}:{name}", s.prefix);
                let tat = st.tat.get(&key).copied().unwrap_or(0.0);
                let new = tat.max(now) + step * f64::from(cost);
                if new - now > WINDOW_US {
                    let retry = if kind == Kind::Tokens && cost > limit {
                        None
                    } else {
                        Some(((new - now - WINDOW_US) / 1000.0).ceil() as u64)
                    };
                    return Decision::Refused {
                        scope: i,
                        kind,
                        retry_after_ms: retry,
                    };
                }
                let planned = Some((key, new, step));
                match kind {
                    Kind::Requests => p.req = planned,
                    _ => p.tok = planned,
                }
            }
            if let Some(limit) = s.limits.concurrency
                && st.in_flight.get(&s.prefix).copied().unwrap_or(0) >= share(limit, replicas)
            {
                return Decision::Refused {
                    scope: i,
                    kind: Kind::Concurrency,
                    retry_after_ms: Some(1000),
                };
            }
            plans.push(p);
        }
        let mut out = Vec::with_capacity(scopes.len());
        for (s, p) in scopes.iter().zip(plans) {
            let mut r = Remaining {
                requests: None,
                requests_reset_ms: 0,
                tokens: None,
                tokens_reset_ms: 0,
            };
            if let Some((key, new, step)) = p.req {
                r.requests = Some(((WINDOW_US - (new - now)) / step).floor() as u32);
                r.requests_reset_ms = ((new - now) / 1000.0).ceil() as u64;
                st.tat.insert(key, new);
            }
            if let Some((key, new, step)) = p.tok {
                r.tokens = Some(((WINDOW_US - (new - now)) / step).floor() as u32);
                r.tokens_reset_ms = ((new - now) / 1000.0).ceil() as u64;
                st.tat.insert(key, new);
            }
            if s.limits.concurrency.is_some() {
                *st.in_flight.entry(s.prefix.clone()).or_default() += 1;
            }
            out.push(r);
        }
        // Buckets that are full again hold nothing worth keeping.
        if st.tat.len() > 10_000 {
            st.tat.retain(|_, tat| *tat > now);
        }
        Decision::Admitted(out)
    }

    /// Gives back the in-flight slots a request took in `scopes`.
    pub fn release(&self, scopes: &[Scope]) {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        for s in scopes.iter().filter(|s| s.limits.concurrency.is_some()) {
            if let Some(n) = st.in_flight.get_mut(&s.prefix) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.in_flight.remove(&s.prefix);
                }
            }
        }
    }

    /// Forgets the request and token buckets (Redis counts again); requests
    /// in flight keep their slots until they end.
    pub fn forget_rates(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.tat.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn scope(limits: Limits) -> Scope {
        Scope::of_org("o", "key", "k", "key k".into(), limits)
    }

    fn ask(tokens: u32) -> Ask<'static> {
        Ask {
            request_id: "r",
            tokens,
            lease_ms: 1000,
        }
    }

    fn admitted(d: &Decision) -> bool {
        matches!(d, Decision::Admitted(_))
    }

    #[test]
    fn each_replica_admits_its_share_of_the_limit() {
        let l = LocalLimiter::default();
        let s = [scope(Limits {
            rpm: Some(20),
            ..Limits::default()
        })];
        let n = (0..50)
            .filter(|_| admitted(&l.admit(ask(0), &s, 2)))
            .count();
        assert_eq!(n, 10, "20 a minute over two replicas");
        let Decision::Refused {
            kind,
            retry_after_ms: Some(ms),
            ..
        } = l.admit(ask(0), &s, 2)
        else {
            panic!("admitted over the share");
        };
        assert_eq!(kind, Kind::Requests);
        assert!((5_000..=6_000).contains(&ms), "{ms}");
        assert_eq!(share(3, 5), 1, "every replica may serve at least one");
    }

    #[test]
    fn a_refusal_takes_nothing_and_in_flight_slots_come_back_on_release() {
        let l = LocalLimiter::default();
        let both = [
            scope(Limits {
                concurrency: Some(2),
                ..Limits::default()
            }),
            Scope::of_org(
                "o",
                "org",
                "o",
                "org o".into(),
                Limits {
                    tpm: Some(100),
                    ..Limits::default()
                },
            ),
        ];
        assert!(admitted(&l.admit(ask(40), &both, 1)));
        assert!(admitted(&l.admit(ask(40), &both, 1)));
        // The key's two slots are taken: refused, and the org's tokens kept.
        assert!(matches!(
            l.admit(ask(10), &both, 1),
            Decision::Refused {
                scope: 0,
                kind: Kind::Concurrency,
                ..
            }
        ));
        l.release(&both);
        assert!(admitted(&l.admit(ask(20), &both, 1)), "100 - 80 = 20 left");
        assert!(matches!(
            l.admit(ask(1), &both[1..], 1),
            Decision::Refused {
                kind: Kind::Tokens,
                ..
            }
        ));
    }
}
