//! Price versions and plans (issue 18), in PostgreSQL (migration 0011) and
//! in memory.
//!
//! - A price version is a whole table, `"<provider>/<upstream model>"` →
//!   prices as decimal strings ([`sy_config::RawPrice`]), in effect for
//!   requests received from its effective time until the next version's.
//!   A change makes a new version from the latest (or, for version 1, from
//!   the config file's prices, version 0); versions are made in order of
//!   effective time, never in the past, and never changed or deleted (a
//!   trigger refuses it), so what a usage row was priced with never changes.
//! - A plan carries a default multiplier and per-model multipliers over
//!   provider cost; an org is on one plan (or none: the config's markup)
//!   and may have its own multipliers, which win.
//! - Every ingress keeps the versions ([`PriceBook`]) and each key's org's
//!   multipliers ([`OrgPricing`], in its grant) in memory, reloaded with the
//!   key table when a change is announced; admission fixes each target's
//!   price and multiplier in the envelope and the worker bills with them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::FromRow;
use sy_config::RawPrice;
use sy_config::price::{Price, parse_nanos};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::feed::KeyNotice;
use crate::store::{Store, StoreError};

/// One multiplier at cost: parts per billion.
pub const AT_COST_PPB: i64 = 1_000_000_000;

/// The largest multiplier accepted (×1000).
const MAX_MULTIPLIER_PPB: i64 = 1_000 * AT_COST_PPB;

/// A price version as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceVersion {
    /// 1, 2, 3, … (0 is the config file's prices, never stored).
    pub version: u32,
    /// From when it prices requests (Unix ms).
    pub effective_at_ms: i64,
    /// When it was made (Unix ms).
    pub created_at_ms: i64,
    /// Why.
    pub note: String,
    /// `"<provider>/<upstream model>"` → its prices.
    pub prices: BTreeMap<String, RawPrice>,
}

/// A new price version: the latest's prices with `set` replaced and added
/// and `remove` taken out.
#[derive(Debug, Clone, Default)]
pub struct NewPriceVersion {
    /// From when (Unix ms); now when none. Never in the past, never before
    /// the latest version's.
    pub effective_at_ms: Option<i64>,
    /// Why.
    pub note: String,
    /// Prices to add or replace.
    pub set: BTreeMap<String, RawPrice>,
    /// Prices to take out.
    pub remove: Vec<String>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Its name (`free`, `pro`, `enterprise`, …).
    pub name: String,
    /// The multiplier over provider cost, parts per billion.
    pub multiplier_ppb: i64,
    /// Per upstream model, parts per billion.
    pub model_multipliers: BTreeMap<String, i64>,
    /// What a response-cache hit is billed, ppb of what the request would
    /// have been billed; none: the config's `[cache] hit_multiplier`.
    pub cache_hit_multiplier_ppb: Option<i64>,
}

/// An org's plan and its own multipliers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrgPricing {
    /// Its plan, if any.
    pub plan: Option<String>,
    /// Its own default multiplier (wins over its plan's), ppb.
    pub multiplier_ppb: Option<i64>,
    /// Its own multipliers per upstream model (win over everything), ppb.
    pub model_multipliers: BTreeMap<String, i64>,
    /// Its plan's default multiplier, ppb.
    pub plan_multiplier_ppb: Option<i64>,
    /// Its plan's multipliers per upstream model, ppb.
    pub plan_model_multipliers: BTreeMap<String, i64>,
    /// What its plan bills a response-cache hit, ppb of what the request
    /// would have been billed; none: the config's `[cache] hit_multiplier`.
    pub cache_hit_ppb: Option<i64>,
}

impl OrgPricing {
    /// The multiplier billing `model` for this org, ppb: the org's own for
    /// the model, else its own default, else its plan's for the model, else
    /// its plan's default; none when nothing is set (then the config's
    /// `[billing] markup_percent` applies).
    pub fn multiplier(&self, model: &str) -> Option<i64> {
        self.model_multipliers
            .get(model)
            .copied()
            .or(self.multiplier_ppb)
            .or_else(|| self.plan_model_multipliers.get(model).copied())
            .or(self.plan_multiplier_ppb)
    }

