//! `[routers.*]` and per-model facts (`[providers.X.models."m"]`): what the
//! smart router reads. Validated here; selection lives in `sy-router`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

/// The request classes a route may match (the classifier's).
pub const CLASSES: [&str; 5] = ["simple", "medium", "complex", "code", "image"];

/// What an upstream model may be declared to serve (`serves`): `chat`
/// (Chat Completions, Messages and Responses, translated to its dialect),
/// `embeddings`, `rerank`, `images` (image generation) and
/// `transcriptions` (audio transcriptions and translations) and `speech`
/// (text to speech).
pub const SERVES: [&str; 6] = [
    "chat",
    "embeddings",
    "rerank",
    "images",
    "transcriptions",
    "speech",
];

/// `[providers.<p>.models."<m>"]`: facts about one upstream model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelInfo {
    /// Prompt + output tokens the model accepts.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// What it serves (of [`SERVES`]); not declared: chat.
    #[serde(default)]
    pub serves: Option<Vec<String>>,
    /// Quality per class, 0 to 1 (balanced strategy).
    #[serde(default)]
    pub quality: BTreeMap<String, f64>,
}

/// `[routers.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    /// Default strategy of its routes.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Weights of the balanced strategy.
    #[serde(default)]
    pub balance: Option<RawBalance>,
    /// Routes, first match wins; the last must match everything.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// "recover" (default) or "error", for streams that fail after output.
    #[serde(default)]
    pub mid_stream: Option<String>,
    /// A content refusal falls back to the next target (default false).
    #[serde(default)]
    pub fallback_on_refusal: bool,
    /// Watchdogs for this router's requests, overriding the targets'.
    #[serde(default)]
    pub ttft_timeout: Option<String>,
    /// See `ttft_timeout`.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// See `ttft_timeout`.
    #[serde(default)]
    pub response_timeout: Option<String>,
}

/// Weights over cost, latency and quality.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalance {
    /// Weight of (normalised) cost.
    #[serde(default = "one")]
    pub cost: f64,
    /// Weight of (normalised) latency.
    #[serde(default = "one")]
    pub latency: f64,
    /// Weight of quality.
    #[serde(default = "one")]
    pub quality: f64,
}

fn one() -> f64 {
    1.0
}

/// One route of a router.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Its name (in headers and usage rows).
    pub name: String,
    /// What requests it takes (of [`SERVES`]; none: chat).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Classes it matches (none: any; chat requests only).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Task types it matches (none: any).
    #[serde(default)]
    pub task_types: Vec<String>,
    /// Tags the request must carry, each with this value (none: any), e.g.
    /// `tags = { tier = "free" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Overrides the router's strategy.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Candidate targets; their order is the fallback order.
    pub targets: Vec<RawRouteTarget>,
}

/// A candidate target of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTarget {
    /// A provider entry.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// Share of traffic under the weighted strategy.
    #[serde(default = "weight_one")]
    pub weight: u32,
}

fn weight_one() -> u32 {
    1
}

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Random, in proportion to the weights (canary rollouts).
    Weighted,
    /// The lowest estimated cost for the request.
    Cheapest,
    /// The lowest live latency (time to first token).
    Fastest,
    /// The best weighted sum of quality, cost and latency.
    Balanced,
}

impl Strategy {
    /// Parses a config spelling.
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "weighted" => Strategy::Weighted,
            "cheapest" => Strategy::Cheapest,
            "fastest" => Strategy::Fastest,
            "balanced" => Strategy::Balanced,
            _ => return None,
        })
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::Cheapest => "cheapest",
            Strategy::Fastest => "fastest",
            Strategy::Balanced => "balanced",
        }
    }
}

/// Balanced-strategy weights, validated (each ≥ 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// Cost weight.
    pub cost: f64,
    /// Latency weight.
    pub latency: f64,
    /// Quality weight.
    pub quality: f64,
}

/// A validated router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// `auto` or `auto:<name>`: what clients put in `model`.
    pub name: String,
    /// Balanced-strategy weights.
    pub balance: Balance,
    /// Routes, first match wins; the last matches everything.
    pub routes: Vec<RouteConfig>,
    /// How its requests fail over.
    pub policy: crate::RoutePolicy,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Its name.
    pub name: String,
    /// What requests it takes (of [`SERVES`]: `chat`, `images`, …).
    pub kinds: Vec<String>,
    /// Classes matched (empty: any).
    pub classes: Vec<String>,
    /// Task types matched (empty: any).
    pub task_types: Vec<String>,
    /// Tags the request must carry with these values (empty: any).
    pub tags: Vec<(String, String)>,
    /// How it picks.
    pub strategy: Strategy,
    /// Candidates, in fallback order.
    pub targets: Vec<RouteTarget>,
}

