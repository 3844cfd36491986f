//! `[cache]`: the exact response cache (docs/cache.md). Entries live in
//! Redis, keyed per org; a model, a router, a project or a request turns
//! caching on, and a request can always bypass it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// `[cache]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// The store is on (it needs `[redis]`).
    pub enabled: bool,
    /// How long an entry lives unless the request asks for less.
    pub ttl: String,
    /// The longest lifetime a request may ask for (`ttl=<seconds>`).
    pub max_ttl: String,
    /// Models and routers (the names clients use) cached by default.
    pub models: Vec<String>,
    /// Projects of one org share entries (else each project has its own).
    pub share_across_projects: bool,
    /// Answers to requests with a higher temperature are not stored unless
    /// the request opts in (`any-temperature`); an unset temperature counts
    /// as 1.
    pub max_temperature: f64,
    /// Store answers cut by `max_tokens` (`finish_reason: length`).
    pub store_length: bool,
    /// Store answers that call tools.
    pub store_tool_calls: bool,
    /// The largest answer stored, bytes.
    pub max_entry_bytes: usize,
    /// What a hit is billed, as a fraction of what the request would have
    /// been billed had it gone to the provider, for orgs whose plan says
    /// nothing (a decimal like "0.1"; default "0": hits are free).
    pub hit_multiplier: String,
    /// Entries kept in each ingress's memory in front of Redis (0: none).
    pub memory_entries: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            enabled: false,
            ttl: "1h".into(),
            max_ttl: "24h".into(),
            models: Vec::new(),
            share_across_projects: false,
            max_temperature: 1.0,
            store_length: false,
            store_tool_calls: false,
            max_entry_bytes: 256 * 1024,
            hit_multiplier: "0".into(),
            memory_entries: 0,
        }
    }
}

/// `[cache]`, validated.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// An entry's lifetime unless the request asks for less.
    pub ttl: Duration,
    /// The longest lifetime a request may ask for.
    pub max_ttl: Duration,
    /// Models and routers cached by default.
    pub models: BTreeSet<String>,
    /// Projects of one org share entries.
    pub share_across_projects: bool,
    /// See [`RawCache::max_temperature`].
    pub max_temperature: f64,
    /// See [`RawCache::store_length`].
    pub store_length: bool,
    /// See [`RawCache::store_tool_calls`].
    pub store_tool_calls: bool,
    /// The largest answer stored, bytes.
    pub max_entry_bytes: usize,
    /// What a hit is billed over a miss's price, parts per billion.
    pub hit_multiplier_ppb: i64,
    /// Entries kept in each ingress's memory in front of Redis.
    pub memory_entries: usize,
}

/// Largest entry the cache keeps (a Redis value can be larger; an answer
/// this long is rarely asked twice).
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

/// `[cache]`, checked: on only with `[redis]`, names that exist, bounds that
/// hold. None when off.
pub(crate) fn cache_config(
    e: &mut Vec<ConfigError>,
    raw: RawCache,
    has_redis: bool,
    known: &dyn Fn(&str) -> bool,
) -> Option<CacheConfig> {
    if !raw.enabled {
        return None;
    }
    if !has_redis {
        e.push(ConfigError::new(
            "cache.enabled",
            "the response cache needs [redis]: every ingress replica shares its entries",
        ));
    }
    let ttl = crate::validate::duration("cache.ttl", &raw.ttl, e);
    let max_ttl = crate::validate::duration("cache.max_ttl", &raw.max_ttl, e);
    if ttl > max_ttl {
        e.push(ConfigError::new(
            "cache.ttl",
            "must not be longer than cache.max_ttl",
        ));
    }
    for m in &raw.models {
        if !known(m) {
            e.push(ConfigError::new(
                format!("cache.models.{m}"),
                "names no model or router",
            ));
        }
    }
    if !(0.0..=2.0).contains(&raw.max_temperature) {
        e.push(ConfigError::new("cache.max_temperature", "must be 0 to 2"));
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > MAX_ENTRY_BYTES {
        e.push(ConfigError::new(
            "cache.max_entry_bytes",
            format!("must be from 1 to {MAX_ENTRY_BYTES}"),
        ));
    }
    let hit_multiplier_ppb = match crate::price::parse_nanos(&raw.hit_multiplier) {
        Some(n) if n >= 0 => n,
        _ => {
            e.push(ConfigError::new(
                "cache.hit_multiplier",
                "must be a non-negative decimal like \"0\" or \"0.1\"",
            ));
            0
        }
    };
    if raw.memory_entries > 1_000_000 {
        e.push(ConfigError::new(
            "cache.memory_entries",
            "must be at most 1000000",
        ));
    }
    Some(CacheConfig {
        ttl,
        max_ttl,
        models: raw.models.into_iter().collect(),
        share_across_projects: raw.share_across_projects,
        max_temperature: raw.max_temperature,
        store_length: raw.store_length,
        store_tool_calls: raw.store_tool_calls,
        max_entry_bytes: raw.max_entry_bytes,
        hit_multiplier_ppb,
        memory_entries: raw.memory_entries,
    })
}
