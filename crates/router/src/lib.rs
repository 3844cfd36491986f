//! Target selection for smart routes: given a router (`auto`, `auto:<name>`), the
//! request's kind (chat, images, …), class, task type and estimated size, and what is known live about
//! each target (health, load, latency), pick a route, rank its targets by the
//! route's strategy, skip the ones that cannot serve, and say why.
//!
//! Pure and deterministic: randomness (the weighted strategy) comes from the
//! caller's `rng`, live state through the [`Live`] trait.

pub mod live;

use std::collections::BTreeMap;

use serde::Serialize;
use sy_config::ProviderConfig;
use sy_config::routing::{RouterConfig, Strategy};
use sy_protocol::TokenUsage;
use sy_protocol::price::Units;

/// What the router needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// What it asks (the config's `serves`: `chat`, `embeddings`, `images`, …).
    pub kind: &'a str,
    /// The class (classifier or hint); chat requests only.
    pub class: Option<&'a str>,
    /// The client's task type, if any.
    pub task_type: Option<&'a str>,
    /// The client's tags (routes may require some).
    pub tags: &'a [(String, String)],
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// Expected output tokens (`max_tokens`, or a default).
    pub output_tokens: u64,
    /// What it will be billed per unit (images drawn, seconds heard,
    /// characters spoken, search units), estimated.
    pub units: Units,
}

/// Live facts about targets, shared by all ingresses.
pub trait Live {
    /// Why the target may not take traffic now (its recent calls failed), if so.
    fn unhealthy(&self, provider: &str, model: &str) -> Option<String>;
    /// True while the provider has as many requests in flight as it may.
    fn saturated(&self, provider: &str) -> bool;
    /// Recent time to first token, exponentially weighted, if measured.
    fn latency_ms(&self, provider: &str, model: &str) -> Option<f64>;
}

/// No live data: everything healthy, nothing measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLive;

impl Live for NoLive {
    fn unhealthy(&self, _: &str, _: &str) -> Option<String> {
        None
    }
    fn saturated(&self, _: &str) -> bool {
        false
    }
    fn latency_ms(&self, _: &str, _: &str) -> Option<f64> {
        None
    }
}

/// One target as the router saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Provider entry.
    pub provider: String,
    /// Upstream model.
    pub model: String,
    /// The strategy's score (higher is better); none when skipped.
    pub score: Option<f64>,
    /// Estimated cost of this request there, nano-USD; none when unpriced.
    pub cost_nanos: Option<i64>,
    /// Live latency, if measured.
    pub latency_ms: Option<f64>,
    /// Quality for the class, if configured.
    pub quality: Option<f64>,
    /// Why it cannot serve this request.
    pub skipped: Option<String>,
}

/// The decision: route, strategy, every candidate, the choice and the fallbacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The router.
    pub router: String,
    /// The matched route; empty when no route takes the request's kind.
    pub route: String,
    /// Its strategy.
    pub strategy: &'static str,
    /// Every target of the route, in config order.
    pub candidates: Vec<Candidate>,
    /// Indexes into `candidates`: the chosen one first, then the fallback order.
    pub order: Vec<usize>,
}

impl Decision {
    /// The chosen candidate, if any can serve.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.order.first().map(|&i| &self.candidates[i])
    }
}

