//! Rate limits shared by every ingress replica, in Redis (issue 17): the
//! engine the ingress's admission calls and the accounting consumer settles
//! with (docs/limits.md).
//!
//! A request is checked against every **scope** that applies to it (its key,
//! project, org, and each of their per-model limits) in **one** Redis call, a
//! server-side script, all or nothing: a request refused by one scope takes
//! nothing from the others. Time is the Redis server's (`TIME`), never the
//! ingress's, so replicas with skewed clocks count alike.
//!
//! - **Requests and tokens per minute** are GCRA buckets over a one-minute
//!   window: a full minute's worth may come at once, then the allowance
//!   refills continuously. Tokens are reserved at admission (estimated input
//!   plus `max_tokens`) and [`Limiter::settle`] moves the bucket to what was
//!   really used, once per request id (a redelivered usage event does not
//!   settle twice).
//! - **Concurrency** is a set of leases (request id → expiry): a request holds
//!   one while it runs, [`Limiter::renew`] extends it while it streams,
//!   [`Limiter::release`] ends it, and a lease whose process died expires by
//!   itself, so no key stays stuck at its limit.
//!
//! Keys of one org share a Redis Cluster hash slot (`{<org>}`), so the script
//! may touch all of a request's scopes.

pub mod allowance;
pub mod cache;
mod direct;
pub mod leases;
pub mod local;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use redis::Script;
use redis::aio::ConnectionManager;

/// How long connecting to Redis may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long one call to Redis may take before it counts as failed.
pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// Why the limiter could not answer (Redis away or refusing).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LimitError(#[from] redis::RedisError);

/// Limits of one scope; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
}

/// One scope a request counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// What the client is told, e.g. `key sy_live_ab12…` or `org 0193… model gpt-4o`.
    pub name: String,
    /// The Redis key prefix of its buckets, e.g. `sy:lim:{<org>}:key:<id>`.
    pub prefix: String,
    /// Its limits.
    pub limits: Limits,
}

impl Scope {
    /// A scope of `org` (every scope of an org shares its hash slot), named
    /// `kind`/`id` (`key`, `project`, `org`, each optionally `…:model:<m>`).
    pub fn of_org(org: &str, kind: &str, id: &str, name: String, limits: Limits) -> Self {
        Scope {
            name,
            prefix: format!("sy:lim:{{{org}}}:{kind}:{id}"),
            limits,
        }
    }

    /// Its buckets (request and token TATs in one string) and its lease set.
    fn keys(&self) -> [String; 2] {
        [
            format!("{}:rt", self.prefix),
            format!("{}:conc", self.prefix),
        ]
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Requests in flight.
    Concurrency,
}

/// What one scope has left after an admission (for the rate-limit headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Requests left this minute (none: no request limit).
    pub requests: Option<u32>,
    /// Until the request bucket is full again, ms.
    pub requests_reset_ms: u64,
    /// Tokens left this minute (none: no token limit).
    pub tokens: Option<u32>,
    /// Until the token bucket is full again, ms.
    pub tokens_reset_ms: u64,
}

/// The limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: every scope was debited. What each has left, in scope order.
    Admitted(Vec<Remaining>),
    /// Refused by a budget; nothing was taken.
    OverBudget(OverBudget),
    /// The org's budgets are not restored into Redis yet (after a data
    /// loss); nothing was taken.
    NotReady,
    /// Refused by the scope at `scope` (its index); nothing was taken.
    Refused {
        /// Which scope (index into the scopes given).
        scope: usize,
        /// Which of its limits.
        kind: Kind,
        /// When to try again, ms (none: never: the request alone is larger
        /// than a minute's tokens).
        retry_after_ms: Option<u64>,
    },
}

/// How often a budget starts again (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// Never: a total.
    #[default]
    None,
    /// Every UTC day.
    Day,
    /// Every UTC calendar month.
    Month,
    /// A session's: no period; forgotten a day after its last request.
    Session,
}

impl Period {
    fn code(self) -> u8 {
        match self {
            Period::None => 0,
            Period::Day => 1,
            Period::Month => 2,
            Period::Session => 3,
        }
    }

    /// From the code the ticket carries (0 none, 1 day, 2 month).
    pub fn from_code(c: u8) -> Period {
        match c {
            1 => Period::Day,
            2 => Period::Month,
            3 => Period::Session,
            _ => Period::None,
        }
    }

    /// The code the ticket carries.
    pub fn as_code(self) -> u8 {
        self.code()
    }

