//! Rate limits at admission (issue 17): every scope a request counts against
//! (its key, project and org, and their limits for the model asked for) is
//! checked and debited in one Redis call (`sy-limits`), after the request is
//! parsed, routed and built and before it is published; a busy key's
//! requests are admitted instead from the allowance this process took for
//! them ahead of time, with no Redis call (`sy_limits::allowance`,
//! docs/limits.md "Allowances"). A refusal is a 429
//! in the client's format naming the scope and the limit, with `Retry-After`;
//! an admitted request carries the rate-limit headers of its tightest scope,
//! holds a concurrency lease until it ends (renewed while it runs), and
//! carries its token reservation in the envelope for the accounting consumer
//! to settle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use sy_config::{Config, LimitSet, LimitsConfig};
use sy_control::keytable::DefaultLimits;
use sy_limits::allowance::{Allowances, Want};
use sy_limits::leases::LeaseBook;
use sy_limits::local::LocalLimiter;
use sy_limits::{Ask, Decision, Kind, Limiter, Limits, Remaining, Scope};
use sy_protocol::{ApiSurface, ErrorCode, LimitTicket, RequestEnvelope, now_unix_ms};

use crate::error::ApiError;
use crate::extract::Caller;
use crate::presence::Replicas;

/// Rate limits of one ingress process: the Redis connection (made in the
/// background, so a Redis that is down at start delays nothing), the local
/// fallback for while Redis is away, and what the config says about limits.
pub(crate) struct RateLimits {
    limiter: Arc<OnceLock<Limiter>>,
    /// Counts this process's share of each limit while Redis is away.
    local: Arc<LocalLimiter>,
    /// This process's leases in Redis (once Redis is connected).
    leases: OnceLock<Arc<LeaseBook>>,
    /// Busy keys' allowances (once Redis is connected; `[limits] allowances`).
    allowances: OnceLock<Arc<Allowances>>,
    /// This ingress (its allowances' ids).
    ingress_id: String,
    /// Admissions by path: from an allowance, by Redis, by the local share.
    admitted: [sy_telemetry::metrics::Counter; 3],
    /// Live ingress replicas (the shares' divisor).
    replicas: Arc<Replicas>,
    /// Since when Redis has not answered (Unix ms; 0: it answers).
    degraded_since_ms: Arc<AtomicU64>,
    /// A failed call is being checked with a `PING`.
    checking: Arc<std::sync::atomic::AtomicBool>,
    config: LimitsConfig,
    defaults: DefaultLimits,
    /// The config file's keys' limits, by key name (their own or the default).
    file_keys: HashMap<String, Limits>,
    /// Reconciliation runs (the accounting component has ClickHouse and the
    /// control plane): budgets wait for their org to be restored into Redis.
    require_ready: bool,
    /// What the config file's keys count under in Redis, as an org: one per
    /// deployment (its NATS namespace), its own hash slot.
    file_keys_org: String,
}

/// What admission took from the limits: the headers to answer with, the
/// lease the request holds while it runs, and its token reservation.
#[derive(Default)]
pub(crate) struct Granted {
    pub headroom: Headroom,
    pub lease: Option<Lease>,
    pub ticket: Option<LimitTicket>,
}

fn limits_of(l: LimitSet) -> Limits {
    Limits {
        rpm: l.rpm,
        tpm: l.tpm,
        concurrency: l.concurrency,
    }
}

impl RateLimits {
    /// The process's rate limits, when `[redis]` is configured: connected
    /// now, or (Redis away) retried in the background.
    pub(crate) async fn start(
        config: &Config,
        bus: &sy_bus::Bus,
        ingress_id: &str,
    ) -> Option<Arc<RateLimits>> {
        let redis = config.redis.as_ref()?;
        let c = &config.limits;
        let limiter = Limiter::connect_or_retry(redis.url.expose().to_owned()).await;
        let degraded_since_ms = Arc::new(AtomicU64::new(if limiter.get().is_some() {
            0
        } else {
            now_unix_ms()
        }));
        let limits = Arc::new(RateLimits {
            limiter,
            local: Arc::new(LocalLimiter::default()),
            leases: OnceLock::new(),
            allowances: OnceLock::new(),
            ingress_id: ingress_id.to_owned(),
            admitted: ["allowance", "redis", "local"].map(|path| {
                sy_telemetry::metrics::get()
                    .limit_admissions
                    .get_or_create(&[("path", path.to_owned())])
                    .clone()
            }),
            replicas: crate::presence::start(bus, ingress_id).await,
            degraded_since_ms,
            checking: Arc::default(),
            config: c.clone(),
            defaults: DefaultLimits {
                key: limits_of(c.default_key),
                project: limits_of(c.default_project),
                org: limits_of(c.default_org),
            },
            file_keys: config
                .keys
                .iter()
                .map(|k| (k.name.clone(), limits_of(k.limits.unwrap_or(c.default_key))))
                .collect(),
            file_keys_org: format!("config:{}", config.nats.namespace),
            require_ready: config.clickhouse.is_some()
                && config.postgres.is_some()
                && config.tenants.is_some(),
        });
        probe(&limits);
        Some(limits)
    }

