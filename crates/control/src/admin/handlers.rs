//! The admin API's handlers for tenants (orgs, projects, keys) and what
//! every handler shares: parse, check the caller may see the target
//! (another org's things are 404, as if they did not exist), call the store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Admin, AdminError, Caller};
use crate::keytable::{nanos_to_usd, usd_to_nanos};
use crate::store::KeySpec;
use crate::views::{Filter, KeyPatch, LimitChange, LimitTarget, Page, PageAt, Rename};

pub(super) type Answer = Result<Response, AdminError>;

/// The longest name accepted, in characters.
const MAX_NAME: usize = 1024;
/// The longest grace a rotation may give the old secret: 30 days.
const MAX_GRACE_SECONDS: u32 = 30 * 24 * 3600;
/// The most scopes, networks or metadata bytes a key may carry.
const MAX_LIST: usize = 256;
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    if body.is_empty() {
        return Err(AdminError::invalid("The body must be a JSON object."));
    }
    let bad = |e: serde_json::Error| AdminError::invalid(format!("Invalid body: {e}."));
    let value: Value = serde_json::from_slice(body).map_err(bad)?;
    if !value.is_object() {
        return Err(AdminError::invalid(
            "Invalid body: it must be a JSON object.",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if at == "." {
            bad(inner)
        } else {
            AdminError::invalid(format!("Invalid body: '{at}': {inner}."))
        }
    })
}

pub(super) fn name(field: &str, s: &str) -> Result<(), AdminError> {
    if s.trim().is_empty() {
        return Err(AdminError::invalid(format!("'{field}' must not be empty.")));
    }
    if s.chars().count() > MAX_NAME {
        return Err(AdminError::invalid(format!(
            "'{field}' is longer than {MAX_NAME} characters."
        )));
    }
    // PostgreSQL text cannot hold NUL; every other character is kept as sent.
    if s.contains('\0') {
        return Err(AdminError::invalid(format!(
            "'{field}' must not contain a NUL character."
        )));
    }
    Ok(())
}

fn status(s: &str) -> Result<(), AdminError> {
    match s {
        "active" | "disabled" => Ok(()),
        _ => Err(AdminError::invalid(
            "'status' must be \"active\" or \"disabled\".",
        )),
    }
}

pub(super) fn id_of(raw: &str, what: &str) -> Result<Uuid, AdminError> {
    Uuid::parse_str(raw).map_err(|_| AdminError::not_found(what))
}

/// The org `raw` names, if the caller may see it (else 404, as if it did
/// not exist).
pub(super) fn visible_org(caller: &Caller, raw: &str) -> Result<Uuid, AdminError> {
    let org = id_of(raw, "org")?;
    if !caller.sees(org) {
        return Err(AdminError::not_found("org"));
    }
    Ok(org)
}

pub(super) fn uuid_param(
    q: &HashMap<String, String>,
    field: &str,
) -> Result<Option<Uuid>, AdminError> {
    q.get(field)
        .map(|v| {
            Uuid::parse_str(v)
                .map_err(|_| AdminError::invalid(format!("'{field}' must be an id (a UUID).")))
        })
        .transpose()
}

/// `?limit=`: `default` when absent, else an integer from 1 to `max`.
pub(super) fn limit_param(
    q: &HashMap<String, String>,
    default: u32,
    max: u32,
) -> Result<u32, AdminError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                AdminError::invalid(format!("'limit' must be an integer from 1 to {max}."))
            }),
    }
}

fn page_at(q: &HashMap<String, String>) -> Result<PageAt, AdminError> {
    Ok(PageAt {
        after: uuid_param(q, "after")?,
        limit: limit_param(q, 20, 100)?,
    })
}

