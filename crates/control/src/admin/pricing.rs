//! The admin API for prices and plans (issue 18): price versions
//! (`/admin/v1/prices`), plans (`/admin/v1/plans`) and an org's plan and
//! multipliers (`/admin/v1/orgs/{id}/pricing`). Multipliers travel as
//! decimal strings (`"1.25"`), prices as the config file writes them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use sy_config::RawPrice;

use super::handlers::{Answer, created, id_of, parse, visible_org};
use super::{Admin, AdminError, Caller};
use crate::pricing::{
    NewPriceVersion, OrgPricing, Plan, PriceVersion, format_multiplier, parse_multiplier,
};

/// The most prices one request may set or remove.
const MAX_CHANGES: usize = 10_000;

fn version_view(v: &PriceVersion, with_prices: bool) -> Value {
    let mut out = json!({
        "version": v.version,
        "effective_at": v.effective_at_ms.div_euclid(1000),
        "effective_at_ms": v.effective_at_ms,
        "created_at": v.created_at_ms.div_euclid(1000),
        "note": v.note,
        "models": v.prices.len(),
    });
    if with_prices {
        out["prices"] = json!(v.prices);
    }
    out
}

/// `GET /admin/v1/prices`: every version, newest last, without its prices;
/// `current` is the one pricing requests now (0: the config file's).
pub(super) async fn list_prices(State(admin): State<Arc<Admin>>) -> Answer {
    let versions = admin.store.price_versions().await?;
    let now_ms = now_ms();
    let current = versions
        .iter()
        .filter(|v| v.effective_at_ms <= now_ms)
        .map(|v| v.version)
        .max()
        .unwrap_or(0);
    let data: Vec<Value> = versions.iter().map(|v| version_view(v, false)).collect();
    Ok(Json(json!({"current": current, "data": data})).into_response())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `GET /admin/v1/prices/{version}`: one version with its prices; `current`
/// the one in effect now, `0` the config file's.
pub(super) async fn get_prices(
    State(admin): State<Arc<Admin>>,
    Path(version): Path<String>,
) -> Answer {
    let wanted = if version == "current" {
        let now_ms = now_ms();
        admin
            .store
            .price_versions()
            .await?
            .into_iter()
            .rfind(|v| v.effective_at_ms <= now_ms)
            .map_or(0, |v| v.version)
    } else {
        version
            .parse::<u32>()
            .map_err(|_| AdminError::not_found("price version"))?
    };
    if wanted == 0 {
        return Ok(Json(json!({
            "version": 0, "note": "the config file's prices",
            "models": admin.base_prices.len(), "prices": admin.base_prices,
        }))
        .into_response());
    }
    let v = admin
        .store
        .price_version(wanted)
        .await?
        .ok_or_else(|| AdminError::not_found("price version"))?;
    Ok(Json(version_view(&v, true)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPrices {
    /// Unix seconds; now when absent.
    #[serde(default)]
    effective_at: Option<i64>,
    #[serde(default)]
    note: String,
    #[serde(default)]
    set: BTreeMap<String, RawPrice>,
    #[serde(default)]
    remove: Vec<String>,
}

/// `POST /admin/v1/prices {effective_at?, note?, set?, remove?}`: the next
/// version, from the latest with `set` and `remove` applied.
pub(super) async fn create_prices(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewPrices = parse(&body)?;
    if req.set.is_empty() && req.remove.is_empty() {
        return Err(AdminError::invalid(
            "Nothing to change: give 'set' (prices by \"<provider>/<model>\") or 'remove'.",
        ));
    }
    if req.set.len() + req.remove.len() > MAX_CHANGES || req.note.len() > 1024 {
        return Err(AdminError::invalid(format!(
            "At most {MAX_CHANGES} changes and a note of 1024 bytes."
        )));
    }
    let effective_at_ms = match req.effective_at {
        None => None,
        Some(s) => Some(
            s.checked_mul(1000)
                .ok_or_else(|| AdminError::invalid("'effective_at' is Unix seconds."))?,
        ),
    };
    let new = NewPriceVersion {
        effective_at_ms,
        note: req.note,
        set: req.set,
        remove: req.remove,
    };
    let v = admin
        .store
        .create_price_version(&caller.actor(), new, &admin.base_prices)
        .await?;
    Ok(created(version_view(&v, true)))
}

/// Decimal-string multipliers by model as ppb.
fn multipliers(models: BTreeMap<String, String>) -> Result<BTreeMap<String, i64>, AdminError> {
    models
        .into_iter()
        .map(|(model, m)| match parse_multiplier(&m) {
            Some(ppb) => Ok((model, ppb)),
            None => Err(AdminError::invalid(format!(
                "The multiplier of '{model}' must be a decimal above 0 and at most 1000, not '{m}'."
            ))),
        })
        .collect()
}

fn multiplier(field: &str, m: &str) -> Result<i64, AdminError> {
    parse_multiplier(m).ok_or_else(|| {
        AdminError::invalid(format!(
            "'{field}' must be a decimal above 0 and at most 1000 (\"1.25\"), not '{m}'."
        ))
    })
}

/// A cache-hit multiplier: "0" (hits free) to "1000".
fn cache_hit(m: &str) -> Result<i64, AdminError> {
    sy_config::price::parse_nanos(m)
        .filter(|n| *n <= 1_000 * 1_000_000_000)
        .ok_or_else(|| {
            AdminError::invalid(format!(
                "'cache_hit_multiplier' must be a decimal from 0 to 1000 (\"0.1\"), not '{m}'."
            ))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPlan {
    name: String,
    multiplier: String,
    #[serde(default)]
    model_multipliers: BTreeMap<String, String>,
    #[serde(default)]
    cache_hit_multiplier: Option<String>,
}

/// `POST /admin/v1/plans {name, multiplier, model_multipliers?}`.
pub(super) async fn create_plan(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewPlan = parse(&body)?;
    let plan = Plan {
        name: req.name,
        multiplier_ppb: multiplier("multiplier", &req.multiplier)?,
        model_multipliers: multipliers(req.model_multipliers)?,
        cache_hit_multiplier_ppb: req
            .cache_hit_multiplier
            .as_deref()
            .map(cache_hit)
            .transpose()?,
    };
    let plan = admin.store.create_plan(&caller.actor(), &plan).await?;
    Ok(created(plan.view()))
}

/// `GET /admin/v1/plans`.
pub(super) async fn list_plans(State(admin): State<Arc<Admin>>) -> Answer {
    let plans: Vec<Value> = admin.store.plans().await?.iter().map(Plan::view).collect();
    Ok(Json(json!({"data": plans})).into_response())
}

/// `GET /admin/v1/plans/{name}`.
pub(super) async fn get_plan(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Answer {
    Ok(Json(admin.store.plan(&name).await?.view()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanPatch {
    #[serde(default)]
    multiplier: Option<String>,
    #[serde(default)]
    model_multipliers: Option<BTreeMap<String, String>>,
    /// A decimal; null: back to the config's.
    #[serde(default, deserialize_with = "super::handlers::nullable")]
    cache_hit_multiplier: Option<Option<String>>,
}

/// `PATCH /admin/v1/plans/{name} {multiplier?, model_multipliers?}`: the
/// given ones replace the plan's (`model_multipliers` whole).
pub(super) async fn patch_plan(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    let req: PlanPatch = parse(&body)?;
    let m = req
        .multiplier
        .as_deref()
        .map(|m| multiplier("multiplier", m))
        .transpose()?;
    let models = req.model_multipliers.map(multipliers).transpose()?;
    let hit = match req.cache_hit_multiplier {
        None => None,
        Some(None) => Some(None),
        Some(Some(v)) => Some(Some(cache_hit(&v)?)),
    };
    let plan = admin
        .store
        .update_plan(&caller.actor(), &name, m, models, hit)
        .await?;
    Ok(Json(plan.view()).into_response())
}

/// `DELETE /admin/v1/plans/{name}`: only a plan no org is on (409 else).
pub(super) async fn delete_plan(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    admin.store.delete_plan(&caller.actor(), &name).await?;
    Ok(Json(json!({"name": name, "deleted": true})).into_response())
}

/// An org's pricing as the admin API shows it.
pub fn org_pricing_view(org: uuid::Uuid, p: &OrgPricing) -> Value {
    let models = crate::pricing::multipliers_view;
    json!({
        "org_id": org,
        "plan": p.plan,
        "multiplier": p.multiplier_ppb.map(format_multiplier),
        "model_multipliers": models(&p.model_multipliers),
        "plan_multiplier": p.plan_multiplier_ppb.map(format_multiplier),
        "plan_model_multipliers": models(&p.plan_model_multipliers),
        "plan_cache_hit_multiplier": p.cache_hit_ppb.map(format_multiplier),
    })
}

/// `GET /admin/v1/orgs/{id}/pricing`.
pub(super) async fn get_org_pricing(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let org = visible_org(&caller, &id)?;
    let p = admin.store.org_pricing(org).await?;
    Ok(Json(org_pricing_view(org, &p)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingPut {
    plan: Option<String>,
    #[serde(default)]
    multiplier: Option<String>,
    #[serde(default)]
    model_multipliers: BTreeMap<String, String>,
}

/// `PUT /admin/v1/orgs/{id}/pricing {plan, multiplier?, model_multipliers?}`:
/// the org's plan (`null`: none) and its own multipliers, replacing what it
/// had.
pub(super) async fn put_org_pricing(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let org = id_of(&id, "org")?;
    let req: PricingPut = parse(&body)?;
    let m = req
        .multiplier
        .as_deref()
        .map(|m| multiplier("multiplier", m))
        .transpose()?;
    let models = multipliers(req.model_multipliers)?;
    let p = admin
        .store
        .set_org_pricing(&caller.actor(), org, req.plan, m, models)
        .await?;
    Ok(Json(org_pricing_view(org, &p)).into_response())
}