    /// The scopes `caller`'s request for `model` counts against.
    fn scopes(&self, caller: &Caller, model: &str) -> Vec<Scope> {
        match &caller.grant {
            Some(g) => g.scopes(model, &self.defaults),
            None => match self.file_keys.get(&caller.key_id) {
                Some(l) if *l != Limits::default() => vec![Scope::of_org(
                    &self.file_keys_org,
                    "key",
                    &caller.key_id,
                    format!("key {}", caller.key_id),
                    *l,
                )],
                _ => Vec::new(),
            },
        }
    }

    /// Tokens a request reserves: the estimate of its input plus what it may
    /// write (`max_tokens`, or the configured default, for each of `n`).
    fn tokens_to_reserve(&self, env: &RequestEnvelope, body_len: usize) -> u32 {
        let input = if let Some(i) = &env.images {
            // The prompt, about four bytes a token, and what the images
            // may cost in output tokens where a provider bills them.
            i.prompt.len() as u64 / 4 + 1 + u64::from(i.count()) * IMAGE_OUTPUT_TOKENS_RESERVE
        } else if let Some(r) = &env.rerank {
            r.estimated_tokens()
        } else if env.embeddings.is_some() {
            // About four bytes a token; the body bounds the input from above.
            body_len as u64 / 4
        } else {
            crate::route::estimate_input_tokens(&env.request)
        };
        u32::try_from(input + u64::from(output_tokens(env, &self.config))).unwrap_or(u32::MAX)
    }

    /// The org `caller`'s requests count under in Redis.
    fn org_of(&self, caller: &Caller) -> String {
        match &caller.grant {
            Some(g) => g.owner.org_id.to_string(),
            None => self.file_keys_org.clone(),
        }
    }

    /// What a request may cost at most per input and per output token, and
    /// per request (its per-request and per-image prices): each at the
    /// dearest of its targets, priced and multiplied as admission fixed it
    /// in the envelope, as the worker will bill. Under a budget only priced
    /// targets are used: fallbacks without a price are dropped from the
    /// envelope; the first target without one is an error naming it.
    fn prices_of(env: &mut RequestEnvelope) -> Result<(f64, f64, i64), String> {
        let priced = |p: &Option<sy_protocol::Pricing>| {
            p.as_ref()
                .and_then(|p| p.price.map(|price| (price, p.multiplier_ppb)))
        };
        let Some(first) = priced(&env.pricing) else {
            return Err(format!("{}/{}", env.provider, env.upstream_model));
        };
        let before = env.fallback.len();
        env.fallback.retain(|t| priced(&t.pricing).is_some());
        if env.fallback.len() < before {
            tracing::debug!(
                dropped = before - env.fallback.len(),
                "Unpriced fallbacks dropped under a budget."
            );
        }
        // What admission fixed per target: nano-USD per million tokens and
        // per unit, and the multiplier in parts per billion (as the worker
        // bills).
        let images = env.request.image_count();
        // A rerank call's search units, as a provider that reports none is
        // billed (Cohere's rule; Cohere's own count is the same).
        let search_units = env
            .rerank
            .as_ref()
            .map_or(0, |r| r.estimated_search_units(4));
        let drawn = env.images.as_ref().map_or(0, |i| i64::from(i.count()));
        // Seconds of audio: more than it is, never less, for a budget.
        let heard = env
            .transcription
            .as_ref()
            .map_or(0, |t| i64::try_from(t.most_seconds()).unwrap_or(i64::MAX));
        let said = env
            .speech
            .as_ref()
            .map_or(0, |s| i64::try_from(s.characters()).unwrap_or(i64::MAX));
        let (mut input, mut output, mut fixed) = (0f64, 0f64, 0i64);
        let fallbacks = env.fallback.iter().filter_map(|t| priced(&t.pricing));
        for (p, multiplier) in std::iter::once(first).chain(fallbacks) {
            let m = multiplier as f64 / 1e9;
            let per_input = p.input.max(p.cache_write).max(p.cache_write_1h);
            input = input.max(per_input as f64 * m / 1e6);
            output = output.max(p.output.max(p.reasoning_output) as f64 * m / 1e6);
            let units = p
                .per_request
                .saturating_add(
                    p.per_image
                        .saturating_mul(i64::try_from(images).unwrap_or(0)),
                )
                .saturating_add(
                    p.per_search_unit
                        .saturating_mul(i64::try_from(search_units).unwrap_or(i64::MAX)),
                )
                .saturating_add(p.per_output_image.saturating_mul(drawn))
                .saturating_add(p.per_audio_second.saturating_mul(heard))
                .saturating_add(p.per_character.saturating_mul(said));
            fixed = fixed.max(sy_config::price::scale(units, multiplier));
        }
        Ok((input, output, fixed))
    }

