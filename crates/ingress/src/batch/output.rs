//! Output and error files in OpenAI's batch format: one JSON line per item,
//! `{"id","custom_id","response":{"status_code","request_id","body"},"error"}`,
//! in input order. Answered items go to the output file; items that ended with
//! an error (their `response` holds the error body and status a client would
//! have got) and items never run (cancelled or expired: `response` is null and
//! `error` says why) go to the error file.

use serde::Serialize;
use serde_json::value::RawValue;
use sy_protocol::batch::BatchResult;
use sy_protocol::{ApiSurface, ReplyFrame, StartInfo};

use crate::relay::answer_meta;

#[derive(Serialize)]
struct OutLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<OutResponse>,
    error: Option<OutError<'a>>,
}

#[derive(Serialize)]
struct OutResponse {
    status_code: u16,
    request_id: String,
    body: Box<RawValue>,
}

#[derive(Serialize)]
struct OutError<'a> {
    code: &'a str,
    message: &'a str,
}

/// One item's line, and whether it belongs in the error file.
pub fn line(surface: ApiSurface, result: &BatchResult, base64: bool) -> (Vec<u8>, bool) {
    let start: Option<&StartInfo> = result.frames.iter().find_map(|f| match f {
        ReplyFrame::Chunk(c) => c.start.as_ref(),
        ReplyFrame::Embedding(e) => e.start.as_ref(),
        ReplyFrame::Rerank(r) => r.start.as_ref(),
        ReplyFrame::Image(i) => i.start.as_ref(),
        ReplyFrame::Text(t) => t.start.as_ref(),
        ReplyFrame::Bytes(b) => b.start.as_ref(),
        ReplyFrame::Final(f) => f.start.as_ref(),
    });
    let model = start.map_or("", |s| s.upstream_model.as_str());
    let names = answer_meta(start, result.request_id, model);
    let (status, body, failed) =
        match crate::respond::answer_body(surface, result.frames.clone(), &names, base64) {
            Ok(body) => (200, body, false),
            Err(e) => (e.status.as_u16(), e.openai_body(), true),
        };
    let body = RawValue::from_string(String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default());
    let out = OutLine {
        id: format!("batch_req_{}", result.request_id.as_simple()),
        custom_id: &result.custom_id,
        response: Some(OutResponse {
            status_code: status,
            request_id: result.request_id.to_string(),
            body,
        }),
        error: None,
    };
    (serde_json::to_vec(&out).unwrap_or_default(), failed)
}

/// The error line of an item that never ran (`batch_cancelled`, `batch_expired`).
pub fn not_run(custom_id: &str, request_id: uuid::Uuid, code: &str, message: &str) -> Vec<u8> {
    let out = OutLine {
        id: format!("batch_req_{}", request_id.as_simple()),
        custom_id,
        response: None,
        error: Some(OutError { code, message }),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sy_protocol::TokenUsage;
    use sy_protocol::chat::{ChoiceDelta, Delta};
    use sy_protocol::{ChunkFrame, ErrorCode, FinalFrame, FrameError, ResponseMeta};

    fn start() -> StartInfo {
        StartInfo {
            provider: "openai".into(),
            upstream_model: "gpt-4o-mini".into(),
            response: ResponseMeta {
                response_id: Some("chatcmpl-1".into()),
                created: Some(1),
                ..ResponseMeta::default()
            },
            attempt: 1,
            upstream_us: None,
            stages: None,
        }
    }

    fn result(frames: Vec<ReplyFrame>) -> BatchResult {
        BatchResult {
            batch_id: "batch_1".into(),
            index: 0,
            custom_id: "req-1".into(),
            request_id: uuid::Uuid::nil(),
            frames,
            usage: None,
        }
    }

    #[test]
    fn an_answer_is_an_output_line_with_the_chat_completion() {
        let frames = vec![
            ReplyFrame::Chunk(ChunkFrame {
                seq: 0,
                start: Some(start()),
                choices: vec![ChoiceDelta {
                    index: 0,
                    delta: Delta {
                        content: Some("hello there".into()),
                        ..Delta::default()
                    },
                    finish_reason: None,
                    logprobs: None,
                }],
            }),
            ReplyFrame::Final(FinalFrame {
                seq: 1,
                start: None,
                finish_reason: Some("stop".into()),
                usage: Some(TokenUsage {
                    input_tokens: 5,
                    output_tokens: 2,
                    ..TokenUsage::default()
                }),
                error: None,
            }),
        ];
        let (bytes, failed) = line(ApiSurface::ChatCompletions, &result(frames), false);
        assert!(!failed);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["custom_id"], "req-1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["error"], serde_json::Value::Null);
        let body = &v["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "hello there");
        assert_eq!(body["usage"]["total_tokens"], 7);
    }

    #[test]
    fn an_error_is_an_error_line_with_the_status_and_error_body() {
        let frames = vec![ReplyFrame::Final(FinalFrame {
            seq: 0,
            start: Some(start()),
            finish_reason: None,
            usage: None,
            error: Some(FrameError {
                provider_status: Some(500),
                ..FrameError::new(ErrorCode::ProviderError, "upstream said no")
            }),
        })];
        let (bytes, failed) = line(ApiSurface::ChatCompletions, &result(frames), false);
        assert!(failed);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        // A provider 500 is a 502 from the gateway, as for an interactive client.
        assert_eq!(v["response"]["status_code"], 502);
        assert_eq!(
            v["response"]["body"]["error"]["message"],
            "upstream said no"
        );
        let cancelled = not_run("req-2", uuid::Uuid::nil(), "batch_cancelled", "cancelled");
        let v: serde_json::Value = serde_json::from_slice(&cancelled).unwrap();
        assert_eq!(v["response"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], "batch_cancelled");
    }
}