    /// The period holding Unix second `secs`: its id as the scripts name it
    /// (`d<day>`, `m<year × 12 + month − 1>`, `all`) and its first second.
    pub fn at(self, secs: u64) -> (String, u64) {
        let day = secs / 86_400;
        match self {
            Period::None | Period::Session => ("all".to_owned(), 0),
            Period::Day => (format!("d{day}"), day * 86_400),
            Period::Month => {
                let (y, m) = civil(day as i64);
                let first = days_from_civil(y, m) as u64 * 86_400;
                (format!("m{}", y * 12 + m - 1), first)
            }
        }
    }
}

/// The (year, month) of Unix second `secs`, UTC (proleptic Gregorian).
pub fn year_month(secs: u64) -> (i64, i64) {
    civil((secs / 86_400) as i64)
}

/// Days since 1970-01-01 to (year, month) (proleptic Gregorian).
fn civil(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// The first day of `y`-`m`, as days since 1970-01-01.
fn days_from_civil(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A spending cap of one scope (an org, a project or a key) in nano-USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// What the client is told, e.g. `project 0193…`.
    pub name: String,
    /// Its Redis hash (`sy:bud:{<org>}:<kind>:<id>`): the period, what was
    /// spent in it, what requests in flight hold.
    pub key: String,
    /// The cap, nano-USD.
    pub limit_nanos: i64,
    /// When it starts again.
    pub period: Period,
}

impl Budget {
    /// The budget of `org`'s `kind` `id` (same hash slot as its rate scopes).
    pub fn of_org(org: &str, kind: &str, id: &str, limit_nanos: i64, period: Period) -> Self {
        Budget {
            name: format!("{kind} {id}"),
            key: format!("sy:bud:{{{org}}}:{kind}:{id}"),
            limit_nanos,
            period,
        }
    }
}

/// What a request may spend: its largest cost, reserved against every budget
/// that applies.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// The org (whose reservations these are).
    pub org: &'a str,
    /// Every budget that applies.
    pub budgets: &'a [Budget],
    /// The input's cost, nano-USD (estimate, at the dearest target).
    pub input_nanos: i64,
    /// The cost of one output token, nano-USD (at the dearest target).
    pub output_token_nanos: f64,
    /// Output tokens asked for (`max_tokens`, or the reservation default).
    pub output_tokens: u32,
    /// Fewest output tokens worth lowering `max_tokens` to when the budget
    /// cannot pay for all (0: never lower: refuse).
    pub min_output_tokens: u32,
    /// How long the reservation holds before the sweeper gives it back.
    pub hold_ms: u64,
    /// Refuse (as [`Decision::NotReady`]) until a reconciliation round has
    /// restored the org's budgets into this Redis (see [`ready_key`]).
    pub require_ready: bool,
}

/// The marker a reconciliation round sets once it has restored `org`'s
/// budgets into Redis (a Redis that lost its data has none).
pub fn ready_key(org: &str) -> String {
    format!("sy:bud:{{{org}}}:ready")
}

/// The marker set at the end of every reconciliation round: a Redis without
/// it lost its data (or was never reconciled).
pub const RECONCILED_KEY: &str = "sy:bud:reconciled";

/// A request admitted within its budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRoom {
    /// Output tokens it may write (lower than asked when lowered).
    pub output_tokens: u32,
    /// What the tightest budget has left after this reservation, nano-USD.
    pub left_nanos: i64,
    /// That budget's cap, nano-USD.
    pub limit_nanos: i64,
}

/// A request refused by a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// Which budget (index into those given).
    pub budget: usize,
    /// Spent in the period, nano-USD.
    pub spent_nanos: i64,
    /// Held by requests in flight, nano-USD.
    pub held_nanos: i64,
    /// The cap, nano-USD.
    pub limit_nanos: i64,
    /// When the period starts again (Unix s); none for a budget without one.
    pub resets_unix_s: Option<u64>,
}

/// The keys of `org`'s reservations: the hash and the expiry set.
fn reservation_keys(org: &str) -> [String; 2] {
    [
        format!("sy:bud:{{{org}}}:res"),
        format!("sy:bud:{{{org}}}:resx"),
    ]
}

/// One request as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    /// Its id (the lease's and the settlement's).
    pub request_id: &'a str,
    /// Tokens to reserve (estimated input + `max_tokens`).
    pub tokens: u32,
    /// How long its concurrency lease lasts unless renewed, ms.
    pub lease_ms: u64,
}

