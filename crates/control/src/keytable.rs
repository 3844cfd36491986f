//! The keys an ingress authenticates from, in memory: loaded whole from the
//! store at start (and after a reconnect), then kept current by applying each
//! change ([`crate::feed`] carries them over NATS). A lookup is a hash-map
//! probe and one HMAC: no database on the request path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sqlx::FromRow;
use uuid::Uuid;

use crate::key::{self, KeyError, Pepper};
use crate::store::{KeyOwner, Store, StoreError};

/// What a key may do, once authenticated: whose it is, which models and
/// routers it may name, from which client networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who the key belongs to.
    pub owner: KeyOwner,
    /// The models and routers (`auto`, `auto:<name>`) it may name; none
    /// means every one.
    pub models: Option<Box<[String]>>,
    /// The client networks it may be used from; empty means any.
    pub allowed_cidrs: Box<[IpNet]>,
    /// The rate limits of its key, project and org.
    pub limits: TenantLimits,
    /// The budgets of its key, project and org (nano-USD and period).
    pub budgets: TenantBudgets,
    /// Its project lowers `max_tokens` to what the budgets can pay for
    /// (else a request they cannot pay for in full is refused).
    pub lower_max_tokens: bool,
    /// For a prepaid org: everything credited to it, nano-USD (its requests
    /// are admitted against credited − spent).
    pub prepaid_credit: Option<i64>,
    /// Its project's cap on what one `x-switchyard-session` may spend, nano-USD.
    pub session_budget: Option<i64>,
    /// Its org's plan and multipliers over provider cost.
    pub pricing: crate::pricing::OrgPricing,
    /// The key's default tags, sorted by key: each of its requests carries
    /// them under the tags the request names itself.
    pub tags: Vec<(String, String)>,
    /// Its project turns the response cache on (true) or off (false) for
    /// its requests; none: the config's `[cache] models` decide.
    pub cache: Option<bool>,
}

/// The budgets a key's requests count against: its own, its project's and
/// its org's, each a cap in nano-USD and its period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantBudgets {
    /// The key's.
    pub key: Option<(i64, sy_limits::Period)>,
    /// Its project's.
    pub project: Option<(i64, sy_limits::Period)>,
    /// Its org's.
    pub org: Option<(i64, sy_limits::Period)>,
}

/// A stored budget (`{"usd": "12.50", "period": "month"}`) as nano-USD and a
/// period; none for none (or one that does not read: an edit by hand).
pub fn budget_of(v: Option<&serde_json::Value>) -> Option<(i64, sy_limits::Period)> {
    let v = v?;
    let nanos = usd_to_nanos(v.get("usd")?.as_str()?)?;
    let period = match v.get("period").and_then(|p| p.as_str()) {
        Some("day") => sy_limits::Period::Day,
        Some("none") => sy_limits::Period::None,
        _ => sy_limits::Period::Month,
    };
    Some((nanos, period))
}

/// `"12.50"` as nano-USD; none unless a plain decimal with at most six decimals.
pub fn usd_to_nanos(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    whole.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// Nano-USD as the shortest decimal USD (`12.5`, `0.000001`).
pub fn nanos_to_usd(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let n = n.unsigned_abs();
    let (whole, frac) = (n / 1_000_000_000, n % 1_000_000_000);
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let f = format!("{frac:09}");
    format!("{sign}{whole}.{}", f.trim_end_matches('0'))
}

/// One scope's rate limits: its own, and per model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeLimits {
    /// For every request of the scope.
    pub all: sy_limits::Limits,
    /// For the requests of one model (the name the client asked for).
    pub models: std::collections::BTreeMap<String, sy_limits::Limits>,
}

impl ScopeLimits {
    /// From the stored `limits` and `model_limits` JSON (a value that does
    /// not read, from a hand edit, counts as no limit).
    pub fn from_json(limits: &serde_json::Value, models: &serde_json::Value) -> Self {
        let one = |v: &serde_json::Value| {
            let n = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            sy_limits::Limits {
                rpm: n("rpm"),
                tpm: n("tpm"),
                concurrency: n("concurrency"),
            }
        };
        ScopeLimits {
            all: one(limits),
            models: models
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), one(v))).collect())
                .unwrap_or_default(),
        }
    }
}

