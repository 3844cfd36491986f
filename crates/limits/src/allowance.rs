//! Allowances: a busy key's requests admitted from what its process already
//! holds, with no Redis round trip on the request path (docs/limits.md,
//! "Allowances").
//!
//! A process that sees one key and model (a *set* of scopes and budgets)
//! more than [`HOT`] times a second asks Redis, off the request path, for an
//! allowance: a number of requests and tokens taken from every rate scope's
//! buckets and money held against every budget, all at once, all or nothing
//! (`allow.lua`), plus a pool of concurrency slots (leases like a request's,
//! renewed by the process's [`LeaseBook`]). Its requests then draw from it in
//! memory; before it runs out or after half of [`VALID`], the next one is
//! asked for, and what the last did not use is given back with it.
//!
//! **Never over a limit.** What an allowance takes is taken in Redis before
//! any request uses it, so every limit counts every request, whichever
//! process admitted it, exactly as if each had asked for itself; the request
//! is only counted up to [`VALID`] earlier than it is served.
//!
//! **Small limits stay exact.** No allowance takes more than
//! 1/([`SHARE`] × live replicas) of what any of its scopes has left, and none
//! is granted below [`FEWEST`] requests (or that many requests' tokens or
//! money): a key with RPM 100 on three replicas, a concurrency of 10 or a
//! budget of a few requests' cost never gets one, and each of its requests
//! asks Redis itself. What allowances hold unused can make another process's
//! request wait, at most for [`VALID`] and only while the scope is busy
//! enough to grant them: a bound, stated in docs/limits.md.
//!
//! A process that dies leaves what its allowance took: requests and tokens
//! refill within the minute, money is held by a reservation that lapses and
//! is swept like a request's, slots expire with their leases. A call whose
//! answer is lost gives nothing back (never twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::leases::LeaseBook;
use crate::{
    Budget, LimitError, Limiter, Remaining, Scope, lease_keys, ready_key, reservation_keys,
};

/// How long an allowance may be drawn from after it was asked for.
pub const VALID: Duration = Duration::from_secs(1);
/// No allowance takes more than 1/(`SHARE` × live replicas) of what a scope
/// or budget has left.
pub const SHARE: u32 = 16;
/// The fewest requests (or requests' worth of tokens or money) an allowance
/// is granted for.
pub const FEWEST: u64 = 16;
/// Requests a second a set needs before its process asks for allowances.
pub const HOT: u32 = 8;
/// A set unused this long gives its slots back and is forgotten.
const IDLE: Duration = Duration::from_secs(10);
/// After a refused or failed ask, the set's requests ask Redis themselves
/// this long before the next.
const BACK_OFF: Duration = Duration::from_secs(1);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One process's allowances, by set (a key and a model).
pub struct Allowances {
    limiter: Limiter,
    leases: Arc<LeaseBook>,
    /// Allowance ids: `al:<process>:<boot>:<n>` (`boot` tells two runs of
    /// one process name apart).
    prefix: String,
    /// When the pools' slots were last renewed.
    renewed: Mutex<Instant>,
    next: AtomicU64,
    require_ready: bool,
    sets: Mutex<HashMap<String, Arc<Set>>>,
    /// Sets whose scopes or budgets changed: what they hold goes back.
    retired: Mutex<Vec<Arc<Set>>>,
}

impl std::fmt::Debug for Allowances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allowances")
    }
}

/// One set of scopes and budgets (a key and a model) in one process.
pub struct Set {
    scopes: Vec<Scope>,
    budgets: Vec<Budget>,
    org: String,
    lease_keys: Vec<String>,
    state: Mutex<State>,
    refilling: AtomicBool,
}

#[derive(Default)]
struct State {
    current: Option<Allowance>,
    /// What earlier allowances did not use, to give back with the next call.
    back_req: u64,
    back_tok: u64,
    back_money: Vec<(String, i64)>,
    /// Requests seen: this second's count and the last second's.
    window: Option<Instant>,
    in_window: u32,
    rate: u32,
    /// The largest request seen since the last ask: tokens, money, hold.
    max_tokens: u64,
    max_money: i64,
    hold_ms: u64,
    replicas: u32,
    last: Option<Instant>,
    /// No ask before this (after a refusal or a failure).
    not_before: Option<Instant>,
    /// No more slots asked for before this (after none were granted).
    grow_not_before: Option<Instant>,
    /// The slots held (lease ids) and how many are in use.
    slots: Vec<String>,
    in_use: usize,
    peak: usize,
}

