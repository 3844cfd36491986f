//! `POST /v1/embeddings`: OpenAI's embeddings API, served by OpenAI-compatible,
//! Gemini or Cohere embedding models (Anthropic has none: a clear 400).

use base64::Engine;
use serde_json::{Value, json};
use sy_protocol::TokenUsage;
use sy_protocol::embeddings::{EmbeddingFrame, EmbeddingInput, EmbeddingsRequest};

use crate::error::ApiError;
use sy_protocol::ResponseMeta;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// Parses and validates an embeddings body.
pub fn parse(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: EmbeddingsRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                sy_protocol::ErrorCode::InvalidRequest,
                format!("We could not parse the JSON body of your request: {inner}."),
            );
        }
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|s| s.strip_suffix('`'))
        {
            return ApiError::invalid(field, format!("Missing required parameter: '{field}'."));
        }
        if path == "." {
            // Not an object, or a field this API does not have.
            return ApiError::new(
                sy_protocol::ErrorCode::InvalidRequest,
                format!("The request body must be a JSON object of the embeddings API: {msg}."),
            );
        }
        let why = if path == "input" || path.starts_with("input.") || path.starts_with("input[") {
            "it must be a string, an array of strings, or an array of token arrays".to_owned()
        } else {
            msg
        };
        ApiError::invalid(path.clone(), format!("Invalid value for '{path}': {why}."))
    })?;
    // Nothing may follow the object (serde_path_to_error stops at its end).
    de.end().map_err(|e| {
        ApiError::new(
            sy_protocol::ErrorCode::InvalidRequest,
            format!("We could not parse the JSON body of your request: {e}."),
        )
    })?;
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    if req.input.is_empty() {
        return Err(ApiError::invalid("input", "'input' must not be empty."));
    }
    if req.input.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("'input' holds at most {MAX_INPUTS} items."),
        ));
    }
    let empty = match &req.input {
        EmbeddingInput::One(s) => s.is_empty(),
        EmbeddingInput::Many(v) => v.iter().any(String::is_empty),
        EmbeddingInput::Tokens(t) => t.is_empty(),
        EmbeddingInput::ManyTokens(v) => v.iter().any(Vec::is_empty),
    };
    if empty {
        return Err(ApiError::invalid(
            "input",
            "'input' must not contain empty strings or token arrays.",
        ));
    }
    match req.encoding_format.as_deref() {
        None | Some("float" | "base64") => {}
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("'encoding_format' must be 'float' or 'base64', not '{other}'."),
            ));
        }
    }
    if req.dimensions == Some(0) {
        return Err(ApiError::invalid(
            "dimensions",
            "'dimensions' must be at least 1.",
        ));
    }
    Ok(req)
}

/// The OpenAI `list` of embeddings, in input order.
pub fn body(
    mut vectors: Vec<EmbeddingFrame>,
    base64: bool,
    names: &ResponseMeta,
    usage: Option<&TokenUsage>,
) -> Vec<u8> {
    vectors.sort_by_key(|v| v.index);
    let data: Vec<Value> = vectors
        .into_iter()
        .map(|v| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.embedding.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v.embedding)
            };
            json!({"object": "embedding", "index": v.index, "embedding": embedding})
        })
        .collect();
    let prompt = usage.map_or(0, TokenUsage::prompt_tokens);
    serde_json::to_vec(&json!({
        "object": "list",
        "data": data,
        "model": names.model(),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_other_than_input_is_not_blamed_on_input() {
        let e = parse(br#"{"model":"m","input":"a","dimensions":"x"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("dimensions"));
        assert!(!e.message.contains("token arrays"), "{}", e.message);
        let e = parse(b"[1]").unwrap_err();
        assert_eq!(e.param, None, "{}", e.message);
    }

    #[test]
    fn inputs_parse_and_bad_ones_name_the_field() {
        for ok in [
            r#"{"model":"m","input":"a"}"#,
            r#"{"model":"m","input":["a","b"]}"#,
            r#"{"model":"m","input":[1,2,3]}"#,
            r#"{"model":"m","input":[[1],[2,3]],"encoding_format":"base64","dimensions":8}"#,
        ] {
            parse(ok.as_bytes()).unwrap();
        }
        for (bad, param) in [
            (r#"{"input":"a"}"#, "model"),
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":["a",""]}"#, "input"),
            (r#"{"model":"m","input":{"x":1}}"#, "input"),
            (
                r#"{"model":"m","input":"a","encoding_format":"hex"}"#,
                "encoding_format",
            ),
            (
                r#"{"model":"m","input":"a","dimensions":"x"}"#,
                "dimensions",
            ),
            (r#"{"model":5,"input":"a"}"#, "model"),
        ] {
            assert_eq!(
                parse(bad.as_bytes()).unwrap_err().param.as_deref(),
                Some(param),
                "{bad}"
            );
        }
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let names = ResponseMeta {
            response_id: Some("x".into()),
            created: Some(0),
            served_model: Some("m".into()),
            system_fingerprint: None,
        };
        let frames = vec![EmbeddingFrame {
            seq: 0,
            start: None,
            index: 0,
            embedding: vec![1.0, -2.0],
        }];
        let v: Value = serde_json::from_slice(&body(frames, true, &names, None)).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );
    }
}