/// The rate limits a key's requests count against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// The key's.
    pub key: ScopeLimits,
    /// Its project's.
    pub project: ScopeLimits,
    /// Its org's.
    pub org: ScopeLimits,
}

/// Limits for scopes that have none of their own (`[limits.defaults]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultLimits {
    /// For a key without limits.
    pub key: sy_limits::Limits,
    /// For a project without limits.
    pub project: sy_limits::Limits,
    /// For an org without limits.
    pub org: sy_limits::Limits,
}

impl Grant {
    /// A grant for any model, from anywhere, without limits.
    pub fn unrestricted(owner: KeyOwner) -> Self {
        Grant {
            owner,
            models: None,
            allowed_cidrs: Box::new([]),
            limits: TenantLimits::default(),
            budgets: TenantBudgets::default(),
            lower_max_tokens: true,
            prepaid_credit: None,
            session_budget: None,
            pricing: crate::pricing::OrgPricing::default(),
            tags: Vec::new(),
            cache: None,
        }
    }

    /// The budget of the session `session` (what the client named in
    /// `x-switchyard-session`) when its project caps sessions: its key is
    /// the project's and a digest of the name (any text is safe in it).
    pub fn session_budget(&self, session: &str) -> Option<sy_limits::Budget> {
        use sha2::Digest;
        let limit = self.session_budget?;
        let o = &self.owner;
        let digest = sha2::Sha256::digest(session.as_bytes());
        let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Some(sy_limits::Budget {
            name: format!("session '{session}'"),
            key: format!("sy:bud:{{{}}}:session:{}:{id}", o.org_id, o.project_id),
            limit_nanos: limit,
            period: sy_limits::Period::Session,
        })
    }

    /// The budgets a request counts against: the key's, project's and org's
    /// that are set (all under the org's hash slot).
    pub fn budgets(&self) -> Vec<sy_limits::Budget> {
        let o = &self.owner;
        let org = o.org_id.to_string();
        [
            ("key", o.key_id, self.budgets.key),
            ("project", o.project_id, self.budgets.project),
            ("org", o.org_id, self.budgets.org),
        ]
        .into_iter()
        .filter_map(|(kind, id, b)| {
            b.map(|(nanos, period)| {
                sy_limits::Budget::of_org(&org, kind, &id.to_string(), nanos, period)
            })
        })
        .chain(self.prepaid_credit.map(|credited| sy_limits::Budget {
            name: format!("the prepaid balance of org {org}"),
            key: crate::ledger::balance_key(&org),
            limit_nanos: credited,
            period: sy_limits::Period::None,
        }))
        .collect()
    }

    /// The scopes a request for `model` counts against: the key's, project's
    /// and org's limits (`defaults`' where one has none of its own), and each
    /// one's limits for `model`, leaving out scopes without any limit.
    pub fn scopes(&self, model: &str, defaults: &DefaultLimits) -> Vec<sy_limits::Scope> {
        let o = &self.owner;
        let org = o.org_id.to_string();
        let empty = sy_limits::Limits::default();
        let mut out = Vec::new();
        for (kind, id, limits, default) in [
            ("key", o.key_id, &self.limits.key, defaults.key),
            (
                "project",
                o.project_id,
                &self.limits.project,
                defaults.project,
            ),
            ("org", o.org_id, &self.limits.org, defaults.org),
        ] {
            let id = id.to_string();
            let all = if limits.all == empty {
                default
            } else {
                limits.all
            };
            if all != empty {
                out.push(sy_limits::Scope::of_org(
                    &org,
                    kind,
                    &id,
                    format!("{kind} {id}"),
                    all,
                ));
            }
            if let Some(m) = limits.models.get(model).filter(|m| **m != empty) {
                out.push(sy_limits::Scope::of_org(
                    &org,
                    &format!("{kind}-model"),
                    &format!("{id}:{model}"),
                    format!("{kind} {id} model {model}"),
                    *m,
                ));
            }
        }
        out
    }

