//! The operator console (docs/console.md): a web UI over the admin API,
//! served by the ingress at `/console` from assets built into the binary
//! (no CDN, no build step: one HTML page, one script, one stylesheet,
//! plain JavaScript). It signs in with an admin token, which it trades for a
//! session: the browser keeps only a random secret in an HttpOnly,
//! SameSite=Strict cookie (Secure over TLS); the session's row
//! ([`crate::console_sessions`]) names the token, and every admin API call
//! runs as that token's role, enforced by the API whatever the page shows.
//! Writes carry the session's CSRF token in `x-csrf-token`; it lives in the
//! page's memory only, never in storage. Every response carries a strict
//! Content-Security-Policy (scripts and styles from the console itself,
//! nothing inline, no framing).
//!
//! Routes: `GET /console` (the page), `GET /console/app.js`,
//! `GET /console/style.css`, and `POST|GET|DELETE /console/api/session`
//! (sign in, who am I, sign out).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::admin::roles::{Need, Role};
use crate::admin::{Admin, AdminError};

/// The session cookie's name.
pub const COOKIE: &str = "sy_console";
/// The header a console write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts, seconds (8 hours: a working day).
pub const SESSION_SECS: i64 = 8 * 3600;

/// What every console response says about where its content may come from.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/style.css");

/// The console's routes, to merge into the ingress's router.
pub fn router<S: Clone + Send + Sync + 'static>(admin: Arc<Admin>) -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/api/session",
            get(whoami).post(sign_in).delete(sign_out),
        )
        .with_state(admin)
}