/// A seeded uniform generator in [0, 1) (64-bit LCG) for [`decide`]'s `rng`:
/// the same seed gives the same draws, so a decision can be replayed.
pub fn seeded_rng(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed | 1;
    move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks a target for `req` on `router`. `rng` returns uniform values in [0, 1).
pub fn decide(
    router: &RouterConfig,
    providers: &BTreeMap<String, ProviderConfig>,
    req: &RouteRequest<'_>,
    live: &dyn Live,
    rng: &mut dyn FnMut() -> f64,
) -> Decision {
    // Validation guarantees a catch-all last route for each kind a router takes.
    let route = router
        .routes
        .iter()
        .find(|r| r.matches(req.kind, req.class, req.task_type, req.tags));
    let Some(route) = route else {
        return Decision {
            router: router.name.clone(),
            route: String::new(),
            strategy: "none",
            candidates: Vec::new(),
            order: Vec::new(),
        };
    };
    let mut candidates: Vec<Candidate> = route
        .targets
        .iter()
        .map(|t| {
            let p = providers.get(&t.provider);
            let info = p.and_then(|p| p.models.get(&t.model));
            let cost_nanos = p.and_then(|p| p.prices.get(&t.model)).map(|price| {
                price.cost_of(
                    &TokenUsage {
                        input_tokens: req.input_tokens,
                        output_tokens: req.output_tokens,
                        ..TokenUsage::default()
                    },
                    req.units,
                )
            });
            let window = info.and_then(|i| i.context_window);
            let need = req.input_tokens + req.output_tokens;
            let serves = info.and_then(|i| i.serves.as_deref());
            let skipped = if let Some(s) = serves.filter(|s| !s.iter().any(|k| k == req.kind)) {
                Some(format!("serves {}, not {}", s.join(", "), req.kind))
            } else if let Some(why) = live.unhealthy(&t.provider, &t.model) {
                Some(why)
            } else if live.saturated(&t.provider) {
                Some("at its concurrency cap".to_owned())
            } else if let Some(w) = window.filter(|w| req.input_tokens > *w) {
                Some(format!(
                    "context window {w} < {} estimated prompt tokens",
                    req.input_tokens
                ))
            } else {
                window
                    .filter(|w| need > *w)
                    .map(|w| format!("context window {w} < {need} prompt and output tokens"))
            };
            Candidate {
                provider: t.provider.clone(),
                model: t.model.clone(),
                score: None,
                cost_nanos,
                latency_ms: live.latency_ms(&t.provider, &t.model),
                quality: req
                    .class
                    .and_then(|c| info.and_then(|i| i.quality.get(c).copied())),
                skipped,
            }
        })
        .collect();
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].skipped.is_none())
        .collect();
    let max_cost = eligible
        .iter()
        .filter_map(|&i| candidates[i].cost_nanos)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let max_lat = eligible
        .iter()
        .filter_map(|&i| candidates[i].latency_ms)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    for &i in &eligible {
        let c = &candidates[i];
        let score = match route.strategy {
            Strategy::Weighted => f64::from(route.targets[i].weight),
            // Unknown cost or latency ranks after every known one.
            Strategy::Cheapest => c.cost_nanos.map_or(f64::NEG_INFINITY, |n| -(n as f64)),
            Strategy::Fastest => c.latency_ms.map_or(f64::NEG_INFINITY, |l| -l),
            Strategy::Balanced => {
                let b = router.balance;
                let cost = c.cost_nanos.map_or(1.0, |n| n as f64 / max_cost);
                let lat = c.latency_ms.map_or(0.5, |l| l / max_lat);
                b.quality * c.quality.unwrap_or(0.5) - b.cost * cost - b.latency * lat
            }
        };
        candidates[i].score = Some(score);
    }
    let mut order = eligible.clone();
    // Best first; ties keep config order (stable sort).
    order.sort_by(|&a, &b| {
        let (sa, sb) = (
            candidates[a].score.unwrap_or(f64::NEG_INFINITY),
            candidates[b].score.unwrap_or(f64::NEG_INFINITY),
        );
        sb.total_cmp(&sa)
    });
    if route.strategy == Strategy::Weighted {
        // Draw the first by weight; the rest fall back in config order.
        let total: f64 = eligible
            .iter()
            .map(|&i| f64::from(route.targets[i].weight))
            .sum();
        if total > 0.0 {
            let mut x = rng() * total;
            let mut pick = eligible[0];
            for &i in &eligible {
                let w = f64::from(route.targets[i].weight);
                if w > 0.0 && x < w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            order = std::iter::once(pick)
                .chain(eligible.iter().copied().filter(|&i| i != pick))
                .collect();
        }
    }
    Decision {
        router: router.name.clone(),
        route: route.name.clone(),
        strategy: route.strategy.as_str(),
        candidates,
        order,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sy_config::{Config, MapEnv};

    const CONFIG: &str = r#"
[providers.cheap]
kind = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
[providers.cheap.prices."mini"]
input = "0.15"
output = "0.60"
[providers.cheap.models."mini"]
context_window = 1000
quality = { simple = 0.9, complex = 0.3 }

[providers.strong]
kind = "openai_compatible"
base_url = "http://127.0.0.1:2/v1"
[providers.strong.prices."big"]
input = "3"
output = "15"
[providers.strong.models."big"]
context_window = 200000
quality = { simple = 0.95, complex = 0.95 }

[routers.auto]
strategy = "balanced"
balance = { cost = 1, latency = 0, quality = 2 }
[[routers.auto.routes]]
name = "free-tier"
tags = { tier = "free" }
strategy = "cheapest"
targets = [{ provider = "cheap", model = "mini" }]
[[routers.auto.routes]]
name = "canary"
classes = ["code"]
strategy = "weighted"
targets = [{ provider = "cheap", model = "mini", weight = 95 }, { provider = "strong", model = "big", weight = 5 }]
[[routers.auto.routes]]
name = "cheap-first"
classes = ["simple"]
strategy = "cheapest"
targets = [{ provider = "strong", model = "big" }, { provider = "cheap", model = "mini" }]
[[routers.auto.routes]]
name = "fast"
task_types = ["chat"]
strategy = "fastest"
targets = [{ provider = "cheap", model = "mini" }, { provider = "strong", model = "big" }]
[[routers.auto.routes]]
name = "default"
targets = [{ provider = "cheap", model = "mini" }, { provider = "strong", model = "big" }]
"#;

    fn config() -> Config {
        Config::from_toml(CONFIG, &MapEnv::default()).unwrap()
    }

    fn req(class: &str) -> RouteRequest<'_> {
        RouteRequest {
            kind: "chat",
            class: Some(class),
            task_type: None,
            tags: &[],
            input_tokens: 100,
            output_tokens: 100,
            units: Units::default(),
        }
    }

    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        seeded_rng(seed)
    }

    struct Fake {
        down: &'static str,
        busy: &'static str,
        lat: [(&'static str, f64); 2],
    }

    impl Live for Fake {
        fn unhealthy(&self, p: &str, _: &str) -> Option<String> {
            (p == self.down).then(|| "unhealthy".to_owned())
        }
        fn saturated(&self, p: &str) -> bool {
            p == self.busy
        }
        fn latency_ms(&self, p: &str, _: &str) -> Option<f64> {
            self.lat.iter().find(|(q, _)| *q == p).map(|(_, l)| *l)
        }
    }

    fn chosen(d: &Decision) -> &str {
        &d.chosen().unwrap().provider
    }

    #[test]
    fn a_route_that_requires_a_tag_takes_only_requests_carrying_it() {
        let c = config();
        let r = &c.routers["auto"];
        let decide_with = |tags: &[(String, String)]| {
            let q = RouteRequest {
                tags,
                ..req("code")
            };
            decide(r, &c.providers, &q, &NoLive, &mut || 0.5).route
        };
        let free = [("tier".to_owned(), "free".to_owned())];
        assert_eq!(decide_with(&free), "free-tier");
        let pro = [("tier".to_owned(), "pro".to_owned())];
        assert_eq!(decide_with(&pro), "canary");
        assert_eq!(decide_with(&[]), "canary");
    }

    #[test]
    fn weighted_split_matches_the_weights() {
        let c = config();
        let r = &c.routers["auto"];
        let mut rng = lcg(7);
        let n = 100_000;
        let strong = (0..n)
            .filter(|_| {
                chosen(&decide(r, &c.providers, &req("code"), &NoLive, &mut rng)) == "strong"
            })
            .count();
        let share = strong as f64 / n as f64;
        assert!((share - 0.05).abs() < 0.005, "strong got {share}");
        // Same seed, same draws.
        let draws = |seed| {
            let mut g = lcg(seed);
            (0..50)
                .map(|_| decide(r, &c.providers, &req("code"), &NoLive, &mut g).order)
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(1), draws(1));
        assert_ne!(draws(1), draws(2));
    }

    #[test]
    fn cheapest_picks_the_lowest_estimated_cost_and_falls_back_by_cost() {
        let c = config();
        let d = decide(
            &c.routers["auto"],
            &c.providers,
            &req("simple"),
            &NoLive,
            &mut lcg(1),
        );
        assert_eq!((d.route.as_str(), d.strategy), ("cheap-first", "cheapest"));
        assert_eq!(chosen(&d), "cheap");
        assert_eq!(d.order, vec![1, 0]);
        // 100 in at $0.15/M + 100 out at $0.60/M = 75,000 nano-USD.
        assert_eq!(d.candidates[1].cost_nanos, Some(75_000));
    }

    #[test]
    fn fastest_uses_live_latency_and_task_type_matches() {
        let c = config();
        let live = Fake {
            down: "",
            busy: "",
            lat: [("cheap", 900.0), ("strong", 300.0)],
        };
        let mut r = req("medium");
        r.task_type = Some("chat");
        let d = decide(&c.routers["auto"], &c.providers, &r, &live, &mut lcg(1));
        assert_eq!((d.route.as_str(), chosen(&d)), ("fast", "strong"));
    }

    #[test]
    fn balanced_weighs_quality_against_cost() {
        let c = config();
        // complex: mini's quality 0.3 loses to big's 0.95 despite the cost.
        let d = decide(
            &c.routers["auto"],
            &c.providers,
            &req("complex"),
            &NoLive,
            &mut lcg(1),
        );
        assert_eq!(
            (d.route.as_str(), d.strategy, chosen(&d)),
            ("default", "balanced", "strong")
        );
        // medium: no quality configured (0.5 each): the cheaper wins.
        let d = decide(
            &c.routers["auto"],
            &c.providers,
            &req("medium"),
            &NoLive,
            &mut lcg(1),
        );
        assert_eq!(chosen(&d), "cheap");
    }

    #[test]
    fn unhealthy_saturated_and_too_small_targets_are_skipped_with_reasons() {
        let c = config();
        let r = &c.routers["auto"];
        let down = Fake {
            down: "cheap",
            busy: "",
            lat: [("", 0.0); 2],
        };
        let d = decide(r, &c.providers, &req("simple"), &down, &mut lcg(1));
        assert_eq!(d.candidates[1].skipped.as_deref(), Some("unhealthy"));
        assert_eq!((chosen(&d), d.order.len()), ("strong", 1));
        let busy = Fake {
            down: "",
            busy: "cheap",
            lat: [("", 0.0); 2],
        };
        let d = decide(r, &c.providers, &req("simple"), &busy, &mut lcg(1));
        assert_eq!(
            d.candidates[1].skipped.as_deref(),
            Some("at its concurrency cap")
        );
        let mut big = req("simple");
        big.input_tokens = 5000;
        let d = decide(r, &c.providers, &big, &NoLive, &mut lcg(1));
        assert!(
            d.candidates[1]
                .skipped
                .as_deref()
                .unwrap()
                .starts_with("context window 1000")
        );
        assert_eq!(chosen(&d), "strong");
        let all_down = Fake {
            down: "cheap",
            busy: "strong",
            lat: [("", 0.0); 2],
        };
        let d = decide(r, &c.providers, &req("simple"), &all_down, &mut lcg(1));
        assert!(d.chosen().is_none());
    }

    const MEDIA: &str = r#"
[providers.cheap.prices."draw-a"]
input = "0"
output = "0"
per_output_image = "0.04"
[providers.cheap.models."draw-a"]
serves = ["images"]
[providers.strong.prices."draw-b"]
per_output_image = "0.01"
input = "5"
output = "0"
[providers.strong.models."draw-b"]
serves = ["images"]
[providers.strong.models."say"]
serves = ["speech"]
[providers.cheap.models."talk"]
serves = ["chat"]

[routers."auto:media"]
strategy = "cheapest"
[[routers."auto:media".routes]]
name = "pictures"
kinds = ["images"]
targets = [{ provider = "cheap", model = "draw-a" }, { provider = "strong", model = "draw-b" }]
[[routers."auto:media".routes]]
name = "everything"
kinds = ["chat", "speech"]
targets = [{ provider = "cheap", model = "talk" }, { provider = "strong", model = "say" }]
"#;

    fn media() -> Config {
        Config::from_toml(&format!("{CONFIG}\n{MEDIA}"), &MapEnv::default()).unwrap()
    }

    #[test]
    fn a_request_of_another_kind_takes_the_first_route_of_its_kind_priced_per_unit() {
        let c = media();
        let r = &c.routers["auto:media"];
        // Four images: 4 × $0.04 against 4 × $0.01 + 10 prompt tokens at $5/M.
        let images = RouteRequest {
            kind: "images",
            class: None,
            input_tokens: 10,
            output_tokens: 0,
            units: Units {
                output_images: 4,
                ..Units::default()
            },
            ..req("simple")
        };
        let d = decide(r, &c.providers, &images, &NoLive, &mut lcg(1));
        assert_eq!((d.route.as_str(), chosen(&d)), ("pictures", "strong"));
        assert_eq!(d.candidates[0].cost_nanos, Some(160_000_000));
        assert_eq!(d.candidates[1].cost_nanos, Some(40_050_000));
        assert_eq!(d.order, vec![1, 0]);
        // A chat request never lands on the images route; in a route of
        // two kinds each request skips the target that does not serve it.
        let d = decide(r, &c.providers, &req("code"), &NoLive, &mut lcg(1));
        assert_eq!((d.route.as_str(), chosen(&d)), ("everything", "cheap"));
        assert_eq!(
            d.candidates[1].skipped.as_deref(),
            Some("serves speech, not chat")
        );
        assert_eq!(d.order, vec![0]);
        let speech = RouteRequest {
            kind: "speech",
            class: None,
            ..req("simple")
        };
        let d = decide(r, &c.providers, &speech, &NoLive, &mut lcg(1));
        assert_eq!((d.route.as_str(), chosen(&d)), ("everything", "strong"));
        assert_eq!(
            d.candidates[0].skipped.as_deref(),
            Some("serves chat, not speech")
        );
        // No route takes rerank requests: no route, no candidates.
        let rerank = RouteRequest {
            kind: "rerank",
            class: None,
            ..req("simple")
        };
        let d = decide(r, &c.providers, &rerank, &NoLive, &mut lcg(1));
        assert_eq!((d.route.as_str(), d.candidates.len()), ("", 0));
        assert!(d.chosen().is_none());
    }

    #[test]
    fn route_kinds_are_validated_against_classes_catch_alls_and_what_targets_serve() {
        let bad = |extra: &str| {
            Config::from_toml(&format!("{CONFIG}\n{MEDIA}\n{extra}"), &MapEnv::default())
                .unwrap_err()
                .to_string()
        };
        let one = |route: &str| bad(&format!("[routers.\"auto:z\"]\nroutes = [{route}]"));
        assert!(
            one(r#"{ name = "x", kinds = ["video"], targets = [{ provider = "cheap", model = "mini" }] }"#)
                .contains("kinds[0]: unknown; expected one of chat")
        );
        assert!(
            one(r#"{ name = "x", kinds = ["chat", "images"], classes = ["code"], targets = [{ provider = "cheap", model = "mini" }] }, { name = "y", kinds = ["chat", "images"], targets = [{ provider = "cheap", model = "mini" }] }"#)
                .contains("classes sort chat requests only")
        );
        assert!(
            one(r#"{ name = "x", kinds = ["images"], targets = [{ provider = "strong", model = "say" }] }"#)
                .contains("strong/say serves speech, none of the route's kinds (images)")
        );
        assert!(
            one(r#"{ name = "x", kinds = ["images", "speech"], targets = [{ provider = "strong", model = "say" }] }"#)
                .contains("no target of the route serves images requests")
        );
        // The last images route must take every images request, even when
        // a chat route follows it.
        let e = one(
            r#"{ name = "x", kinds = ["images"], tags = { tier = "free" }, targets = [{ provider = "cheap", model = "draw-a" }] }, { name = "y", targets = [{ provider = "cheap", model = "mini" }] }"#,
        );
        assert!(
            e.contains(
                "routes[0].classes: the last route taking images requests must match every one"
            ),
            "{e}"
        );
    }

    #[test]
    fn router_config_is_validated() {
        let bad = |extra: &str| {
            Config::from_toml(&format!("{CONFIG}\n{extra}"), &MapEnv::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[routers.cheapo]\nroutes = [{ name = \"x\", targets = [{ provider = \"cheap\", model = \"mini\" }] }]").contains("auto:<name>"));
        assert!(bad("[routers.\"auto:x\"]\nroutes = [{ name = \"x\", classes = [\"code\"], targets = [{ provider = \"cheap\", model = \"mini\" }] }]").contains("last route taking chat requests must match every one"));
        assert!(bad("[routers.\"auto:y\"]\nstrategy = \"luckiest\"\nroutes = [{ name = \"x\", targets = [{ provider = \"nope\", model = \"m\" }] }]").contains("no provider named"));
    }
}