/// One attempt's tokens and cost to settle against its request's reservation.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    /// The org the request counted under (every key is in its hash slot).
    pub org: &'a str,
    /// The request (its reservation is given back once).
    pub request_id: &'a str,
    /// The attempt (its use is taken once), e.g. the usage event's id.
    pub attempt_id: &'a str,
    /// The token buckets the request was admitted against: each scope's key
    /// prefix and tokens per minute ([`token_buckets`]).
    pub buckets: &'a [(String, u32)],
    /// Tokens reserved at admission.
    pub reserved: u32,
    /// Tokens this attempt used.
    pub used: u32,
    /// The budgets the request reserved from: each one's key and period code.
    pub budgets: &'a [(String, u8)],
    /// What this attempt is billed, nano-USD.
    pub billed_nanos: i64,
    /// The allowance the request drew its money from and how much (none: it
    /// reserved for itself, under its own id).
    pub allowance: Option<(&'a str, i64)>,
}

/// The token buckets among `scopes` (those with a tokens-per-minute limit),
/// as a request's settlement names them.
pub fn token_buckets(scopes: &[Scope]) -> Vec<(String, u32)> {
    scopes
        .iter()
        .filter_map(|s| s.limits.tpm.map(|t| (s.prefix.clone(), t)))
        .collect()
}