    /// From the key table's columns (multipliers as JSON numbers of ppb).
    pub(crate) fn from_columns(
        plan: Option<String>,
        multiplier_ppb: Option<i64>,
        model_multipliers: &Value,
        plan_multiplier_ppb: Option<i64>,
        plan_model_multipliers: &Value,
        cache_hit_ppb: Option<i64>,
    ) -> Self {
        OrgPricing {
            plan,
            multiplier_ppb,
            model_multipliers: ppb_map(model_multipliers),
            plan_multiplier_ppb,
            plan_model_multipliers: ppb_map(plan_model_multipliers),
            cache_hit_ppb,
        }
    }
}

fn ppb_map(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64().filter(|n| *n > 0)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A multiplier as a decimal string (`"1.25"`) in ppb; none unless it is
/// above zero and at most 1000.
pub fn parse_multiplier(text: &str) -> Option<i64> {
    parse_nanos(text).filter(|n| (1..=MAX_MULTIPLIER_PPB).contains(n))
}

/// A multiplier in ppb as the shortest decimal string (`1250000000` → `"1.25"`).
pub fn format_multiplier(ppb: i64) -> String {
    crate::keytable::nanos_to_usd(ppb)
}

/// Whether `key` names a provider and a model (`"openai/gpt-4o"`; the model
/// may itself hold `/`).
fn valid_price_key(key: &str) -> bool {
    key.split_once('/').is_some_and(|(provider, model)| {
        !provider.is_empty()
            && !model.is_empty()
            && key.len() <= 300
            && provider
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !key.chars().any(char::is_control)
    })
}

/// Why a price version or plan cannot be made as asked.
fn invalid(message: String) -> StoreError {
    StoreError::Invalid(message)
}

#[derive(FromRow)]
struct VersionRow {
    version: i32,
    effective_at_ms: i64,
    created_at_ms: i64,
    note: String,
    prices: Value,
}

impl VersionRow {
    fn into_version(self) -> PriceVersion {
        PriceVersion {
            version: u32::try_from(self.version).unwrap_or(0),
            effective_at_ms: self.effective_at_ms,
            created_at_ms: self.created_at_ms,
            note: self.note,
            // Written only by `create_price_version`, from parsed prices.
            prices: serde_json::from_value(self.prices).unwrap_or_default(),
        }
    }
}

const VERSION_COLUMNS: &str = "version, \
    (extract(epoch FROM effective_at) * 1000)::bigint AS effective_at_ms, \
    (extract(epoch FROM created_at) * 1000)::bigint AS created_at_ms, note, prices";

#[derive(FromRow)]
struct PlanRow {
    name: String,
    multiplier_ppb: i64,
    model_multipliers: Value,
    cache_hit_multiplier_ppb: Option<i64>,
}

impl From<PlanRow> for Plan {
    fn from(r: PlanRow) -> Self {
        Plan {
            name: r.name,
            multiplier_ppb: r.multiplier_ppb,
            model_multipliers: ppb_map(&r.model_multipliers),
            cache_hit_multiplier_ppb: r.cache_hit_multiplier_ppb,
        }
    }
}

/// Checks a cache-hit multiplier: 0 (hits free) to 1000.
fn check_cache_hit(ppb: Option<i64>) -> Result<(), StoreError> {
    if ppb.is_some_and(|m| !(0..=MAX_MULTIPLIER_PPB).contains(&m)) {
        return Err(invalid("'cache_hit_multiplier' must be 0 to 1000".into()));
    }
    Ok(())
}

/// Checks `models` (model → multiplier in ppb).
fn check_models(models: &BTreeMap<String, i64>) -> Result<(), StoreError> {
    for (model, ppb) in models {
        if model.is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
            return Err(invalid(format!("{model:?} is not a model name")));
        }
        if !(1..=MAX_MULTIPLIER_PPB).contains(ppb) {
            return Err(invalid(format!(
                "the multiplier of {model:?} must be above 0 and at most 1000"
            )));
        }
    }
    Ok(())
}

fn models_json(models: &BTreeMap<String, i64>) -> Value {
    json!(models)
}

