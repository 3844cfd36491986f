//! `[[mock:key=value,...]]` directives: parsing, `only=` filtering and precedence.

use std::time::Duration;

/// The behaviour chosen for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// Answer with this HTTP status and an error body.
    pub status: Option<u16>,
    /// `retry-after` header value, seconds.
    pub retry_after: Option<u64>,
    /// Delay before the first token.
    pub ttft: Option<Duration>,
    /// Delay before the response's status and headers.
    pub headers: Option<Duration>,
    /// Delay between streamed chunks.
    pub delay: Option<Duration>,
    /// Answer length in tokens.
    pub tokens: Option<usize>,
    /// Drop the connection after this many content chunks.
    pub cut_after: Option<usize>,
    /// Accept and never answer.
    pub hang: bool,
    /// Refuse requests that end with an assistant prefill (400).
    pub no_prefill: bool,
    /// Streamed: go silent (connection open) after this many content chunks.
    pub stall_after: Option<usize>,
    /// Streamed: send an unreadable event after this many content chunks, then end.
    pub garbage_after: Option<usize>,
    /// Streamed (OpenAI dialect): end without `data: [DONE]`.
    pub no_done: bool,
    /// `status` applies only this long after the mock started or was reset.
    pub fail_for: Option<Duration>,
    /// Answer with a call to this tool.
    pub tool_call: Option<String>,
    /// The finish reason of a text answer (OpenAI dialect): `stop` (the
    /// default), `length` or `content_filter`.
    pub finish: Option<String>,
    /// Report this many of the prompt tokens as read from the cache.
    pub cached_tokens: Option<u64>,
    /// Report this many of the prompt tokens as written to the cache (Anthropic).
    pub cache_write: Option<u64>,
    /// With `status`: which error to describe, in the dialect's words
    /// (`rate_limit`, `overloaded`, `context_length`, `content_filter`).
    pub error: Option<String>,
}

/// A bad directive: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveError(pub String);

impl Directives {
    /// Overlays the keys set in `other` onto `self` (other wins).
    pub fn overlay(&mut self, other: Directives) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            status,
            retry_after,
            ttft,
            headers,
            delay,
            tokens,
            cut_after,
            tool_call,
            finish,
            cached_tokens,
            cache_write,
            error,
            stall_after,
            garbage_after,
            fail_for
        );
        self.hang |= other.hang;
        self.no_prefill |= other.no_prefill;
        self.no_done |= other.no_done;
    }
}

/// Parses one `key=value,key=value` list. Returns `None` when it has `only=NAME`
/// and NAME is not `instance`.
pub fn parse_list(text: &str, instance: &str) -> Result<Option<Directives>, DirectiveError> {
    let mut d = Directives::default();
    let mut applies = true;
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .unwrap_or((pair, "true"));
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| DirectiveError(format!("mock directive {key}: '{v}' is not a number")))
        };
        match key {
            "status" => {
                let s = num(value)?;
                if !(100..=599).contains(&s) {
                    return Err(DirectiveError(format!(
                        "mock directive status: {s} is not an HTTP status"
                    )));
                }
                d.status = Some(s as u16);
            }
            "retry_after" => d.retry_after = Some(num(value)?),
            "ttft_ms" => d.ttft = Some(Duration::from_millis(num(value)?)),
            "headers_ms" => d.headers = Some(Duration::from_millis(num(value)?)),
            "delay_ms" => d.delay = Some(Duration::from_millis(num(value)?)),
            "tokens" => d.tokens = Some(num(value)? as usize),
            "cut_after" => d.cut_after = Some(num(value)? as usize),
            "stall_after" => d.stall_after = Some(num(value)? as usize),
            "garbage_after" => d.garbage_after = Some(num(value)? as usize),
            "fail_for_ms" => d.fail_for = Some(Duration::from_millis(num(value)?)),
            "hang" | "no_prefill" | "no_done" => {
                let on = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    v => {
                        return Err(DirectiveError(format!(
                            "mock directive {key}: '{v}' is not a boolean"
                        )));
                    }
                };
                match key {
                    "hang" => d.hang = on,
                    "no_prefill" => d.no_prefill = on,
                    _ => d.no_done = on,
                }
            }
            "tool_call" => {
                if value.is_empty() {
                    return Err(DirectiveError(
                        "mock directive tool_call: needs a tool name".into(),
                    ));
                }
                d.tool_call = Some(value.to_owned());
            }
            "finish" => match value {
                "stop" | "length" | "content_filter" => d.finish = Some(value.to_owned()),
                v => {
                    return Err(DirectiveError(format!(
                        "mock directive finish: '{v}' is not stop, length or content_filter"
                    )));
                }
            },
            "cached_tokens" => d.cached_tokens = Some(num(value)?),
            "cache_write" => d.cache_write = Some(num(value)?),
            "error" => match value {
                "rate_limit" | "overloaded" | "context_length" | "content_filter" => {
                    d.error = Some(value.to_owned());
                }
                v => {
                    return Err(DirectiveError(format!(
                        "mock directive error: '{v}' is not rate_limit, overloaded, context_length or content_filter"
                    )));
                }
            },
            "only" => applies = value == instance,
            other => return Err(DirectiveError(format!("unknown mock directive '{other}'"))),
        }
    }
    Ok(applies.then_some(d))
}