struct Allowance {
    id: String,
    at: Instant,
    /// No request may draw from it from then on: a second after it was
    /// asked for, or when a budget's period ends, whichever comes first.
    expires: Instant,
    /// What it holds (none: no such limit applies).
    requests: Option<u64>,
    tokens: Option<u64>,
    money: Option<i64>,
    used_req: u64,
    used_tok: u64,
    used_money: i64,
    /// Each scope's buckets as Redis left them after the grant.
    remaining: Vec<Remaining>,
    /// The tightest budget's left after the grant and its limit.
    budget: Option<(i64, i64)>,
}

impl Allowance {
    fn unused(&self) -> (u64, u64, i64) {
        (
            self.requests.map_or(0, |r| r.saturating_sub(self.used_req)),
            self.tokens.map_or(0, |t| t.saturating_sub(self.used_tok)),
            self.money.map_or(0, |m| (m - self.used_money).max(0)),
        )
    }

    fn fits(&self, tokens: u64, money: Option<i64>) -> bool {
        self.requests.is_none_or(|r| self.used_req < r)
            && self.tokens.is_none_or(|t| self.used_tok + tokens <= t)
            && match (self.money, money) {
                (Some(m), Some(want)) => self.used_money + want <= m,
                (None, None) => true,
                _ => false,
            }
    }

    /// Half drawn, in any of its kinds.
    fn half_drawn(&self) -> bool {
        self.requests.is_some_and(|r| self.used_req * 2 >= r)
            || self.tokens.is_some_and(|t| self.used_tok * 2 >= t)
            || self.money.is_some_and(|m| self.used_money * 2 >= m)
    }

    /// What each scope has left as this process sees it: what Redis said
    /// after the grant, plus the part of the grant not used yet.
    fn remaining_now(&self, scopes: &[Scope], now: Instant) -> Vec<Remaining> {
        let elapsed = now.saturating_duration_since(self.at).as_millis() as u64;
        let (req, tok, _) = self.unused();
        scopes
            .iter()
            .zip(&self.remaining)
            .map(|(s, r)| {
                // Ms the unused part stands for in a bucket of `limit` a minute.
                let ms = |n: u64, limit: Option<u32>| {
                    (n as f64 * 60_000.0 / f64::from(limit.unwrap_or(1).max(1))) as u64
                };
                Remaining {
                    requests: r.requests.map(|n| n.saturating_add(req as u32)),
                    requests_reset_ms: r
                        .requests_reset_ms
                        .saturating_sub(elapsed + ms(req, s.limits.rpm)),
                    tokens: r.tokens.map(|n| n.saturating_add(tok as u32)),
                    tokens_reset_ms: r
                        .tokens_reset_ms
                        .saturating_sub(elapsed + ms(tok, s.limits.tpm)),
                }
            })
            .collect()
    }
}

/// What a request asks of an allowance.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Tokens to reserve.
    pub tokens: u32,
    /// Its largest cost, nano-USD, when budgets apply.
    pub money: Option<i64>,
    /// How long its money may stay held before it settles, ms.
    pub hold_ms: u64,
    /// Live ingress replicas now.
    pub replicas: u32,
}

/// A request admitted from an allowance.
pub struct Drawn {
    /// What each scope has left, as this process sees it.
    pub remaining: Vec<Remaining>,
    /// The allowance whose money it holds, and how much (to settle against).
    pub money: Option<(String, i64)>,
    /// The tightest budget's left (as this process sees it) and its limit.
    pub budget: Option<(i64, i64)>,
    /// Its concurrency slot, given back when dropped.
    pub slot: Option<Slot>,
}

/// A concurrency slot of a set's pool, in use until dropped.
pub struct Slot(Arc<Set>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = locked(&self.0.state);
        st.in_use = st.in_use.saturating_sub(1);
    }
}

