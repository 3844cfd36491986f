//! The admin API's handlers for provider credentials, admin tokens, the
//! audit log and usage (the tenants' own are in `handlers`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::handlers::{Answer, created, id_of, name, org_filter, parse, uuid_param, visible_org};
use super::{Admin, AdminError, Caller};
use crate::views::AuditQuery;

pub(super) async fn audit(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let limit = super::handlers::limit_param(&q, 50, 500)?;
    let before_seq = q
        .get("before")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| AdminError::invalid("'before' must be a row's seq."))
        })
        .transpose()?;
    let query = AuditQuery {
        before_seq,
        target_kind: q.get("target_kind").cloned(),
        target_id: q.get("target_id").cloned(),
        actor: q.get("actor").cloned(),
        action: q.get("action").cloned(),
        limit,
    };
    let rows = admin.store.audit_rows(&query).await?;
    let next = if rows.len() == limit as usize {
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(Json(json!({"object": "list", "data": rows, "next_before": next})).into_response())
}

/// The credentials setup, or a 503 saying what is missing.
fn sealing(admin: &Admin) -> Result<&super::Credentials, AdminError> {
    admin.credentials.as_ref().ok_or_else(|| {
        AdminError::not_configured(
            "Provider credentials need a master key: [credentials] master_key in the config.",
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    provider: String,
    #[serde(default)]
    org_id: Option<Uuid>,
    api_key: String,
}

pub(super) async fn set_credential(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let setup = sealing(&admin)?;
    let req: NewCredential = parse(&body)?;
    if !setup.providers.contains(&req.provider) {
        return Err(AdminError::invalid(format!(
            "'provider': no provider entry '{}' in the config.",
            req.provider
        )));
    }
    let secret = provider_secret(&req.api_key)?;
    // An org's token sets its own org's credential; a global one needs the deployment.
    let org_id = match (caller.org_id, req.org_id) {
        (Some(mine), None) => Some(mine),
        (Some(mine), Some(asked)) if asked != mine => return Err(AdminError::not_found("org")),
        (_, asked) => asked,
    };
    let view = admin
        .store
        .set_credential(&caller.actor(), &setup.keys, org_id, &req.provider, secret)
        .await?;
    Ok(Json(view).into_response())
}

pub(super) async fn list_credentials(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    sealing(&admin)?;
    let org = org_filter(&caller, uuid_param(&q, "org_id")?)?;
    let data = admin.store.credentials(org).await?;
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})).into_response())
}

async fn visible_credential(
    admin: &Admin,
    caller: &Caller,
    raw: &str,
) -> Result<crate::credentials::CredentialView, AdminError> {
    sealing(admin)?;
    let id = id_of(raw, "credential")?;
    let c = admin.store.credential(id).await?;
    // A global credential is the deployment's; an org's token does not see it.
    if caller.org_id.is_some() && c.org_id != caller.org_id {
        return Err(AdminError::not_found("credential"));
    }
    Ok(c)
}