    /// Checks and debits every scope of `caller`'s request, and reserves its
    /// largest cost against its budgets, in one round trip. A rate limit's
    /// refusal is a 429 naming the scope and the limit, a budget's a 402.
    /// While Redis cannot answer, this process counts its share of each rate
    /// limit itself, and a request under a budget is refused (never overspend).
    /// A request whose budgets cannot pay for its `max_tokens` may have it
    /// lowered (its project's choice) in `envelope`.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        envelope: &mut RequestEnvelope,
        body_len: usize,
        session: Option<&str>,
    ) -> Result<Granted, ApiError> {
        // A batch item is paced by its batch (`[batch]`), not by the key's
        // rate limits; its cost counts against the budgets like any request's.
        let scopes = match envelope.batch {
            None => self.scopes(caller, &envelope.model),
            Some(_) => Vec::new(),
        };
        let budgets = caller
            .grant
            .as_ref()
            .map(|g| {
                let mut b = g.budgets();
                b.extend(session.and_then(|s| g.session_budget(s)));
                b
            })
            .unwrap_or_default();
        if scopes.is_empty() && budgets.is_empty() {
            return Ok(Granted::default());
        }
        let request_id = envelope.request_id.to_string();
        let tokens = self.tokens_to_reserve(envelope, body_len);
        let ask = Ask {
            request_id: &request_id,
            tokens,
            lease_ms: self.config.lease.as_millis() as u64,
        };
        let limiter = match self.limiter.get() {
            Some(l) if !self.degraded() => {
                self.leases
                    .get_or_init(|| LeaseBook::start(l.clone(), self.config.lease));
                l
            }
            _ if !budgets.is_empty() => return Err(budgets_unavailable()),
            _ => return self.admit_locally(ask, scopes, envelope.api),
        };
        let org = self.org_of(caller);
        let output_tokens = output_tokens(envelope, &self.config);
        let spend = match budgets.is_empty() {
            true => None,
            false => {
                let (input_price, output_price, fixed) = Self::prices_of(envelope).map_err(|target| {
                    ApiError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "No price is configured for {target}: under a budget, only priced targets can be used."
                        ),
                    )
                })?;
                // An upper bound of the input, never an estimate: a token is
                // at least a byte, so the body's bytes bound every prompt.
                let input_tokens = u32::try_from(body_len).unwrap_or(u32::MAX);
                let hold_ms = envelope
                    .deadline_unix_ms
                    .saturating_sub(now_unix_ms())
                    .saturating_add(60_000);
                let input = input_price * f64::from(input_tokens) + fixed as f64;
                Some((input, output_price, hold_ms))
            }
        };
        let spend = spend.map(|(input, per_token, hold_ms)| sy_limits::Spend {
            org: &org,
            budgets: &budgets,
            input_nanos: input.ceil() as i64,
            output_token_nanos: per_token,
            output_tokens,
            // A batch item runs as asked or waits: it is not cut short
            // because others hold the budget for a moment.
            min_output_tokens: match envelope.batch.is_none()
                && caller.grant.as_ref().is_some_and(|g| g.lower_max_tokens)
            {
                true => MIN_LOWERED_OUTPUT_TOKENS,
                false => 0,
            },
            hold_ms,
            require_ready: self.require_ready,
        });
        if self.config.allowances
            && session.is_none()
            && envelope.batch.is_none()
            && let Some(book) = self.leases.get()
        {
            let allowances = self.allowances.get_or_init(|| {
                Allowances::start(
                    limiter.clone(),
                    book.clone(),
                    &self.ingress_id,
                    self.require_ready,
                )
            });
            let want = Want {
                tokens,
                money: spend.as_ref().map(|s| largest_cost(s, output_tokens)),
                hold_ms: spend.as_ref().map_or(0, |s| s.hold_ms),
                replicas: self.replicas.count(),
            };
            let set = format!("{}\u{0}{}", caller.key_id, envelope.model);
            if let Some(drawn) = allowances.draw(&set, &scopes, &budgets, &org, want) {
                let mut headroom = Headroom::of(&scopes, &drawn.remaining);
                if let Some((left, limit)) = drawn.budget
                    && left.saturating_mul(5) <= limit
                {
                    headroom.budget_left_nanos = Some(left.max(0));
                }
                self.admitted[0].inc();
                return Ok(Granted {
                    headroom,
                    lease: drawn.slot.map(Lease::Pool),
                    ticket: ticket(org, tokens, &scopes, &budgets, drawn.money),
                });
            }
        }
        let (decision, room) = match limiter.admit_spend(ask, &scopes, spend.as_ref()).await {
            Ok(d) => d,
            Err(e) => {
                self.suspect(limiter, e.to_string());
                if !budgets.is_empty() {
                    return Err(budgets_unavailable());
                }
                return self.admit_locally(ask, scopes, envelope.api);
            }
        };
        let remaining = match decision {
            Decision::Admitted(remaining) => remaining,
            Decision::Refused {
                scope,
                kind,
                retry_after_ms,
            } => {
                return Err(refusal(
                    envelope.api,
                    &scopes[scope],
                    kind,
                    retry_after_ms,
                    tokens,
                ));
            }
            Decision::NotReady => {
                return Err(ApiError {
                    retry_after_secs: Some(1),
                    ..ApiError::new(
                        ErrorCode::Overloaded,
                        "Budgets are being restored from the usage records; retry shortly.",
                    )
                });
            }
            Decision::OverBudget(over) => {
                let needs = spend.map_or(0, |s| largest_cost(&s, output_tokens));
                if envelope.batch.is_some()
                    && over.spent_nanos.saturating_add(needs) <= over.limit_nanos
                {
                    // What is spent leaves room: the item waits for the
                    // requests in flight to settle (the dispatcher sends it
                    // again), rather than fail.
                    return Err(ApiError::new(
                        ErrorCode::Overloaded,
                        "The budget is held by requests in flight; the item waits.",
                    ));
                }
                return Err(over_budget(&budgets[over.budget], &over, needs));
            }
        };
        self.admitted[1].inc();
        let mut headroom = Headroom::of(&scopes, &remaining);
        if let Some(room) = room {
            if room.output_tokens < output_tokens {
                lower_max_tokens(envelope, room.output_tokens);
                headroom.lowered_to = Some(room.output_tokens);
            }
            // Warn once 80 % of the tightest budget is used.
            if room.left_nanos.saturating_mul(5) <= room.limit_nanos {
                headroom.budget_left_nanos = Some(room.left_nanos.max(0));
            }
        }
        let ticket = ticket(org, tokens, &scopes, &budgets, None);
        let keys = sy_limits::lease_keys(&scopes);
        let lease = match (&keys[..], self.leases.get()) {
            ([], _) | (_, None) => None,
            (_, Some(book)) => {
                book.hold(&request_id, &keys);
                Some(Lease::Redis {
                    book: book.clone(),
                    request_id,
                    keys,
                })
            }
        };
        Ok(Granted {
            headroom,
            lease,
            ticket,
        })
    }

    /// Admission while Redis is away: this process's share of each limit
    /// (the limit ÷ live replicas), counted here. Nothing to settle.
    fn admit_locally(
        &self,
        ask: Ask<'_>,
        scopes: Vec<Scope>,
        surface: ApiSurface,
    ) -> Result<Granted, ApiError> {
        let replicas = self.replicas.count();
        match self.local.admit(ask, &scopes, replicas) {
            Decision::Admitted(remaining) => {
                self.admitted[2].inc();
                let shared: Vec<Scope> = scopes.iter().map(|s| shared(s, replicas)).collect();
                let leased: Vec<Scope> = scopes
                    .into_iter()
                    .filter(|s| s.limits.concurrency.is_some())
                    .collect();
                let lease = (!leased.is_empty()).then(|| Lease::Local {
                    local: self.local.clone(),
                    scopes: leased,
                });
                Ok(Granted {
                    headroom: Headroom::of(&shared, &remaining),
                    lease,
                    ticket: None,
                })
            }
            Decision::Refused {
                scope,
                kind,
                retry_after_ms,
            } => Err(refusal(
                surface,
                &shared(&scopes[scope], replicas),
                kind,
                retry_after_ms,
                ask.tokens,
            )),
            // The local counts hold no budget.
            Decision::OverBudget(_) | Decision::NotReady => Err(budgets_unavailable()),
        }
    }

    /// Whether Redis is away now (limits counted locally).
    /// Redis, unless it is known to be away (or has not answered yet).
    pub(crate) fn redis(&self) -> Option<&Limiter> {
        if self.degraded() {
            return None;
        }
        self.limiter.get()
    }

    pub(crate) fn degraded(&self) -> bool {
        self.degraded_since_ms.load(Ordering::Relaxed) != 0
    }

    /// `/readyz`'s word on limits: none when Redis answers.
    pub(crate) fn degraded_detail(&self) -> Option<String> {
        let since = self.degraded_since_ms.load(Ordering::Relaxed);
        (since != 0).then(|| {
            format!(
                "degraded: Redis has not answered for {} s; rate limits are counted by each of {} ingress replicas \
                 (each limit divided among them)",
                now_unix_ms().saturating_sub(since) / 1000,
                self.replicas.count()
            )
        })
    }

    /// Redis failed: count locally from now on until it answers a probe.
    fn degrade(&self, why: &str) {
        degrade(&self.degraded_since_ms, &self.replicas, why);
    }

    /// A call to Redis failed: this request is answered without it, and a
    /// `PING` says whether Redis is away (then every request is, until it
    /// answers again) or that one call was slow (a box short of CPU for a
    /// moment must not turn every budget away for a quarter of a second).
    fn suspect(&self, limiter: &Limiter, why: String) {
        if self.degraded() || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (limiter, since, replicas, checking) = (
            limiter.clone(),
            self.degraded_since_ms.clone(),
            self.replicas.clone(),
            self.checking.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = limiter.ping().await {
                degrade(&since, &replicas, &format!("{why}; then {e}"));
            } else {
                tracing::debug!(why, "One call to Redis failed; Redis answers.");
            }
            checking.store(false, Ordering::Release);
        });
    }

    /// Gives back what a request reserved but never used (it was not
    /// published): its tokens and its budgets' hold, off the request path.
    pub(crate) fn give_back(&self, request_id: uuid::Uuid, ticket: LimitTicket) {
        let Some(limiter) = self.limiter.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            let id = request_id.to_string();
            let settlement = sy_limits::Settlement {
                org: &ticket.org,
                request_id: &id,
                attempt_id: &format!("{id}-unpublished"),
                buckets: &ticket.buckets,
                reserved: ticket.reserved_tokens,
                used: 0,
                budgets: &ticket.budgets,
                billed_nanos: 0,
                allowance: ticket.allowance.as_ref().map(|(id, n)| (id.as_str(), *n)),
            };
            if let Err(e) = limiter.settle(settlement).await {
                tracing::debug!(error = %e, "Giving back an unpublished request's tokens failed.");
            }
        });
    }
}