/// The org a list is narrowed to: the caller's own, or the one asked for
/// (which a caller limited to another org may not ask for).
pub(super) fn org_filter(caller: &Caller, asked: Option<Uuid>) -> Result<Option<Uuid>, AdminError> {
    match (caller.org_id, asked) {
        (Some(mine), Some(asked)) if mine != asked => Err(AdminError::not_found("org")),
        (Some(mine), _) => Ok(Some(mine)),
        (None, asked) => Ok(asked),
    }
}

fn list<T: serde::Serialize>(page: Page<T>, id: impl Fn(&T) -> Uuid) -> Response {
    let last = page.data.last().map(&id);
    let first = page.data.first().map(&id);
    Json(json!({
        "object": "list",
        "data": page.data,
        "first_id": first,
        "last_id": last,
        "has_more": page.has_more,
    }))
    .into_response()
}

pub(super) fn created(v: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// One scope's rate limits as the admin API takes them.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct LimitSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
}

/// The most models one scope may list limits for.
const MAX_MODEL_LIMITS: usize = 256;

/// Per-model limits as the admin API takes them.
type ModelLimits = std::collections::BTreeMap<String, LimitSet>;

/// `limits`, `model_limits`, `budget` and `lower_max_tokens` as a request
/// gave them, checked, as the JSON the store keeps (none: not given).
struct LimitFields;

/// The largest budget, USD (a billion).
const MAX_BUDGET_USD: i64 = 1_000_000_000;

/// A budget as the admin API takes it: `{"usd": "12.50", "period": "month"}`
/// (`day`, `month` or `none`; `month` when left out), checked and in its
/// canonical form; a null removes the budget.
fn checked_budget(v: &Value) -> Result<Value, AdminError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let bad = |why: &str| AdminError::invalid(format!("'budget' {why}"));
    let obj = v.as_object().ok_or_else(|| {
        bad("must be an object like {\"usd\": \"12.50\", \"period\": \"month\"}, or null.")
    })?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "usd" | "period")) {
        return Err(bad(&format!(
            "has an unknown field '{k}' (it takes 'usd' and 'period')."
        )));
    }
    let usd = match obj.get("usd") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad("needs 'usd', an amount like \"12.50\".")),
    };
    let nanos = usd_to_nanos(&usd)
        .filter(|n| *n > 0 && *n <= MAX_BUDGET_USD * 1_000_000_000)
        .ok_or_else(|| bad(&format!("'usd' must be an amount from 0.000001 to {MAX_BUDGET_USD} with at most six decimals, not '{usd}'.")))?;
    let period = match obj.get("period") {
        None => "month",
        Some(Value::String(p)) if matches!(p.as_str(), "day" | "month" | "none") => p.as_str(),
        Some(_) => return Err(bad("'period' must be \"day\", \"month\" or \"none\".")),
    };
    Ok(json!({"usd": nanos_to_usd(nanos), "period": period}))
}

/// A session cap as the admin API takes it: `{"usd": "1.00"}` (no period:
/// a session's requests together), or null to remove it.
fn checked_session_budget(v: &Value) -> Result<Value, AdminError> {
    if v.get("period").is_some_and(|p| p != "none") {
        return Err(AdminError::invalid(
            "'session_budget' has no period (a session's requests together).",
        ));
    }
    let mut v = checked_budget(v).map_err(|e| AdminError {
        message: e.message.replacen("'budget'", "'session_budget'", 1),
        ..e
    })?;
    if let Some(o) = v.as_object_mut() {
        o.insert("period".into(), json!("none"));
    }
    Ok(v)
}

