//! Where one request's time went, for a client that asks
//! (`x-switchyard-timing: stages`): monotonic timestamps at the end of each
//! stage, the worker's own stages from the first frame, and a `Server-Timing`
//! header on the answer. A request that does not ask pays one header lookup.
//!
//! The stages add up to the ingress's time, from the request reaching the
//! router's first layer (its head read by hyper) to the response built;
//! what hyper does before and after (reading the head, writing the answer)
//! is the client's total less theirs. Between the publish and the first
//! frame the worker's stages are its own clock's; `queue` is the rest of that
//! wait: JetStream storing the request (`ack` is that round trip alone, not
//! added again), delivering it to the worker, and the first frame's way back.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use sy_protocol::{StartInfo, header};

/// When the router's first layer saw a request that asks for its stages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrived(pub(crate) Instant);

/// The stages of one request so far.
#[derive(Debug, Clone)]
pub(crate) struct Stages {
    began: Instant,
    last: Instant,
    spent: Vec<(&'static str, Duration)>,
    /// When the request was handed to the bus (the serialised envelope).
    sent: Option<Instant>,
    /// The store's round trip (within `queue`, reported after it).
    ack: Option<Duration>,
}

impl Stages {
    /// Stages for a request whose client asked for them; the first,
    /// `intake`, from when the router's first layer saw it (`arrived`: the
    /// metrics and body-guard layers, routing) to now.
    pub(crate) fn asked(headers: &HeaderMap, arrived: Option<Arrived>) -> Option<Stages> {
        let asked = headers
            .get(header::TIMING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"stages"));
        asked.then(|| {
            let now = Instant::now();
            let began = arrived.map_or(now, |a| a.0.min(now));
            let mut spent = Vec::with_capacity(16);
            spent.push(("intake", now - began));
            Stages {
                began,
                last: now,
                spent,
                sent: None,
                ack: None,
            }
        })
    }

    /// Ends stage `name` now.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.spent.push((name, now - self.last));
        self.last = now;
    }

    /// Ends the envelope's serialisation: the wait for the queue starts.
    pub(crate) fn sent(&mut self) {
        self.mark("serialise");
        self.sent = Some(self.last);
    }

    /// JetStream acked the request: the store's round trip, within `queue`.
    pub(crate) fn acked(&mut self) {
        self.ack = self.sent.map(|s| s.elapsed());
    }

    /// Ends the wait for the first frame, split by the worker's stages in
    /// `start` (when it sent them).
    pub(crate) fn first_frame(&mut self, start: Option<&StartInfo>) {
        let now = Instant::now();
        let since_sent = self.sent.map_or(Duration::ZERO, |s| now - s);
        let worker = start.and_then(|s| Some((s.stages?, s.upstream_us?)));
        let mut queue = since_sent;
        if let Some((w, upstream_us)) = worker {
            let micros = |us: u64| Duration::from_micros(us);
            self.spent.push(("worker_decode", micros(w.decode_us)));
            self.spent.push(("worker_setup", micros(w.setup_us)));
            self.spent.push(("provider", micros(upstream_us)));
            let worker_us = w
                .decode_us
                .saturating_add(w.setup_us)
                .saturating_add(upstream_us);
            queue = queue.saturating_sub(micros(worker_us));
        }
        self.spent.push(("queue", queue));
        if let Some(a) = self.ack {
            self.spent.push(("ack", a));
        }
        self.last = now;
    }

    /// The `Server-Timing` value: every stage in milliseconds, `total` last.
    pub(crate) fn header(&mut self) -> Option<HeaderValue> {
        self.mark("relay");
        let mut out = String::with_capacity(32 * (self.spent.len() + 1));
        for (name, d) in &self.spent {
            let _ = write!(out, "{name};dur={:.3}, ", d.as_secs_f64() * 1e3);
        }
        let _ = write!(
            out,
            "total;dur={:.3}",
            (self.last - self.began).as_secs_f64() * 1e3
        );
        HeaderValue::from_str(&out).ok()
    }
}

/// Ends stage `name` of a request that asked for its stages.
pub(crate) fn mark(stages: &mut Option<Stages>, name: &'static str) {
    if let Some(s) = stages {
        s.mark(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sy_protocol::{ResponseMeta, WorkerStages};

    fn asked() -> Stages {
        let mut h = HeaderMap::new();
        h.insert(header::TIMING, HeaderValue::from_static("Stages"));
        Stages::asked(&h, None).expect("asked")
    }

    fn parse(v: &HeaderValue) -> Vec<(String, f64)> {
        v.to_str()
            .expect("ascii")
            .split(", ")
            .map(|e| {
                let (n, d) = e.split_once(";dur=").expect("name;dur=");
                (n.to_owned(), d.parse().expect("a number"))
            })
            .collect()
    }

    #[test]
    fn only_a_request_that_asks_is_timed() {
        let mut h = HeaderMap::new();
        assert!(Stages::asked(&h, None).is_none());
        h.insert(header::TIMING, HeaderValue::from_static("yes"));
        assert!(Stages::asked(&h, None).is_none());
    }

    #[test]
    fn the_wait_for_the_first_frame_is_split_by_the_workers_stages() {
        let mut s = asked();
        s.mark("parse");
        s.sent();
        std::thread::sleep(Duration::from_millis(2));
        s.acked();
        std::thread::sleep(Duration::from_millis(30));
        let start = StartInfo {
            provider: "p".into(),
            upstream_model: "m".into(),
            response: ResponseMeta::default(),
            attempt: 1,
            upstream_us: Some(20_000),
            stages: Some(WorkerStages {
                decode_us: 1_000,
                setup_us: 2_000,
            }),
        };
        s.first_frame(Some(&start));
        let stages = parse(&s.header().expect("a header value"));
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "intake",
                "parse",
                "serialise",
                "worker_decode",
                "worker_setup",
                "provider",
                "queue",
                "ack",
                "relay",
                "total"
            ]
        );
        let of = |n: &str| stages.iter().find(|(m, _)| m == n).map(|(_, d)| *d);
        assert_eq!(of("provider"), Some(20.0));
        // 32 ms or more since the send, less the worker's 23 ms.
        let queue = of("queue").expect("queue");
        assert!(queue >= 9.0, "{queue}");
        assert!(of("ack").expect("ack") >= 2.0);
        // The stages but `ack` add up to the total (rounding aside).
        let added: f64 = stages
            .iter()
            .filter(|(n, _)| n != "ack" && n != "total")
            .map(|(_, d)| d)
            .sum();
        let total = of("total").expect("total");
        assert!((added - total).abs() < 0.01, "{added} vs {total}");
    }

    #[test]
    fn without_the_workers_stages_the_whole_wait_is_the_queue() {
        let mut s = asked();
        s.sent();
        std::thread::sleep(Duration::from_millis(3));
        s.first_frame(None);
        let stages = parse(&s.header().expect("a header value"));
        assert_eq!(stages[2].0, "queue");
        assert!(stages[2].1 >= 3.0);
    }
}