/// Marks Redis as away (since now) unless it already is, and says so.
fn degrade(since: &AtomicU64, replicas: &Replicas, why: &str) {
    if since
        .compare_exchange(0, now_unix_ms(), Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        tracing::warn!(
            why,
            replicas = replicas.count(),
            "Redis cannot answer: rate limits are counted locally, each limit divided among the live ingress replicas."
        );
    }
}

/// The session a request names (`x-switchyard-session`), if any: 1 to 200
/// printable characters, else a 400.
pub(crate) fn session_of(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(sy_protocol::header::SESSION) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control) => Ok(Some(s)),
        _ => Err(ApiError::invalid(
            sy_protocol::header::SESSION,
            "The session must be 1 to 200 printable ASCII characters.",
        )),
    }
}

/// Output tokens an image may cost where a provider bills images in
/// tokens: gpt-image-1's largest (1536×1024, high quality) is 6,240.
const IMAGE_OUTPUT_TOKENS_RESERVE: u64 = 6_240;

/// The fewest output tokens a lowered `max_tokens` may leave; below that,
/// the request is refused instead.
const MIN_LOWERED_OUTPUT_TOKENS: u32 = 16;

/// Output tokens a request may write: `max_completion_tokens` or
/// `max_tokens`, or the configured default, for each of `n`; none for
/// embeddings and rerank.
fn output_tokens(env: &RequestEnvelope, config: &LimitsConfig) -> u32 {
    if env.embeddings.is_some()
        || env.rerank.is_some()
        || env.images.is_some()
        || env.transcription.is_some()
        || env.speech.is_some()
    {
        return 0;
    }
    let r = &env.request;
    let each = r
        .max_completion_tokens
        .or(r.max_tokens)
        .unwrap_or_else(|| config.reserve_output_for(&env.model));
    each.saturating_mul(r.n.unwrap_or(1).max(1))
}