pub(super) async fn get_credential(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    Ok(Json(visible_credential(&admin, &caller, &id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialChange {
    api_key: String,
}

/// Checks a provider secret as a client sent it.
fn provider_secret(raw: &str) -> Result<&str, AdminError> {
    let secret = raw.trim();
    if secret.is_empty() || secret.len() > 4096 || secret.chars().any(char::is_control) {
        return Err(AdminError::invalid(
            "'api_key' must be 1 to 4096 characters, none of them control characters.",
        ));
    }
    Ok(secret)
}

pub(super) async fn patch_credential(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let c = visible_credential(&admin, &caller, &id).await?;
    let setup = sealing(&admin)?;
    let req: CredentialChange = parse(&body)?;
    let secret = provider_secret(&req.api_key)?;
    let view = admin
        .store
        .set_credential(&caller.actor(), &setup.keys, c.org_id, &c.provider, secret)
        .await?;
    Ok(Json(view).into_response())
}

pub(super) async fn delete_credential(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let c = visible_credential(&admin, &caller, &id).await?;
    admin.store.delete_credential(&caller.actor(), c.id).await?;
    Ok(Json(json!({"id": c.id, "deleted": true})).into_response())
}

/// `GET /admin/v1/usage?org_id&project_id&key_id&start&end&group_by`: any
/// tenant's usage and cost from ClickHouse; an org's token sees its own org's.
pub(super) async fn usage(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let Some(ch) = &admin.clickhouse else {
        return Err(AdminError::not_configured(
            "Usage needs [clickhouse] in the config.",
        ));
    };
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "org_id" | "project_id" | "key_id" | "start" | "end" | "group_by"
        ) {
            return Err(AdminError::invalid(format!(
                "Unknown parameter '{k}'; use org_id, project_id, key_id, start, end and group_by."
            )));
        }
    }
    let org = org_filter(&caller, uuid_param(&q, "org_id")?)?.map(|o| o.to_string());
    let project = uuid_param(&q, "project_id")?.map(|p| p.to_string());
    // A key's id is a UUID (tenants) or a config key's name.
    let key = q.get("key_id").cloned();
    let now = u32::try_from(sy_protocol::now_unix_ms() / 1000).unwrap_or(u32::MAX);
    let instant = |name: &str, default: u32| match q.get(name) {
        None => Ok(default),
        Some(v) => sy_accounting::parse_instant(v).ok_or_else(|| {
            AdminError::invalid(format!(
                "'{name}' must be a date like 2026-11-01 or Unix seconds."
            ))
        }),
    };
    let end = instant("end", now.saturating_add(1))?;
    let start = instant("start", end.saturating_sub(30 * 86_400))?;
    if start >= end {
        return Err(AdminError::invalid("'start' must be before 'end'."));
    }
    let group_by = match q.get("group_by") {
        None => sy_accounting::GroupBy::Model,
        Some(g) => sy_accounting::GroupBy::parse(g).ok_or_else(|| {
            AdminError::invalid("'group_by' must be model, day, org, project, key or tag:<key>.")
        })?,
    };
    let scope = sy_accounting::UsageScope {
        org_id: org.as_deref(),
        project_id: project.as_deref(),
        key_id: key.as_deref(),
    };
    let data = sy_accounting::usage(ch, scope, start, end, group_by.clone())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "An admin usage query failed.");
            AdminError::not_configured("Usage could not be read; retry shortly.")
        })?;
    Ok(Json(json!({
        "object": "list", "org_id": org, "project_id": project, "key_id": key,
        "start": start, "end": end, "group_by": group_by, "data": data,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminToken {
    name: String,
    role: String,
    #[serde(default)]
    org_id: Option<Uuid>,
}

pub(super) async fn create_admin_token(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let req: NewAdminToken = parse(&body)?;
    name("name", &req.name)?;
    if super::roles::Role::parse(&req.role).is_none() {
        return Err(AdminError::invalid(
            "'role' must be owner, admin, operator, billing or viewer.",
        ));
    }
    // An org's owner issues tokens for its own org only.
    let org_id = match (caller.org_id, req.org_id) {
        (Some(mine), None) => Some(mine),
        (Some(mine), Some(asked)) if asked != mine => return Err(AdminError::not_found("org")),
        (_, asked) => asked,
    };
    let (view, new) = admin
        .store
        .create_admin_token(&caller.actor(), &req.name, &req.role, org_id)
        .await?;
    let mut v = serde_json::to_value(view).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("token".into(), Value::String(new.key));
    }
    Ok(created(v))
}

pub(super) async fn list_admin_tokens(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
) -> Answer {
    let data = admin.store.admin_tokens(caller.org_id).await?;
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})).into_response())
}

pub(super) async fn revoke_admin_token(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let id = id_of(&id, "admin token")?;
    let token = admin.store.admin_token(id).await?;
    if caller.org_id.is_some() && token.org_id != caller.org_id {
        return Err(AdminError::not_found("admin token"));
    }
    admin.store.revoke_admin_token(&caller.actor(), id).await?;
    Ok(Json(admin.store.admin_token(id).await?).into_response())
}

/// A top-up to make: `amount` in the currency's minor units.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopup {
    provider: String,
    amount: i64,
    currency: String,
}

/// The smallest and largest top-up, by what it credits: $0.50 (Stripe's
/// minimum) to $1,000,000.
const TOPUP_NANOS: std::ops::RangeInclusive<i64> = 500_000_000..=1_000_000_000_000_000;

/// How many unpaid top-ups an org may make in an hour.
pub const MAX_UNPAID_ORDERS_PER_HOUR: i64 = 20;

/// `POST /admin/v1/orgs/{id}/topups {provider, amount, currency}`: an order
/// bound to one provider, amount and currency, and where to pay it; the
/// order credits its amount once the provider confirms the payment.
pub(super) async fn create_topup(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let org = visible_org(&caller, &id)?;
    Ok(created(top_up(&admin, &caller.actor(), org, &body).await?))
}

