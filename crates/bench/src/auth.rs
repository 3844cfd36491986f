//! `sy-auth-bench`: the cost of authenticating a tenant's key from the
//! in-memory table, as the ingress does on every request (parse and
//! checksum, one map probe, one HMAC-SHA-256, under a read lock).
//!
//! A table of `--keys` live keys; one key authenticated `--iterations` times
//! after a warm-up, alone and then from two threads at once; p50/p99/max per
//! call as one JSON line each. Run with `--release`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use sy_control::feed::LiveKeys;
use sy_control::key::{self, Pepper};
use sy_control::keytable::{Grant, KeyChange, KeyEntry, KeyTable};
use sy_control::store::KeyOwner;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "sy-auth-bench", about = "Authentication cost per request")]
struct Args {
    /// Live keys in the table.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Measured authentications (per thread).
    #[arg(long, default_value_t = 200_000)]
    iterations: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Nanoseconds per call of `iterations` authentications of `key`.
fn measure(live: &LiveKeys, key: &str, iterations: usize) -> Vec<f64> {
    let now = 1_000;
    for _ in 0..iterations / 10 {
        assert!(live.authenticate(key, now).is_ok());
    }
    let mut ns = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let ok = live.authenticate(key, now).is_ok();
        ns.push(t.elapsed().as_nanos() as f64);
        assert!(ok);
    }
    ns.sort_by(f64::total_cmp);
    ns
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pepper = Pepper::new(*b"a bench pepper of 32 bytes or more")?;
    let mut table = KeyTable::default();
    let mut probe = String::new();
    for i in 0..args.keys {
        let k = key::generate("live", &pepper)?;
        let owner = KeyOwner {
            key_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            org_id: Uuid::now_v7(),
        };
        let entry = KeyEntry {
            grant: Arc::new(Grant::unrestricted(owner)),
            secret_hash: k.hash.to_vec(),
            previous: None,
            expires_at_ms: None,
        };
        table.apply(KeyChange::Upsert {
            public_id: k.public_id.clone(),
            entry,
        });
        if i == args.keys / 2 {
            probe = k.key;
        }
    }
    let live = Arc::new(LiveKeys::new(table, pepper));
    let alone = measure(&live, &probe, args.iterations);
    let line = |mode: &str, ns: &[f64]| {
        let v = serde_json::json!({"mode": mode, "keys": args.keys, "iterations": ns.len(),
            "p50_ns": pct(ns, 0.5), "p99_ns": pct(ns, 0.99), "max_ns": pct(ns, 1.0)});
        writeln!(std::io::stdout(), "{v}")
    };
    line("auth_one_thread", &alone)?;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (live, probe) = (live.clone(), probe.clone());
            let n = args.iterations;
            std::thread::spawn(move || measure(&live, &probe, n))
        })
        .collect();
    let mut both = Vec::new();
    for h in handles {
        both.extend(h.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?);
    }
    both.sort_by(f64::total_cmp);
    line("auth_two_threads", &both)?;
    Ok(())
}