/// Multipliers by model as the admin API and the audit log show them
/// (decimal strings).
pub fn multipliers_view(models: &BTreeMap<String, i64>) -> Value {
    models
        .iter()
        .map(|(m, v)| (m.clone(), json!(format_multiplier(*v))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl Plan {
    /// As the admin API shows it (multipliers as decimal strings).
    pub fn view(&self) -> Value {
        json!({
            "name": self.name,
            "multiplier": format_multiplier(self.multiplier_ppb),
            "model_multipliers": multipliers_view(&self.model_multipliers),
            "cache_hit_multiplier": self.cache_hit_multiplier_ppb.map(format_multiplier),
        })
    }
}

impl Store {
    /// Every price version, oldest first.
    pub async fn price_versions(&self) -> Result<Vec<PriceVersion>, StoreError> {
        let rows: Vec<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM price_versions ORDER BY version"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(VersionRow::into_version).collect())
    }

    /// The price version `version`, if there is one.
    pub async fn price_version(&self, version: u32) -> Result<Option<PriceVersion>, StoreError> {
        let Ok(v) = i32::try_from(version) else {
            return Ok(None);
        };
        let row: Option<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM price_versions WHERE version = $1"
        ))
        .bind(v)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(VersionRow::into_version))
    }

    /// Makes the next price version from the latest (or from `base`, the
    /// config file's prices, for version 1), audited, and announces it.
    pub async fn create_price_version(
        &self,
        actor: &Actor,
        new: NewPriceVersion,
        base: &BTreeMap<String, RawPrice>,
    ) -> Result<PriceVersion, StoreError> {
        for (key, price) in &new.set {
            if !valid_price_key(key) {
                return Err(invalid(format!(
                    "{key:?} is not \"<provider>/<upstream model>\""
                )));
            }
            if let Err(fields) = sy_config::price::from_raw(price) {
                return Err(invalid(format!(
                    "the price of {key:?}: {} must be non-negative decimals like \"0.15\"",
                    fields.join(", ")
                )));
            }
        }
        let mut tx = self.pool().begin().await?;
        // One version at a time: numbers and effective times in one order.
        sqlx::query("LOCK TABLE price_versions IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let latest: Option<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM price_versions ORDER BY version DESC LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        let latest = latest.map(VersionRow::into_version);
        let (now_ms,): (i64,) = sqlx::query_as("SELECT (extract(epoch FROM now()) * 1000)::bigint")
            .fetch_one(&mut *tx)
            .await?;
        let effective = new.effective_at_ms.unwrap_or(now_ms);
        // A second of slack for a client's clock; never back in time further.
        if effective < now_ms - 1_000 {
            return Err(invalid(
                "'effective_at' is in the past: a new version never reprices requests already received"
                    .into(),
            ));
        }
        let effective = effective.max(now_ms);
        let (version, mut prices) = match &latest {
            Some(l) if l.effective_at_ms > effective => {
                return Err(invalid(format!(
                    "'effective_at' is before version {}'s ({} ms): versions take effect in order",
                    l.version, l.effective_at_ms
                )));
            }
            Some(l) => (l.version + 1, l.prices.clone()),
            None => (1, base.clone()),
        };
        for key in &new.remove {
            if prices.remove(key).is_none() {
                return Err(invalid(format!("there is no price for {key:?} to remove")));
            }
        }
        prices.extend(new.set.clone());
        let row: VersionRow = sqlx::query_as(&format!(
            "INSERT INTO price_versions (version, effective_at, note, prices) \
             VALUES ($1, to_timestamp($2::double precision / 1000), $3, $4) \
             RETURNING {VERSION_COLUMNS}"
        ))
        .bind(i32::try_from(version).map_err(|_| invalid("too many versions".into()))?)
        .bind(effective)
        .bind(&new.note)
        .bind(json!(prices))
        .fetch_one(&mut *tx)
        .await?;
        let e = Entry {
            action: "price_version.create",
            target_kind: "price_version",
            target_id: version.to_string(),
            before: latest.as_ref().map(|l| json!({"version": l.version})),
            after: Some(
                json!({"version": version, "effective_at_ms": row.effective_at_ms,
                               "note": new.note, "set": new.set, "remove": new.remove}),
            ),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        self.announce(KeyNotice::All).await;
        Ok(row.into_version())
    }

    /// Every plan, by name.
    pub async fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let rows: Vec<PlanRow> = sqlx::query_as(
            "SELECT name, multiplier_ppb, model_multipliers, cache_hit_multiplier_ppb FROM plans ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(Plan::from).collect())
    }

    /// The plan `name`.
    pub async fn plan(&self, name: &str) -> Result<Plan, StoreError> {
        let row: Option<PlanRow> = sqlx::query_as(
            "SELECT name, multiplier_ppb, model_multipliers, cache_hit_multiplier_ppb FROM plans WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.map(Plan::from).ok_or(StoreError::NotFound("plan"))
    }

    /// Makes a plan, audited.
    pub async fn create_plan(&self, actor: &Actor, plan: &Plan) -> Result<Plan, StoreError> {
        let name_ok = !plan.name.is_empty()
            && plan.name.len() <= 32
            && plan
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && plan.name.as_bytes()[0].is_ascii_alphanumeric();
        if !name_ok {
            return Err(invalid(format!(
                "{:?} is not a plan name (a-z, 0-9, - and _, up to 32, starting with a letter or digit)",
                plan.name
            )));
        }
        if !(1..=MAX_MULTIPLIER_PPB).contains(&plan.multiplier_ppb) {
            return Err(invalid(
                "'multiplier' must be above 0 and at most 1000".into(),
            ));
        }
        check_models(&plan.model_multipliers)?;
        check_cache_hit(plan.cache_hit_multiplier_ppb)?;
        let mut tx = self.pool().begin().await?;
        let made = sqlx::query(
            "INSERT INTO plans (name, multiplier_ppb, model_multipliers, cache_hit_multiplier_ppb) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&plan.name)
        .bind(plan.multiplier_ppb)
        .bind(models_json(&plan.model_multipliers))
        .bind(plan.cache_hit_multiplier_ppb)
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "a plan named {:?} exists",
                plan.name
            )));
        }
        let e = Entry {
            action: "plan.create",
            target_kind: "plan",
            target_id: plan.name.clone(),
            before: None,
            after: Some(plan.view()),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        Ok(plan.clone())
    }

    /// Changes a plan's multipliers (those given), audited; every org on it
    /// is billed the new way from the next request.
    pub async fn update_plan(
        &self,
        actor: &Actor,
        name: &str,
        multiplier_ppb: Option<i64>,
        model_multipliers: Option<BTreeMap<String, i64>>,
        cache_hit_multiplier_ppb: Option<Option<i64>>,
    ) -> Result<Plan, StoreError> {
        check_cache_hit(cache_hit_multiplier_ppb.flatten())?;
        if multiplier_ppb.is_some_and(|m| !(1..=MAX_MULTIPLIER_PPB).contains(&m)) {
            return Err(invalid(
                "'multiplier' must be above 0 and at most 1000".into(),
            ));
        }
        if let Some(m) = &model_multipliers {
            check_models(m)?;
        }
        let mut tx = self.pool().begin().await?;
        let row: Option<PlanRow> = sqlx::query_as(
            "SELECT name, multiplier_ppb, model_multipliers, cache_hit_multiplier_ppb FROM plans WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let before: Plan = row.map(Plan::from).ok_or(StoreError::NotFound("plan"))?;
        let after = Plan {
            name: before.name.clone(),
            multiplier_ppb: multiplier_ppb.unwrap_or(before.multiplier_ppb),
            model_multipliers: model_multipliers
                .unwrap_or_else(|| before.model_multipliers.clone()),
            cache_hit_multiplier_ppb: cache_hit_multiplier_ppb
                .unwrap_or(before.cache_hit_multiplier_ppb),
        };
        sqlx::query(
            "UPDATE plans SET multiplier_ppb = $2, model_multipliers = $3, \
             cache_hit_multiplier_ppb = $4, updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(after.multiplier_ppb)
        .bind(models_json(&after.model_multipliers))
        .bind(after.cache_hit_multiplier_ppb)
        .execute(&mut *tx)
        .await?;
        let e = Entry {
            action: "plan.update",
            target_kind: "plan",
            target_id: name.to_owned(),
            before: Some(before.view()),
            after: Some(after.view()),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        self.announce(KeyNotice::All).await;
        Ok(after)
    }

    /// Deletes a plan no org is on, audited.
    pub async fn delete_plan(&self, actor: &Actor, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let before = sqlx::query_as::<_, PlanRow>(
            "SELECT name, multiplier_ppb, model_multipliers, cache_hit_multiplier_ppb FROM plans WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .map(Plan::from)
        .ok_or(StoreError::NotFound("plan"))?;
        let (orgs,): (i64,) = sqlx::query_as("SELECT count(*) FROM orgs WHERE plan = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        if orgs > 0 {
            return Err(StoreError::Conflict(format!(
                "{orgs} org(s) are on plan {name:?}; move them first"
            )));
        }
        sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let e = Entry {
            action: "plan.delete",
            target_kind: "plan",
            target_id: name.to_owned(),
            before: Some(before.view()),
            after: None,
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An org's plan and own multipliers (with its plan's).
    pub async fn org_pricing(&self, org: Uuid) -> Result<OrgPricing, StoreError> {
        #[derive(FromRow)]
        struct OrgRow {
            plan: Option<String>,
            own: Option<i64>,
            own_models: Value,
            plan_ppb: Option<i64>,
            plan_models: Option<Value>,
            plan_cache_hit: Option<i64>,
        }
        let row: Option<OrgRow> = sqlx::query_as(
            "SELECT o.plan, o.multiplier_ppb AS own, o.model_multipliers AS own_models, \
             pl.multiplier_ppb AS plan_ppb, pl.model_multipliers AS plan_models, \
             pl.cache_hit_multiplier_ppb AS plan_cache_hit \
             FROM orgs o LEFT JOIN plans pl ON pl.name = o.plan WHERE o.id = $1",
        )
        .bind(org)
        .fetch_optional(self.pool())
        .await?;
        let r = row.ok_or(StoreError::NotFound("org"))?;
        Ok(OrgPricing::from_columns(
            r.plan,
            r.own,
            &r.own_models,
            r.plan_ppb,
            &r.plan_models.unwrap_or(Value::Null),
            r.plan_cache_hit,
        ))
    }

    /// Puts an org on `plan` (none: the config's markup) with its own
    /// multipliers, replacing what it had; audited. Its keys are billed the
    /// new way from the next request.
    pub async fn set_org_pricing(
        &self,
        actor: &Actor,
        org: Uuid,
        plan: Option<String>,
        multiplier_ppb: Option<i64>,
        model_multipliers: BTreeMap<String, i64>,
    ) -> Result<OrgPricing, StoreError> {
        if multiplier_ppb.is_some_and(|m| !(1..=MAX_MULTIPLIER_PPB).contains(&m)) {
            return Err(invalid(
                "'multiplier' must be above 0 and at most 1000".into(),
            ));
        }
        check_models(&model_multipliers)?;
        let before = self.org_pricing(org).await?;
        let mut tx = self.pool().begin().await?;
        if let Some(p) = &plan {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM plans WHERE name = $1")
                .bind(p)
                .fetch_one(&mut *tx)
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound("plan"));
            }
        }
        let changed = sqlx::query(
            "UPDATE orgs SET plan = $2, multiplier_ppb = $3, model_multipliers = $4, \
             updated_at = now() WHERE id = $1",
        )
        .bind(org)
        .bind(&plan)
        .bind(multiplier_ppb)
        .bind(models_json(&model_multipliers))
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NotFound("org"));
        }
        let view = |p: &Option<String>, m: Option<i64>, models: &BTreeMap<String, i64>| {
            json!({"plan": p, "multiplier": m.map(format_multiplier),
                   "model_multipliers": multipliers_view(models)})
        };
        let e = Entry {
            action: "org.pricing",
            target_kind: "org",
            target_id: org.to_string(),
            before: Some(view(
                &before.plan,
                before.multiplier_ppb,
                &before.model_multipliers,
            )),
            after: Some(view(&plan, multiplier_ppb, &model_multipliers)),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        self.announce(KeyNotice::All).await;
        self.org_pricing(org).await
    }
}

/// One price version in memory: from when, and each target's price.
#[derive(Debug, Clone)]
struct Book {
    version: u32,
    effective_at_ms: i64,
    /// Provider → upstream model → price (looked up without allocating).
    prices: HashMap<String, HashMap<String, Price>>,
}

/// Every price version in memory, to price a request by when it was
/// received: the version with the latest effective time not after it.
/// Empty: only version 0 (the config file's prices) exists.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    versions: Vec<Book>,
}

impl PriceBook {
    /// From the stored versions (oldest first). A price that does not parse
    /// (an edit by hand) is left out: that target is then unpriced (its cost
    /// unknown), never free.
    pub fn new(versions: &[PriceVersion]) -> Self {
        let mut books: Vec<Book> = versions
            .iter()
            .map(|v| Book {
                version: v.version,
                effective_at_ms: v.effective_at_ms,
                prices: v.prices.iter().fold(HashMap::new(), |mut all, (key, raw)| {
                    let parsed = key
                        .split_once('/')
                        .zip(sy_config::price::from_raw(raw).ok());
                    if let Some(((provider, model), price)) = parsed {
                        all.entry(provider.to_owned())
                            .or_insert_with(HashMap::new)
                            .insert(model.to_owned(), price);
                    }
                    all
                }),
            })
            .collect();
        books.sort_by_key(|b| (b.effective_at_ms, b.version));
        PriceBook { versions: books }
    }

    /// Loads every version from `store`.
    pub async fn load(store: &Store) -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(PriceBook::new(&store.price_versions().await?)))
    }

    /// Whether only version 0 (the config file's prices) exists.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The version in effect at `at_ms` and `provider`'s price for `model`
    /// under it; `None` when version 0 is (the caller uses the config's).
    pub fn price_at(
        &self,
        at_ms: i64,
        provider: &str,
        model: &str,
    ) -> Option<(u32, Option<Price>)> {
        let i = self
            .versions
            .partition_point(|b| b.effective_at_ms <= at_ms);
        let book = self.versions.get(i.checked_sub(1)?)?;
        let price = book
            .prices
            .get(provider)
            .and_then(|m| m.get(model))
            .copied();
        Some((book.version, price))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(input: &str, output: &str) -> RawPrice {
        RawPrice::new(input, output)
    }

    fn version(n: u32, at: i64, input: &str) -> PriceVersion {
        PriceVersion {
            version: n,
            effective_at_ms: at,
            created_at_ms: at,
            note: String::new(),
            prices: [("openai/gpt-4o".to_owned(), raw(input, "1"))].into(),
        }
    }

    #[test]
    fn a_request_is_priced_by_the_version_in_effect_when_it_was_received() {
        let book = PriceBook::new(&[version(1, 1_000, "2"), version(2, 5_000, "3")]);
        assert_eq!(book.price_at(999, "openai", "gpt-4o"), None, "version 0");
        let at = |t| {
            book.price_at(t, "openai", "gpt-4o")
                .map(|(v, p)| (v, p.map(|p| p.input)))
        };
        assert_eq!(at(1_000), Some((1, Some(2_000_000_000))));
        assert_eq!(at(4_999), Some((1, Some(2_000_000_000))));
        assert_eq!(at(5_000), Some((2, Some(3_000_000_000))));
        assert_eq!(
            book.price_at(6_000, "openai", "gpt-5"),
            Some((2, None)),
            "unpriced"
        );
        assert!(PriceBook::default().is_empty());
    }

    #[test]
    fn an_orgs_own_multipliers_win_over_its_plans() {
        let p = OrgPricing::from_columns(
            Some("pro".into()),
            None,
            &json!({"gpt-4o": 900_000_000}),
            Some(1_200_000_000),
            &json!({"gpt-4o": 1_500_000_000, "o3": 2_000_000_000}),
            None,
        );
        assert_eq!(
            p.multiplier("gpt-4o"),
            Some(900_000_000),
            "the org's for the model"
        );
        assert_eq!(
            p.multiplier("o3"),
            Some(2_000_000_000),
            "the plan's for the model"
        );
        assert_eq!(
            p.multiplier("other"),
            Some(1_200_000_000),
            "the plan's default"
        );
        let own_default = OrgPricing {
            multiplier_ppb: Some(1_100_000_000),
            ..p.clone()
        };
        assert_eq!(
            own_default.multiplier("o3"),
            Some(1_100_000_000),
            "the org's default"
        );
        assert_eq!(
            OrgPricing::default().multiplier("o3"),
            None,
            "the config's markup"
        );
        assert_eq!(parse_multiplier("1.25"), Some(1_250_000_000));
        assert_eq!(format_multiplier(1_250_000_000), "1.25");
        for bad in ["0", "-1", "1001", "x", ""] {
            assert_eq!(parse_multiplier(bad), None, "{bad}");
        }
        assert!(valid_price_key("vllm/meta-llama/Llama-3-8B"));
        for bad in ["gpt-4o", "/gpt-4o", "openai/", "open ai/x"] {
            assert!(!valid_price_key(bad), "{bad}");
        }
    }
}
