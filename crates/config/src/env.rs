use std::collections::HashMap;

use crate::{ConfigError, ConfigErrors};

/// Where `${VAR}` values come from: the process environment in production, a map in tests.
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables, for tests.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text`; `$${` stays a literal `${`.
/// TOML comments are left as written. An unset variable without a default is an
/// error naming it and its line.
pub fn interpolate(text: &str, env: &dyn EnvSource) -> Result<String, ConfigErrors> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let cut = comment_start(line).unwrap_or(line.len());
        interpolate_line(&line[..cut], i + 1, env, &mut out, &mut errors);
        out.push_str(&line[cut..]);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Byte offset of a `#` that starts a comment (outside quotes), if any.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate() {
        match (quote, b) {
            (Some(b'"'), b'\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), _) if b == q && !escaped => quote = None,
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'#') => return Some(i),
            _ => {}
        }
        escaped = false;
    }
    None
}

fn interpolate_line(
    line: &str,
    line_no: usize,
    env: &dyn EnvSource,
    out: &mut String,
    errors: &mut Vec<ConfigError>,
) {
    let mut rest = line;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            errors.push(ConfigError::new(
                format!("line {line_no}"),
                "unterminated ${ in interpolation",
            ));
            return;
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match (valid, env.var(name), default) {
            (false, _, _) => errors.push(ConfigError::new(
                format!("line {line_no}"),
                format!("`${{{expr}}}` is not a variable name"),
            )),
            (true, Some(v), _) => out.push_str(&v),
            (true, None, Some(d)) => out.push_str(d),
            (true, None, None) => errors.push(ConfigError::new(
                format!("line {line_no}"),
                format!("environment variable {name} is not set"),
            )),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
}