    /// Whether the key may name `model` (a model or a router).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// Whether the key may be used from `addr`.
    pub fn allows_addr(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_cidrs.is_empty() || self.allowed_cidrs.iter().any(|n| n.contains(&addr))
    }
}

/// What the table knows of one key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Who the key belongs to and what it may do.
    pub grant: Arc<Grant>,
    /// `HMAC-SHA-256(pepper, key)` of the current secret.
    pub secret_hash: Vec<u8>,
    /// The previous secret's hash and until when (Unix ms) it is valid.
    pub previous: Option<(Vec<u8>, i64)>,
    /// When the key expires (Unix ms), if ever.
    pub expires_at_ms: Option<i64>,
}

/// Why a key is refused (all are 401 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a well-formed key, or its checksum is wrong.
    #[error(transparent)]
    Malformed(#[from] KeyError),
    /// No live key has this public id and secret.
    #[error("unknown or revoked API key")]
    Unknown,
    /// The key expired.
    #[error("the API key has expired")]
    Expired,
}

/// A change to apply (from the store's writes, carried over NATS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A key was created or changed (rotated, re-scoped): its whole entry.
    Upsert {
        /// Its public id.
        public_id: String,
        /// What authenticates it now.
        entry: KeyEntry,
    },
    /// A key was revoked, or its project or org disabled.
    Remove {
        /// Its public id.
        public_id: String,
    },
}

/// The live keys by public id (and their grants by key id).
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_public_id: HashMap<String, KeyEntry>,
    by_key_id: HashMap<Uuid, Arc<Grant>>,
    /// The price versions, loaded with the keys.
    prices: Arc<crate::pricing::PriceBook>,
    /// The pipelines of the admin API, loaded with the keys.
    pipelines: Arc<crate::pipelines::Pipelines>,
}

#[derive(FromRow)]
struct Row {
    public_id: String,
    key_id: Uuid,
    project_id: Uuid,
    org_id: Uuid,
    secret_hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    previous_until_ms: Option<i64>,
    expires_at_ms: Option<i64>,
    scopes: serde_json::Value,
    allowed_cidrs: Vec<String>,
    tags: serde_json::Value,
    key_limits: serde_json::Value,
    key_model_limits: serde_json::Value,
    project_limits: serde_json::Value,
    project_model_limits: serde_json::Value,
    org_limits: serde_json::Value,
    org_model_limits: serde_json::Value,
    key_budget: Option<serde_json::Value>,
    project_budget: Option<serde_json::Value>,
    org_budget: Option<serde_json::Value>,
    lower_max_tokens: bool,
    prepaid: bool,
    org_credited_nanos: i64,
    session_budget: Option<serde_json::Value>,
    plan: Option<String>,
    org_multiplier_ppb: Option<i64>,
    org_model_multipliers: serde_json::Value,
    plan_multiplier_ppb: Option<i64>,
    plan_model_multipliers: Option<serde_json::Value>,
    project_cache: Option<bool>,
    plan_cache_hit_ppb: Option<i64>,
}