impl Allowances {
    /// The allowances of process `process`, whose slots `leases` renews
    /// and releases; a task gives back what lapses until they are dropped.
    pub fn start(
        limiter: Limiter,
        leases: Arc<LeaseBook>,
        process: &str,
        require_ready: bool,
    ) -> Arc<Allowances> {
        let book = Arc::new(Allowances {
            limiter,
            leases,
            prefix: format!("al:{process}:{:x}:", boot_nonce()),
            renewed: Mutex::new(Instant::now()),
            next: AtomicU64::new(1),
            require_ready,
            sets: Mutex::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
        });
        tokio::spawn(tend(Arc::downgrade(&book)));
        book
    }

    /// Admits a request of set `key` (the caller's key and model) against
    /// `scopes` and `budgets` from what this process holds, or says it must
    /// ask Redis itself (none). Asks for the next allowance, in the
    /// background, when the set is busy and this one runs low.
    pub fn draw(
        self: &Arc<Self>,
        key: &str,
        scopes: &[Scope],
        budgets: &[Budget],
        org: &str,
        want: Want,
    ) -> Option<Drawn> {
        let set = self.set_of(key, scopes, budgets, org);
        let now = Instant::now();
        let mut st = locked(&set.state);
        st.note(now, &want);
        let needs_slot = !set.lease_keys.is_empty();
        let slot_free = !needs_slot || st.in_use < st.slots.len();
        let mut drawn = None;
        if let Some(a) = st.current.as_mut()
            && slot_free
            && now < a.expires
            && a.fits(u64::from(want.tokens), want.money)
        {
            a.used_req += 1;
            a.used_tok += u64::from(want.tokens);
            a.used_money += want.money.unwrap_or(0);
            let budget = a.budget.zip(a.money).map(|((left, limit), m)| {
                let unused = (m - a.used_money).max(0);
                (left + unused, limit)
            });
            drawn = Some(Drawn {
                remaining: a.remaining_now(&set.scopes, now),
                money: want.money.map(|m| (a.id.clone(), m)),
                budget,
                slot: None,
            });
        }
        if drawn.is_some() && needs_slot {
            st.in_use += 1;
            st.peak = st.peak.max(st.in_use);
        }
        let ask = st.hot()
            && st.not_before.is_none_or(|t| now >= t)
            && match &st.current {
                None => true,
                Some(a) => {
                    a.half_drawn()
                        || now.saturating_duration_since(a.at) * 2 >= VALID
                        || now >= a.expires
                        || (needs_slot
                            && st.grow_not_before.is_none_or(|t| now >= t)
                            && st.in_use * 4 >= st.slots.len() * 3)
                }
            };
        drop(st);
        if ask && !set.refilling.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().refill(set.clone(), false));
        }
        drawn.map(|mut d| {
            if needs_slot {
                d.slot = Some(Slot(set));
            }
            d
        })
    }

    /// The set named `key`, made afresh when its scopes or budgets changed
    /// (the old one's holdings go back).
    fn set_of(&self, key: &str, scopes: &[Scope], budgets: &[Budget], org: &str) -> Arc<Set> {
        let mut sets = locked(&self.sets);
        if let Some(s) = sets.get(key)
            && s.scopes == scopes
            && s.budgets == budgets
            && s.org == org
        {
            return s.clone();
        }
        let set = Arc::new(Set {
            scopes: scopes.to_vec(),
            budgets: budgets.to_vec(),
            org: org.to_owned(),
            lease_keys: lease_keys(scopes),
            state: Mutex::new(State::default()),
            refilling: AtomicBool::new(false),
        });
        if let Some(old) = sets.insert(key.to_owned(), set.clone()) {
            locked(&self.retired).push(old);
        }
        set
    }

    /// Asks Redis for `set`'s next allowance (or, `give_back_only`, only
    /// gives back what earlier ones did not use), growing its slot pool.
    async fn refill(self: Arc<Self>, set: Arc<Set>, give_back_only: bool) {
        let id = format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let sent = Instant::now();
        let call = {
            let mut st = locked(&set.state);
            let asked = match give_back_only {
                true => 0,
                false => u64::from(st.rate.max(st.in_window)).saturating_mul(2),
            };
            let k = match give_back_only {
                true => 0,
                false => asked.clamp(FEWEST, 100_000),
            };
            let tokens = st.max_tokens.max(1);
            let money = st.max_money.max(1);
            let grow = st.grow_not_before.is_none_or(|t| sent >= t);
            let slots = match (give_back_only || !grow, set.lease_keys.is_empty()) {
                (false, false) => {
                    let want = (st.peak * 2).max(st.in_use + 4).max(4);
                    want.saturating_sub(st.slots.len()).min(256)
                }
                _ => 0,
            };
            st.max_tokens = 0;
            st.max_money = 0;
            Call {
                id: id.clone(),
                divisor: SHARE.saturating_mul(st.replicas.max(1)),
                k_ask: k,
                k_min: FEWEST,
                t_ask: k.saturating_mul(tokens),
                t_min: FEWEST.saturating_mul(tokens),
                back_req: std::mem::take(&mut st.back_req),
                back_tok: std::mem::take(&mut st.back_tok),
                slots,
                lease_ms: self.leases.lease().as_millis() as u64,
                m_ask: (k as i64).saturating_mul(money),
                m_min: (FEWEST as i64).saturating_mul(money),
                res_ms: VALID.as_millis() as u64 + st.hold_ms,
                back_money: std::mem::take(&mut st.back_money),
            }
        };
        let answer = self.limiter.allow(&set, &call, self.require_ready).await;
        let mut st = locked(&set.state);
        match answer {
            Ok(a) => {
                for j in 1..=a.slots {
                    st.slots.push(format!("{}:{j}", call.id));
                }
                if call.slots > 0 && a.slots == 0 {
                    st.grow_not_before = Some(Instant::now() + BACK_OFF);
                }
                if a.granted {
                    let until = a
                        .period_ends_ms
                        .map_or(VALID, |ms| VALID.min(Duration::from_millis(ms)));
                    let new = Allowance {
                        id,
                        at: sent,
                        expires: sent + until,
                        requests: a.requests,
                        tokens: a.tokens,
                        money: a.money,
                        used_req: 0,
                        used_tok: 0,
                        used_money: 0,
                        remaining: a.remaining,
                        budget: a.budget,
                    };
                    if let Some(old) = st.current.replace(new) {
                        st.give_back(old);
                    }
                    // Without a slot to admit with, a set with a
                    // concurrency limit cannot use it: back at once.
                    if !set.lease_keys.is_empty()
                        && st.slots.is_empty()
                        && let Some(unusable) = st.current.take()
                    {
                        st.give_back(unusable);
                        st.not_before = Some(Instant::now() + BACK_OFF);
                    }
                } else if !give_back_only {
                    st.not_before = Some(Instant::now() + BACK_OFF);
                }
            }
            Err(e) => {
                // What was to be given back is not sent again: if the call
                // ran, it was given back; if not, it stays taken (never
                // given back twice). What the call may have granted is
                // given back: its money with the next call (nothing drew
                // from it; a reservation that is not there gives back
                // nothing), its slots now.
                tracing::debug!(error = %e, "Asking for an allowance failed.");
                st.not_before = Some(Instant::now() + BACK_OFF);
                if !set.budgets.is_empty() && !give_back_only {
                    st.back_money.push((call.id.clone(), i64::MAX));
                }
                for j in 1..=call.slots {
                    self.leases
                        .end(&format!("{}:{j}", call.id), &set.lease_keys);
                }
            }
        }
        drop(st);
        set.refilling.store(false, Ordering::Release);
    }
}

