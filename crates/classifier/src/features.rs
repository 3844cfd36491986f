//! Feature extraction, mirroring scripts/classifier/features.py exactly (the
//! reproduction test compares predictions with the script's).

use std::collections::HashMap;

/// Hashed n-gram buckets.
pub const HASH_DIM: usize = 1 << 14;
/// Tokens read from each end of a long prompt.
pub const WINDOW: usize = 128;
/// Structural features read at most this many chars from each end of the text.
pub const DENSE_CHARS: usize = 1024;
const MAX_WORD_CHARS: usize = 100;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;
/// Number of structural features of the text.
pub const TEXT_DENSE: usize = 13;
/// Number of keyword-group features of the window (8 groups, numbers, the
/// share of programming words).
pub const KEYWORD_DENSE: usize = 10;
/// All dense features.
pub const DENSE: usize = TEXT_DENSE + KEYWORD_DENSE + EXTRA_DENSE;

/// The keyword groups (features.py's KEYWORDS, in order). No word is in two groups.
#[rustfmt::skip]
const KEYWORDS: [&[&str]; KEYWORD_DENSE - 2] = [
    // kw_question
    &["what", "who", "when", "where", "which", "whom", "whose", "how"],
    // kw_code
    &["code", "coding", "program", "programming", "function", "functions", "variable",
        "variables", "script", "syntax", "snippet", "compile", "compiler", "runtime", "debug",
        "bug", "bugs", "error", "exception", "exceptions", "implement", "implementation",
        "algorithm", "recursion", "recursive", "python", "java", "javascript", "typescript",
        "ruby", "php", "perl", "bash", "shell", "powershell", "sql", "mysql", "postgres",
        "postgresql", "sqlite", "html", "css", "json", "xml", "yaml", "csv", "regex", "regexp",
        "kotlin", "swift", "scala", "haskell", "matlab", "golang", "rust", "cpp", "csharp", "vba",
        "numpy", "pandas", "dataframe", "matplotlib", "django", "flask", "react", "nodejs",
        "node", "npm", "pip", "git", "github", "docker", "kubernetes", "linux", "unix",
        "tensorflow", "pytorch", "sklearn", "jquery", "angular", "vue", "spring", "excel", "api",
        "endpoint", "http", "url", "request", "server", "client", "framework", "library",
        "libraries", "module", "modules", "package", "import", "database", "query", "queries",
        "column", "columns", "index", "file", "files", "directory", "folder", "path", "command",
        "terminal", "console", "class", "classes", "object", "objects", "method", "methods",
        "array", "arrays", "list", "dict", "dictionary", "dictionaries", "tuple", "tuples",
        "string", "strings", "substring", "char", "character", "characters", "int", "float",
        "boolean", "bool", "byte", "bytes", "unicode", "encode", "decode", "loop", "loops",
        "iterate", "iteration", "lambda", "def", "return", "print", "const", "var", "null",
        "async", "await", "thread", "threads", "stack", "queue", "pointer", "pointers", "struct",
        "sort", "sorted", "append", "element", "elements", "input", "output", "repository"],
    // kw_image
    &["image", "picture", "photo", "photograph", "draw", "drawing", "painting", "illustration",
        "render", "sketch", "logo", "poster", "style", "generate", "imagine", "depict", "scene"],
    // kw_math
    &["solve", "calculate", "compute", "find", "equation", "integer", "number", "sum",
        "probability", "value", "many", "much", "total"],
    // kw_proof
    &["prove", "show", "theorem", "derive", "premises", "conclusion", "therefore", "follows",
        "true", "false", "uncertain", "hence", "lemma"],
    // kw_writing
    &["write", "essay", "story", "poem", "rewrite", "summarize", "summarise", "explain",
        "describe", "act", "role", "pretend", "letter", "email", "blog"],
    // kw_constraint
    &["must", "should", "exactly", "least", "most", "words", "sentences", "paragraphs", "bullet",
        "format", "include", "avoid", "without", "only"],
    // kw_chat
    &["you", "your", "i", "me", "my", "hi", "hello", "hey", "thanks", "love", "like", "feel",
        "are"],
];

/// Stop words and keyword groups by FNV-1a hash, in one open-addressed table:
/// one probe (rarely two) per window token tells both.
struct Words {
    /// (hash, bit 7: a stop word, low bits: keyword group + 1 or 0); hash 0 = empty.
    slots: Vec<(u64, u8)>,
}

const STOP: u8 = 0x80;

