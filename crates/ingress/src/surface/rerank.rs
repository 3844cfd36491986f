//! `POST /v1/rerank` (and `/v2/rerank`): Cohere's and Jina's rerank API,
//! served by Cohere's rerank models and by OpenAI-compatible servers that
//! speak Jina's shape (Jina, vLLM, Infinity). Documents are texts or
//! `{"text": …}` objects; the answer ranks them best first.

use serde_json::{Map, Value, json};
use sy_protocol::rerank::{RerankFrame, RerankRequest};
use sy_protocol::{ResponseMeta, TokenUsage};

use crate::error::ApiError;
use crate::validate::{missing, object_fields, take_string};

/// Most documents in one request (Cohere's limit).
pub const MAX_DOCUMENTS: usize = 1000;

/// Parses and validates a rerank body. Unknown fields are kept and passed
/// to OpenAI-compatible providers (Jina's `truncation`, vLLM's options).
pub fn parse(body: &[u8]) -> Result<RerankRequest, ApiError> {
    let mut fields = object_fields(body)?;
    let model = take_string(&mut fields, "model")?.ok_or_else(|| missing("model"))?;
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    let query = take_string(&mut fields, "query")?.ok_or_else(|| missing("query"))?;
    if query.trim().is_empty() {
        return Err(ApiError::invalid("query", "'query' must not be empty."));
    }
    let documents = match fields.remove("documents") {
        None | Some(Value::Null) => return Err(missing("documents")),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, d)| document(i, d))
            .collect::<Result<Vec<String>, ApiError>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "documents",
                "'documents' must be an array of strings or of objects with a 'text' string.",
            ));
        }
    };
    if documents.is_empty() {
        return Err(ApiError::invalid(
            "documents",
            "'documents' must not be empty.",
        ));
    }
    if documents.len() > MAX_DOCUMENTS {
        return Err(ApiError::invalid(
            "documents",
            format!("'documents' holds at most {MAX_DOCUMENTS} items."),
        ));
    }
    let top_n = count(&mut fields, "top_n")?;
    let max_tokens_per_doc = count(&mut fields, "max_tokens_per_doc")?;
    let return_documents = match fields.remove("return_documents") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::invalid(
                "return_documents",
                "'return_documents' must be a boolean.",
            ));
        }
    };
    if let Some(field) = ["rank_fields", "max_chunks_per_doc"]
        .into_iter()
        .find(|f| fields.contains_key(*f))
    {
        return Err(ApiError::invalid(
            field,
            format!("'{field}' is not supported; send each document as its text."),
        ));
    }
    Ok(RerankRequest {
        model,
        query,
        documents,
        top_n,
        return_documents,
        max_tokens_per_doc,
        extra: fields,
    })
}

/// An optional count of at least 1.
fn count(fields: &mut Map<String, Value>, name: &str) -> Result<Option<u32>, ApiError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                name,
                format!("'{name}' must be a whole number of at least 1."),
            )),
        },
    }
}

/// Document `i`: a string, or an object whose `text` is one.
fn document(i: usize, d: Value) -> Result<String, ApiError> {
    match d {
        Value::String(s) => Ok(s),
        Value::Object(mut o) => match o.remove("text") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(ApiError::invalid(
                format!("documents[{i}]"),
                format!("'documents[{i}]' must be a string or an object with a 'text' string."),
            )),
        },
        _ => Err(ApiError::invalid(
            format!("documents[{i}]"),
            format!("'documents[{i}]' must be a string or an object with a 'text' string."),
        )),
    }
}

