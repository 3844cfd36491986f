//! Feature extraction, mirroring scripts/classifier/features.py exactly (the
//! reproduction test compares predictions with the script's).

use std::collections::HashMap;

/// Hashed n-gram buckets.
pub const HASH_DIM: usize = 1 << 14;
/// Tokens read from each end of a long prompt.
pub const WINDOW: usize = 256;
const MAX_WORD_CHARS: usize = 100;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;
/// Number of structural features.
pub const DENSE: usize = 13;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c') || (!c.is_ascii() && c.is_whitespace())
}

fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        let o = c as u32;
        (33..=47).contains(&o)
            || (58..=64).contains(&o)
            || (91..=96).contains(&o)
            || (123..=126).contains(&o)
    } else {
        !c.is_alphanumeric()
    }
}

fn is_cjk(c: char) -> bool {
    let o = c as u32;
    (0x4E00..=0x9FFF).contains(&o)
        || (0x3400..=0x4DBF).contains(&o)
        || (0x20000..=0x2A6DF).contains(&o)
        || (0x2A700..=0x2CEAF).contains(&o)
        || (0xF900..=0xFAFF).contains(&o)
        || (0x2F800..=0x2FA1F).contains(&o)
}

/// Lower-cased BERT-style tokens: words, and each punctuation or CJK char alone.
pub fn basic_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.to_lowercase().chars() {
        let o = c as u32;
        if (o < 32 && !is_ws(c)) || o == 127 || o == 0xFFFD {
            continue;
        }
        if is_ws(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if is_punct(c) || is_cjk(c) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(c.to_string());
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The first and last `WINDOW` tokens of a long prompt.
pub fn window(tokens: &[String]) -> Vec<&str> {
    if tokens.len() <= 2 * WINDOW {
        tokens.iter().map(String::as_str).collect()
    } else {
        tokens[..WINDOW]
            .iter()
            .chain(&tokens[tokens.len() - WINDOW..])
            .map(String::as_str)
            .collect()
    }
}

fn norm_word(t: &str) -> &str {
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        "0"
    } else {
        t
    }
}

/// Signed hashed unigrams and bigrams, L2-normalised: (bucket, value) pairs.
pub fn hashed(tokens: &[&str]) -> Vec<(usize, f64)> {
    let mut acc: HashMap<usize, f64> = HashMap::with_capacity(tokens.len() * 2);
    let mut add = |h: u64| {
        let b = (h % HASH_DIM as u64) as usize;
        *acc.entry(b).or_insert(0.0) += if h >> 63 == 0 { 1.0 } else { -1.0 };
    };
    let mut prev: Option<&str> = None;
    for t in tokens {
        let t = norm_word(t);
        add(fnv(fnv(FNV_OFFSET, b"w:"), t.as_bytes()));
        if let Some(p) = prev {
            let h = fnv(
                fnv(fnv(fnv(FNV_OFFSET, b"b:"), p.as_bytes()), b" "),
                t.as_bytes(),
            );
            add(h);
        }
        prev = Some(t);
    }
    let norm = acc.values().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Vec::new();
    }
    acc.into_iter()
        .filter(|(_, v)| *v != 0.0)
        .map(|(b, v)| (b, v / norm))
        .collect()
}

/// WordPiece ids of the tokens (greedy longest match, `##` continuations).
pub fn wordpiece(tokens: &[&str], vocab: &HashMap<String, u32>, unk: u32, out: &mut Vec<u32>) {
    let mut buf = String::new();
    for t in tokens {
        let chars: Vec<char> = t.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(unk);
            continue;
        }
        let mark = out.len();
        let mut start = 0;
        let mut bad = false;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                buf.clear();
                if start > 0 {
                    buf.push_str("##");
                }
                buf.extend(&chars[start..end]);
                if let Some(&id) = vocab.get(buf.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    bad = true;
                    break;
                }
            }
        }
        if bad {
            out.truncate(mark);
            out.push(unk);
        }
    }
}

/// The structural features of the whole text.
pub fn dense(text: &str, turns: usize, tools: bool) -> [f64; DENSE] {
    let mut chars = 0usize;
    let (mut words, mut inword) = (0usize, false);
    let (mut lines, mut code, mut math, mut digits, mut non_ascii, mut upper) =
        (1usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    for c in text.chars() {
        chars += 1;
        if is_ws(c) {
            inword = false;
        } else if !inword {
            words += 1;
            inword = true;
        }
        if c == '\n' {
            lines += 1;
        }
        if "{}[]();=<>_#/\\|`".contains(c) {
            code += 1;
        }
        if "$^+-*/=<>".contains(c) {
            math += 1;
        }
        if c.is_ascii_digit() {
            digits += 1;
        }
        if !c.is_ascii() {
            non_ascii += 1;
        }
        if c.is_ascii_uppercase() {
            upper += 1;
        }
    }
    let n = chars.max(1) as f64;
    let latex = text.matches("\\frac").count()
        + text.matches("\\(").count()
        + text.matches("\\[").count()
        + text.matches("$$").count();
    let ln = |x: usize| (x as f64).ln_1p();
    [
        ln(chars),
        ln(words),
        ln(lines),
        if text.contains("```") { 1.0 } else { 0.0 },
        code as f64 / n,
        math as f64 / n,
        ln(latex),
        digits as f64 / n,
        if text.contains('?') { 1.0 } else { 0.0 },
        non_ascii as f64 / n,
        upper as f64 / n,
        ln(turns),
        if tools { 1.0 } else { 0.0 },
    ]
}
