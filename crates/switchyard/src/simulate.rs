//! `switchyard route simulate --input prompts.jsonl`: replays prompts through the
//! classifier and a router (no provider is called, no NATS needed) and reports the
//! mix of classes and targets and the estimated cost against sending everything
//! to one baseline target (by default the router's most expensive target, "the
//! strongest model"), under the configured prices.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use sy_config::Config;
use sy_protocol::TokenUsage;
use sy_protocol::chat::ChatRequest;
use sy_router::{NoLive, RouteRequest};

/// Runs the simulation and writes the report to `out`.
pub fn run(
    config: &Config,
    input: &Path,
    router_name: &str,
    baseline: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let router = config.routers.get(router_name).with_context(|| {
        format!(
            "no router \"{router_name}\" in the config (have: {})",
            config
                .routers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let price = |provider: &str, model: &str| {
        config
            .providers
            .get(provider)
            .and_then(|p| p.prices.get(model))
    };
    // The baseline: given, or the router's target with the highest input+output price.
    let baseline = match baseline {
        Some(b) => {
            let (p, m) = b.split_once('/').context("--baseline is PROVIDER/MODEL")?;
            if price(p, m).is_none() {
                bail!("--baseline {b}: no price for it in the config");
            }
            (p.to_owned(), m.to_owned())
        }
        None => router
            .routes
            .iter()
            .flat_map(|r| &r.targets)
            .filter_map(|t| price(&t.provider, &t.model).map(|pr| (pr.input + pr.output, t)))
            .max_by_key(|(cost, _)| *cost)
            .map(|(_, t)| (t.provider.clone(), t.model.clone()))
            .context("no target of the router has a price; give --baseline")?,
    };
    let classifier = sy_classifier::Classifier::load()?;
    let file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut targets: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let (mut n, mut routed_cost, mut baseline_cost, mut unpriced) = (0u64, 0i64, 0i64, 0u64);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", input.display(), i + 1))?;
        let mut body = if v.get("messages").is_some() {
            v
        } else if let Some(t) = v
            .get("text")
            .or_else(|| v.get("prompt"))
            .and_then(|t| t.as_str())
        {
            serde_json::json!({"messages": [{"role": "user", "content": t}]})
        } else {
            bail!(
                "{}:{}: needs \"text\" or \"messages\"",
                input.display(),
                i + 1
            );
        };
        body["model"] = serde_json::json!(router_name);
        let req: ChatRequest = serde_json::from_value(body)
            .with_context(|| format!("{}:{}: not a chat request", input.display(), i + 1))?;
        let class = classifier.classify(&req).class;
        let tags = sy_ingress::body_tags(&req);
        let r = RouteRequest {
            kind: "chat",
            class: Some(class.as_str()),
            task_type: None,
            tags: &tags,
            input_tokens: sy_ingress::estimate_input_tokens(&req),
            output_tokens: sy_ingress::expected_output_tokens(&req),
            units: sy_protocol::price::Units::default(),
        };
        // One reproducible draw per line.
        let mut rng = sy_router::seeded_rng((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let d = sy_router::decide(router, &config.providers, &r, &NoLive, &mut rng);
        n += 1;
        *classes.entry(class.as_str().to_owned()).or_default() += 1;
        let tokens = TokenUsage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            ..TokenUsage::default()
        };
        if let Some(bp) = price(&baseline.0, &baseline.1) {
            baseline_cost += bp.cost_nanos(&tokens);
        }
        match d.chosen() {
            Some(c) => {
                let cost = price(&c.provider, &c.model).map(|p| p.cost_nanos(&tokens));
                let e = targets
                    .entry(format!("{} / {} ({})", c.provider, c.model, d.route))
                    .or_default();
                e.0 += 1;
                e.1 += cost.unwrap_or(0);
                match cost {
                    Some(c) => routed_cost += c,
                    None => unpriced += 1,
                }
            }
            None => {
                targets
                    .entry("(no target could serve)".into())
                    .or_default()
                    .0 += 1
            }
        }
    }
    if n == 0 {
        bail!("{}: no prompts", input.display());
    }
    let usd = |nanos: i64| nanos as f64 / 1e9;
    writeln!(
        out,
        "{n} prompts through router \"{router_name}\" (estimated tokens: characters / 4; output: max_tokens or 1,024)\n"
    )?;
    writeln!(out, "| class | prompts | share |\n|---|---|---|")?;
    for (c, k) in &classes {
        writeln!(out, "| {c} | {k} | {:.1} % |", *k as f64 * 100.0 / n as f64)?;
    }
    writeln!(
        out,
        "\n| target (route) | prompts | share | est. cost USD |\n|---|---|---|---|"
    )?;
    for (t, (k, cost)) in &targets {
        writeln!(
            out,
            "| {t} | {k} | {:.1} % | {:.6} |",
            *k as f64 * 100.0 / n as f64,
            usd(*cost)
        )?;
    }
    writeln!(
        out,
        "\nrouted: {:.6} USD; everything to {} / {}: {:.6} USD; saving {:.1} %{}",
        usd(routed_cost),
        baseline.0,
        baseline.1,
        usd(baseline_cost),
        if baseline_cost > 0 {
            (1.0 - routed_cost as f64 / baseline_cost as f64) * 100.0
        } else {
            0.0
        },
        if unpriced > 0 {
            format!(" ({unpriced} prompts went to unpriced targets, counted as 0)")
        } else {
            String::new()
        }
    )?;
    Ok(())
}
