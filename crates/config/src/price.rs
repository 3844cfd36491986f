//! Prices and cost arithmetic in exact fixed point: nano-USD (10⁻⁹ USD) integers.

#[cfg(test)]
use sy_protocol::TokenUsage;
pub use sy_protocol::price::{Price, Units};

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

/// A price from its decimal strings (USD per million tokens; USD per request,
/// image, search unit, generated image, second of audio or character spoken); each field that is not a non-negative decimal is named.
pub fn from_raw(rp: &crate::RawPrice) -> Result<Price, Vec<&'static str>> {
    let mut bad = Vec::new();
    let mut field = |name: &'static str, v: &str| {
        parse_nanos(v).unwrap_or_else(|| {
            bad.push(name);
            0
        })
    };
    let input = field("input", &rp.input);
    let output = field("output", &rp.output);
    let mut or = |name: &'static str, v: &Option<String>, default: i64| {
        v.as_deref().map_or(default, |v| field(name, v))
    };
    let cached_input = or("cached_input", &rp.cached_input, input);
    let cache_write = or("cache_write", &rp.cache_write, input);
    let cache_write_1h = or("cache_write_1h", &rp.cache_write_1h, cache_write);
    let reasoning_output = or("reasoning_output", &rp.reasoning_output, output);
    // Per-unit prices are USD per unit, parsed to nano-USD per unit.
    let per_request = or("per_request", &rp.per_request, 0);
    let per_image = or("per_image", &rp.per_image, 0);
    let per_search_unit = or("per_search_unit", &rp.per_search_unit, 0);
    let per_output_image = or("per_output_image", &rp.per_output_image, 0);
    let per_audio_second = or("per_audio_second", &rp.per_audio_second, 0);
    let per_character = or("per_character", &rp.per_character, 0);
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(Price {
        input,
        cached_input,
        cache_write,
        cache_write_1h,
        output,
        reasoning_output,
        per_request,
        per_image,
        per_search_unit,
        per_output_image,
        per_audio_second,
        per_character,
    })
}