impl LimitFields {
    fn checked(
        limits: Option<LimitSet>,
        model_limits: Option<ModelLimits>,
        budget: Option<Value>,
        lower_max_tokens: Option<bool>,
    ) -> Result<LimitChange, AdminError> {
        let one = |at: &str, l: &LimitSet| -> Result<Value, AdminError> {
            for (field, v) in [
                ("rpm", l.rpm),
                ("tpm", l.tpm),
                ("concurrency", l.concurrency),
            ] {
                if v.is_some_and(|n| n == 0 || n > 1_000_000_000) {
                    return Err(AdminError::invalid(format!(
                        "'{at}.{field}' must be from 1 to 1000000000 (leave it out for no limit)."
                    )));
                }
            }
            Ok(serde_json::to_value(l).unwrap_or_else(|_| json!({})))
        };
        let limits = limits.as_ref().map(|l| one("limits", l)).transpose()?;
        let models = match &model_limits {
            None => None,
            Some(m) if m.len() > MAX_MODEL_LIMITS => {
                return Err(AdminError::invalid(format!(
                    "'model_limits' holds more than {MAX_MODEL_LIMITS} models."
                )));
            }
            Some(m) => {
                let mut out = serde_json::Map::new();
                for (model, l) in m {
                    name("model_limits key", model)?;
                    out.insert(model.clone(), one(&format!("model_limits.{model}"), l)?);
                }
                Some(Value::Object(out))
            }
        };
        Ok(LimitChange {
            limits,
            model_limits: models,
            budget: budget.as_ref().map(checked_budget).transpose()?,
            lower_max_tokens,
            prepaid: None,
            session_budget: None,
            cache: None,
        })
    }
}

/// A field that is present (even as null) is `Some`; an absent one `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Sets the limits `fields` give on `target`, if they give any.
async fn apply_limits(
    admin: &Admin,
    caller: &Caller,
    target: crate::views::LimitTarget,
    fields: &LimitChange,
) -> Result<(), AdminError> {
    if !fields.given() {
        return Ok(());
    }
    admin
        .store
        .set_limits(&caller.actor(), target, fields)
        .await?;
    Ok(())
}

pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({
        "name": caller.name,
        "role": caller.role.as_str(),
        "org_id": caller.org_id,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    name: String,
    #[serde(default)]
    limits: Option<LimitSet>,
    #[serde(default)]
    model_limits: Option<ModelLimits>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Value>,
}

pub(super) async fn create_org(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewOrg = parse(&body)?;
    name("name", &req.name)?;
    let limits = LimitFields::checked(req.limits, req.model_limits, req.budget, None)?;
    let id = admin.store.create_org(&caller.actor(), &req.name).await?;
    apply_limits(&admin, &caller, LimitTarget::Org(id), &limits).await?;
    Ok(created(admin.store.org(id).await?))
}

pub(super) async fn list_orgs(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let filter = Filter {
        org_id: caller.org_id,
        project_id: None,
    };
    let page = admin.store.orgs(filter, page_at(&q)?).await?;
    Ok(list(page, |o| o.id))
}

pub(super) async fn get_org(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = visible_org(&caller, &id)?;
    Ok(Json(admin.store.org(id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limits: Option<LimitSet>,
    #[serde(default)]
    model_limits: Option<ModelLimits>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Value>,
    #[serde(default)]
    lower_max_tokens: Option<bool>,
    #[serde(default)]
    prepaid: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    session_budget: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    cache: Option<Option<bool>>,
}

impl Change {
    /// The change, checked; `lower_max_tokens` is a project's alone,
    /// `prepaid` an org's.
    fn checked(self, project: bool) -> Result<(Rename, LimitChange), AdminError> {
        if !project && self.lower_max_tokens.is_some() {
            return Err(AdminError::invalid(
                "'lower_max_tokens' is a project's setting.".to_owned(),
            ));
        }
        if project && self.prepaid.is_some() {
            return Err(AdminError::invalid(
                "'prepaid' is an org's setting.".to_owned(),
            ));
        }
        if !project && self.session_budget.is_some() {
            return Err(AdminError::invalid(
                "'session_budget' is a project's setting.".to_owned(),
            ));
        }
        if !project && self.cache.is_some() {
            return Err(AdminError::invalid(
                "'cache' is a project's setting.".to_owned(),
            ));
        }
        let prepaid = self.prepaid;
        let session_budget = self
            .session_budget
            .as_ref()
            .map(checked_session_budget)
            .transpose()?;
        if let Some(n) = &self.name {
            name("name", n)?;
        }
        if let Some(s) = &self.status {
            status(s)?;
        }
        let mut limits = LimitFields::checked(
            self.limits,
            self.model_limits,
            self.budget,
            self.lower_max_tokens,
        )?;
        limits.prepaid = prepaid;
        limits.session_budget = session_budget;
        limits.cache = self.cache;
        Ok((
            Rename {
                name: self.name,
                status: self.status,
            },
            limits,
        ))
    }
}

pub(super) async fn patch_org(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let id = id_of(&id, "org")?;
    let (change, limits) = parse::<Change>(&body)?.checked(false)?;
    // A change of limits alone writes only its own audit row.
    let mut org = if change == Rename::default() && limits.given() {
        admin.store.org(id).await?
    } else {
        admin.store.update_org(&caller.actor(), id, &change).await?
    };
    if limits.given() {
        apply_limits(&admin, &caller, LimitTarget::Org(id), &limits).await?;
        org = admin.store.org(id).await?;
    }
    Ok(Json(org).into_response())
}

pub(super) async fn disable_org(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = id_of(&id, "org")?;
    let change = Rename {
        name: None,
        status: Some("disabled".into()),
    };
    let org = admin.store.update_org(&caller.actor(), id, &change).await?;
    Ok(Json(org).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    org_id: Uuid,
    name: String,
    #[serde(default)]
    limits: Option<LimitSet>,
    #[serde(default)]
    model_limits: Option<ModelLimits>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Value>,
    #[serde(default)]
    lower_max_tokens: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    session_budget: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    cache: Option<Option<bool>>,
}

pub(super) async fn create_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewProject = parse(&body)?;
    name("name", &req.name)?;
    let mut limits = LimitFields::checked(
        req.limits,
        req.model_limits,
        req.budget,
        req.lower_max_tokens,
    )?;
    limits.session_budget = req
        .session_budget
        .as_ref()
        .map(checked_session_budget)
        .transpose()?;
    limits.cache = req.cache;
    if !caller.sees(req.org_id) {
        return Err(AdminError::not_found("org"));
    }
    let id = admin
        .store
        .create_project(&caller.actor(), req.org_id, &req.name)
        .await?;
    apply_limits(&admin, &caller, LimitTarget::Project(id), &limits).await?;
    Ok(created(admin.store.project(id).await?))
}

pub(super) async fn list_projects(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let filter = Filter {
        org_id: org_filter(&caller, uuid_param(&q, "org_id")?)?,
        project_id: None,
    };
    let page = admin.store.projects(filter, page_at(&q)?).await?;
    Ok(list(page, |p| p.id))
}

/// The project, if the caller may see it.
async fn visible_project(
    admin: &Admin,
    caller: &Caller,
    raw: &str,
) -> Result<crate::views::ProjectView, AdminError> {
    let id = id_of(raw, "project")?;
    let project = admin.store.project(id).await?;
    if !caller.sees(project.org_id) {
        return Err(AdminError::not_found("project"));
    }
    Ok(project)
}

pub(super) async fn get_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    Ok(Json(visible_project(&admin, &caller, &id).await?).into_response())
}

pub(super) async fn patch_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let project = visible_project(&admin, &caller, &id).await?;
    let (change, limits) = parse::<Change>(&body)?.checked(true)?;
    let mut project = if change == Rename::default() && limits.given() {
        project
    } else {
        admin
            .store
            .update_project(&caller.actor(), project.id, &change)
            .await?
    };
    if limits.given() {
        apply_limits(&admin, &caller, LimitTarget::Project(project.id), &limits).await?;
        project = admin.store.project(project.id).await?;
    }
    Ok(Json(project).into_response())
}

pub(super) async fn disable_project(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let project = visible_project(&admin, &caller, &id).await?;
    let change = Rename {
        name: None,
        status: Some("disabled".into()),
    };
    let project = admin
        .store
        .update_project(&caller.actor(), project.id, &change)
        .await?;
    Ok(Json(project).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scopes {
    models: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    project_id: Uuid,
    name: String,
    #[serde(default)]
    scopes: Option<Scopes>,
    /// Unix seconds.
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    limits: Option<LimitSet>,
    #[serde(default)]
    model_limits: Option<ModelLimits>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Value>,
}

fn models(scopes: Scopes) -> Result<Vec<String>, AdminError> {
    if scopes.models.len() > MAX_LIST {
        return Err(AdminError::invalid(format!(
            "'scopes.models' holds more than {MAX_LIST} names."
        )));
    }
    for m in &scopes.models {
        name("scopes.models[]", m)?;
    }
    Ok(scopes.models)
}

fn cidrs(list: Vec<String>) -> Result<Vec<ipnet::IpNet>, AdminError> {
    if list.len() > MAX_LIST {
        return Err(AdminError::invalid(format!(
            "'allowed_cidrs' holds more than {MAX_LIST} networks."
        )));
    }
    list.iter()
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    AdminError::invalid(format!(
                        "'allowed_cidrs': '{c}' is not a network like \"10.0.0.0/8\" or an address."
                    ))
                })
        })
        .collect()
}