/// The answer in Cohere's shape (`id`, `results` best first, `meta` with
/// its billed units) with Jina's `model` and `usage` beside it.
pub fn body(frame: RerankFrame, names: &ResponseMeta, usage: Option<&TokenUsage>) -> Vec<u8> {
    let results: Vec<Value> = frame
        .results
        .into_iter()
        .map(|r| {
            let mut v = json!({"index": r.index, "relevance_score": r.relevance_score});
            if let Some(text) = r.document {
                v["document"] = json!({ "text": text });
            }
            v
        })
        .collect();
    let tokens = usage.map_or(0, TokenUsage::prompt_tokens);
    let mut billed = Map::new();
    if frame.search_units > 0 {
        billed.insert("search_units".into(), frame.search_units.into());
    }
    if tokens > 0 {
        billed.insert("input_tokens".into(), tokens.into());
    }
    serde_json::to_vec(&json!({
        "id": names.id(),
        "model": names.model(),
        "results": results,
        "usage": {"total_tokens": tokens},
        "meta": {"api_version": {"version": "2"}, "billed_units": billed},
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_may_be_texts_or_text_objects_and_other_fields_pass_through() {
        let r = parse(
            br#"{"model":"m","query":"q","documents":["a",{"text":"b","title":"t"}],"top_n":1,"return_documents":true,"truncation":false}"#,
        )
        .unwrap();
        assert_eq!(r.documents, ["a", "b"]);
        assert_eq!(r.top_n, Some(1));
        assert!(r.return_documents);
        assert_eq!(r.extra.get("truncation"), Some(&Value::Bool(false)));
        assert!(!r.extra.contains_key("model"));
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (bad, param) in [
            (r#"{"query":"q","documents":["a"]}"#, Some("model")),
            (r#"{"model":"m","documents":["a"]}"#, Some("query")),
            (
                r#"{"model":"m","query":" ","documents":["a"]}"#,
                Some("query"),
            ),
            (r#"{"model":"m","query":"q"}"#, Some("documents")),
            (
                r#"{"model":"m","query":"q","documents":[]}"#,
                Some("documents"),
            ),
            (
                r#"{"model":"m","query":"q","documents":"a"}"#,
                Some("documents"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a",{"image":"x"}]}"#,
                Some("documents[1]"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a",3]}"#,
                Some("documents[1]"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a"],"top_n":0}"#,
                Some("top_n"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a"],"top_n":"2"}"#,
                Some("top_n"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a"],"return_documents":"yes"}"#,
                Some("return_documents"),
            ),
            (
                r#"{"model":"m","query":"q","documents":["a"],"rank_fields":["t"]}"#,
                Some("rank_fields"),
            ),
            (
                r#"{"model":5,"query":"q","documents":["a"]}"#,
                Some("model"),
            ),
            (r#"[1]"#, None),
            (r#"{"model":"m","query":"q","documents":["a"]} x"#, None),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), param, "{bad}: {}", e.message);
        }
        let many = format!(
            r#"{{"model":"m","query":"q","documents":{}}}"#,
            serde_json::to_string(&vec!["d"; MAX_DOCUMENTS + 1]).unwrap()
        );
        assert_eq!(
            parse(many.as_bytes()).unwrap_err().param.as_deref(),
            Some("documents")
        );
    }

    #[test]
    fn the_answer_has_cohere_and_jina_fields() {
        let frame = RerankFrame {
            seq: 0,
            start: None,
            results: vec![
                sy_protocol::rerank::RerankResult {
                    index: 1,
                    relevance_score: 0.9,
                    document: Some("b".into()),
                },
                sy_protocol::rerank::RerankResult {
                    index: 0,
                    relevance_score: 0.1,
                    document: None,
                },
            ],
            search_units: 1,
        };
        let names = ResponseMeta {
            response_id: Some("r1".into()),
            served_model: Some("rerank-v3.5".into()),
            ..ResponseMeta::default()
        };
        let v: Value = serde_json::from_slice(&body(frame, &names, None)).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["model"], "rerank-v3.5");
        assert_eq!(v["results"][0]["index"], 1);
        assert_eq!(v["results"][0]["document"]["text"], "b");
        assert!(v["results"][1].get("document").is_none());
        assert_eq!(v["meta"]["billed_units"]["search_units"], 1);
        assert_eq!(v["usage"]["total_tokens"], 0);
    }
}
