//! The admin API, `/admin/v1/...`: JSON over HTTP, described by
//! `schemas/admin-openapi.json`, mounted by the ingress. Every request
//! authenticates with an admin token (`Authorization: Bearer ...`), which
//! has a role and a scope (the whole deployment or one org); its route's
//! need ([`roles::ROUTES`]) is checked before the handler runs. Every write
//! goes through the store, with its audit row (actor, role, request id,
//! client address, before and after) in the same transaction.
//!
//! An admin token is not an API key: the ingress refuses it on `/v1`.
//!
//! The operator console ([`crate::console`]) calls the same routes with its
//! session cookie instead of the token: the session names the token that
//! signed in (looked up again on every call, so the same role applies), and
//! every write must carry the session's CSRF token in `x-csrf-token`.

mod handlers;
pub mod ingress;
mod operations;
mod pipelines;
mod pricing;
mod traffic;
pub use operations::{balance_view, top_up};
pub mod roles;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::Actor;
use crate::store::{Store, StoreError};
use roles::Role;

/// An admin token the deployment accepts (from its config or environment).
#[derive(Clone)]
pub struct AdminToken {
    /// Who it is, as the audit log names it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one org it is limited to, if any.
    pub org_id: Option<Uuid>,
    /// SHA-256 of the token (compared in constant time).
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("org_id", &self.org_id)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    /// A token `token` named `name` with `role`, limited to `org_id` if set.
    pub fn new(name: &str, token: &str, role: Role, org_id: Option<Uuid>) -> Self {
        AdminToken {
            name: name.to_owned(),
            role,
            org_id,
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `token` is this one (constant time in the token's content).
    fn matches(&self, digest: &[u8; 32]) -> bool {
        self.digest
            .iter()
            .zip(digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// What provider credentials are sealed with, and which providers exist.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The master keys.
    pub keys: crate::sealed::Keyring,
    /// The provider entries a credential may be set for (config names).
    pub providers: std::collections::BTreeSet<String>,
}

/// What the admin API works with.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    tokens: Vec<AdminToken>,
    credentials: Option<Credentials>,
    clickhouse: Option<sy_config::ClickhouseConfig>,
    /// How top-ups are paid (a payment provider is configured).
    topups: Option<crate::payments::Topups>,
    /// Price version 0: the config file's prices, by "<provider>/<model>".
    base_prices: std::collections::BTreeMap<String, sy_config::RawPrice>,
    /// A trace viewer's URL with `{trace_id}`, for the console's links.
    trace_viewer: Option<String>,
    /// What the ingress that mounts this API lends it, once it does.
    ingress: Arc<std::sync::OnceLock<Arc<dyn ingress::Ingress>>>,
}

impl Admin {
    /// The control plane's store it serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The admin API over `store`, accepting `tokens`; provider credentials
    /// are served when `credentials` is given (a master key is configured),
    /// usage when `clickhouse` is.
    pub fn new(
        store: Store,
        tokens: Vec<AdminToken>,
        credentials: Option<Credentials>,
        clickhouse: Option<sy_config::ClickhouseConfig>,
    ) -> Arc<Self> {
        Arc::new(Admin {
            store,
            tokens,
            credentials,
            clickhouse,
            topups: None,
            base_prices: std::collections::BTreeMap::new(),
            ingress: Arc::default(),
            trace_viewer: None,
        })
    }

    /// The same, with a trace viewer's URL (`{trace_id}` in it) the
    /// console links requests to.
    pub fn with_trace_viewer(self: Arc<Self>, url: Option<String>) -> Arc<Self> {
        let mut admin = Arc::unwrap_or_clone(self);
        admin.trace_viewer = url;
        Arc::new(admin)
    }

    /// The trace viewer's URL, if configured.
    pub fn trace_viewer(&self) -> Option<&str> {
        self.trace_viewer.as_deref()
    }

    /// Lends this API what the ingress holds (live targets, overrides, the
    /// routing table, explain, batches); the first call wins.
    pub fn lend(&self, ingress: Arc<dyn ingress::Ingress>) {
        let _ = self.ingress.set(ingress);
    }

    /// The same, with `prices` (the config file's, by
    /// `"<provider>/<model>"`) as price version 0.
    pub fn with_base_prices(
        self: Arc<Self>,
        prices: std::collections::BTreeMap<String, sy_config::RawPrice>,
    ) -> Arc<Self> {
        let mut admin = Arc::unwrap_or_clone(self);
        admin.base_prices = prices;
        Arc::new(admin)
    }

    /// The same, making top-ups through the providers of `topups`.
    pub fn with_topups(self: Arc<Self>, topups: crate::payments::Topups) -> Arc<Self> {
        let mut admin = Arc::unwrap_or_clone(self);
        admin.topups = Some(topups);
        Arc::new(admin)
    }

    /// Whether `token` is one of the admin tokens (the ingress says so when
    /// one is sent to `/v1`, where it is refused).
    pub fn is_admin_token(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.iter().any(|t| t.matches(&digest))
    }
}

/// The identity an admin request runs as.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The org it is limited to, if any.
    pub org_id: Option<Uuid>,
    /// The request's id (in the audit row and `x-switchyard-request-id`).
    pub request_id: Uuid,
    /// The client's address, when known.
    pub client_ip: Option<String>,
}

impl Caller {
    /// The actor its writes are audited as.
    pub fn actor(&self) -> Actor {
        Actor {
            identity: self.name.clone(),
            role: self.role.as_str().to_owned(),
            request_id: Some(self.request_id.to_string()),
            client_ip: self.client_ip.clone(),
        }
    }

    /// Whether the caller may see things of `org_id`.
    pub fn sees(&self, org_id: Uuid) -> bool {
        self.org_id.is_none_or(|o| o == org_id)
    }
}

/// An admin API error: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone)]
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AdminError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 401: no identity, or not a valid one.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// A 403: the identity may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    /// A 403: a console write without its session's CSRF token.
    pub fn csrf_failed() -> Self {
        AdminError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "A console write must carry the session's CSRF token in 'x-csrf-token'.",
        )
    }

    /// A 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// A 429: too many of something at once.
    pub fn too_many(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
    }

    /// A 503: the deployment is not set up for this.
    pub fn not_configured(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::SERVICE_UNAVAILABLE, "not_configured", message)
    }

