//! Limits on the JSON that crosses the bus.
//!
//! serde_json refuses to parse more than 127 nested arrays and objects. The
//! ingress wraps a client's request in a [`RequestEnvelope`](crate::RequestEnvelope),
//! which adds a few levels, so a body that parses at the ingress could be
//! unreadable at the worker. The ingress therefore refuses bodies nested deeper
//! than [`MAX_BODY_DEPTH`], leaving [`ENVELOPE_DEPTH_MARGIN`] levels for every
//! wrapping the bus adds (checked by a property test in the ingress).

/// Deepest nesting of arrays and objects a client's JSON body may have.
pub const MAX_BODY_DEPTH: usize = 64;

/// The deepest nesting serde_json parses (its recursion limit is 128 and the
/// outermost value counts too).
pub const SERDE_MAX_DEPTH: usize = 127;

/// Levels the bus may add around a body (envelope, canonical request) and
/// still stay within serde_json's limit.
pub const ENVELOPE_DEPTH_MARGIN: usize = SERDE_MAX_DEPTH - MAX_BODY_DEPTH;

/// The deepest nesting of arrays and objects in `text`, or `None` as soon as it
/// passes `limit`. Strings are skipped (brackets inside them do not count);
/// the text is not otherwise validated: a parser does that next. One pass, no
/// allocation.
pub fn nesting_depth(text: &[u8], limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0usize;
    let n = text.len();
    while i < n {
        match text[i] {
            b'"' => {
                // Skip to the closing quote, past escaped characters.
                i += 1;
                while i < n {
                    match text[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > limit {
                        return None;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Some(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!(
            "{{\"x\":{}{}}}",
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    }

    #[test]
    fn counts_arrays_and_objects_and_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(b"{}", 10), Some(1));
        assert_eq!(nesting_depth(b"1", 10), Some(0));
        assert_eq!(nesting_depth(br#"{"a":[{"b":[]}]}"#, 10), Some(4));
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{{"}"#, 10), Some(1));
        assert_eq!(nesting_depth(br#"{"a":"\"[[[[\\"}"#, 10), Some(1));
        assert_eq!(nesting_depth(br#"{"a":"\\","b":[[]]}"#, 10), Some(3));
    }

    #[test]
    fn stops_past_the_limit() {
        assert_eq!(nesting_depth(nested(64).as_bytes(), 64), Some(64));
        assert_eq!(nesting_depth(nested(65).as_bytes(), 64), None);
        assert_eq!(nesting_depth(nested(127).as_bytes(), 64), None);
    }

    #[test]
    fn agrees_with_serde_json_at_its_own_limit() {
        // serde_json parses 127 levels and refuses 128: the scan counts alike.
        for levels in [126usize, 127, 128, 129] {
            let text = nested(levels);
            let parses = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            let within = nesting_depth(text.as_bytes(), SERDE_MAX_DEPTH).is_some();
            assert_eq!(within, parses, "{levels}");
        }
    }
}