/// The headers every console response carries.
fn guarded(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    guarded(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The session secret of a request's cookie, if it has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// What a session is found by: the SHA-256 of its secret.
pub fn session_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `sent` is the session's CSRF token (constant time in its content).
pub fn csrf_matches(sent: Option<&str>, expected: &str) -> bool {
    sent.is_some_and(|s| {
        s.len() == expected.len()
            && s.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn random_token() -> String {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Whether the client reached us over TLS (directly or through a proxy
/// that says so): the cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sy_console=; Path=/; Max-Age=0"))
}

/// What the page may offer a role: the API refuses the rest anyway.
fn abilities(role: Role) -> serde_json::Value {
    json!({
        "tenants": role.can(Need::Tenants),
        "keys": role.can(Need::Keys),
        "usage": role.can(Need::Usage),
        "audit": role.can(Need::Audit),
        "balances": role.can(Need::Balances),
        "pricing": role.can(Need::Pricing),
        "routing": role.can(Need::Routing),
        "credentials": role.can(Need::Credentials),
        "admin_tokens": role.can(Need::AdminTokens),
    })
}

fn session_view(
    admin: &Admin,
    (name, role, org_id): &crate::admin::Identity,
    csrf: &str,
    expires_at: i64,
) -> serde_json::Value {
    json!({
        "name": name, "role": role.as_str(), "org_id": org_id,
        "csrf": csrf, "expires_at": expires_at, "can": abilities(*role),
        "trace_viewer": admin.trace_viewer(),
    })
}

fn unauthenticated(message: &str) -> Response {
    guarded(AdminError::unauthenticated(message).into_response())
}

/// A write from another site is refused: a browser sends `Origin` with
/// every POST and DELETE, and it must be this host (the `Host` header, or
/// the URI's authority over HTTP/2), default ports aside.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let Some((scheme, origin_host)) = origin.split_once("://") else {
        return false;
    };
    let bare = |h: &str| -> String {
        let default = if scheme == "https" { ":443" } else { ":80" };
        h.strip_suffix(default).unwrap_or(h).to_ascii_lowercase()
    };
    host.is_some_and(|h| bare(h) == bare(origin_host))
}

/// Records a session's start or end in the audit log.
async fn audit_session(
    admin: &Admin,
    (name, role, _): &crate::admin::Identity,
    hash: &[u8; 32],
    action: &str,
) -> Result<(), AdminError> {
    let id: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let actor = crate::audit::Actor::local(name, role.as_str());
    let entry = crate::audit::Entry {
        action,
        target_kind: "console_session",
        target_id: id,
        before: None,
        after: None,
    };
    Ok(admin.store().audit_event(&actor, entry).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /console/api/session {"token"}`: a session for an admin token.
async fn sign_in(
    State(admin): State<Arc<Admin>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json_body || !same_origin(&headers, &uri) {
        // A cross-site form cannot send JSON, and a page elsewhere has
        // another origin: neither signs anyone in.
        return guarded(
            AdminError::forbidden("Sign in from the console itself (a JSON body, same origin).")
                .into_response(),
        );
    }
    let Ok(SignIn { token }) = serde_json::from_slice::<SignIn>(&body) else {
        return guarded(
            AdminError::invalid("Send {\"token\": \"<admin token>\"}.").into_response(),
        );
    };
    let found = match crate::admin::identity(&admin, token.trim()).await {
        Ok(found) => found,
        Err(e) => return guarded(e.into_response()),
    };
    let Some((who, reference)) = found else {
        return unauthenticated("That is not an admin token of this deployment.");
    };
    let (secret, csrf) = (random_token(), random_token());
    let expires_at = match admin
        .store()
        .create_console_session(&session_hash(&secret), &csrf, &reference, SESSION_SECS)
        .await
    {
        Ok(at) => at,
        Err(e) => return guarded(AdminError::from(e).into_response()),
    };
    tracing::info!(identity = %who.0, role = who.1.as_str(), "A console session began.");
    // Audited, under the session's id (the first 16 hex digits of its
    // hash: enough to tell sessions apart, nothing to sign in with).
    if let Err(e) = audit_session(&admin, &who, &session_hash(&secret), "console.sign_in").await {
        return guarded(e.into_response());
    }
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(session_view(&admin, &who, &csrf, expires_at)),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&headers, &secret, SESSION_SECS));
    guarded(resp)
}

/// The live session of a request's cookie and its hash, or the 401 to answer.
async fn live_session(
    admin: &Admin,
    headers: &HeaderMap,
) -> Result<([u8; 32], crate::console_sessions::ConsoleSession), Response> {
    let secret = session_cookie(headers).ok_or_else(|| unauthenticated("Not signed in."))?;
    let hash = session_hash(&secret);
    match admin.store().console_session(&hash).await {
        Ok(Some(s)) => Ok((hash, s)),
        Ok(None) => Err(unauthenticated(
            "The console session has ended; sign in again.",
        )),
        Err(e) => Err(guarded(AdminError::from(e).into_response())),
    }
}

/// `GET /console/api/session`: who the session is, and its CSRF token.
async fn whoami(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let (_, session) = match live_session(&admin, &headers).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    match crate::admin::session_identity(&admin, &session.token).await {
        Ok(Some(who)) => guarded(
            axum::Json(session_view(
                &admin,
                &who,
                &session.csrf,
                session.expires_at,
            ))
            .into_response(),
        ),
        Ok(None) => unauthenticated("The admin token of this session is no longer valid."),
        Err(e) => guarded(e.into_response()),
    }
}

/// `DELETE /console/api/session` (with the CSRF token): signs out.
async fn sign_out(
    State(admin): State<Arc<Admin>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let (hash, session) = match live_session(&admin, &headers).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !csrf_matches(sent, &session.csrf) || !same_origin(&headers, &uri) {
        return guarded(AdminError::csrf_failed().into_response());
    }
    if let Err(e) = admin.store().end_console_session(&hash).await {
        return guarded(AdminError::from(e).into_response());
    }
    if let Ok(Some(who)) = crate::admin::session_identity(&admin, &session.token).await
        && let Err(e) = audit_session(&admin, &who, &hash, "console.sign_out").await
    {
        return guarded(e.into_response());
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&headers, "", 0));
    guarded(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_read_among_others_and_bounded() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sy_console=abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        let mut long = HeaderMap::new();
        let v = format!("sy_console={}", "x".repeat(200));
        long.append(
            header::COOKIE,
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(session_cookie(&long), None);
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn csrf_must_match_exactly_and_writes_from_elsewhere_are_refused() {
        assert!(csrf_matches(Some("tok"), "tok"));
        assert!(!csrf_matches(Some("tok2"), "tok"));
        assert!(!csrf_matches(Some("to"), "tok"));
        assert!(!csrf_matches(None, "tok"));
        let mut h = HeaderMap::new();
        let plain = axum::http::Uri::from_static("/console/api/session");
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        assert!(same_origin(&h, &plain));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://gw.example:8080"),
        );
        assert!(same_origin(&h, &plain));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h, &plain));
        // Default ports aside; HTTP/2's authority when there is no Host.
        let mut tls = HeaderMap::new();
        tls.insert(header::HOST, HeaderValue::from_static("gw.example:443"));
        tls.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gw.example"),
        );
        assert!(same_origin(&tls, &plain));
        let mut h2 = HeaderMap::new();
        h2.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gw.example"),
        );
        let full = axum::http::Uri::from_static("https://gw.example/console/api/session");
        assert!(same_origin(&h2, &full));
        assert!(!same_origin(&h2, &plain));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let mut h = HeaderMap::new();
        let plain = cookie(&h, "s", 60);
        assert_eq!(
            plain.to_str().ok(),
            Some("sy_console=s; Path=/; HttpOnly; SameSite=Strict; Max-Age=60")
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            cookie(&h, "s", 60)
                .to_str()
                .is_ok_and(|c| c.ends_with("; Secure"))
        );
    }
}
