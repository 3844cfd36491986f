//! Prices and cost arithmetic in exact fixed point: nano-USD (10⁻⁹ USD) integers.

use sy_protocol::TokenUsage;

/// Parses a non-negative decimal like `"0.15"` or `"2"` into nano-units (×10⁹).
/// At most nine fractional digits; no exponent, no sign, no float on the way.
pub fn parse_nanos(text: &str) -> Option<i64> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32)
    };
    int.checked_mul(1_000_000_000)?.checked_add(frac_val)
}

/// Formats nano-units as a decimal with nine fractional digits (`"0.000150000"`).
pub fn format_nanos(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

/// A model's price, in nano-USD per million tokens of each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Uncached input tokens.
    pub input: i64,
    /// Input tokens read from the cache.
    pub cached_input: i64,
    /// Input tokens written to the cache.
    pub cache_write: i64,
    /// Output tokens (reasoning included).
    pub output: i64,
}

impl Price {
    /// The cost of `tokens`, nano-USD, rounded half up once at the end.
    pub fn cost_nanos(&self, tokens: &TokenUsage) -> i64 {
        let sum = i128::from(tokens.input_tokens) * i128::from(self.input)
            + i128::from(tokens.cached_input_tokens) * i128::from(self.cached_input)
            + i128::from(tokens.cache_write_tokens) * i128::from(self.cache_write)
            + i128::from(tokens.output_tokens) * i128::from(self.output);
        i64::try_from((sum + 500_000) / 1_000_000).unwrap_or(i64::MAX)
    }
}

/// Applies a markup in parts per billion (10⁹ = +100 %) to a cost, rounding half up.
pub fn apply_markup(cost_nanos: i64, markup_ppb: i64) -> i64 {
    let billed = i128::from(cost_nanos) * (1_000_000_000 + i128::from(markup_ppb));
    i64::try_from((billed + 500_000_000) / 1_000_000_000).unwrap_or(i64::MAX)
}

/// Scales a price by a factor in parts per billion (10⁹ = ×1), rounding half up.
pub fn scale(nanos: i64, factor_ppb: i64) -> i64 {
    let scaled = i128::from(nanos) * i128::from(factor_ppb);
    i64::try_from((scaled + 500_000_000) / 1_000_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_nanos("0.15"), Some(150_000_000));
        assert_eq!(parse_nanos("2"), Some(2_000_000_000));
        assert_eq!(parse_nanos("0.000000001"), Some(1));
        assert_eq!(parse_nanos(".5"), Some(500_000_000));
        for bad in ["", ".", "-1", "1e3", "0.0000000001", "abc", "1.2.3"] {
            assert_eq!(parse_nanos(bad), None, "{bad}");
        }
        assert_eq!(format_nanos(150_000), "0.000150000");
        assert_eq!(format_nanos(2_500_000_000), "2.500000000");
    }

    #[test]
    fn cost_is_the_price_tables_arithmetic() {
        // gpt-4o-mini-like: $0.15 in, $0.075 cached, $0.60 out per million.
        let p = Price {
            input: 150_000_000,
            cached_input: 75_000_000,
            cache_write: 150_000_000,
            output: 600_000_000,
        };
        let t = TokenUsage {
            input_tokens: 1_000,
            cached_input_tokens: 2_000,
            output_tokens: 500,
            ..TokenUsage::default()
        };
        // 1000×0.15 + 2000×0.075 + 500×0.60 = 150 + 150 + 300 = 600 µ$ per… per million → 0.0006 $.
        assert_eq!(p.cost_nanos(&t), 600_000);
        // Sub-nano amounts round half up once: 1 token at $0.0015/M = 1.5 nano$ → 2.
        let tiny = Price {
            input: 1_500_000,
            cached_input: 0,
            cache_write: 0,
            output: 0,
        };
        assert_eq!(
            tiny.cost_nanos(&TokenUsage {
                input_tokens: 1,
                ..Default::default()
            }),
            2
        );
        assert_eq!(apply_markup(600_000, 200_000_000), 720_000);
        assert_eq!(apply_markup(600_000, 0), 600_000);
    }
}