impl RouteConfig {
    /// True when the route takes requests of `kind` (`chat`, `images`, …),
    /// `class` (chat requests have one), `task_type` that carry `tags`
    /// (sorted by key or not).
    pub fn matches(
        &self,
        kind: &str,
        class: Option<&str>,
        task_type: Option<&str>,
        tags: &[(String, String)],
    ) -> bool {
        self.kinds.iter().any(|k| k == kind)
            && (self.classes.is_empty()
                || class.is_some_and(|c| self.classes.iter().any(|x| x == c)))
            && (self.task_types.is_empty()
                || task_type.is_some_and(|t| self.task_types.iter().any(|x| x == t)))
            && self
                .tags
                .iter()
                .all(|(k, v)| tags.iter().any(|(tk, tv)| tk == k && tv == v))
    }
}

/// A validated candidate target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// Provider entry.
    pub provider: String,
    /// Upstream model.
    pub model: String,
    /// Weighted-strategy share.
    pub weight: u32,
}

/// Facts about one upstream model, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// Context window in tokens, if known.
    pub context_window: Option<u64>,
    /// What it serves (of [`SERVES`]), when declared.
    pub serves: Option<Vec<String>>,
    /// Quality per class, 0 to 1.
    pub quality: BTreeMap<String, f64>,
}

/// Validates the model facts of one provider entry.
pub(crate) fn model_infos(
    provider: &str,
    raw: BTreeMap<String, RawModelInfo>,
    e: &mut Vec<ConfigError>,
) -> BTreeMap<String, ModelInfo> {
    let mut out = BTreeMap::new();
    for (model, m) in raw {
        for (class, q) in &m.quality {
            let at = format!("providers.{provider}.models.\"{model}\".quality.{class}");
            if !CLASSES.contains(&class.as_str()) {
                e.push(ConfigError::new(
                    &at,
                    format!("unknown class; expected one of {}", CLASSES.join(", ")),
                ));
            }
            if !(0.0..=1.0).contains(q) {
                e.push(ConfigError::new(&at, "must be between 0 and 1"));
            }
        }
        for (i, what) in m.serves.iter().flatten().enumerate() {
            if !SERVES.contains(&what.as_str()) {
                e.push(ConfigError::new(
                    format!("providers.{provider}.models.\"{model}\".serves[{i}]"),
                    format!("unknown; expected one of {}", SERVES.join(", ")),
                ));
            }
        }
        if m.serves.as_ref().is_some_and(Vec::is_empty) {
            e.push(ConfigError::new(
                format!("providers.{provider}.models.\"{model}\".serves"),
                "must name at least one of what the model serves",
            ));
        }
        if m.context_window == Some(0) {
            e.push(ConfigError::new(
                format!("providers.{provider}.models.\"{model}\".context_window"),
                "must be at least 1",
            ));
        }
        out.insert(
            model,
            ModelInfo {
                context_window: m.context_window,
                serves: m.serves,
                quality: m.quality,
            },
        );
    }
    out
}

/// What a route takes: its `kinds`, or chat when it names none.
fn kinds_of(route: &RawRoute) -> Vec<String> {
    if route.kinds.is_empty() {
        vec!["chat".to_owned()]
    } else {
        let mut k: Vec<String> = Vec::new();
        for x in &route.kinds {
            if !k.contains(x) {
                k.push(x.clone());
            }
        }
        k
    }
}