impl State {
    fn note(&mut self, now: Instant, want: &Want) {
        match self.window {
            Some(w) if now.saturating_duration_since(w) < Duration::from_secs(1) => {}
            Some(w) => {
                self.rate = match now.saturating_duration_since(w) < Duration::from_secs(2) {
                    true => self.in_window,
                    false => 0,
                };
                self.window = Some(now);
                self.in_window = 0;
            }
            None => self.window = Some(now),
        }
        self.in_window += 1;
        self.max_tokens = self.max_tokens.max(u64::from(want.tokens));
        self.max_money = self.max_money.max(want.money.unwrap_or(0));
        self.hold_ms = self.hold_ms.max(want.hold_ms);
        self.replicas = want.replicas;
        self.last = Some(now);
    }

    fn hot(&self) -> bool {
        self.rate >= HOT || self.in_window >= HOT
    }

    /// `old` is done with: what it did not lend goes back with the next call.
    fn give_back(&mut self, old: Allowance) {
        let (req, tok, money) = old.unused();
        self.back_req += req;
        self.back_tok += tok;
        if old.money.is_some() {
            self.back_money.push((old.id, money));
        }
    }

    fn owes(&self) -> bool {
        self.back_req > 0 || self.back_tok > 0 || !self.back_money.is_empty()
    }
}