impl Words {
    fn build() -> Self {
        let mut w = Words {
            slots: vec![(0, 0); 1024],
        };
        for (g, words) in KEYWORDS.iter().enumerate() {
            for word in *words {
                *w.entry(fnv(FNV_OFFSET, word.as_bytes())) |= g as u8 + 1;
            }
        }
        for word in STOPWORDS {
            *w.entry(fnv(FNV_OFFSET, word.as_bytes())) |= STOP;
        }
        w
    }

    fn entry(&mut self, h: u64) -> &mut u8 {
        let h = h.max(1);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        while self.slots[i].0 != 0 && self.slots[i].0 != h {
            i = (i + 1) & mask;
        }
        self.slots[i].0 = h;
        &mut self.slots[i].1
    }

    fn get(&self, h: u64) -> u8 {
        let h = h.max(1);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        loop {
            let (k, v) = self.slots[i];
            if k == h {
                return v;
            }
            if k == 0 {
                return 0;
            }
            i = (i + 1) & mask;
        }
    }
}

fn word_table() -> &'static Words {
    static WORDS: std::sync::OnceLock<Words> = std::sync::OnceLock::new();
    WORDS.get_or_init(Words::build)
}

/// features.py's `keywords`: log1p counts of each keyword group, and of number
/// tokens, over the window; then the share of the window's tokens that are
/// programming words.
#[cfg(test)]
pub fn keywords(text: &str, win: &Tokens) -> [f64; KEYWORD_DENSE] {
    extra_from(text, &counts(text), win).0
}

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

/// A fast, deterministic hasher for the vocabulary and bucket maps (FNV-1a;
/// the keys are short and not attacker-chosen in a way that matters here: a
/// collision only costs time, bounded by the window).
#[derive(Default, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let h = if self.0 == 0 { FNV_OFFSET } else { self.0 };
        self.0 = fnv(h, bytes);
    }
}

/// Builds [`Fnv`] hashers.
pub type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

fn skip(c: char) -> bool {
    let o = c as u32;
    (o < 32 && !is_ws(c)) || o == 127 || o == 0xFFFD
}

/// Classes of char for token boundaries: part of a word, a token alone
/// (punctuation, CJK), a separator (whitespace), or ignored (control).
#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Word,
    Alone,
    Space,
    Skip,
}

fn kind(c: char) -> Kind {
    if skip(c) {
        Kind::Skip
    } else if is_ws(c) {
        Kind::Space
    } else if is_punct(c) || is_cjk(c) {
        Kind::Alone
    } else {
        Kind::Word
    }
}

/// The kind of each ASCII byte, precomputed.
const ASCII_KIND: [Kind; 128] = {
    let mut t = [Kind::Word; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            Kind::Space
        } else if c < 32 || c == 127 {
            Kind::Skip
        } else if (33 <= c && c <= 47)
            || (58 <= c && c <= 64)
            || (91 <= c && c <= 96)
            || (123 <= c && c <= 126)
        {
            Kind::Alone
        } else {
            Kind::Word
        };
        i += 1;
    }
    t
};

/// Byte ranges of up to `limit` tokens read from the start (or, with `rev`,
/// from the end, returned last-first). Boundaries depend only on each char's
/// kind, so both directions find the same tokens.
fn token_ranges(text: &str, limit: usize, rev: bool) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(limit.min(bytes.len() / 2 + 1));
    let mut open: Option<(usize, usize)> = None;
    let mut i = if rev { bytes.len() } else { 0 };
    loop {
        // The next char in scan order: its start, end and kind.
        let (start, end, k) = if rev {
            if i == 0 {
                break;
            }
            let mut s = i - 1;
            while s > 0 && (bytes[s] & 0xC0) == 0x80 {
                s -= 1;
            }
            let k = if bytes[s] < 128 {
                ASCII_KIND[bytes[s] as usize]
            } else {
                text[s..i].chars().next().map_or(Kind::Skip, kind)
            };
            let r = (s, i, k);
            i = s;
            r
        } else {
            if i >= bytes.len() {
                break;
            }
            let b = bytes[i];
            let (len, k) = if b < 128 {
                (1, ASCII_KIND[b as usize])
            } else {
                let c = text[i..].chars().next().unwrap_or('\u{FFFD}');
                (c.len_utf8(), kind(c))
            };
            let r = (i, i + len, k);
            i += len;
            r
        };
        match k {
            Kind::Skip => {}
            Kind::Space => {
                if let Some(w) = open.take() {
                    out.push(w);
                }
            }
            Kind::Alone => {
                if let Some(w) = open.take() {
                    out.push(w);
                }
                out.push((start, end));
            }
            Kind::Word => {
                open = Some(match open {
                    None => (start, end),
                    Some((s, e)) => (s.min(start), e.max(end)),
                });
            }
        }
        if out.len() >= limit {
            out.truncate(limit);
            return out;
        }
    }
    if let Some(w) = open {
        out.push(w);
    }
    out.truncate(limit);
    out
}