fn metadata(v: Value) -> Result<Value, AdminError> {
    if !v.is_object() {
        return Err(AdminError::invalid("'metadata' must be a JSON object."));
    }
    if v.to_string().len() > MAX_METADATA_BYTES {
        return Err(AdminError::invalid(format!(
            "'metadata' is larger than {MAX_METADATA_BYTES} bytes."
        )));
    }
    if v.to_string().contains("\\u0000") {
        return Err(AdminError::invalid(
            "'metadata' must not contain a NUL character.",
        ));
    }
    Ok(v)
}

/// A key's default tags: an object of at most 16 string values, each a valid
/// tag (docs/analytics.md).
fn tags(v: Value) -> Result<Value, AdminError> {
    use sy_protocol::tag;
    let Some(m) = v.as_object() else {
        return Err(AdminError::invalid(
            "'tags' must be a JSON object of strings.",
        ));
    };
    if m.len() > tag::MAX_TAGS {
        return Err(AdminError::invalid(format!(
            "'tags' holds more than {} tags.",
            tag::MAX_TAGS
        )));
    }
    for (k, x) in m {
        match x.as_str() {
            Some(s) if tag::valid_key(k) && tag::valid_value(s) => {}
            _ => {
                return Err(AdminError::invalid(format!(
                    "'tags': '{}' is not a tag: values are strings; {}.",
                    k.chars().take(80).collect::<String>(),
                    tag::RULES
                )));
            }
        }
    }
    Ok(v)
}

fn expiry_ms(secs: i64) -> Result<i64, AdminError> {
    // Year 1970 to 9999: what PostgreSQL's timestamptz and people both mean.
    if !(0..=253_402_300_799).contains(&secs) {
        return Err(AdminError::invalid(
            "'expires_at' must be a time in Unix seconds.",
        ));
    }
    Ok(secs * 1000)
}

/// The key, if the caller may see it.
async fn visible_key(
    admin: &Admin,
    caller: &Caller,
    raw: &str,
) -> Result<crate::views::KeyView, AdminError> {
    let id = id_of(raw, "key")?;
    let key = admin.store.key(id).await?;
    if !caller.sees(key.org_id) {
        return Err(AdminError::not_found("key"));
    }
    Ok(key)
}

/// A key's view with its secret: the only answers that ever carry one.
fn with_secret(view: crate::views::KeyView, key: &str) -> Value {
    let mut v = serde_json::to_value(view).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), Value::String(key.to_owned()));
    }
    v
}