/// A price as decimal strings again (the shortest that parse back to it).
pub fn to_raw(p: &Price) -> crate::RawPrice {
    let d = |n: i64| {
        let s = format_nanos(n);
        let s = s.trim_end_matches('0');
        s.strip_suffix('.').unwrap_or(s).to_owned()
    };
    let opt = |n: i64, default: i64| (n != default).then(|| d(n));
    crate::RawPrice {
        input: d(p.input),
        output: d(p.output),
        cached_input: opt(p.cached_input, p.input),
        cache_write: opt(p.cache_write, p.input),
        cache_write_1h: opt(p.cache_write_1h, p.cache_write),
        reasoning_output: opt(p.reasoning_output, p.output),
        per_request: opt(p.per_request, 0),
        per_image: opt(p.per_image, 0),
        per_search_unit: opt(p.per_search_unit, 0),
        per_output_image: opt(p.per_output_image, 0),
        per_audio_second: opt(p.per_audio_second, 0),
        per_character: opt(p.per_character, 0),
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
        let p = Price::per_token(150_000_000, 75_000_000, 150_000_000, 600_000_000);
        let t = TokenUsage {
            input_tokens: 1_000,
            cached_input_tokens: 2_000,
            output_tokens: 500,
            ..TokenUsage::default()
        };
        // 1000×0.15 + 2000×0.075 + 500×0.60 = 150 + 150 + 300 = 600 µ$ per… per million → 0.0006 $.
        assert_eq!(p.cost_nanos(&t), 600_000);
        // Sub-nano amounts round half up once: 1 token at $0.0015/M = 1.5 nano$ → 2.
        let tiny = Price::per_token(1_500_000, 0, 0, 0);
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

    #[test]
    fn a_price_reads_back_from_its_decimal_strings() {
        let p = Price {
            input: 150_000_000,
            cached_input: 75_000_000,
            cache_write: 150_000_000,
            cache_write_1h: 300_000_000,
            output: 2_000_000_000,
            reasoning_output: 2_000_000_000,
            per_request: 1,
            per_image: 0,
            per_search_unit: 2_000_000,
            per_output_image: 40_000_000,
            per_audio_second: 100_000,
            per_character: 15_000,
        };
        let raw = to_raw(&p);
        assert_eq!((raw.input.as_str(), raw.output.as_str()), ("0.15", "2"));
        assert_eq!(raw.cache_write, None, "the default is not written");
        assert_eq!(raw.per_request.as_deref(), Some("0.000000001"));
        assert_eq!(raw.per_search_unit.as_deref(), Some("0.002"));
        assert_eq!(raw.per_output_image.as_deref(), Some("0.04"));
        assert_eq!(raw.per_audio_second.as_deref(), Some("0.0001"));
        assert_eq!(raw.per_character.as_deref(), Some("0.000015"));
        assert_eq!(from_raw(&raw), Ok(p));
    }

    #[test]
    fn every_token_class_and_unit_has_its_own_price() {
        // Claude-like: $3 in, $0.30 cached, $3.75 (5 min) and $6 (1 h) cache
        // writes, $15 out, $20 reasoning (made up), $0.01 a request, $0.002 an image.
        let p = Price {
            input: 3_000_000_000,
            cached_input: 300_000_000,
            cache_write: 3_750_000_000,
            cache_write_1h: 6_000_000_000,
            output: 15_000_000_000,
            reasoning_output: 20_000_000_000,
            per_request: 10_000_000,
            per_image: 2_000_000,
            per_search_unit: 2_000_000,
            per_output_image: 40_000_000,
            per_audio_second: 100_000,
            per_character: 15_000,
        };
        let one = |f: fn(&mut TokenUsage)| {
            let mut t = TokenUsage::default();
            f(&mut t);
            p.cost_nanos(&t)
        };
        // A million tokens of each class alone costs its price.
        assert_eq!(one(|t| t.input_tokens = 1_000_000), 3_000_000_000);
        assert_eq!(one(|t| t.cached_input_tokens = 1_000_000), 300_000_000);
        assert_eq!(one(|t| t.cache_write_tokens = 1_000_000), 3_750_000_000);
        let hour = |t: &mut TokenUsage| {
            t.cache_write_tokens = 1_000_000;
            t.cache_write_1h_tokens = 1_000_000;
        };
        assert_eq!(one(hour), 6_000_000_000);
        assert_eq!(one(|t| t.output_tokens = 1_000_000), 15_000_000_000);
        let thinking = |t: &mut TokenUsage| {
            t.output_tokens = 1_000_000;
            t.reasoning_tokens = 1_000_000;
        };
        assert_eq!(one(thinking), 20_000_000_000);
        // Together, with a request and three images: the sum.
        let t = TokenUsage {
            input_tokens: 1_000,
            cached_input_tokens: 2_000,
            cache_write_tokens: 400,
            cache_write_1h_tokens: 100,
            output_tokens: 500,
            reasoning_tokens: 200,
        };
        let units = Units {
            requests: 1,
            images: 3,
            search_units: 0,
            output_images: 0,
            audio_seconds: 0,
            characters: 0,
        };
        // 3000 + 600 + 300×3.75 + 100×6 + 300×15 + 200×20 = 13,825 µ$ → 13,825,000 n$.
        assert_eq!(p.cost_nanos(&t), 13_825_000);
        assert_eq!(p.cost_of(&t, units), 13_825_000 + 10_000_000 + 6_000_000);
        // A rerank call: its search units at their price.
        let rerank = Units {
            search_units: 2,
            ..Units::default()
        };
        assert_eq!(p.cost_of(&TokenUsage::default(), rerank), 4_000_000);
        // Two generated images at their price.
        let drawn = Units {
            output_images: 2,
            ..Units::default()
        };
        assert_eq!(p.cost_of(&TokenUsage::default(), drawn), 80_000_000);
        // A minute of audio at $0.006 a minute.
        let heard = Units {
            audio_seconds: 60,
            ..Units::default()
        };
        assert_eq!(p.cost_of(&TokenUsage::default(), heard), 6_000_000);
        // A thousand characters spoken at $15 a million.
        let said = Units {
            characters: 1_000,
            ..Units::default()
        };
        assert_eq!(p.cost_of(&TokenUsage::default(), said), 15_000_000);
        // A report of more 1-hour writes or reasoning than there are is capped.
        let odd = TokenUsage {
            cache_write_1h_tokens: 9,
            reasoning_tokens: 9,
            ..TokenUsage::default()
        };
        assert_eq!(p.cost_nanos(&odd), 0);
    }
}