    /// A 502: a payment provider refused or could not be reached.
    pub fn provider_failed(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::BAD_GATEWAY, "payment_provider_error", message)
    }

    /// A 500: something Switchyard read is not what it wrote (a bug, not
    /// worth retrying).
    pub fn internal(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A 404 for a `what` that does not exist (or that the caller may not see).
    pub fn not_found(what: &str) -> Self {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No such {what}."),
        )
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AdminError::not_found(what),
            StoreError::Invalid(why) => AdminError::invalid(format!("{why}.")),
            StoreError::Conflict(why) => {
                AdminError::new(StatusCode::CONFLICT, "conflict", format!("{why}."))
            }
            StoreError::Db(sqlx::Error::Database(db))
                if db.code().as_deref().is_some_and(|c| c.starts_with("22")) =>
            {
                // Data the database cannot hold (a value out of range).
                AdminError::invalid(format!("a value was refused: {}", db.message()))
            }
            other => {
                tracing::warn!(error = %other, "The admin API's store failed.");
                AdminError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "The control plane's database is unavailable; retry shortly.",
                )
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            code: &'a str,
        }
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let body = Body {
            error: Inner {
                message: &self.message,
                kind,
                code: self.code,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The admin routes, to merge into the ingress's router (of any state).
pub fn router<S: Clone + Send + Sync + 'static>(admin: Arc<Admin>) -> Router<S> {
    use handlers as h;
    use operations as o;
    use pricing as p;
    let authorize = axum::middleware::from_fn_with_state(admin.clone(), authorize);
    Router::new()
        .route("/admin/v1/whoami", get(h::whoami))
        .route("/admin/v1/orgs", post(h::create_org).get(h::list_orgs))
        .route(
            "/admin/v1/orgs/{id}",
            get(h::get_org).patch(h::patch_org).delete(h::disable_org),
        )
        .route(
            "/admin/v1/projects",
            post(h::create_project).get(h::list_projects),
        )
        .route(
            "/admin/v1/projects/{id}",
            get(h::get_project)
                .patch(h::patch_project)
                .delete(h::disable_project),
        )
        .route("/admin/v1/orgs/{id}/credits", post(o::credit_org))
        .route("/admin/v1/orgs/{id}/topups", post(o::create_topup))
        .route("/admin/v1/orgs/{id}/balance", get(o::org_balance))
        .route("/admin/v1/orgs/{id}/invoices/{period}", get(o::org_invoice))
        .route(
            "/admin/v1/orgs/{id}/pricing",
            get(p::get_org_pricing).put(p::put_org_pricing),
        )
        .route(
            "/admin/v1/prices",
            get(p::list_prices).post(p::create_prices),
        )
        .route("/admin/v1/prices/{version}", get(p::get_prices))
        .route("/admin/v1/pipelines", get(pipelines::list_pipelines))
        .route(
            "/admin/v1/pipelines/{name}",
            get(pipelines::get_pipeline)
                .put(pipelines::put_pipeline)
                .delete(pipelines::delete_pipeline),
        )
        .route("/admin/v1/plans", get(p::list_plans).post(p::create_plan))
        .route(
            "/admin/v1/plans/{name}",
            get(p::get_plan).patch(p::patch_plan).delete(p::delete_plan),
        )
        .route("/admin/v1/keys", post(h::create_key).get(h::list_keys))
        .route(
            "/admin/v1/keys/{id}",
            get(h::get_key).patch(h::patch_key).delete(h::revoke_key),
        )
        .route("/admin/v1/keys/{id}/rotate", post(h::rotate_key))
        .route("/admin/v1/audit", get(o::audit))
        .route("/admin/v1/usage", get(o::usage))
        .route("/admin/v1/overview", get(traffic::overview))
        .route(
            "/admin/v1/targets",
            get(ingress::targets).put(ingress::force),
        )
        .route("/admin/v1/routing", get(ingress::table))
        .route("/admin/v1/route/explain", post(ingress::explain))
        .route("/admin/v1/batches", get(ingress::batches))
        .route("/admin/v1/requests", get(traffic::requests))
        .route(
            "/admin/v1/admin-tokens",
            post(o::create_admin_token).get(o::list_admin_tokens),
        )
        .route(
            "/admin/v1/admin-tokens/{id}",
            axum::routing::delete(o::revoke_admin_token),
        )
        .route(
            "/admin/v1/credentials",
            post(o::set_credential).get(o::list_credentials),
        )
        .route(
            "/admin/v1/credentials/{id}",
            get(o::get_credential)
                .patch(o::patch_credential)
                .delete(o::delete_credential),
        )
        .route_layer(authorize)
        .with_state(admin)
}

/// Authenticates the admin token and checks its role against the route's
/// need; the handler runs as the resulting [`Caller`].
async fn authorize(State(admin): State<Arc<Admin>>, mut req: Request, next: Next) -> Response {
    let request_id = Uuid::now_v7();
    // What authorizing needs, read before the first await (a request is not
    // shared across threads).
    let asked = read_request(&req);
    let caller = match asked {
        Ok(asked) => caller(&admin, asked, request_id).await,
        Err(e) => Err(e),
    };
    let mut resp = match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        resp.headers_mut().insert("x-switchyard-request-id", v);
    }
    resp
}