pub(super) async fn create_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewKey = parse(&body)?;
    name("name", &req.name)?;
    let limits = LimitFields::checked(req.limits, req.model_limits, req.budget, None)?;
    let spec = KeySpec {
        name: req.name,
        models: req.scopes.map(models).transpose()?,
        expires_at_ms: req.expires_at.map(expiry_ms).transpose()?,
        allowed_cidrs: cidrs(req.allowed_cidrs.unwrap_or_default())?,
        metadata: metadata(req.metadata.unwrap_or_else(|| json!({})))?,
        tags: tags(req.tags.unwrap_or_else(|| json!({})))?,
    };
    let project = admin.store.project(req.project_id).await?;
    if !caller.sees(project.org_id) {
        return Err(AdminError::not_found("project"));
    }
    let (id, new) = admin
        .store
        .create_key(&caller.actor(), project.id, &spec)
        .await?;
    apply_limits(&admin, &caller, LimitTarget::Key(id), &limits).await?;
    let view = admin.store.key(id).await?;
    Ok(created(with_secret(view, &new.key)))
}

pub(super) async fn list_keys(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let filter = Filter {
        org_id: org_filter(&caller, uuid_param(&q, "org_id")?)?,
        project_id: uuid_param(&q, "project_id")?,
    };
    let page = admin.store.keys(filter, page_at(&q)?).await?;
    Ok(list(page, |k| k.id))
}

pub(super) async fn get_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    Ok(Json(visible_key(&admin, &caller, &id).await?).into_response())
}

/// `null` and absent apart: `Some(None)` is an explicit null.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyChange {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    scopes: Option<Option<Scopes>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<i64>>,
    #[serde(default)]
    allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    limits: Option<LimitSet>,
    #[serde(default)]
    model_limits: Option<ModelLimits>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Value>,
}

pub(super) async fn patch_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let key = visible_key(&admin, &caller, &id).await?;
    let req: KeyChange = parse(&body)?;
    if let Some(n) = &req.name {
        name("name", n)?;
    }
    let limits = LimitFields::checked(req.limits, req.model_limits, req.budget, None)?;
    let patch = KeyPatch {
        name: req.name,
        models: req.scopes.map(|s| s.map(models).transpose()).transpose()?,
        expires_at_ms: req
            .expires_at
            .map(|e| e.map(expiry_ms).transpose())
            .transpose()?,
        allowed_cidrs: req.allowed_cidrs.map(cidrs).transpose()?,
        metadata: req.metadata.map(metadata).transpose()?,
        tags: req.tags.map(tags).transpose()?,
    };
    let mut key = if patch == KeyPatch::default() && limits.given() {
        key
    } else {
        admin
            .store
            .update_key(&caller.actor(), key.id, &patch)
            .await?
    };
    if limits.given() {
        apply_limits(&admin, &caller, LimitTarget::Key(key.id), &limits).await?;
        key = admin.store.key(key.id).await?;
    }
    Ok(Json(key).into_response())
}

pub(super) async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let key = visible_key(&admin, &caller, &id).await?;
    admin.store.revoke_key(&caller.actor(), key.id).await?;
    Ok(Json(admin.store.key(key.id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    grace_seconds: u32,
}

pub(super) async fn rotate_key(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let key = visible_key(&admin, &caller, &id).await?;
    let req: Rotate = if body.is_empty() {
        Rotate { grace_seconds: 0 }
    } else {
        parse(&body)?
    };
    if req.grace_seconds > MAX_GRACE_SECONDS {
        return Err(AdminError::invalid(format!(
            "'grace_seconds' must be at most {MAX_GRACE_SECONDS} (30 days)."
        )));
    }
    let new = admin
        .store
        .rotate_key(&caller.actor(), key.id, req.grace_seconds)
        .await?;
    let view = admin.store.key(key.id).await?;
    Ok(Json(with_secret(view, &new.key)).into_response())
}