/// Every quarter of a second: lapsed allowances are given back, idle slots
/// released, idle sets forgotten. Ends when the allowances are dropped.
async fn tend(book: Weak<Allowances>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(b) = book.upgrade() else { return };
        let now = Instant::now();
        let live: Vec<(String, Arc<Set>)> = locked(&b.sets)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let retired: Vec<Arc<Set>> = locked(&b.retired).clone();
        let mut forget = Vec::new();
        for (key, set) in &live {
            if b.tend_one(set, now, false) {
                forget.push((key.clone(), set.clone()));
            }
        }
        let mut done = Vec::new();
        for set in &retired {
            if b.tend_one(set, now, true) {
                done.push(set.clone());
            }
        }
        if !forget.is_empty() {
            let mut sets = locked(&b.sets);
            for (key, set) in forget {
                if sets.get(&key).is_some_and(|s| Arc::ptr_eq(s, &set)) {
                    sets.remove(&key);
                }
            }
        }
        if !done.is_empty() {
            locked(&b.retired).retain(|s| !done.iter().any(|d| Arc::ptr_eq(s, d)));
        }
        b.renew_slots(now, &live, &retired);
    }
}

impl Allowances {
    /// Every third of the lease, sets every pool's slots to last another
    /// lease from now, adding any that Redis no longer has (it restarted
    /// without its data): a pool never admits with slots Redis does not
    /// count. Slots given back are not in any pool by then.
    fn renew_slots(&self, now: Instant, live: &[(String, Arc<Set>)], retired: &[Arc<Set>]) {
        let lease = self.leases.lease();
        {
            let mut last = locked(&self.renewed);
            if now.saturating_duration_since(*last) < lease / 3 {
                return;
            }
            *last = now;
        }
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for set in live.iter().map(|(_, s)| s).chain(retired) {
            let st = locked(&set.state);
            if st.slots.is_empty() {
                continue;
            }
            for key in &set.lease_keys {
                by_key
                    .entry(key.clone())
                    .or_default()
                    .extend(st.slots.iter().cloned());
            }
        }
        if by_key.is_empty() {
            return;
        }
        let limiter = self.limiter.clone();
        tokio::spawn(async move {
            let by_key: HashMap<&str, Vec<&str>> = by_key
                .iter()
                .map(|(k, ids)| (k.as_str(), ids.iter().map(String::as_str).collect()))
                .collect();
            if let Err(e) = limiter
                .restore_leases(&by_key, lease.as_millis() as u64)
                .await
            {
                tracing::debug!(error = %e, "Renewing the pools' slots failed; renewed at the next round.");
            }
        });
    }

    /// Tends one set; true when it holds nothing and can be forgotten.
    fn tend_one(self: &Arc<Self>, set: &Arc<Set>, now: Instant, retired: bool) -> bool {
        let mut st = locked(&set.state);
        let idle = retired
            || st
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= IDLE);
        let lapsed = st
            .current
            .as_ref()
            .is_some_and(|a| retired || now >= a.expires);
        if lapsed && let Some(old) = st.current.take() {
            st.give_back(old);
        }
        // Slots beyond twice what the last moments needed go back.
        let need = match idle {
            true => st.in_use,
            false => (st.peak * 2).max(st.in_use + 4).max(4),
        };
        if st.slots.len() > need.max(1) * 2 || (idle && st.slots.len() > need) {
            let extra = st.slots.len() - need;
            let at = st.slots.len() - extra;
            for slot in st.slots.split_off(at) {
                self.leases.end(&slot, &set.lease_keys);
            }
        }
        st.peak = st.in_use;
        let owes = st.owes();
        let empty = idle && st.current.is_none() && st.slots.is_empty() && st.in_use == 0;
        drop(st);
        if owes && !set.refilling.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().refill(set.clone(), true));
            return false;
        }
        empty && !owes && !set.refilling.load(Ordering::Acquire)
    }
}

