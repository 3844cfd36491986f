//! Money in a currency's minor units, as payment providers count it: how many
//! decimals a currency has, what an amount credits in nano-USD at the
//! operator's configured rate, and the decimal strings YooKassa writes
//! (`"15.00"`). Integers throughout; nothing is rounded up in the payer's
//! favour.

use std::collections::BTreeMap;

/// ISO 4217 currencies without minor units (Stripe's zero-decimal list).
const ZERO_DECIMAL: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Nano-USD in one US dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// ISO 4217 currencies counted in thousandths (as Stripe counts them).
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

/// How many decimals `currency`'s minor unit has (2; 0 for the yen and the
/// other zero-decimal currencies; 3 for the dinars and the rial counted in
/// thousandths).
pub fn exponent(currency: &str) -> u32 {
    let is = |list: &[&str]| list.iter().any(|c| c.eq_ignore_ascii_case(currency));
    if is(&ZERO_DECIMAL) {
        0
    } else if is(&THREE_DECIMAL) {
        3
    } else {
        2
    }
}

/// `amount` minor units as a decimal string (`1500` → `"15.00"`; a
/// zero-decimal currency: `"1500"`).
pub fn to_decimal(amount: i64, currency: &str) -> String {
    let exp = exponent(currency);
    if exp == 0 {
        return amount.to_string();
    }
    let scale = 10_i64.pow(exp);
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    let s = scale.unsigned_abs();
    format!("{sign}{}.{:0width$}", a / s, a % s, width = exp as usize)
}

/// A decimal string (`"15.00"`, `"15.5"`, `"15"`) as minor units of
/// `currency`; none for a sign, an exponent, more decimals than the currency
/// has, or a number too large.
pub fn from_decimal(value: &str, currency: &str) -> Option<i64> {
    let exp = exponent(currency) as usize;
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > exp {
        return None;
    }
    if value.contains('.') && frac.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let mut frac_units: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..exp {
        frac_units *= 10;
    }
    whole
        .checked_mul(10_i64.pow(exp as u32))?
        .checked_add(frac_units)
}

/// What a top-up in each currency credits: nano-USD per major unit (USD is
/// always 1:1; others only as the operator configures them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rates(BTreeMap<String, i64>);

impl Rates {
    /// Rates from lowercase currency codes to nano-USD per major unit.
    pub fn new(rates: BTreeMap<String, i64>) -> Self {
        Rates(rates)
    }

    /// The currencies a top-up may be made in (`usd` first).
    pub fn currencies(&self) -> Vec<String> {
        let mut all = vec!["usd".to_owned()];
        all.extend(self.0.keys().filter(|c| *c != "usd").cloned());
        all
    }

    /// What `amount` minor units of `currency` credit, nano-USD, rounded
    /// down; none for a currency without a rate or an amount too large.
    pub fn credit_nanos(&self, amount: i64, currency: &str) -> Option<i64> {
        let currency = currency.to_ascii_lowercase();
        let per_unit = if currency == "usd" {
            NANOS_PER_USD
        } else {
            *self.0.get(&currency)?
        };
        let v = i128::from(amount) * i128::from(per_unit) / 10_i128.pow(exponent(&currency));
        i64::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_round_trip_through_decimal_strings() {
        assert_eq!(to_decimal(1500, "rub"), "15.00");
        assert_eq!(to_decimal(1505, "RUB"), "15.05");
        assert_eq!(to_decimal(7, "usd"), "0.07");
        assert_eq!(to_decimal(1500, "jpy"), "1500");
        assert_eq!(from_decimal("15.00", "rub"), Some(1500));
        assert_eq!(from_decimal("15.5", "rub"), Some(1550));
        assert_eq!(from_decimal("15", "rub"), Some(1500));
        assert_eq!(from_decimal("1500", "jpy"), Some(1500));
        for bad in [
            "",
            "-1.00",
            "+1",
            "1e3",
            "1.001",
            "1.",
            ".5",
            "1,00",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(from_decimal(bad, "rub"), None, "{bad:?}");
        }
        assert_eq!(from_decimal("15.5", "jpy"), None, "the yen has no decimals");
    }

    #[test]
    fn credits_follow_the_configured_rate_and_round_down() {
        let rates = Rates::new([("rub".to_owned(), 12_500_000)].into());
        assert_eq!(rates.credit_nanos(1500, "usd"), Some(15 * NANOS_PER_USD));
        // 1,500 roubles at $0.0125 = $18.75.
        assert_eq!(rates.credit_nanos(150_000, "RUB"), Some(18_750_000_000));
        // One kopeck is 125,000 nano-USD; 1/3 of a nano is dropped, never added.
        let thirds = Rates::new([("rub".to_owned(), 1)].into());
        assert_eq!(thirds.credit_nanos(50, "rub"), Some(0));
        assert_eq!(rates.credit_nanos(100, "eur"), None, "no rate, no credit");
        assert_eq!(rates.credit_nanos(i64::MAX, "usd"), None, "too large");
        assert_eq!(rates.currencies(), ["usd", "rub"]);
        // A Kuwaiti dinar is 1,000 fils: 10.000 KWD at $3.25 is $32.50.
        let kwd = Rates::new([("kwd".to_owned(), 3_250_000_000)].into());
        assert_eq!(kwd.credit_nanos(10_000, "kwd"), Some(32_500_000_000));
        assert_eq!(to_decimal(10_000, "kwd"), "10.000");
    }
}
