//! The identifiers a client hands to a provider, per tenant (issue 20): a
//! request's `user`, `prompt_cache_key` and `safety_identifier` reach the
//! provider as a pseudonym derived from the caller's org (a key without an
//! org: the key) and the value, so two tenants that send the same value never
//! share a provider-side prompt cache or abuse record, while one tenant's
//! repeats stay one identity there. The end user's own id never leaves the
//! gateway.
//!
//! The pseudonym is keyed (HMAC-SHA-256 with a secret of the deployment's),
//! so whoever sees it (the provider) cannot test guesses of the value (an
//! email) against it, even for a scope it could guess.

use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sy_protocol::chat::ChatRequest;
use sy_protocol::embeddings::EmbeddingsRequest;

/// The request fields besides `user` that name an identity to the provider.
const FIELDS: [&str; 2] = ["prompt_cache_key", "safety_identifier"];

/// The secret pseudonyms are keyed with: derived from the deployment's own
/// secrets, the same on every replica of one config (the tenants'
/// `key_pepper`, else the config file's keys). Changing those changes every
/// pseudonym (a provider then sees new identities).
#[derive(Clone)]
pub(crate) struct IdentitySecret([u8; 32]);

impl IdentitySecret {
    pub(crate) fn of(config: &sy_config::Config) -> Self {
        let mut h = Sha256::new();
        h.update(b"switchyard provider identity secret\0");
        if let Some(t) = &config.tenants {
            h.update(t.key_pepper.expose().as_bytes());
            h.update([0]);
        }
        let mut keys: Vec<&str> = config.keys.iter().map(|k| k.key.expose()).collect();
        keys.sort_unstable();
        for k in keys {
            h.update(k.as_bytes());
            h.update([0]);
        }
        IdentitySecret(h.finalize().into())
    }

    /// A secret of its own for `purpose`, derived from this one.
    pub(crate) fn derive(&self, purpose: &str) -> [u8; 32] {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC takes any key length")
            .chain_update(purpose.as_bytes())
            .finalize()
            .into_bytes()
            .into()
    }
}

/// `value` as a provider sees it from `scope`: `sy-` and 32 hex digits of
/// HMAC-SHA-256 (keyed with `secret`) over the scope and the value (fixed
/// length, whatever the value's).
pub(crate) fn pseudonym(secret: &IdentitySecret, scope: &str, value: &str) -> String {
    let mut h =
        <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    h.update(scope.as_bytes());
    h.update(&[0]);
    h.update(value.as_bytes());
    let digest = h.finalize().into_bytes();
    let mut out = String::with_capacity(35);
    out.push_str("sy-");
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Replaces the identities of `request` (and of `embeddings`) with their
/// pseudonyms for the scope `scope` names (asked for only when there is one
/// to replace: most requests carry none). Values that are not strings are
/// left for the provider to refuse; absent ones stay absent.
pub(crate) fn apply(
    secret: &IdentitySecret,
    scope: impl FnOnce() -> String,
    request: &mut ChatRequest,
    embeddings: Option<&mut EmbeddingsRequest>,
) {
    let embeddings_user = embeddings.and_then(|e| e.user.as_mut());
    let any = request.user.is_some()
        || embeddings_user.is_some()
        || FIELDS
            .iter()
            .any(|f| matches!(request.extra.get(*f), Some(Value::String(_))));
    if !any {
        return;
    }
    let scope = scope();
    if let Some(user) = &mut request.user {
        *user = pseudonym(secret, &scope, user);
    }
    for field in FIELDS {
        if let Some(Value::String(v)) = request.extra.get_mut(field) {
            *v = pseudonym(secret, &scope, v);
        }
    }
    if let Some(user) = embeddings_user {
        *user = pseudonym(secret, &scope, user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static S: IdentitySecret = IdentitySecret([7; 32]);

    fn chat(v: Value) -> ChatRequest {
        serde_json::from_value(v).expect("a chat request")
    }

    #[test]
    fn one_value_is_one_pseudonym_per_tenant_and_another_across_tenants() {
        let a = pseudonym(&S, "org-a", "session-7");
        assert_eq!(a, pseudonym(&S, "org-a", "session-7"));
        assert_ne!(a, pseudonym(&S, "org-b", "session-7"));
        assert_ne!(a, pseudonym(&S, "org-a", "session-8"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(pseudonym(&S, "ab", "c"), pseudonym(&S, "a", "bc"));
        assert_eq!(a.len(), 35);
        assert!(a.starts_with("sy-") && a[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(pseudonym(&S, "org-a", &"x".repeat(10_000)).len(), 35);
        // Keyed: another deployment's secret gives another pseudonym, so
        // the value cannot be guessed from it without the secret.
        assert_ne!(a, pseudonym(&IdentitySecret([8; 32]), "org-a", "session-7"));
    }

    #[test]
    fn user_cache_key_and_safety_identifier_are_replaced_and_nothing_else() {
        let mut r = chat(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "user": "alice@example.com",
            "prompt_cache_key": "pk-1",
            "safety_identifier": "s-1",
            "metadata": {"user": "kept"},
        }));
        apply(&S, || "org-a".into(), &mut r, None);
        assert_eq!(
            r.user.as_deref(),
            Some(pseudonym(&S, "org-a", "alice@example.com").as_str())
        );
        assert_eq!(
            r.extra["prompt_cache_key"],
            json!(pseudonym(&S, "org-a", "pk-1"))
        );
        assert_eq!(
            r.extra["safety_identifier"],
            json!(pseudonym(&S, "org-a", "s-1"))
        );
        assert_eq!(r.extra["metadata"], json!({"user": "kept"}));
        let body = serde_json::to_string(&r).unwrap();
        assert!(!body.contains("alice") && !body.contains("pk-1"), "{body}");

        let mut other = chat(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt_cache_key": "pk-1",
        }));
        apply(&S, || "org-b".into(), &mut other, None);
        assert_ne!(other.extra["prompt_cache_key"], r.extra["prompt_cache_key"]);
        assert!(other.user.is_none());

        let mut odd = chat(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt_cache_key": 7,
        }));
        apply(&S, || panic!("no identity to replace"), &mut odd, None);
        assert_eq!(odd.extra["prompt_cache_key"], json!(7));
    }

    #[test]
    fn an_embeddings_user_is_replaced_too() {
        let mut e: EmbeddingsRequest =
            serde_json::from_value(json!({"model": "e", "input": "x", "user": "bob"})).unwrap();
        let mut r = ChatRequest::model_only("e");
        apply(&S, || "key:k1".into(), &mut r, Some(&mut e));
        assert_eq!(
            e.user.as_deref(),
            Some(pseudonym(&S, "key:k1", "bob").as_str())
        );
    }
}