/// Lowers a request's output limit to `tokens` in all (the field the client
/// used, `max_tokens` when it used none).
fn lower_max_tokens(env: &mut RequestEnvelope, tokens: u32) {
    let n = env.request.n.unwrap_or(1).max(1);
    let each = (tokens / n).max(1);
    let r = &mut env.request;
    if r.max_completion_tokens.is_some() {
        r.max_completion_tokens = Some(each);
    } else {
        r.max_tokens = Some(each);
    }
}

/// What a request may cost at most: its input's bound and every output
/// token it may write (as the admission script reckons it).
fn largest_cost(s: &sy_limits::Spend<'_>, output_tokens: u32) -> i64 {
    s.input_nanos + (s.output_token_nanos * f64::from(output_tokens)).ceil() as i64
}

/// What an admitted request carries for its settlement: its token
/// reservation in each token bucket, its budgets, and the allowance its
/// money was drawn from; none when there is nothing to settle.
fn ticket(
    org: String,
    tokens: u32,
    scopes: &[Scope],
    budgets: &[sy_limits::Budget],
    allowance: Option<(String, i64)>,
) -> Option<LimitTicket> {
    let buckets = sy_limits::token_buckets(scopes);
    (!buckets.is_empty() || !budgets.is_empty()).then(|| LimitTicket {
        org,
        reserved_tokens: tokens,
        buckets,
        budgets: budgets
            .iter()
            .map(|b| (b.key.clone(), b.period.as_code()))
            .collect(),
        allowance,
    })
}

/// Budgets cannot be checked (Redis away): refused, never overspent.
fn budgets_unavailable() -> ApiError {
    ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::Overloaded,
            "Budgets cannot be checked right now (their store is unreachable); retry shortly.",
        )
    }
}

