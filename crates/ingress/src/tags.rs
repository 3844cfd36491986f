//! Request tags (issue 20): labels a client puts on a request (a feature, a
//! customer tier, an experiment) so spend and latency can be cut by them in
//! ClickHouse. They come from the `x-switchyard-tags: k=v,k=v` header and
//! from the string values of the body's `metadata` object (OpenAI's field);
//! the header wins for a key given in both. Bounded and validated: a
//! malformed tag is a 400 naming where it came from, before anything is
//! published. The body's `metadata` is passed on to the provider as before.

use serde_json::Value;
use sy_protocol::chat::ChatRequest;

use crate::error::ApiError;

/// The header.
pub(crate) const HEADER: &str = "x-switchyard-tags";

use sy_protocol::tag::{MAX_KEY_CHARS, MAX_TAGS, MAX_VALUE_CHARS, valid_key, valid_value};

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid(param, message)
}

/// A key as an error message shows it (at most 80 characters).
fn shown(k: &str) -> String {
    k.chars().take(80).collect()
}

/// The tags of a request, sorted by key: the header's (`k=v,k=v`, strict:
/// a malformed one or more than 16 is a 400), then the body's `metadata`
/// string values that are valid tags, then the key's `defaults`, up to 16 in
/// all (metadata is the client's own for the provider too: what is not a tag
/// there is left out of the tags, never refused). None given: empty.
pub(crate) fn of(
    header: Option<&str>,
    request: Option<&ChatRequest>,
    defaults: &[(String, String)],
) -> Result<Vec<(String, String)>, ApiError> {
    let metadata = match request.and_then(|r| r.extra.get("metadata")) {
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        _ => None,
    };
    if header.is_none() && metadata.is_none() {
        // Already sorted, valid and at most 16 (the key table's).
        return Ok(defaults.to_vec());
    }
    let mut tags = std::collections::BTreeMap::new();
    if let Some(h) = header {
        if h.chars().any(|c| !c.is_ascii() || c.is_ascii_control()) {
            return Err(bad(
                HEADER,
                "Tags must be visible ASCII: key=value pairs separated by commas.".into(),
            ));
        }
        let parts: Vec<&str> = h
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() > MAX_TAGS {
            return Err(bad(
                HEADER,
                format!(
                    "A request carries at most {MAX_TAGS} tags; this one has {}.",
                    parts.len()
                ),
            ));
        }
        for part in parts {
            let Some((k, v)) = part.split_once('=') else {
                return Err(bad(
                    HEADER,
                    format!(
                        "Tags are key=value pairs separated by commas; '{}' has no '='.",
                        shown(part)
                    ),
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) || !valid_value(v) {
                return Err(bad(
                    HEADER,
                    format!(
                        "Invalid tag '{}': keys are 1 to {MAX_KEY_CHARS} of A-Z, a-z, 0-9, _, -, . and :; \
                         values at most {MAX_VALUE_CHARS} characters.",
                        shown(k)
                    ),
                ));
            }
            tags.insert(k.to_owned(), v.to_owned());
        }
    }
    if let Some(m) = metadata {
        // In key order, so which ones fit under the cap does not depend on
        // the body's order.
        let mut valid: Vec<(&String, &String)> = m
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(v) if valid_key(k) && valid_value(v) => Some((k, v)),
                _ => None,
            })
            .collect();
        valid.sort_unstable();
        for (k, v) in valid {
            if tags.len() >= MAX_TAGS {
                break;
            }
            tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    for (k, v) in defaults {
        if tags.len() >= MAX_TAGS {
            break;
        }
        tags.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(tags.into_iter().collect())
}

/// The tags a chat request's body gives (its `metadata` entries that are
/// valid tags, at most 16), as routing sees them without headers or a key
/// (`switchyard route simulate`).
pub fn of_body(request: &ChatRequest) -> Vec<(String, String)> {
    // Without a header nothing can be refused.
    of(None, Some(request), &[]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> ChatRequest {
        serde_json::from_value(v).expect("a chat request")
    }

    #[test]
    fn the_header_and_metadata_give_sorted_tags_the_header_winning() {
        let r =
            chat(json!({"model": "m", "messages": [], "metadata": {"tier": "pro", "exp": "b"}}));
        let tags = of(Some("feature=search, tier=free"), Some(&r), &[]).unwrap();
        assert_eq!(
            tags,
            vec![
                ("exp".to_owned(), "b".to_owned()),
                ("feature".to_owned(), "search".to_owned()),
                ("tier".to_owned(), "free".to_owned()),
            ]
        );
        assert!(
            of(
                None,
                Some(&chat(json!({"model": "m", "messages": []}))),
                &[]
            )
            .unwrap()
            .is_empty()
        );
        assert_eq!(
            of(Some("a="), None, &[]).unwrap(),
            vec![("a".to_owned(), String::new())]
        );
    }

    #[test]
    fn malformed_or_too_many_tags_are_refused_naming_where_they_came_from() {
        let e = of(Some("feature"), None, &[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(HEADER));
        assert_eq!(e.status.as_u16(), 400);
        assert!(of(Some("bad key=x"), None, &[]).is_err());
        assert!(of(Some(&format!("k={}", "v".repeat(513))), None, &[]).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        let e = of(Some(&many.join(",")), None, &[]).unwrap_err();
        assert!(e.message.contains("at most 16"), "{}", e.message);
        let e = of(Some("tier=fr\u{e9}e"), None, &[]).unwrap_err();
        assert!(e.message.contains("visible ASCII"), "{}", e.message);
    }

    #[test]
    fn metadata_gives_what_is_a_tag_and_is_never_refused() {
        // Metadata is the client's own for the provider: entries that are not
        // tags are left out, never refused.
        let r = chat(json!({"model": "m", "messages": [], "metadata": {
            "n": 7, "customer id": "x", "note": "line\nbreak", "tier": "free"}}));
        assert_eq!(
            of(None, Some(&r), &[]).unwrap(),
            vec![("tier".to_owned(), "free".to_owned())]
        );
        let r = chat(json!({"model": "m", "messages": [], "metadata": ["x"]}));
        assert!(of(None, Some(&r), &[]).unwrap().is_empty());
        // Sixteen at most in all, the header's first, then metadata's in key order.
        let mut m = serde_json::Map::new();
        for i in 10..30 {
            m.insert(format!("k{i}"), json!("v"));
        }
        let r = chat(json!({"model": "m", "messages": [], "metadata": m}));
        let tags = of(Some("a=1"), Some(&r), &[]).unwrap();
        assert_eq!(tags.len(), 16);
        assert_eq!(tags[0], ("a".to_owned(), "1".to_owned()));
        assert_eq!(tags[15].0, "k24");
    }

    #[test]
    fn a_body_alone_gives_its_metadata_tags() {
        let r = chat(json!({"model": "m", "messages": [], "metadata": {"tier": "free", "n": 1}}));
        assert_eq!(of_body(&r), vec![("tier".to_owned(), "free".to_owned())]);
    }

    #[test]
    fn a_keys_default_tags_fill_in_under_the_requests_own() {
        let defaults = vec![
            ("team".to_owned(), "search".to_owned()),
            ("tier".to_owned(), "pro".to_owned()),
        ];
        assert_eq!(of(None, None, &defaults).unwrap(), defaults);
        let tags = of(Some("tier=free"), None, &defaults).unwrap();
        assert_eq!(
            tags,
            vec![
                ("team".to_owned(), "search".to_owned()),
                ("tier".to_owned(), "free".to_owned()),
            ]
        );
    }
}