/// The window's tokens, lower-cased: the first and last `WINDOW` tokens of a
/// long prompt, every token of a short one. Only the window is lower-cased.
pub struct Tokens {
    buf: String,
    spans: Vec<(usize, usize)>,
}

impl Tokens {
    /// Tokenizes `text` and keeps its window.
    pub fn window(text: &str) -> Tokens {
        // Up to 2 * WINDOW + 1 tokens from the start tells whether the text is long.
        let mut keep = token_ranges(text, 2 * WINDOW + 1, false);
        if keep.len() > 2 * WINDOW {
            keep.truncate(WINDOW);
            let mut tail = token_ranges(text, WINDOW, true);
            tail.reverse();
            keep.extend(tail);
        }
        let mut buf = String::with_capacity(keep.iter().map(|(s, e)| e - s).sum::<usize>() + 8);
        let mut spans = Vec::with_capacity(keep.len());
        for (s, e) in keep {
            let at = buf.len();
            let t = &text[s..e];
            if t.is_ascii() {
                buf.extend(
                    t.bytes()
                        .filter(|&b| !(b < 32 || b == 127))
                        .map(|b| b.to_ascii_lowercase() as char),
                );
            } else {
                buf.extend(t.to_lowercase().chars().filter(|&c| !skip(c)));
            }
            if buf.len() > at {
                spans.push((at, buf.len()));
            }
        }
        Tokens { buf, spans }
    }

    /// The tokens, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|&(s, e)| &self.buf[s..e])
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.spans.len()
    }
}

/// Lower-cased BERT-style tokens of the whole text: the reference the window
/// tokenizer is tested against (features.py does exactly this).
#[cfg(test)]
pub fn basic_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.to_lowercase().chars() {
        if skip(c) {
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

fn norm_word(t: &str) -> &str {
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        "0"
    } else {
        t
    }
}

/// Signed hashed unigrams and bigrams, L2-normalised: (bucket, value) pairs.
pub fn hashed<'a>(tokens: impl Iterator<Item = &'a str>, bigrams: bool) -> Vec<(usize, f64)> {
    // (bucket, ±1) per n-gram, then sorted and summed per bucket: cheaper than a map.
    let mut hits: Vec<(u32, i32)> = Vec::with_capacity(1024);
    let mut add = |h: u64| {
        let b = (h % HASH_DIM as u64) as u32;
        hits.push((b, if h >> 63 == 0 { 1 } else { -1 }));
    };
    let mut prev: Option<&str> = None;
    for t in tokens {
        let t = norm_word(t);
        add(fnv(fnv(FNV_OFFSET, b"w:"), t.as_bytes()));
        if let Some(p) = prev.filter(|_| bigrams) {
            let h = fnv(
                fnv(fnv(fnv(FNV_OFFSET, b"b:"), p.as_bytes()), b" "),
                t.as_bytes(),
            );
            add(h);
        }
        prev = Some(t);
    }
    hits.sort_unstable_by_key(|&(b, _)| b);
    let mut acc: Vec<(usize, f64)> = Vec::with_capacity(hits.len());
    for (b, v) in hits {
        match acc.last_mut() {
            Some((lb, lv)) if *lb == b as usize => *lv += f64::from(v),
            _ => acc.push((b as usize, f64::from(v))),
        }
    }
    acc.retain(|(_, v)| *v != 0.0);
    let norm = acc.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Vec::new();
    }
    acc.iter_mut().for_each(|(_, v)| *v /= norm);
    acc
}

