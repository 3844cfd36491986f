//! What a request tag is (issue 20): the rules every place that takes tags
//! checks them by (the ingress, the config's routes, a key's default tags,
//! `group_by=tag:<key>`).

/// Most tags a request may carry (OpenAI allows 16 metadata pairs).
pub const MAX_TAGS: usize = 16;
/// Longest key, in characters (OpenAI's metadata limit).
pub const MAX_KEY_CHARS: usize = 64;
/// Longest value, in characters (OpenAI's metadata limit).
pub const MAX_VALUE_CHARS: usize = 512;

/// A tag key: 1 to 64 of `A-Z a-z 0-9 _ - . :`.
pub fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_CHARS
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// A tag value: up to 512 characters, none of them a control character.
pub fn valid_value(v: &str) -> bool {
    v.chars().count() <= MAX_VALUE_CHARS && !v.chars().any(char::is_control)
}

/// The rules in words, for error messages.
pub const RULES: &str = "keys are 1 to 64 of A-Z, a-z, 0-9, _, -, . and :; values at most 512 characters without control characters";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_the_rules() {
        assert!(valid_key("feature") && valid_key("exp.v2:arm-b_1"));
        assert!(!valid_key("") && !valid_key("bad key") && !valid_key(&"k".repeat(65)));
        assert!(valid_value("") && valid_value(&"v".repeat(512)));
        assert!(!valid_value(&"v".repeat(513)) && !valid_value("a\nb"));
    }
}