/// Validates `[routers]` against the provider entries and what their
/// models are declared to serve.
pub(crate) fn routers(
    raw: BTreeMap<String, RawRouter>,
    providers: &BTreeMap<String, crate::ProviderConfig>,
    e: &mut Vec<ConfigError>,
) -> BTreeMap<String, RouterConfig> {
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let at = |f: &str| format!("routers.\"{name}\".{f}");
        if name != "auto" && name.strip_prefix("auto:").is_none_or(str::is_empty) {
            e.push(ConfigError::new(
                format!("routers.\"{name}\""),
                "a router is named \"auto\" or \"auto:<name>\" (what clients put in model)",
            ));
        }
        let strategy = |s: Option<&str>, path: String, e: &mut Vec<ConfigError>| match s {
            None => None,
            Some(s) => Strategy::parse(s).or_else(|| {
                e.push(ConfigError::new(
                    path,
                    "expected weighted, cheapest, fastest or balanced",
                ));
                None
            }),
        };
        let default =
            strategy(r.strategy.as_deref(), at("strategy"), e).unwrap_or(Strategy::Weighted);
        let balance = r.balance.map_or(
            Balance {
                cost: 1.0,
                latency: 1.0,
                quality: 1.0,
            },
            |b| Balance {
                cost: b.cost,
                latency: b.latency,
                quality: b.quality,
            },
        );
        if balance.cost < 0.0 || balance.latency < 0.0 || balance.quality < 0.0 {
            e.push(ConfigError::new(
                at("balance"),
                "weights must not be negative",
            ));
        }
        if r.routes.is_empty() {
            e.push(ConfigError::new(at("routes"), "needs at least one route"));
        }
        let policy = crate::validate::RawPolicy {
            mid_stream: r.mid_stream.as_deref(),
            fallback_on_refusal: r.fallback_on_refusal,
            ttft_timeout: r.ttft_timeout.as_deref(),
            idle_timeout: r.idle_timeout.as_deref(),
            response_timeout: r.response_timeout.as_deref(),
        }
        .validate(&format!("routers.\"{name}\""), e);
        let mut routes = Vec::new();
        // Per kind, the last route taking it (it must take every request).
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for (i, route) in r.routes.iter().enumerate() {
            for k in kinds_of(route) {
                last.insert(k, i);
            }
        }
        for (i, route) in r.routes.into_iter().enumerate() {
            let rat = |f: &str| format!("routers.\"{name}\".routes[{i}].{f}");
            let kinds = kinds_of(&route);
            for (j, k) in route.kinds.iter().enumerate() {
                if !SERVES.contains(&k.as_str()) {
                    e.push(ConfigError::new(
                        rat(&format!("kinds[{j}]")),
                        format!("unknown; expected one of {}", SERVES.join(", ")),
                    ));
                }
            }
            if !route.classes.is_empty() && kinds.iter().any(|k| k != "chat") {
                e.push(ConfigError::new(
                    rat("classes"),
                    "classes sort chat requests only; give the other kinds a route of their own",
                ));
            }
            for c in &route.classes {
                if !CLASSES.contains(&c.as_str()) {
                    e.push(ConfigError::new(
                        rat("classes"),
                        format!(
                            "unknown class \"{c}\"; expected one of {}",
                            CLASSES.join(", ")
                        ),
                    ));
                }
            }
            let catch_all =
                route.classes.is_empty() && route.task_types.is_empty() && route.tags.is_empty();
            for k in kinds.iter().filter(|k| last.get(*k) == Some(&i)) {
                if !catch_all {
                    e.push(ConfigError::new(
                        rat("classes"),
                        format!(
                            "the last route taking {k} requests must match every one (no classes, no task_types, no tags)"
                        ),
                    ));
                }
            }
            for (k, v) in &route.tags {
                if !sy_protocol::tag::valid_key(k) || !sy_protocol::tag::valid_value(v) {
                    e.push(ConfigError::new(
                        rat(&format!("tags.{k}")),
                        format!("tag {}", sy_protocol::tag::RULES),
                    ));
                }
            }
            let s = strategy(route.strategy.as_deref(), rat("strategy"), e).unwrap_or(default);
            if route.targets.is_empty() {
                e.push(ConfigError::new(
                    rat("targets"),
                    "needs at least one target",
                ));
            }
            // What each target is declared to serve (none declared: anything).
            let mut declared = Vec::new();
            for (j, t) in route.targets.iter().enumerate() {
                let Some(p) = providers.get(&t.provider) else {
                    e.push(ConfigError::new(
                        rat(&format!("targets[{j}].provider")),
                        format!("no provider named \"{}\" in [providers]", t.provider),
                    ));
                    continue;
                };
                let serves = p.models.get(&t.model).and_then(|m| m.serves.as_deref());
                if let Some(s) = serves
                    && !kinds.iter().any(|k| s.contains(k))
                {
                    e.push(ConfigError::new(
                        rat(&format!("targets[{j}]")),
                        format!(
                            "{}/{} serves {}, none of the route's kinds ({})",
                            t.provider,
                            t.model,
                            s.join(", "),
                            kinds.join(", ")
                        ),
                    ));
                }
                declared.push(serves);
            }
            for k in &kinds {
                if !declared.is_empty()
                    && declared.iter().all(|s| s.is_some_and(|s| !s.contains(k)))
                {
                    e.push(ConfigError::new(
                        rat("kinds"),
                        format!("no target of the route serves {k} requests"),
                    ));
                }
            }
            if s == Strategy::Weighted && route.targets.iter().all(|t| t.weight == 0) {
                e.push(ConfigError::new(
                    rat("targets"),
                    "weighted: at least one weight must be above 0",
                ));
            }
            routes.push(RouteConfig {
                name: route.name,
                kinds,
                classes: route.classes,
                task_types: route.task_types,
                tags: route.tags.into_iter().collect(),
                strategy: s,
                targets: route
                    .targets
                    .into_iter()
                    .map(|t| RouteTarget {
                        provider: t.provider,
                        model: t.model,
                        weight: t.weight,
                    })
                    .collect(),
            });
        }
        out.insert(
            name.clone(),
            RouterConfig {
                name: name.clone(),
                balance,
                routes,
                policy,
            },
        );
    }
    out
}