/// WordPiece ids of the tokens (greedy longest match, `##` continuations).
pub fn wordpiece<'a>(
    tokens: impl Iterator<Item = &'a str>,
    vocab: &HashMap<String, u32, FnvBuild>,
    unk: u32,
    out: &mut Vec<u32>,
) {
    let mut buf = String::new();
    let mut chars: Vec<char> = Vec::with_capacity(32);
    for t in tokens {
        // The whole word first: most words are in the vocabulary.
        if t.len() <= MAX_WORD_CHARS
            && let Some(&id) = vocab.get(t)
        {
            out.push(id);
            continue;
        }
        chars.clear();
        chars.extend(t.chars());
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

const SPACE: u8 = 1;
const CODE: u8 = 2;
const MATH: u8 = 4;
const DIGIT: u8 = 8;
const UPPER: u8 = 16;
/// '?', backslash, backtick: looked at more closely.
const OTHER: u8 = 32;

/// Per ASCII byte: which counters of [`structure`] it feeds.
const ASCII_FLAGS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        let mut f = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            f |= SPACE;
        }
        if matches!(
            b,
            b'{' | b'}'
                | b'['
                | b']'
                | b'('
                | b')'
                | b';'
                | b'='
                | b'<'
                | b'>'
                | b'_'
                | b'#'
                | b'/'
                | b'\\'
                | b'|'
                | b'`'
        ) {
            f |= CODE;
        }
        if matches!(
            b,
            b'$' | b'^' | b'+' | b'-' | b'*' | b'/' | b'=' | b'<' | b'>'
        ) {
            f |= MATH;
        }
        if b.is_ascii_digit() {
            f |= DIGIT;
        }
        if b.is_ascii_uppercase() {
            f |= UPPER;
        }
        if matches!(b, b'?' | b'\\' | b'`') {
            f |= OTHER;
        }
        t[i] = f;
        i += 1;
    }
    t
};

#[derive(Default)]
struct Counts {
    chars: usize,
    words: usize,
    code: usize,
    math: usize,
    digits: usize,
    non_ascii: usize,
    upper: usize,
    latex: usize,
    fence: bool,
    question: bool,
    /// Whitespace chars.
    spaces: usize,
    /// '.', '!' or '?' followed by whitespace or the region's end.
    sentences: usize,
    /// Lines that look like a multiple-choice option ("A) ", "(B) ", "C: ").
    options: usize,
    /// Lines that look like a list item ("- ", "* ", "• ", "1. ", "2) ").
    items: usize,
}

/// Classifies the line starting at `rest` (its first bytes) as an option or a
/// list item, as features.py's `extra` does after `lstrip(" \t")`.
fn line_start(rest: &[u8], k: &mut Counts) {
    let s = {
        let n = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        &rest[n..]
    };
    let t = s.strip_prefix(b"(").unwrap_or(s);
    if t.len() >= 3
        && (b'A'..=b'E').contains(&t[0])
        && matches!(t[1], b'.' | b')' | b':')
        && t[2] == b' '
    {
        k.options += 1;
    }
    let numbered =
        s.len() >= 3 && s[0].is_ascii_digit() && matches!(s[1], b'.' | b')') && s[2] == b' ';
    if numbered
        || s.starts_with(b"- ")
        || s.starts_with(b"* ")
        || s.starts_with("\u{2022} ".as_bytes())
    {
        k.items += 1;
    }
}

/// Adds one region's counts (one pass over its bytes).
fn count(text: &str, k: &mut Counts) {
    let bytes = text.as_bytes();
    let mut inword = false;
    let mut i = 0;
    let mut at_line_start = true;
    while i < bytes.len() {
        let b = bytes[i];
        if at_line_start {
            line_start(&bytes[i..], k);
            at_line_start = false;
        }
        if b >= 128 {
            // A non-ASCII char: decode it for whitespace; it counts as one char.
            let c = text[i..].chars().next().unwrap_or('\u{FFFD}');
            k.chars += 1;
            k.non_ascii += 1;
            if c.is_whitespace() {
                inword = false;
                k.spaces += 1;
            } else if !inword {
                k.words += 1;
                inword = true;
            }
            i += c.len_utf8();
            continue;
        }
        k.chars += 1;
        let f = ASCII_FLAGS[b as usize];
        if f & SPACE != 0 {
            inword = false;
            k.spaces += 1;
            at_line_start = b == b'\n';
        } else if !inword {
            k.words += 1;
            inword = true;
        }
        if matches!(b, b'.' | b'!' | b'?') {
            let ends = match bytes.get(i + 1) {
                None => true,
                Some(&n) if n < 128 => ASCII_FLAGS[n as usize] & SPACE != 0,
                Some(_) => text[i + 1..].chars().next().is_some_and(is_ws),
            };
            k.sentences += usize::from(ends);
        }
        if f != 0 {
            k.code += usize::from(f & CODE != 0);
            k.math += usize::from(f & MATH != 0);
            k.digits += usize::from(f & DIGIT != 0);
            k.upper += usize::from(f & UPPER != 0);
            if f & OTHER != 0 {
                match b {
                    b'?' => k.question = true,
                    b'\\' => {
                        let rest = &bytes[i..];
                        if rest.starts_with(b"\\frac")
                            || rest.starts_with(b"\\(")
                            || rest.starts_with(b"\\[")
                        {
                            k.latex += 1;
                        }
                    }
                    b'`' => k.fence |= bytes[i..].starts_with(b"```"),
                    _ => {}
                }
            }
        }
        i += 1;
    }
    // "$$" counted without overlap, as Python's str.count does.
    let mut j = 0;
    while j + 1 < bytes.len() {
        if bytes[j] == b'$' && bytes[j + 1] == b'$' {
            k.latex += 1;
            j += 2;
        } else {
            j += 1;
        }
    }
}