/// A scope's kind from its Redis prefix (`sy:lim:{<org>}:<kind>:<id>`) as a
/// metric label: `key`, `project`, `org`, or a model's limit of one of them
/// (`key_model`, …); `other` for anything else.
fn scope_kind(prefix: &str) -> &'static str {
    let rest = prefix.split_once("}:").map_or(prefix, |(_, r)| r);
    match rest.split(':').next().unwrap_or("") {
        "key" => "key",
        "project" => "project",
        "org" => "org",
        "key-model" => "key_model",
        "project-model" => "project_model",
        "org-model" => "org_model",
        _ => "other",
    }
}

/// The 402 for a request `budget` cannot pay for (`needs` nano-USD at most).
fn over_budget(budget: &sy_limits::Budget, over: &sy_limits::OverBudget, needs: i64) -> ApiError {
    use sy_control::keytable::nanos_to_usd;
    let (period, label) = match budget.period {
        sy_limits::Period::Day => (" a day", "day"),
        sy_limits::Period::Month => (" a month", "month"),
        sy_limits::Period::None => ("", "none"),
        sy_limits::Period::Session => (" for the session", "session"),
    };
    let label = if budget.key.contains(":balance:") {
        "balance"
    } else {
        label
    };
    sy_telemetry::metrics::get()
        .budget_refusals
        .get_or_create(&[("budget", label.to_owned())])
        .inc();
    let resets = over.resets_unix_s.map_or_else(String::new, |s| {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(s);
        format!(
            " It starts again at {}.",
            humantime::format_rfc3339_seconds(at)
        )
    });
    if budget.key.contains(":balance:") {
        return ApiError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "Not enough prepaid balance in {}: ${} left, ${} of it held by requests in flight; \
                 this request may cost up to ${}. Top up to continue.",
                budget.name.trim_start_matches("the prepaid balance of "),
                nanos_to_usd(over.limit_nanos - over.spent_nanos),
                nanos_to_usd(over.held_nanos),
                nanos_to_usd(needs),
            ),
        );
    }
    ApiError::new(
        ErrorCode::BudgetExceeded,
        format!(
            "Budget exceeded for {}: ${}{period}, ${} spent, ${} held by requests in flight; this request may cost up to ${}.{resets}",
            budget.name,
            nanos_to_usd(over.limit_nanos),
            nanos_to_usd(over.spent_nanos),
            nanos_to_usd(over.held_nanos),
            nanos_to_usd(needs),
        ),
    )
}

/// `scope` as this replica counts it while Redis is away: each limit its share.
fn shared(scope: &Scope, replicas: u32) -> Scope {
    let l = scope.limits;
    let part = |v: Option<u32>| v.map(|v| sy_limits::local::share(v, replicas));
    Scope {
        limits: Limits {
            rpm: part(l.rpm),
            tpm: part(l.tpm),
            concurrency: part(l.concurrency),
        },
        ..scope.clone()
    }
}

/// Asks Redis whether it answers: every second while it does (so an idle
/// replica notices an outage too), every 250 ms while it does not. When it
/// answers again, Redis counts again (the local buckets are forgotten). Ends
/// when the rate limits are dropped.
fn probe(limits: &Arc<RateLimits>) {
    let weak = Arc::downgrade(limits);
    tokio::spawn(async move {
        loop {
            let degraded = match weak.upgrade() {
                Some(l) => l.degraded(),
                None => return,
            };
            let pause = if degraded { 250 } else { 1000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let Some(l) = weak.upgrade() else { return };
            let Some(limiter) = l.limiter.get().cloned() else {
                continue;
            };
            match (limiter.ping().await, l.degraded()) {
                (Ok(()), true) => {
                    l.local.forget_rates();
                    l.degraded_since_ms.store(0, Ordering::Relaxed);
                    tracing::info!("Redis answers again: rate limits are counted there.");
                }
                (Err(e), false) => l.degrade(&e.to_string()),
                _ => {}
            }
        }
    });
}

/// The 429 for a request refused by `scope`'s `kind` limit.
fn refusal(
    surface: ApiSurface,
    scope: &Scope,
    kind: Kind,
    retry_after_ms: Option<u64>,
    tokens: u32,
) -> ApiError {
    let l = scope.limits;
    let (what, limit, label) = match kind {
        Kind::Requests => ("requests per minute", l.rpm, "requests"),
        Kind::Tokens => ("tokens per minute", l.tpm, "tokens"),
        Kind::Concurrency => ("requests in flight", l.concurrency, "concurrency"),
    };
    sy_telemetry::metrics::get()
        .limit_refusals
        .get_or_create(&[
            ("scope", scope_kind(&scope.prefix).to_owned()),
            ("limit", label.to_owned()),
        ])
        .inc();
    let limit = limit.unwrap_or(0);
    let Some(ms) = retry_after_ms else {
        // Larger than a minute's tokens: waiting does not help.
        return ApiError {
            param: Some("max_tokens".into()),
            ..ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "This request needs about {tokens} tokens, more than the {limit} {what} the {} allows: \
                     lower max_tokens or shorten the input.",
                    scope.name
                ),
            )
        };
    };
    let secs = ms.div_ceil(1000).max(1);
    let mut headers = vec![(
        HeaderName::from_static("retry-after-ms"),
        HeaderValue::from(ms),
    )];
    // The refusing limit's headers: nothing left until it resets.
    let empty = Some((limit, 0, ms));
    let room = match kind {
        Kind::Requests => Headroom {
            requests: empty,
            ..Headroom::default()
        },
        Kind::Tokens => Headroom {
            tokens: empty,
            ..Headroom::default()
        },
        Kind::Concurrency => Headroom::default(),
    };
    headers.extend(room.headers(surface));
    ApiError {
        retry_after_secs: Some(secs),
        headers,
        ..ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "Rate limit reached for {}: {limit} {what}. Retry in {:.1} s.",
                scope.name,
                ms as f64 / 1000.0
            ),
        )
    }
}

