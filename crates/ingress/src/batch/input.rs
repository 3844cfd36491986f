//! Batch input files: one JSON request per line, checked whole before anything runs.
//!
//! A line is `{"custom_id": "...", "method": "POST", "url": "<endpoint>", "body": {...}}`.
//! The first problem refuses the file, naming its 1-based line: not JSON, a
//! missing or empty `custom_id`, a method other than POST, a `url` other than
//! the batch's endpoint, a missing `body` object, a `custom_id` seen before,
//! more lines than allowed, or no line at all. Blank lines are skipped. The
//! body itself is checked when the item runs (a bad body fails that item with
//! a 400 in the error file, without calling a provider).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use sy_protocol::batch::BatchError;

/// One request of a batch.
#[derive(Debug)]
pub struct Line {
    /// The submitter's id.
    pub custom_id: String,
    /// The request body, as written.
    pub body: Box<RawValue>,
}

#[derive(Deserialize)]
struct RawLine {
    custom_id: Option<serde_json::Value>,
    method: Option<serde_json::Value>,
    url: Option<serde_json::Value>,
    body: Option<Box<RawValue>>,
}

fn problem(code: &str, line: u64, param: Option<&str>, message: String) -> BatchError {
    BatchError {
        code: code.into(),
        message,
        param: param.map(str::to_owned),
        line: Some(line),
    }
}

/// Parses and checks a whole input file for `endpoint`.
pub fn parse(data: &[u8], endpoint: &str, max_lines: u64) -> Result<Vec<Line>, BatchError> {
    let mut lines = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() as u64 >= max_lines {
            return Err(problem(
                "too_many_lines",
                n,
                None,
                format!("The file has more than {max_lines} requests (the limit per batch)."),
            ));
        }
        let parsed: RawLine = serde_json::from_slice(raw).map_err(|e| {
            problem(
                "invalid_json_line",
                n,
                None,
                format!("Line {n} is not a JSON object: {e}."),
            )
        })?;
        let custom_id = match parsed.custom_id {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
                return Err(problem(
                    "missing_custom_id",
                    n,
                    Some("custom_id"),
                    format!("Line {n} has no custom_id; every request needs a unique one."),
                ));
            }
            Some(_) => {
                return Err(problem(
                    "invalid_custom_id",
                    n,
                    Some("custom_id"),
                    format!("Line {n}: custom_id must be a string."),
                ));
            }
        };
        if custom_id.len() > 512 {
            return Err(problem(
                "invalid_custom_id",
                n,
                Some("custom_id"),
                format!("Line {n}: custom_id is longer than 512 characters."),
            ));
        }
        match parsed.method.as_ref().and_then(|m| m.as_str()) {
            Some("POST") => {}
            other => {
                return Err(problem(
                    "invalid_method",
                    n,
                    Some("method"),
                    format!(
                        "Line {n}: method must be \"POST\" (got {}).",
                        other.map_or_else(|| "nothing".to_owned(), |m| format!("\"{m}\""))
                    ),
                ));
            }
        }
        match parsed.url.as_ref().and_then(|u| u.as_str()) {
            Some(u) if u == endpoint => {}
            other => {
                return Err(problem(
                    "mismatched_url",
                    n,
                    Some("url"),
                    format!(
                        "Line {n}: url {} does not match the batch's endpoint \"{endpoint}\".",
                        other.map_or_else(|| "is missing and".to_owned(), |u| format!("\"{u}\""))
                    ),
                ));
            }
        }
        let body = match parsed.body {
            Some(b) if b.get().trim_start().starts_with('{') => b,
            _ => {
                return Err(problem(
                    "missing_body",
                    n,
                    Some("body"),
                    format!("Line {n}: body must be a JSON object (the request to {endpoint})."),
                ));
            }
        };
        if let Some(first) = seen.insert(custom_id.clone(), n) {
            return Err(problem(
                "duplicate_custom_id",
                n,
                Some("custom_id"),
                format!("Line {n}: custom_id \"{custom_id}\" was used before, on line {first}."),
            ));
        }
        lines.push(Line { custom_id, body });
    }
    if lines.is_empty() {
        return Err(BatchError {
            code: "empty_file".into(),
            message: "The input file has no requests.".into(),
            param: Some("input_file_id".into()),
            line: None,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "/v1/chat/completions";

    fn line(id: &str) -> String {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"{CHAT}","body":{{"model":"m","messages":[{{"role":"user","content":"hi"}}]}}}}"#
        )
    }

    #[test]
    fn a_good_file_parses_in_order_skipping_blank_lines() {
        let text = format!("{}\n\n{}\r\n{}\n", line("a"), line("b"), line("c"));
        let lines = parse(text.as_bytes(), CHAT, 10).unwrap();
        let ids: Vec<&str> = lines.iter().map(|l| l.custom_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(lines[0].body.get().contains("\"messages\""));
    }

    #[test]
    fn each_problem_names_its_line_and_code() {
        let cases = [
            (
                format!("{}\nnot json\n", line("a")),
                "invalid_json_line",
                Some(2),
            ),
            (
                format!(
                    "{}\n{{\"method\":\"POST\",\"url\":\"{CHAT}\",\"body\":{{}}}}\n",
                    line("a")
                ),
                "missing_custom_id",
                Some(2),
            ),
            (
                format!("{}\n\n{}\n", line("a"), line("a")),
                "duplicate_custom_id",
                Some(3),
            ),
            (
                line("a").replace(CHAT, "/v1/embeddings"),
                "mismatched_url",
                Some(1),
            ),
            (line("a").replace("POST", "GET"), "invalid_method", Some(1)),
            (
                format!(r#"{{"custom_id":"a","method":"POST","url":"{CHAT}","body":[1]}}"#),
                "missing_body",
                Some(1),
            ),
            (
                format!("{}\n{}\n{}\n", line("a"), line("b"), line("c")),
                "too_many_lines",
                Some(3),
            ),
            ("\n\n".to_owned(), "empty_file", None),
        ];
        for (text, code, at) in cases {
            let e = parse(text.as_bytes(), CHAT, 2).unwrap_err();
            assert_eq!((e.code.as_str(), e.line), (code, at), "{text}");
            if let Some(n) = at {
                assert!(e.message.contains(&format!("Line {n}")) || code == "too_many_lines");
            }
        }
    }
}