impl Row {
    fn into_entry(self) -> (String, KeyEntry) {
        let models = self
            .scopes
            .get("models")
            .and_then(|m| m.as_array())
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect::<Box<[String]>>()
            });
        // The store accepts only valid networks; one that does not parse (an
        // edit by hand) counts as a network nothing is in, never as "any".
        let unparsable = || IpNet::from(IpAddr::from([255, 255, 255, 255]));
        let allowed_cidrs = self
            .allowed_cidrs
            .iter()
            .map(|c| c.parse().unwrap_or_else(|_| unparsable()))
            .collect();
        let grant = Grant {
            owner: KeyOwner {
                key_id: self.key_id,
                project_id: self.project_id,
                org_id: self.org_id,
            },
            models,
            allowed_cidrs,
            limits: TenantLimits {
                key: ScopeLimits::from_json(&self.key_limits, &self.key_model_limits),
                project: ScopeLimits::from_json(&self.project_limits, &self.project_model_limits),
                org: ScopeLimits::from_json(&self.org_limits, &self.org_model_limits),
            },
            budgets: TenantBudgets {
                key: budget_of(self.key_budget.as_ref()),
                project: budget_of(self.project_budget.as_ref()),
                org: budget_of(self.org_budget.as_ref()),
            },
            lower_max_tokens: self.lower_max_tokens,
            // The store accepts only valid tags; anything else (an edit by
            // hand) is left out.
            tags: self
                .tags
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            let v = v.as_str()?;
                            (sy_protocol::tag::valid_key(k) && sy_protocol::tag::valid_value(v))
                                .then(|| (k.clone(), v.to_owned()))
                        })
                        .take(sy_protocol::tag::MAX_TAGS)
                        .collect()
                })
                .unwrap_or_default(),
            prepaid_credit: self.prepaid.then_some(self.org_credited_nanos),
            session_budget: budget_of(self.session_budget.as_ref()).map(|(nanos, _)| nanos),
            cache: self.project_cache,
            pricing: crate::pricing::OrgPricing::from_columns(
                self.plan,
                self.org_multiplier_ppb,
                &self.org_model_multipliers,
                self.plan_multiplier_ppb,
                self.plan_model_multipliers
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null),
                self.plan_cache_hit_ppb,
            ),
        };
        let entry = KeyEntry {
            grant: Arc::new(grant),
            secret_hash: self.secret_hash,
            previous: self.previous_hash.zip(self.previous_until_ms),
            expires_at_ms: self.expires_at_ms,
        };
        (self.public_id, entry)
    }
}

/// The columns of a live key, and the condition that makes it live.
const LIVE_KEYS: &str = "SELECT k.public_id, k.id AS key_id, p.id AS project_id, o.id AS org_id, \
        k.secret_hash, k.previous_hash, \
        (extract(epoch FROM k.previous_valid_until) * 1000)::bigint AS previous_until_ms, \
        (extract(epoch FROM k.expires_at) * 1000)::bigint AS expires_at_ms, \
        k.scopes, k.allowed_cidrs, k.tags, \
        k.limits AS key_limits, k.model_limits AS key_model_limits, \
        p.limits AS project_limits, p.model_limits AS project_model_limits, \
        o.limits AS org_limits, o.model_limits AS org_model_limits, \
        k.budget AS key_budget, p.budget AS project_budget, o.budget AS org_budget, \
        p.lower_max_tokens, o.prepaid, COALESCE(ob.credited_nanos, 0) AS org_credited_nanos, \
        p.session_budget, o.plan, o.multiplier_ppb AS org_multiplier_ppb, \
        o.model_multipliers AS org_model_multipliers, pl.multiplier_ppb AS plan_multiplier_ppb, \
        pl.model_multipliers AS plan_model_multipliers, p.cache AS project_cache, \
        pl.cache_hit_multiplier_ppb AS plan_cache_hit_ppb \
    FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN orgs o ON o.id = p.org_id \
    LEFT JOIN org_balances ob ON ob.org_id = o.id LEFT JOIN plans pl ON pl.name = o.plan \
    WHERE k.status = 'active' AND p.status = 'active' AND o.status = 'active'";