/// The first and last `DENSE_CHARS` chars of a text longer than twice that;
/// else the whole text (and an empty second region).
fn regions(text: &str) -> [&str; 2] {
    if text.len() <= 2 * DENSE_CHARS {
        // Fewer bytes than chars needed: short whatever its encoding.
        return [text, ""];
    }
    if text.is_ascii() {
        // One byte per char.
        return [&text[..DENSE_CHARS], &text[text.len() - DENSE_CHARS..]];
    }
    if text.char_indices().nth(2 * DENSE_CHARS).is_some() {
        let head_end = text
            .char_indices()
            .nth(DENSE_CHARS)
            .map_or(text.len(), |(i, _)| i);
        let tail_start = text
            .char_indices()
            .rev()
            .nth(DENSE_CHARS - 1)
            .map_or(0, |(i, _)| i);
        [&text[..head_end], &text[tail_start..]]
    } else {
        [text, ""]
    }
}

/// One pass over the regions of `text`, for the structural and extra features.
fn counts(text: &str) -> Counts {
    let mut k = Counts::default();
    for r in regions(text) {
        count(r, &mut k);
    }
    k
}

/// The structural features (features.py's `dense`: sizes of the whole text,
/// UTF-8 bytes and newlines, the rest over its first and last `DENSE_CHARS`
/// chars, all of a short text, so the cost is bounded whatever the prompt's
/// length) and the extra ones ([`extra`]), from one pass over the text.
pub fn structure(
    text: &str,
    win: &Tokens,
    turns: usize,
    tools: bool,
) -> ([f64; TEXT_DENSE], [f64; KEYWORD_DENSE], [f64; EXTRA_DENSE]) {
    let k = counts(text);
    let (kw, extra) = extra_from(text, &k, win);
    (dense_from(text, &k, turns, tools), kw, extra)
}

fn dense_from(text: &str, k: &Counts, turns: usize, tools: bool) -> [f64; TEXT_DENSE] {
    let lines = 1 + memchr::memchr_iter(b'\n', text.as_bytes()).count();
    let n = k.chars.max(1) as f64;
    let ln = |x: usize| (x as f64).ln_1p();
    [
        ln(text.len()),
        ln(k.words),
        ln(lines),
        if k.fence { 1.0 } else { 0.0 },
        k.code as f64 / n,
        k.math as f64 / n,
        ln(k.latex),
        k.digits as f64 / n,
        if k.question { 1.0 } else { 0.0 },
        k.non_ascii as f64 / n,
        k.upper as f64 / n,
        ln(turns),
        if tools { 1.0 } else { 0.0 },
    ]
}

/// Number of extra structural features ([`extra`]).
pub const EXTRA_DENSE: usize = 13;

/// features.py's STOPWORDS.
const STOPWORDS: [&str; 83] = [
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "from", "by", "with", "about", "as",
    "into", "and", "or", "but", "if", "then", "so", "than", "that", "this", "these", "those", "it",
    "its", "is", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have", "has",
    "had", "i", "you", "he", "she", "we", "they", "me", "him", "her", "us", "them", "my", "your",
    "his", "our", "their", "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "not", "no", "can", "could", "would", "should", "will", "shall", "may", "might", "must",
    "there", "here", "all", "any", "some", "each",
];

/// A set of nonzero 64-bit hashes for at most a few hundred entries.
struct SmallSet {
    slots: [u64; 512],
    len: usize,
}

impl SmallSet {
    fn new() -> Self {
        SmallSet {
            slots: [0; 512],
            len: 0,
        }
    }