/// Makes a top-up order for `org` from a `{provider, amount, currency}` body
/// and asks its payment provider where to pay it: the admin API's
/// `POST /admin/v1/orgs/{id}/topups` and a customer's `POST /v1/billing/topups`
/// (`actor` is who asked, for the audit log). What the order credits is
/// fixed now: the amount at the configured rate of its currency.
pub async fn top_up(
    admin: &Admin,
    actor: &crate::audit::Actor,
    org: Uuid,
    body: &Bytes,
) -> Result<Value, AdminError> {
    use sy_billing::Provider;
    let req: NewTopup = parse(body)?;
    let provider = match req.provider.as_str() {
        "stripe" => Provider::Stripe,
        "yookassa" => Provider::Yookassa,
        other => {
            return Err(AdminError::invalid(format!(
                "'provider' must be \"stripe\" or \"yookassa\", not '{other}'."
            )));
        }
    };
    /// Who makes the payment.
    enum Maker<'a> {
        Stripe(&'a sy_billing::stripe::Checkout),
        Yookassa(&'a sy_billing::yookassa::Client),
    }
    let topups = admin.topups.as_ref();
    let maker = topups.and_then(|t| match provider {
        Provider::Stripe => t.stripe.as_ref().map(Maker::Stripe),
        Provider::Yookassa => t.yookassa.as_ref().map(Maker::Yookassa),
    });
    let (Some(t), Some(maker)) = (topups, maker) else {
        return Err(AdminError::not_configured(match provider {
            Provider::Stripe => {
                "Top-ups through Stripe need [billing.stripe] secret_key in the config."
            }
            Provider::Yookassa => "Top-ups through YooKassa need [billing.yookassa] in the config.",
        }));
    };
    let currency = req.currency.to_ascii_lowercase();
    let Some(credit_nanos) = t.rates.credit_nanos(req.amount, &currency) else {
        return Err(AdminError::invalid(format!(
            "'currency' must be one of {} (others need [billing.exchange_rates]), not '{}'.",
            t.rates.currencies().join(", "),
            req.currency
        )));
    };
    if !TOPUP_NANOS.contains(&credit_nanos) {
        return Err(AdminError::invalid(format!(
            "'amount' is in the currency's minor units (cents, kopecks) and must come to \
             $0.50 to $1,000,000; {} {currency} comes to ${}.",
            req.amount,
            crate::keytable::nanos_to_usd(credit_nanos)
        )));
    }
    let new = crate::payments::NewOrder {
        org,
        provider,
        amount: req.amount,
        currency: &currency,
        credit_nanos,
    };
    // Each order is a call to the provider's API, shared by every tenant:
    // one org cannot make more than a few unpaid ones an hour.
    let unpaid = admin.store.recent_unpaid_orders(org).await?;
    if unpaid >= MAX_UNPAID_ORDERS_PER_HOUR {
        return Err(AdminError::too_many(format!(
            "This org made {unpaid} top-ups in the last hour that are not paid yet; pay one or retry later."
        )));
    }
    let order = admin.store.create_order(actor, new).await?;
    let unpaid = |e: &dyn std::fmt::Display| {
        tracing::warn!(order = %order.id, error = %e, "A payment provider did not make a payment.");
        AdminError::provider_failed(format!("{e} (order {} stays unpaid)", order.id))
    };
    let (reference, url) = match maker {
        Maker::Stripe(checkout) => {
            let s = checkout
                .session(&t.http, &order.id, order.amount, &order.currency)
                .await
                .map_err(|e| unpaid(&e))?;
            (s.id, s.url)
        }
        Maker::Yookassa(client) => {
            let p = client
                .create_payment(&t.http, &order.id, order.amount, &order.currency)
                .await
                .map_err(|e| unpaid(&e))?;
            (p.id, p.confirmation_url.unwrap_or_default())
        }
    };
    admin.store.set_payment_ref(&order.id, &reference).await?;
    Ok(json!({
        "order_id": order.id, "org_id": org, "provider": provider.as_str(),
        "amount": order.amount, "currency": order.currency,
        "status": order.status, "payment_url": url,
    }))
}

/// A credit (or, negative, an adjustment) to an org's prepaid balance.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredit {
    /// USD, e.g. `"25.00"`; negative for an adjustment down.
    usd: Value,
    /// The caller's reference: crediting the same reference again credits nothing.
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    note: String,
}