impl KeyTable {
    /// Every live key in the store: active, of an active project and org.
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(LIVE_KEYS).fetch_all(store.pool()).await?;
        let mut table = KeyTable {
            prices: crate::pricing::PriceBook::load(store).await?,
            pipelines: Arc::new(store.load_pipelines().await?),
            ..KeyTable::default()
        };
        for row in rows {
            let (public_id, entry) = row.into_entry();
            table.apply(KeyChange::Upsert { public_id, entry });
        }
        Ok(table)
    }

    /// What the store says of the key with this public id now: its entry if
    /// it is live, else a removal.
    pub async fn load_one(store: &Store, public_id: &str) -> Result<KeyChange, StoreError> {
        let row: Option<Row> = sqlx::query_as(&format!("{LIVE_KEYS} AND k.public_id = $1"))
            .bind(public_id)
            .fetch_optional(store.pool())
            .await?;
        Ok(match row {
            Some(row) => {
                let (public_id, entry) = row.into_entry();
                KeyChange::Upsert { public_id, entry }
            }
            None => KeyChange::Remove {
                public_id: public_id.to_owned(),
            },
        })
    }

    /// The grant of the live key with id `key_id` (a batch runs under its
    /// key's grant after the request that made it is gone).
    pub fn grant_of(&self, key_id: Uuid) -> Option<Arc<Grant>> {
        self.by_key_id.get(&key_id).cloned()
    }

    /// The price versions loaded with the keys.
    pub fn prices(&self) -> Arc<crate::pricing::PriceBook> {
        self.prices.clone()
    }

    /// The pipelines of the admin API, by model name.
    pub fn pipelines(&self) -> Arc<crate::pipelines::Pipelines> {
        self.pipelines.clone()
    }

    /// How many live keys the table holds.
    pub fn len(&self) -> usize {
        self.by_public_id.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.by_public_id.is_empty()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: KeyChange) {
        match change {
            KeyChange::Upsert { public_id, entry } => {
                self.by_key_id
                    .insert(entry.grant.owner.key_id, entry.grant.clone());
                self.by_public_id.insert(public_id, entry);
            }
            KeyChange::Remove { public_id } => {
                if let Some(gone) = self.by_public_id.remove(&public_id) {
                    self.by_key_id.remove(&gone.grant.owner.key_id);
                }
            }
        }
    }

    /// Whose `key` is at `now_ms` and what it may do, or why it is refused.
    pub fn authenticate(
        &self,
        pepper: &Pepper,
        key: &str,
        now_ms: i64,
    ) -> Result<&Arc<Grant>, Refused> {
        let parsed = key::parse(key)?;
        let entry = self
            .by_public_id
            .get(parsed.public_id)
            .ok_or(Refused::Unknown)?;
        let current = pepper.verify(key, &entry.secret_hash);
        let previous = || {
            entry
                .previous
                .as_ref()
                .is_some_and(|(hash, until)| now_ms < *until && pepper.verify(key, hash))
        };
        if !current && !previous() {
            return Err(Refused::Unknown);
        }
        if entry.expires_at_ms.is_some_and(|t| now_ms >= t) {
            return Err(Refused::Expired);
        }
        Ok(&entry.grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Pepper {
        Pepper::new(vec![3u8; 32]).unwrap()
    }

    fn owner() -> KeyOwner {
        KeyOwner {
            key_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            org_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn a_table_authenticates_applies_changes_and_says_why_it_refuses() {
        let p = pepper();
        let old = key::generate("live", &p).unwrap();
        let new = key::with_public_id("live", &old.public_id, &p).unwrap();
        let who = owner();
        let mut t = KeyTable::default();
        t.apply(KeyChange::Upsert {
            public_id: old.public_id.clone(),
            entry: KeyEntry {
                grant: Arc::new(Grant::unrestricted(who)),
                secret_hash: old.hash.to_vec(),
                previous: None,
                expires_at_ms: None,
            },
        });
        assert_eq!(
            t.authenticate(&p, &old.key, 0),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
        assert_eq!(t.authenticate(&p, &new.key, 0), Err(Refused::Unknown));
        // Rotated with a grace until t = 1,000.
        t.apply(KeyChange::Upsert {
            public_id: old.public_id.clone(),
            entry: KeyEntry {
                grant: Arc::new(Grant::unrestricted(who)),
                secret_hash: new.hash.to_vec(),
                previous: Some((old.hash.to_vec(), 1_000)),
                expires_at_ms: Some(5_000),
            },
        });
        assert_eq!(
            t.authenticate(&p, &old.key, 999),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
        assert_eq!(t.authenticate(&p, &old.key, 1_000), Err(Refused::Unknown));
        assert_eq!(
            t.authenticate(&p, &new.key, 4_999),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
        assert_eq!(t.authenticate(&p, &new.key, 5_000), Err(Refused::Expired));
        let mut typo = new.key.clone();
        typo.pop();
        assert!(matches!(
            t.authenticate(&p, &typo, 0),
            Err(Refused::Malformed(_))
        ));
        t.apply(KeyChange::Remove {
            public_id: old.public_id.clone(),
        });
        assert_eq!(t.authenticate(&p, &new.key, 0), Err(Refused::Unknown));
        assert!(t.is_empty());
        assert_eq!(t.grant_of(who.key_id), None);
    }

    #[test]
    fn a_grant_names_the_scopes_with_limits_for_a_model() {
        let who = owner();
        let mut g = Grant::unrestricted(who);
        assert!(
            g.scopes("gpt-4o", &DefaultLimits::default()).is_empty(),
            "no limits, no scopes"
        );
        let rpm = |n| sy_limits::Limits {
            rpm: Some(n),
            ..sy_limits::Limits::default()
        };
        g.limits.key.all = rpm(10);
        g.limits.org.all = rpm(1000);
        g.limits.project.models.insert("gpt-4o".into(), rpm(50));
        let names = |m: &str| -> Vec<String> {
            g.scopes(m, &DefaultLimits::default())
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(
            names("gpt-4o"),
            vec![
                format!("key {}", who.key_id),
                format!("project {} model gpt-4o", who.project_id),
                format!("org {}", who.org_id),
            ]
        );
        assert_eq!(
            names("claude").len(),
            2,
            "the per-model scope holds for its model only"
        );
        // Every scope of a request shares the org's hash slot.
        let tag = format!("{{{}}}", who.org_id);
        assert!(
            g.scopes("gpt-4o", &DefaultLimits::default())
                .iter()
                .all(|s| s.prefix.contains(&tag))
        );
        // Defaults hold for a scope without limits of its own, not over one's own.
        let defaults = DefaultLimits {
            key: rpm(1),
            project: rpm(2),
            org: rpm(3),
        };
        let with: Vec<_> = g
            .scopes("claude", &defaults)
            .into_iter()
            .map(|s| (s.name, s.limits.rpm))
            .collect();
        assert_eq!(
            with,
            vec![
                (format!("key {}", who.key_id), Some(10)),
                (format!("project {}", who.project_id), Some(2)),
                (format!("org {}", who.org_id), Some(1000)),
            ]
        );
    }

    #[test]
    fn stored_limits_read_and_bad_ones_count_as_none() {
        let l = ScopeLimits::from_json(
            &serde_json::json!({"rpm": 5, "tpm": "lots", "concurrency": -1}),
            &serde_json::json!({"m": {"tpm": 100}, "bad": 3}),
        );
        assert_eq!(l.all.rpm, Some(5));
        assert_eq!((l.all.tpm, l.all.concurrency), (None, None));
        assert_eq!(l.models["m"].tpm, Some(100));
        assert_eq!(l.models["bad"], sy_limits::Limits::default());
    }

    #[test]
    fn a_grant_limits_models_and_client_networks() {
        let mut g = Grant::unrestricted(owner());
        assert!(g.allows_model("anything"));
        assert!(g.allows_addr("203.0.113.9".parse().unwrap()));
        g.models = Some(vec!["gpt-4o".to_owned(), "auto:code".to_owned()].into());
        g.allowed_cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]
        .into();
        assert!(g.allows_model("gpt-4o") && g.allows_model("auto:code"));
        assert!(!g.allows_model("auto") && !g.allows_model("GPT-4O"));
        assert!(g.allows_addr("10.1.2.3".parse().unwrap()));
        // An IPv4 client on a dual-stack socket comes as a mapped IPv6 address.
        assert!(g.allows_addr("::ffff:10.1.2.3".parse().unwrap()));
        assert!(g.allows_addr("2001:db8::1".parse().unwrap()));
        assert!(!g.allows_addr("11.0.0.1".parse().unwrap()));
        assert!(!g.allows_addr("127.0.0.1".parse().unwrap()));
    }
}