/// OpenAI's rate-limit headers: limit, remaining, reset, for requests then tokens.
static OPENAI_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// Anthropic's, in the same order.
static ANTHROPIC_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
];

/// The rate-limit headers of an admitted request: for requests and for
/// tokens, the scope with the least left (where one has such a limit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Headroom {
    /// Limit, remaining, and ms until the bucket is full again.
    pub requests: Option<(u32, u32, u64)>,
    pub tokens: Option<(u32, u32, u64)>,
    /// What the tightest budget has left, once 80 % of it is used.
    pub budget_left_nanos: Option<i64>,
    /// The output limit the budgets lowered the request to.
    pub lowered_to: Option<u32>,
}

impl Headroom {
    fn of(scopes: &[Scope], remaining: &[Remaining]) -> Headroom {
        let mut h = Headroom::default();
        let tighter = |cur: Option<(u32, u32, u64)>, new: (u32, u32, u64)| match cur {
            Some(c) if c.1 <= new.1 => Some(c),
            _ => Some(new),
        };
        for (s, r) in scopes.iter().zip(remaining) {
            if let (Some(limit), Some(left)) = (s.limits.rpm, r.requests) {
                h.requests = tighter(h.requests, (limit, left, r.requests_reset_ms));
            }
            if let (Some(limit), Some(left)) = (s.limits.tpm, r.tokens) {
                h.tokens = tighter(h.tokens, (limit, left, r.tokens_reset_ms));
            }
        }
        h
    }

    /// The headers in `surface`'s convention: OpenAI's `x-ratelimit-*`
    /// (resets as durations like `6m0s`), or Anthropic's
    /// `anthropic-ratelimit-*` on `/v1/messages` (resets as RFC 3339 times).
    pub(crate) fn headers(&self, surface: ApiSurface) -> Vec<(HeaderName, HeaderValue)> {
        let anthropic = surface == ApiSurface::Messages;
        let mut out = Vec::with_capacity(8);
        let names = if anthropic {
            &ANTHROPIC_HEADERS
        } else {
            &OPENAI_HEADERS
        };
        for (names, v) in names.iter().zip([self.requests, self.tokens]) {
            let Some((limit, left, reset_ms)) = v else {
                continue;
            };
            let reset = if anthropic {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(now_unix_ms() + reset_ms);
                humantime::format_rfc3339_seconds(at).to_string()
            } else {
                go_duration(reset_ms)
            };
            let values = [
                HeaderValue::from(limit),
                HeaderValue::from(left),
                HeaderValue::from_str(&reset).unwrap_or(HeaderValue::from_static("0s")),
            ];
            for (name, value) in names.iter().zip(values) {
                out.push((name.clone(), value));
            }
        }
        if let Some(left) = self.budget_left_nanos
            && let Ok(v) = HeaderValue::from_str(&sy_control::keytable::nanos_to_usd(left))
        {
            out.push((HeaderName::from_static("x-switchyard-budget-remaining"), v));
        }
        if let Some(n) = self.lowered_to {
            out.push((
                HeaderName::from_static("x-switchyard-max-tokens-lowered"),
                HeaderValue::from(n),
            ));
        }
        out
    }

    /// Adds [`Headroom::headers`] to a response's.
    pub(crate) fn apply(&self, surface: ApiSurface, headers: &mut axum::http::HeaderMap) {
        let these = self.headers(surface);
        headers.reserve(these.len());
        for (name, value) in these {
            headers.insert(name, value);
        }
    }
}

/// A duration as OpenAI's reset headers write it (Go's format): `20ms`,
/// `1s`, `1.5s`, `6m0s`, `1m30.25s`.
pub(crate) fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (mins, secs, frac) = (ms / 60_000, (ms / 1000) % 60, ms % 1000);
    let secs = if frac == 0 {
        secs.to_string()
    } else {
        let f = format!("{frac:03}");
        format!("{secs}.{}", f.trim_end_matches('0'))
    };
    if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// A request's concurrency leases: in Redis (renewed with every live lease
