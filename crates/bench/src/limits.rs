//! `sy-limits-bench`: what one admission costs the ingress, against the
//! Redis round trip it cannot avoid (issue 17's speed bar).
//!
//! From one client (the ingress's: `sy_limits::Limiter`, one multiplexed
//! connection), one call at a time after a warm-up, p50/p99 per call as one
//! JSON line per mode:
//! - `ping`: a `PING` round trip on the multiplexed connection (the `redis`
//!   crate's: a task of its own owns the socket);
//! - `ping-direct`: the same on a socket the calling task writes and reads
//!   itself (the floor of an admission);
//! - `admit`: (on the limiter's direct connections) one scope with RPM, TPM and concurrency (never refusing), as a
//!   rate-limited key's request is admitted;
//! - `admit-budget`: the same with a budget of its org.
//!
//! Then Redis's own time per admission from `INFO commandstats`
//! (`usec_per_call` of `evalsha`). Run with `--release`.

use std::io::Write;
use std::time::Instant;

use clap::Parser;
use sy_limits::{Ask, Budget, Limiter, Limits, Period, Scope, Spend};

#[derive(Parser, Debug)]
#[command(name = "sy-limits-bench", about = "Admission cost per request")]
struct Args {
    /// The Redis to use (its `sy:lim:{bench-*}` keys are written).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Measured calls per mode.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// Idle time between calls, µs (the ingress at concurrency 1 calls Redis
    /// once per request, about every 0.7 ms, not back to back).
    #[arg(long, default_value_t = 0)]
    gap_us: u64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(mode: &str, mut us: Vec<f64>) -> anyhow::Result<()> {
    us.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "mode": mode,
        "calls": us.len(),
        "p50_us": (pct(&us, 0.5) * 10.0).round() / 10.0,
        "p99_us": (pct(&us, 0.99) * 10.0).round() / 10.0,
    });
    writeln!(std::io::stdout(), "{out}")?;
    Ok(())
}

async fn evalsha_usec(url: &str) -> anyhow::Result<(u64, f64)> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let stats = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_default();
    let field = |name: &str| {
        stats
            .split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("0")
            .to_owned()
    };
    Ok((field("calls").parse()?, field("usec").parse()?))
}

/// Waits `us` without sleeping the thread (a timer's own wake-up would be
/// measured instead of Redis's).
fn idle(us: u64) {
    let until = Instant::now() + std::time::Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limiter = Limiter::connect(&args.redis).await?;
    let org = format!("bench-{}", std::process::id());
    let huge = Limits {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000),
        concurrency: Some(100_000),
    };
    let scopes = [Scope::of_org(&org, "key", "k", "key k".into(), huge)];
    let budgets = [Budget::of_org(
        &org,
        "key",
        "k",
        1_000_000_000_000_000,
        Period::Month,
    )];
    let warm = args.iterations / 10;

    let mut us = Vec::with_capacity(args.iterations);
    for i in 0..warm + args.iterations {
        let t = Instant::now();
        limiter.ping().await?;
        if i >= warm {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        idle(args.gap_us);
    }
    line("ping", us)?;
    // The same on a socket of its own, written and read by the calling task
    // (as the admission does; needs a `redis://host:port` URL).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = args.redis.trim_start_matches("redis://");
        let mut sock = tokio::net::TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let mut buf = vec![0u8; 4096];
        let mut us = Vec::with_capacity(args.iterations);
        for i in 0..warm + args.iterations {
            let t = Instant::now();
            sock.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            let mut got = 0;
            loop {
                got += sock.read(&mut buf[got..]).await?;
                if buf[..got].ends_with(b"\r\n") {
                    break;
                }
            }
            if i >= warm {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            idle(args.gap_us);
        }
        line("ping-direct", us)?;
    }

    for mode in ["admit", "admit-budget"] {
        let (calls0, usec0) = evalsha_usec(&args.redis).await?;
        let mut us = Vec::with_capacity(args.iterations);
        let mut ids = Vec::new();
        for i in 0..warm + args.iterations {
            let id = format!("{mode}-{i}");
            let ask = Ask {
                request_id: &id,
                tokens: 40,
                lease_ms: 30_000,
            };
            let spend = Spend {
                org: &org,
                budgets: &budgets,
                input_nanos: 2_000,
                output_token_nanos: 600.0,
                output_tokens: 16,
                min_output_tokens: 16,
                hold_ms: 600_000,
                require_ready: false,
            };
            let spend = (mode == "admit-budget").then_some(&spend);
            let t = Instant::now();
            let (d, _) = limiter.admit_spend(ask, &scopes, spend).await?;
            if i >= warm {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            idle(args.gap_us);
            anyhow::ensure!(
                matches!(d, sy_limits::Decision::Admitted(_)),
                "refused: {d:?}"
            );
            ids.push(id);
            if ids.len() == 64 {
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let keys = sy_limits::lease_keys(&scopes);
                let by_key = keys.iter().map(|k| (k.as_str(), refs.clone())).collect();
                limiter.release_many(&by_key).await?;
                ids.clear();
            }
        }
        let (calls1, usec1) = evalsha_usec(&args.redis).await?;
        line(mode, us)?;
        let per = (usec1 - usec0) / (calls1 - calls0).max(1) as f64;
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({"mode": format!("{mode}-in-redis"), "usec_per_call": (per * 100.0).round() / 100.0})
        )?;
    }
    Ok(())
}