/// The limits engine over one Redis connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct Limiter {
    conn: ConnectionManager,
    /// The admission's own connections (none over TLS: the multiplexed one).
    direct: Option<Arc<direct::Direct>>,
    /// Admissions of this process waiting for Redis now.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    admit: Script,
    admit_source: Arc<str>,
    settle: Script,
    reconcile: Script,
    allow: Script,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// Connects to the Redis at `url` (`redis://host:port[/db]`).
    ///
    /// Sockets have `TCP_NODELAY`; a connection attempt gives up after
    /// [`CONNECT_TIMEOUT`] and a call after [`RESPONSE_TIMEOUT`], so a Redis
    /// that hangs costs a request that much, never more (the connection is
    /// re-established on a later call).
    pub async fn connect(url: &str) -> Result<Self, LimitError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let direct = direct::Direct::new(
            client.get_connection_info(),
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
        )
        .map(Arc::new);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let admit_source = [include_str!("budget.lua"), include_str!("admit.lua")].concat();
        Ok(Limiter {
            conn,
            direct,
            waiting: Arc::default(),
            admit: Script::new(&admit_source),
            admit_source: admit_source.into(),
            settle: Script::new(&[include_str!("budget.lua"), include_str!("settle.lua")].concat()),
            reconcile: Script::new(include_str!("reconcile.lua")),
            allow: Script::new(&[include_str!("budget.lua"), include_str!("allow.lua")].concat()),
        })
    }

    /// A limiter in a slot: connected now when Redis answers, else the slot
    /// stays empty while the connection is retried in the background (a
    /// Redis down at start delays nothing; callers decide what an empty
    /// slot means).
    pub async fn connect_or_retry(url: String) -> Arc<OnceLock<Limiter>> {
        let slot = Arc::new(OnceLock::new());
        match Limiter::connect(&url).await {
            Ok(l) => {
                let _ = slot.set(l);
                return slot;
            }
            Err(e) => tracing::warn!(error = %e, "Cannot reach Redis for rate limits; retrying."),
        }
        let filled = slot.clone();
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                if let Ok(l) = Limiter::connect(&url).await {
                    let _ = filled.set(l);
                    tracing::info!("Connected to Redis for rate limits.");
                    return;
                }
            }
        });
        slot
    }

    /// Admits `ask` against every one of `scopes`, or refuses it, in one
    /// round trip (the script is sent by its hash; once, in full, after a
    /// Redis restart).
    pub async fn admit(&self, ask: Ask<'_>, scopes: &[Scope]) -> Result<Decision, LimitError> {
        Ok(self.admit_spend(ask, scopes, None).await?.0)
    }

    /// Admits `ask` against every one of `scopes` and, with `spend`, reserves
    /// its largest cost against every budget, all in one round trip, all or
    /// nothing. With budgets, an admitted request's [`BudgetRoom`] says how
    /// many output tokens it may write and what the tightest budget has left.
    pub async fn admit_spend(
        &self,
        ask: Ask<'_>,
        scopes: &[Scope],
        spend: Option<&Spend<'_>>,
    ) -> Result<(Decision, Option<BudgetRoom>), LimitError> {
        let mut keys: Vec<String> = Vec::with_capacity(scopes.len() * 2 + 4);
        let mut args: Vec<String> = Vec::with_capacity(5 + scopes.len() * 3 + 10);
        for s in scopes {
            keys.extend(s.keys());
        }
        args.extend([
            ask.request_id.to_owned(),
            ask.tokens.to_string(),
            ask.lease_ms.to_string(),
            scopes.len().to_string(),
        ]);
        for s in scopes {
            let l = s.limits;
            args.extend([
                l.rpm.unwrap_or(0).to_string(),
                l.tpm.unwrap_or(0).to_string(),
                l.concurrency.unwrap_or(0).to_string(),
            ]);
        }
        match spend.filter(|s| !s.budgets.is_empty()) {
            None => args.push("0".to_owned()),
            Some(sp) => {
                keys.extend(reservation_keys(sp.org));
                keys.push(ready_key(sp.org));
                keys.extend(sp.budgets.iter().map(|b| b.key.clone()));
                args.extend([
                    sp.budgets.len().to_string(),
                    sp.input_nanos.to_string(),
                    format!("{:.6}", sp.output_token_nanos),
                    sp.output_tokens.to_string(),
                    sp.min_output_tokens.to_string(),
                    sp.hold_ms.to_string(),
                    u8::from(sp.require_ready).to_string(),
                ]);
                for b in sp.budgets {
                    args.extend([b.limit_nanos.to_string(), b.period.code().to_string()]);
                }
            }
        }
        let out = self.run_admit(&keys, &args).await?;
        Ok(decode(&out, scopes.len()))
    }

    /// Runs the admission script by its hash (in full once after a Redis
    /// restart). An admission that is alone takes a direct connection (the
    /// least latency: no hand-off between tasks); while others wait, it
    /// joins them on the multiplexed connection, whose commands share
    /// Redis's reads and writes (the least CPU, on both sides, under load).
    async fn run_admit(&self, keys: &[String], args: &[String]) -> Result<Vec<i64>, LimitError> {
        let call = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let waiting = Waiting::enter(&self.waiting);
        let direct = self.direct.as_ref().filter(|_| waiting.alone);
        let by_hash = call("EVALSHA", self.admit.get_hash());
        let first = match direct {
            Some(d) => direct::integers(&d.query(&by_hash.get_packed_command(), 1).await?),
            // Not `?`: a NOSCRIPT must reach the match below.
            None => by_hash
                .query_async(&mut self.conn.clone())
                .await
                .map_err(LimitError::from),
        };
        match first {
            Err(LimitError(e)) if e.kind() == redis::ErrorKind::NoScriptError => {
                let in_full = call("EVAL", &self.admit_source);
                match direct {
                    Some(d) => direct::integers(&d.query(&in_full.get_packed_command(), 1).await?),
                    None => in_full
                        .query_async(&mut self.conn.clone())
                        .await
                        .map_err(LimitError::from),
                }
            }
            other => other,
        }
    }

    /// Settles one attempt of a request: gives back its reservation of
    /// `reserved` tokens (once per request) and takes the `used` tokens of
    /// this attempt (once per `attempt_id`), in each token bucket of
    /// `buckets` (see [`token_buckets`]). False when both were settled before
    /// (a redelivered usage event).
    pub async fn settle(&self, s: Settlement<'_>) -> Result<bool, LimitError> {
        if s.buckets.is_empty() && s.budgets.is_empty() {
            return Ok(false);
        }
        let mut inv = self.settle.prepare_invoke();
        // Every key is the org's (one hash slot).
        let slot = format!("sy:lim:{{{}}}", s.org);
        inv.key(format!("{slot}:settled:{}", s.request_id));
        inv.key(format!("{slot}:used:{}", s.attempt_id));
        for k in reservation_keys(s.org) {
            inv.key(k);
        }
        for (prefix, _) in s.buckets {
            inv.key(format!("{prefix}:rt"));
        }
        for (key, _) in s.budgets {
            inv.key(key);
        }
        let (allowance, drawn) = s.allowance.unwrap_or(("", 0));
        inv.arg(s.reserved)
            .arg(s.used)
            .arg(s.buckets.len())
            .arg(s.request_id)
            .arg(s.billed_nanos)
            .arg(allowance)
            .arg(drawn);
        for (_, tpm) in s.buckets {
            inv.arg(*tpm);
        }
        for (_, period) in s.budgets {
            inv.arg(*period);
        }
        let done: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(done == 1)
    }

    /// Sets `budget`'s spend in the period `pid` (see [`Period::at`]) to
    /// `truth` nano-USD (what the usage rows say), keeping what requests in
    /// flight hold (with `raise_only`, a truth below Redis's is ignored);
    /// returns the drift (truth − what Redis had).
    pub async fn reconcile(
        &self,
        budget_key: &str,
        period: Period,
        pid: &str,
        truth: i64,
        raise_only: bool,
    ) -> Result<i64, LimitError> {
        let mut inv = self.reconcile.prepare_invoke();
        inv.key(budget_key)
            .arg(period.code())
            .arg(pid)
            .arg(truth)
            .arg(u8::from(raise_only));
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Marks `org`'s budgets as restored into this Redis.
    pub async fn mark_ready(&self, org: &str) -> Result<(), LimitError> {
        redis::cmd("SET")
            .arg(ready_key(org))
            .arg(1)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Sets (`done`) or reads the end-of-round marker: false when this Redis
    /// has not been reconciled since it last lost its data.
    pub async fn reconciled(&self, done: bool) -> Result<bool, LimitError> {
        let mut conn = self.conn.clone();
        if done {
            redis::cmd("SET")
                .arg(RECONCILED_KEY)
                .arg(1)
                .query_async::<()>(&mut conn)
                .await?;
            return Ok(true);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(RECONCILED_KEY)
            .query_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Whether Redis answers now (a `PING`; reconnects if it must).
    pub async fn ping(&self) -> Result<(), LimitError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Extends `request_id`'s concurrency leases by `lease_ms` from now.
    pub async fn renew(
        &self,
        request_id: &str,
        scopes: &[Scope],
        lease_ms: u64,
    ) -> Result<(), LimitError> {
        let keys = lease_keys(scopes);
        let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
        for k in &keys {
            by_key.entry(k).or_default().push(request_id);
        }
        self.renew_many(&by_key, lease_ms).await
    }

    /// Extends every lease of `by_key` (lease set → request ids) by
    /// `lease_ms` from now, in one pipeline (one `ZADD XX` per set: a lease
    /// released meanwhile stays released).
    pub async fn renew_many(
        &self,
        by_key: &HashMap<&str, Vec<&str>>,
        lease_ms: u64,
    ) -> Result<(), LimitError> {
        self.set_leases(by_key, lease_ms, true).await
    }

    /// Sets every lease of `by_key` (lease set → ids) to end `lease_ms` from
    /// now, adding those the set no longer has, in one pipeline (an
    /// allowance pool's slots: held until given back, whatever Redis lost).
    pub async fn restore_leases(
        &self,
        by_key: &HashMap<&str, Vec<&str>>,
        lease_ms: u64,
    ) -> Result<(), LimitError> {
        self.set_leases(by_key, lease_ms, false).await
    }

    /// One `ZADD` per set (`XX`: existing members only) and its `PEXPIRE`.
    async fn set_leases(
        &self,
        by_key: &HashMap<&str, Vec<&str>>,
        lease_ms: u64,
        existing_only: bool,
    ) -> Result<(), LimitError> {
        if by_key.is_empty() {
            return Ok(());
        }
        let until = server_ms(&mut self.conn.clone()).await? + lease_ms;
        let mut pipe = redis::pipe();
        for (key, ids) in by_key {
            let cmd = pipe.cmd("ZADD").arg(key);
            if existing_only {
                cmd.arg("XX");
            }
            for id in ids {
                cmd.arg(until).arg(id);
            }
            cmd.ignore();
            pipe.cmd("PEXPIRE").arg(key).arg(lease_ms + 1000).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Ends `request_id`'s concurrency leases (on every ending of the request).
    pub async fn release(&self, request_id: &str, scopes: &[Scope]) -> Result<(), LimitError> {
        let keys = lease_keys(scopes);
        let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
        for k in &keys {
            by_key.entry(k).or_default().push(request_id);
        }
        self.release_many(&by_key).await
    }

    /// Ends every lease of `by_key` (lease set → request ids) in one
    /// pipeline (one `ZREM` per set).
    pub async fn release_many(&self, by_key: &HashMap<&str, Vec<&str>>) -> Result<(), LimitError> {
        if by_key.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, ids) in by_key {
            pipe.cmd("ZREM").arg(key).arg(ids).ignore();
        }
        // On a direct connection: this runs once per request at low load.
        match &self.direct {
            Some(d) => {
                let answers = d.query(&pipe.get_packed_pipeline(), by_key.len()).await?;
                direct::first_error(&answers).map_or(Ok(()), Err)
            }
            None => Ok(pipe.query_async::<()>(&mut self.conn.clone()).await?),
        }
    }
}

/// One admission (or cache call) counted among those waiting for Redis
/// while it lives.
pub(crate) struct Waiting<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
    /// No other admission was waiting when it came.
    pub(crate) alone: bool,
}

impl<'a> Waiting<'a> {
    pub(crate) fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The concurrency lease sets among `scopes` (those with a concurrency limit).
pub fn lease_keys(scopes: &[Scope]) -> Vec<String> {
    scopes
        .iter()
        .filter(|s| s.limits.concurrency.is_some())
        .map(|s| format!("{}:conc", s.prefix))
        .collect()
}

/// The Redis server's clock, ms.
async fn server_ms(conn: &mut ConnectionManager) -> Result<u64, LimitError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// The script's answer as a [`Decision`].
fn decode(out: &[i64], scopes: usize) -> (Decision, Option<BudgetRoom>) {
    let at = |i: usize| out.get(i).copied().unwrap_or(0);
    if at(0) != 1 {
        if at(2) == 5 {
            return (Decision::NotReady, None);
        }
        let index = usize::try_from(at(1) - 1).unwrap_or(0);
        let kind = match at(2) {
            1 => Kind::Requests,
            2 => Kind::Tokens,
            3 => Kind::Concurrency,
            _ => {
                return (
                    Decision::OverBudget(OverBudget {
                        budget: index,
                        spent_nanos: at(3),
                        held_nanos: at(4),
                        limit_nanos: at(5),
                        resets_unix_s: u64::try_from(at(6)).ok().filter(|s| *s > 0),
                    }),
                    None,
                );
            }
        };
        let retry = at(3);
        return (
            Decision::Refused {
                scope: index,
                kind,
                retry_after_ms: u64::try_from(retry).ok(),
            },
            None,
        );
    }
    let count = |v: i64| u32::try_from(v).ok();
    let ms = |v: i64| u64::try_from(v).unwrap_or(0);
    let remaining = (0..scopes)
        .map(|i| {
            let b = 1 + i * 4;
            Remaining {
                requests: count(at(b)),
                requests_reset_ms: ms(at(b + 1)),
                tokens: count(at(b + 2)),
                tokens_reset_ms: ms(at(b + 3)),
            }
        })
        .collect();
    let b = 1 + scopes * 4;
    let room = u32::try_from(at(b)).ok().map(|output_tokens| BudgetRoom {
        output_tokens,
        left_nanos: at(b + 1),
        limit_nanos: at(b + 2),
    });
    (Decision::Admitted(remaining), room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_into_decisions() {
        assert_eq!(
            decode(&[0, 2, 3, 150], 2).0,
            Decision::Refused {
                scope: 1,
                kind: Kind::Concurrency,
                retry_after_ms: Some(150)
            }
        );
        assert_eq!(
            decode(&[0, 1, 2, -1], 1).0,
            Decision::Refused {
                scope: 0,
                kind: Kind::Tokens,
                retry_after_ms: None
            }
        );
        assert_eq!(
            decode(&[1, 9, 600, -1, 0, -1, 0, 0], 1).0,
            Decision::Admitted(vec![Remaining {
                requests: Some(9),
                requests_reset_ms: 600,
                tokens: None,
                tokens_reset_ms: 0
            }])
        );
    }

    #[test]
    fn periods_are_named_and_start_as_the_scripts_have_them() {
        // 2026-12-05T06:00:00Z; 2024-02-29T12:00:00Z.
        let (id, first) = Period::Month.at(1_796_450_400);
        assert_eq!((id.as_str(), first), ("m24323", 1_796_083_200));
        assert_eq!(Period::Day.at(1_796_450_400).1, 1_796_428_800);
        assert_eq!(Period::Month.at(1_709_208_000).1, 1_706_745_600);
        assert_eq!(Period::None.at(5), ("all".to_owned(), 0));
    }

    #[test]
    fn scopes_of_one_org_share_a_hash_slot() {
        let s = Scope::of_org("o1", "key", "k1", "key k1".into(), Limits::default());
        assert_eq!(s.keys()[0], "sy:lim:{o1}:key:k1:rt");
        assert!(s.keys().iter().all(|k| k.contains("{o1}")));
    }
}