/// of the process while it runs, released with the next batch when it is
/// dropped: on every ending, answered, failed, cancelled or timed out; if
/// the process dies, they expire by themselves); or, while Redis is away,
/// this process's in-flight slots, given back when dropped.
pub(crate) enum Lease {
    Redis {
        book: Arc<LeaseBook>,
        request_id: String,
        keys: Vec<String>,
    },
    Local {
        local: Arc<LocalLimiter>,
        scopes: Vec<Scope>,
    },
    /// A slot of the pool its allowance's process holds (given back to the
    /// pool when dropped).
    Pool(#[allow(dead_code)] sy_limits::allowance::Slot),
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self {
            Lease::Redis {
                book,
                request_id,
                keys,
            } => book.end(request_id, keys),
            Lease::Local { local, scopes } => local.release(scopes),
            Lease::Pool(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_written_as_openai_writes_them() {
        assert_eq!(go_duration(20), "20ms");
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(90_250), "1m30.25s");
    }

    #[test]
    fn a_scopes_kind_is_a_closed_label() {
        let of =
            |kind: &str, id: &str| Scope::of_org("o1", kind, id, String::new(), Limits::default());
        assert_eq!(scope_kind(&of("key", "k1").prefix), "key");
        assert_eq!(
            scope_kind(&of("org-model", "o1:gpt-4o").prefix),
            "org_model"
        );
        assert_eq!(scope_kind(&of("team", "t").prefix), "other");
        assert_eq!(scope_kind("garbage"), "other");
    }

    fn scope(rpm: Option<u32>, tpm: Option<u32>) -> Scope {
        Scope::of_org(
            "o",
            "key",
            "k",
            "key k".into(),
            Limits {
                rpm,
                tpm,
                concurrency: None,
            },
        )
    }

    #[test]
    fn the_headers_name_the_tightest_scope_of_each_kind() {
        let scopes = [scope(Some(100), None), scope(Some(1000), Some(5000))];
        let remaining = [
            Remaining {
                requests: Some(40),
                requests_reset_ms: 36_000,
                tokens: None,
                tokens_reset_ms: 0,
            },
            Remaining {
                requests: Some(900),
                requests_reset_ms: 6_000,
                tokens: Some(4000),
                tokens_reset_ms: 12_000,
            },
        ];
        let h = Headroom::of(&scopes, &remaining);
        assert_eq!(h.requests, Some((100, 40, 36_000)));
        assert_eq!(h.tokens, Some((5000, 4000, 12_000)));
        let mut openai = axum::http::HeaderMap::new();
        h.apply(ApiSurface::ChatCompletions, &mut openai);
        assert_eq!(openai["x-ratelimit-limit-requests"], "100");
        assert_eq!(openai["x-ratelimit-remaining-requests"], "40");
        assert_eq!(openai["x-ratelimit-reset-requests"], "36s");
        assert_eq!(openai["x-ratelimit-reset-tokens"], "12s");
        let mut anthropic = axum::http::HeaderMap::new();
        h.apply(ApiSurface::Messages, &mut anthropic);
        assert_eq!(anthropic["anthropic-ratelimit-tokens-remaining"], "4000");
        let reset = anthropic["anthropic-ratelimit-requests-reset"]
            .to_str()
            .unwrap();
        let at = humantime::parse_rfc3339(reset).unwrap();
        let in_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(in_ms.abs_diff(now_unix_ms() + 36_000) <= 1_000, "{reset}");
        assert!(!anthropic.contains_key("x-ratelimit-limit-requests"));
    }

    #[test]
    fn a_refusal_names_the_scope_and_the_limit_and_when_to_retry() {
        let s = scope(Some(100), None);
        let e = refusal(
            ApiSurface::ChatCompletions,
            &s,
            Kind::Requests,
            Some(1_200),
            10,
        );
        assert_eq!(e.status.as_u16(), 429);
        assert_eq!(e.retry_after_secs, Some(2));
        let header = |name: &str| {
            e.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(header("retry-after-ms").as_deref(), Some("1200"));
        assert_eq!(
            header("x-ratelimit-remaining-requests").as_deref(),
            Some("0")
        );
        assert_eq!(
            header("x-ratelimit-reset-requests").as_deref(),
            Some("1.2s")
        );
        assert!(
            e.message.contains("key k") && e.message.contains("100 requests per minute"),
            "{}",
            e.message
        );
        let never = refusal(
            ApiSurface::Messages,
            &scope(None, Some(50)),
            Kind::Tokens,
            None,
            80,
        );
        assert_eq!(never.retry_after_secs, None);
        assert!(never.message.contains("80 tokens"), "{}", never.message);
    }
}