/// One call of `allow.lua`.
struct Call {
    id: String,
    divisor: u32,
    k_ask: u64,
    k_min: u64,
    t_ask: u64,
    t_min: u64,
    back_req: u64,
    back_tok: u64,
    slots: usize,
    lease_ms: u64,
    m_ask: i64,
    m_min: i64,
    res_ms: u64,
    back_money: Vec<(String, i64)>,
}

/// What `allow.lua` answered.
struct Answer {
    granted: bool,
    requests: Option<u64>,
    tokens: Option<u64>,
    money: Option<i64>,
    slots: usize,
    remaining: Vec<Remaining>,
    budget: Option<(i64, i64)>,
    /// Ms until the first of the budgets' periods ends.
    period_ends_ms: Option<u64>,
}

/// A number that differs between two runs of one process (its ids must not
/// meet a previous run's in Redis).
fn boot_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

impl Limiter {
    /// Runs `allow.lua` for `set` (see its header for the arguments).
    async fn allow(&self, set: &Set, c: &Call, require_ready: bool) -> Result<Answer, LimitError> {
        let mut inv = self.allow.prepare_invoke();
        for s in &set.scopes {
            for k in s.keys() {
                inv.key(k);
            }
        }
        inv.arg(&c.id).arg(c.divisor).arg(set.scopes.len());
        for s in &set.scopes {
            let l = s.limits;
            inv.arg(l.rpm.unwrap_or(0))
                .arg(l.tpm.unwrap_or(0))
                .arg(l.concurrency.unwrap_or(0));
        }
        inv.arg(c.k_ask)
            .arg(c.k_min)
            .arg(c.t_ask)
            .arg(c.t_min)
            .arg(c.back_req)
            .arg(c.back_tok)
            .arg(c.slots)
            .arg(c.lease_ms)
            .arg(set.budgets.len());
        if !set.budgets.is_empty() {
            for k in reservation_keys(&set.org) {
                inv.key(k);
            }
            inv.key(ready_key(&set.org));
            for b in &set.budgets {
                inv.key(&b.key);
            }
            inv.arg(c.m_ask)
                .arg(c.m_min)
                .arg(c.res_ms)
                .arg(u8::from(require_ready))
                .arg(c.back_money.len());
            for (id, amount) in &c.back_money {
                inv.arg(id).arg(*amount);
            }
            for b in &set.budgets {
                inv.arg(b.limit_nanos).arg(b.period.code());
            }
        }
        let out: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        let at = |i: usize| out.get(i).copied().unwrap_or(0);
        let some = |v: i64| u64::try_from(v).ok();
        let remaining = (0..set.scopes.len())
            .map(|i| {
                let b = 5 + i * 4;
                Remaining {
                    requests: u32::try_from(at(b)).ok(),
                    requests_reset_ms: some(at(b + 1)).unwrap_or(0),
                    tokens: u32::try_from(at(b + 2)).ok(),
                    tokens_reset_ms: some(at(b + 3)).unwrap_or(0),
                }
            })
            .collect();
        let b = 5 + set.scopes.len() * 4;
        Ok(Answer {
            granted: at(0) == 1,
            requests: some(at(1)),
            tokens: some(at(2)),
            money: (at(3) >= 0 && !set.budgets.is_empty()).then_some(at(3)),
            slots: usize::try_from(at(4)).unwrap_or(0),
            remaining,
            budget: (!set.budgets.is_empty()).then_some((at(b), at(b + 1))),
            period_ends_ms: some(at(b + 2)),
        })
    }
}