    fn insert(&mut self, h: u64) {
        // Never full (the window is far smaller); stop counting rather than loop.
        if self.len * 4 >= self.slots.len() * 3 {
            return;
        }
        let h = h.max(1);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = h;
                    self.len += 1;
                    return;
                }
                x if x == h => return,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

fn is_imperative(t: &str) -> bool {
    matches!(
        t,
        "write"
            | "create"
            | "generate"
            | "make"
            | "give"
            | "list"
            | "explain"
            | "describe"
            | "summarize"
            | "summarise"
            | "draw"
            | "design"
            | "implement"
            | "build"
            | "translate"
            | "rewrite"
            | "compose"
            | "tell"
            | "provide"
            | "find"
            | "calculate"
            | "compute"
            | "solve"
            | "show"
            | "prove"
            | "suggest"
            | "help"
            | "act"
            | "imagine"
            | "pretend"
            | "convert"
            | "fix"
            | "develop"
            | "plan"
            | "outline"
            | "analyze"
            | "analyse"
            | "compare"
            | "evaluate"
            | "identify"
            | "classify"
            | "name"
            | "define"
    )
}

fn is_question_start(t: &str) -> bool {
    matches!(
        t,
        "what"
            | "who"
            | "when"
            | "where"
            | "which"
            | "whom"
            | "whose"
            | "how"
            | "why"
            | "is"
            | "are"
            | "was"
            | "were"
            | "do"
            | "does"
            | "did"
            | "can"
            | "could"
            | "would"
            | "should"
            | "will"
            | "shall"
            | "may"
    )
}

/// A whitespace char as Python's `str.isspace` sees it (for `rstrip`).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn is_digits(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn single_punct(t: &str) -> bool {
    let mut c = t.chars();
    matches!((c.next(), c.next()), (Some(x), None) if is_punct(x))
}

/// More structural features (features.py's `extra`): sentence ends, mean word
/// length, multiple-choice option lines, a trailing '?', list lines (over the
/// same regions as [`structure`]), and over the window's tokens: distinct numbers,
/// stop-word share, an imperative or question-word start, type/token ratio,
/// punctuation share, the longest number and the number share.
#[cfg(test)]
pub fn extra(text: &str, win: &Tokens) -> [f64; EXTRA_DENSE] {
    extra_from(text, &counts(text), win).1
}

/// The keyword features ([`keywords`]) and the extra ones ([`extra`]), from one
/// pass over the window's tokens.
fn extra_from(text: &str, k: &Counts, win: &Tokens) -> ([f64; KEYWORD_DENSE], [f64; EXTRA_DENSE]) {
    let (sentences, words, options, items) = (k.sentences, k.words, k.options, k.items);
    let non_ws = k.chars - k.spaces;
    let n = win.count().max(1) as f64;
    // Distinct tokens and numbers by 64-bit hash in a small open-addressing
    // set (the window has at most 2 * WINDOW + 1 tokens); a collision among
    // them is negligible.
    let mut all = SmallSet::new();
    let mut numbers = SmallSet::new();
    let (mut stop, mut puncts, mut longest, mut count) = (0usize, 0usize, 0usize, 0usize);
    let mut first = None;
    let mut groups = [0usize; KEYWORD_DENSE - 2];
    let table = word_table();
    for t in win.iter() {
        let h = fnv(FNV_OFFSET, t.as_bytes());
        all.insert(h);
        let w = table.get(h);
        stop += usize::from(w & STOP != 0);
        if let Some(g) = usize::from(w & !STOP).checked_sub(1) {
            groups[g] += 1;
        }
        if is_digits(t) {
            numbers.insert(h);
            longest = longest.max(t.len());
            count += 1;
        }
        if single_punct(t) {
            puncts += 1;
        } else if first.is_none() {
            first = Some(t);
        }
    }
    let first = first.unwrap_or("");
    let ln = |x: usize| (x as f64).ln_1p();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut kw = [0.0; KEYWORD_DENSE];
    for (o, c) in kw.iter_mut().zip(groups) {
        *o = ln(c);
    }
    kw[KEYWORD_DENSE - 2] = ln(count);
    kw[KEYWORD_DENSE - 1] = groups[1] as f64 / n;
    let extra = [
        ln(sentences),
        (non_ws as f64 / words.max(1) as f64).ln_1p(),
        ln(options),
        flag(text.trim_end_matches(py_space).ends_with('?')),
        ln(items),
        ln(numbers.len),
        stop as f64 / n,
        flag(is_imperative(first)),
        flag(is_question_start(first)),
        all.len as f64 / n,
        puncts as f64 / n,
        ln(longest),
        count as f64 / n,
    ];
    (kw, extra)
}
