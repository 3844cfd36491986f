//! `sy-classifier-bench`: the cost of classifying one prompt, in-process.
//!
//! Prompts of about 50, 500 and 2,000 tokens (built from a fixed text); each is
//! classified `--iterations` times after a warm-up, and p50/p99/max per call are
//! printed as one JSON line per size. Run with `--release`.

use std::io::Write;
use std::time::Instant;

use clap::Parser;
use sy_classifier::Classifier;

#[derive(Parser, Debug)]
#[command(name = "sy-classifier-bench", about = "Classification cost per prompt")]
struct Args {
    /// Measured classifications per prompt size.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

const BASE: &str = "Please review the following function and explain step by step why it fails \
for negative inputs, then rewrite it in idiomatic Rust with tests. fn area(r: f64) -> f64 { \
3.14 * r * r } The service calls it from three places and we saw wrong totals in the nightly \
report; also estimate how much the error could cost over a month of traffic. ";

fn prompt(tokens: usize) -> String {
    let mut s = String::new();
    let mut n = 0;
    while n < tokens {
        s.push_str(BASE);
        n += sy_classifier_tokens(BASE);
    }
    s
}

/// Rough token count (words and punctuation), for sizing the prompts.
fn sy_classifier_tokens(s: &str) -> usize {
    s.split_whitespace().count() + s.chars().filter(|c| c.is_ascii_punctuation()).count()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = Instant::now();
    let c = Classifier::load()?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    for size in [50usize, 500, 2000] {
        let p = prompt(size);
        let mut check = 0usize;
        for _ in 0..args.iterations / 10 {
            check += c.classify_text(&p, 1, false).class as usize;
        }
        let mut us = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            let pred = c.classify_text(&p, 1, false);
            us.push(t.elapsed().as_secs_f64() * 1e6);
            check += pred.class as usize;
        }
        us.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "mode": "classify", "approx_tokens": size, "chars": p.len(),
            "p50_us": (pct(&us, 0.5) * 10.0).round() / 10.0,
            "p99_us": (pct(&us, 0.99) * 10.0).round() / 10.0,
            "max_us": (us[us.len() - 1] * 10.0).round() / 10.0,
            "iterations": args.iterations, "load_ms": (load_ms * 10.0).round() / 10.0,
            "checksum": check,
        });
        writeln!(std::io::stdout().lock(), "{line}")?;
    }
    Ok(())
}