/// Removes every `[[mock:...]]` block from `text`; returns the rest (trimmed) and the blocks' contents.
pub fn extract(text: &str) -> (String, Vec<String>) {
    let mut rest = String::with_capacity(text.len());
    let mut blocks = Vec::new();
    let mut s = text;
    while let Some(start) = s.find("[[mock:") {
        let Some(end) = s[start..].find("]]") else {
            break;
        };
        rest.push_str(&s[..start]);
        blocks.push(s[start + 7..start + end].to_owned());
        s = &s[start + end + 2..];
    }
    rest.push_str(s);
    (rest.trim().to_owned(), blocks)
}

/// Resolves a request's directives: `defaults` < `header` < message `blocks`, key by key.
pub fn resolve(
    defaults: &str,
    header: Option<&str>,
    blocks: &[String],
    instance: &str,
) -> Result<Directives, DirectiveError> {
    let mut d = parse_list(defaults, instance)?.unwrap_or_default();
    if let Some(h) = header
        && let Some(hd) = parse_list(h, instance)?
    {
        d.overlay(hd);
    }
    for b in blocks {
        if let Some(bd) = parse_list(b, instance)? {
            d.overlay(bd);
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_extracted_from_text() {
        let (rest, blocks) =
            extract("Hello [[mock:status=429,retry_after=2]] there [[mock:tokens=3]]");
        assert_eq!(rest, "Hello  there");
        assert_eq!(blocks, vec!["status=429,retry_after=2", "tokens=3"]);
    }

    #[test]
    fn precedence_is_message_over_header_over_defaults() {
        let d = resolve(
            "tokens=1,ttft_ms=5",
            Some("tokens=2,delay_ms=7"),
            &["tokens=3".into()],
            "a",
        )
        .unwrap();
        assert_eq!(d.tokens, Some(3));
        assert_eq!(d.delay, Some(Duration::from_millis(7)));
        assert_eq!(d.ttft, Some(Duration::from_millis(5)));
    }

    #[test]
    fn only_applies_to_the_named_instance() {
        let blocks = vec![
            "status=500,only=openai".to_owned(),
            "status=429,only=anthropic".to_owned(),
        ];
        assert_eq!(
            resolve("", None, &blocks, "openai").unwrap().status,
            Some(500)
        );
        assert_eq!(
            resolve("", None, &blocks, "anthropic").unwrap().status,
            Some(429)
        );
        assert_eq!(resolve("", None, &blocks, "vllm").unwrap().status, None);
    }

    #[test]
    fn bad_directives_name_the_key() {
        assert!(
            resolve("", None, &["colour=blue".into()], "a")
                .unwrap_err()
                .0
                .contains("colour")
        );
        assert!(
            resolve("", None, &["tokens=many".into()], "a")
                .unwrap_err()
                .0
                .contains("tokens")
        );
        assert!(resolve("", None, &["status=42".into()], "a").is_err());
        assert!(resolve("", None, &["hang=1".into()], "a").unwrap().hang);
    }
}