/// An org's balance as the admin API (and, for the caller's own org,
/// `GET /v1/billing/balance`) shows it: micro-USD as an integer (rounded
/// down), and the exact figures as decimal USD strings.
pub fn balance_view(org: Uuid, b: &crate::ledger::Balance) -> Value {
    use crate::keytable::nanos_to_usd;
    json!({
        "org_id": org,
        "currency": "usd",
        "balance_micros": b.balance_nanos.div_euclid(1000),
        "prepaid": b.prepaid,
        "balance_usd": nanos_to_usd(b.balance_nanos),
        "credited_usd": nanos_to_usd(b.credited_nanos),
        "debited_usd": nanos_to_usd(b.debited_nanos),
    })
}

pub(super) async fn credit_org(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    let org = visible_org(&caller, &id)?;
    let req: NewCredit = parse(&body)?;
    let text = match &req.usd {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(AdminError::invalid(
                "'usd' must be an amount like \"25.00\".",
            ));
        }
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let nanos = crate::keytable::usd_to_nanos(digits)
        .filter(|n| *n > 0 && *n <= 1_000_000_000 * 1_000_000_000)
        .map(|n| if negative { -n } else { n })
        .ok_or_else(|| {
            AdminError::invalid(format!(
                "'usd' must be a non-zero amount of at most 10^9 USD with at most six decimals, not '{text}'."
            ))
        })?;
    if req.reference.is_empty()
        || req.reference.len() > 200
        || req.reference.chars().any(char::is_control)
    {
        return Err(AdminError::invalid(
            "'ref' must be 1 to 200 characters without control characters.",
        ));
    }
    if req.note.len() > 1000 {
        return Err(AdminError::invalid("'note' holds at most 1000 bytes."));
    }
    let (balance, fresh) = admin
        .store
        .credit(&caller.actor(), org, nanos, &req.reference, &req.note)
        .await?;
    let mut v = balance_view(org, &balance);
    v["credited"] = json!(fresh);
    Ok(if fresh {
        created(v)
    } else {
        Json(v).into_response()
    })
}

pub(super) async fn org_balance(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Answer {
    let org = visible_org(&caller, &id)?;
    let b = admin.store.balance(org).await?;
    Ok(Json(balance_view(org, &b)).into_response())
}

/// `GET /admin/v1/orgs/{id}/invoices/{period}?format=json|csv`: the org's
/// invoice for a month (docs/billing.md), the same bytes every time it is
/// made from the same rows.
pub(super) async fn org_invoice(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path((id, period)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    use crate::invoices::InvoiceError;
    use axum::http::header;
    let org = visible_org(&caller, &id)?;
    if let Some(k) = q.keys().find(|k| k.as_str() != "format") {
        return Err(AdminError::invalid(format!(
            "Unknown parameter '{}'; use format.",
            k.chars().take(40).collect::<String>()
        )));
    }
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(AdminError::invalid("'format' must be json or csv.")),
    };
    let now = u32::try_from(sy_protocol::now_unix_ms() / 1000).unwrap_or(u32::MAX);
    // The period first: a bad one is the caller's mistake whatever is configured.
    if let Err(e) = crate::invoices::period(&period, now) {
        return Err(AdminError::invalid(format!("{e}.")));
    }
    let Some(ch) = &admin.clickhouse else {
        return Err(AdminError::not_configured(
            "Invoices need [clickhouse] in the config.",
        ));
    };
    let invoice = crate::invoices::invoice(&admin.store, ch, org, &period, now)
        .await
        .map_err(|e| match e {
            InvoiceError::BadPeriod(_) | InvoiceError::NotBegun(_) => {
                AdminError::invalid(format!("{e}."))
            }
            InvoiceError::Store(s) => s.into(),
            InvoiceError::Usage(_) => {
                tracing::warn!(error = %e, "An invoice could not be made.");
                AdminError::not_configured("Usage could not be read; retry shortly.")
            }
            InvoiceError::Figure(_) => {
                tracing::error!(error = %e, "An invoice could not be made.");
                AdminError::internal("The usage rows hold a figure that is not a decimal.")
            }
        })?;
    Ok(if csv {
        let file = format!("attachment; filename=\"invoice-{org}-{period}.csv\"");
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, file),
            ],
            invoice.to_csv(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            invoice.to_json(),
        )
            .into_response()
    })
}