/// What authorizing reads from a request.
struct Asked {
    credential: Credential,
    route: Option<&'static roles::Route>,
    client_ip: Option<String>,
}

/// How an admin request authenticates.
enum Credential {
    /// `Authorization: Bearer TOKEN`.
    Token(String),
    /// The console's session cookie, and the CSRF token a write carries.
    Session {
        secret: String,
        csrf: Option<String>,
        write: bool,
    },
}

fn read_request(req: &Request) -> Result<Asked, AdminError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let credential = match bearer {
        Some(token) => Credential::Token(token),
        None => {
            let secret = crate::console::session_cookie(req.headers()).ok_or_else(|| {
                AdminError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Send an admin token as 'Authorization: Bearer TOKEN' (or sign in to the console).",
                )
            })?;
            Credential::Session {
                secret,
                csrf: req
                    .headers()
                    .get(crate::console::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                write: !matches!(
                    *req.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                ),
            }
        }
    };
    Ok(Asked {
        credential,
        route: roles::find(req.method(), req.uri().path()),
        client_ip: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
    })
}

/// Who an admin identity is: its name, role and org.
pub(crate) type Identity = (String, Role, Option<Uuid>);

/// Who a token is: a config token (compared in constant time), else a live
/// token issued from the database; with how a console session names it.
pub(crate) async fn identity(
    admin: &Admin,
    token: &str,
) -> Result<Option<(Identity, crate::console_sessions::SessionToken)>, AdminError> {
    use crate::console_sessions::SessionToken;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(t) = admin.tokens.iter().find(|t| t.matches(&digest)) {
        let reference = SessionToken::Config(config_ref(admin, &digest));
        return Ok(Some(((t.name.clone(), t.role, t.org_id), reference)));
    }
    if !token.starts_with("sy_admin_") {
        return Ok(None);
    }
    let owner = admin.store.admin_token_owner(token).await?;
    let public_id = crate::key::parse(token)
        .map(|p| p.public_id.to_owned())
        .unwrap_or_default();
    Ok(owner.and_then(|o| {
        Role::parse(&o.role).map(|r| ((o.name, r, o.org_id), SessionToken::Database(public_id)))
    }))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a console session names a config token: keyed with the pepper, so
/// that reading the sessions table does not allow guessing a weak token
/// offline.
fn config_ref(admin: &Admin, digest: &[u8; 32]) -> String {
    hex_of(&admin.store.pepper().hash(&hex_of(digest)))
}

/// Who the token a console session names is now (none when it was revoked
/// or left the config).
pub(crate) async fn session_identity(
    admin: &Admin,
    token: &crate::console_sessions::SessionToken,
) -> Result<Option<Identity>, AdminError> {
    use crate::console_sessions::SessionToken;
    match token {
        SessionToken::Config(hex) => Ok(admin
            .tokens
            .iter()
            .find(|t| {
                // Constant time in the reference's content.
                let mine = config_ref(admin, &t.digest);
                mine.len() == hex.len()
                    && mine
                        .bytes()
                        .zip(hex.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            })
            .map(|t| (t.name.clone(), t.role, t.org_id))),
        SessionToken::Database(public_id) => {
            let owner = admin
                .store
                .admin_token_owner_by_public_id(public_id)
                .await?;
            Ok(owner.and_then(|o| Role::parse(&o.role).map(|r| (o.name, r, o.org_id))))
        }
    }
}

/// Who a request's credential is, or why not.
async fn authenticate(admin: &Admin, credential: &Credential) -> Result<Identity, AdminError> {
    let unauthenticated = AdminError::unauthenticated;
    match credential {
        Credential::Token(token) => identity(admin, token)
            .await?
            .map(|(who, _)| who)
            .ok_or_else(|| {
                unauthenticated(
                    "Incorrect admin token provided (an API key is not an admin token).",
                )
            }),
        Credential::Session {
            secret,
            csrf,
            write,
        } => {
            let session = admin
                .store
                .console_session(&crate::console::session_hash(secret))
                .await?
                .ok_or_else(|| unauthenticated("The console session has ended; sign in again."))?;
            if *write && !crate::console::csrf_matches(csrf.as_deref(), &session.csrf) {
                return Err(AdminError::csrf_failed());
            }
            session_identity(admin, &session.token)
                .await?
                .ok_or_else(|| {
                    unauthenticated(
                        "The admin token of this session is no longer valid; sign in again.",
                    )
                })
        }
    }
}

async fn caller(admin: &Admin, asked: Asked, request_id: Uuid) -> Result<Caller, AdminError> {
    let (name, role, org_id) = authenticate(admin, &asked.credential).await?;
    let Some(route) = asked.route else {
        // A route the table does not list: refused rather than open.
        return Err(AdminError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "This endpoint has no permission entry.",
        ));
    };
    if !role.can(route.need) {
        return Err(AdminError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "The '{}' role may not call {} {}.",
                role.as_str(),
                route.method,
                route.path
            ),
        ));
    }
    if route.deployment_only && org_id.is_some() {
        return Err(AdminError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "{} {} needs a token for the whole deployment, not one org's.",
                route.method, route.path
            ),
        ));
    }
    Ok(Caller {
        name,
        role,
        org_id,
        request_id,
        client_ip: asked.client_ip,
    })
}
