//! `[pipelines.<name>]`: multi-step pipelines clients call as the model
//! `pipeline:<name>` (docs/pipelines.md). Each step is a chat request to a
//! model or router with a prompt rendered from the client's input and the
//! earlier steps' outputs; the last step answers the client.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use crate::error::ConfigError;

/// The model name clients use for the pipeline `name`.
pub fn model_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// What every pipeline's model name starts with.
pub const PREFIX: &str = "pipeline:";

/// The most steps a pipeline may have.
pub const MAX_STEPS: usize = 8;

/// The longest prompt template, bytes.
const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// `[pipelines.<name>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// What it does (shown in the model list).
    #[serde(default)]
    pub description: Option<String>,
    /// The steps, in order.
    pub steps: Vec<RawStep>,
}

/// One step as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Its name (`draft`), unique in the pipeline.
    pub name: String,
    /// The model or router it calls.
    pub model: String,
    /// The user message: `{{input}}` is the client's last user message,
    /// `{{steps.<name>}}` an earlier step's output.
    pub prompt: String,
    /// A system message, with the same placeholders.
    #[serde(default)]
    pub system: Option<String>,
    /// Caps the step's output tokens (under the client's own cap).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The step's sampling temperature (else the client's).
    #[serde(default)]
    pub temperature: Option<f64>,
}

/// A pipeline, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Its name (without `pipeline:`).
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The steps, in order (at least one).
    pub steps: Vec<Step>,
}

/// A step, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its name.
    pub name: String,
    /// The model or router it calls.
    pub model: String,
    /// Its user message.
    pub prompt: Template,
    /// Its system message.
    pub system: Option<Template>,
    /// Its cap on output tokens.
    pub max_tokens: Option<u32>,
    /// Its temperature.
    pub temperature: Option<f64>,
}

/// A prompt template: text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// `{{input}}`.
    Input,
    /// `{{steps.<name>}}`: that step's output (by index).
    Step(usize),
}

impl Template {
    /// Parses `text`; `earlier` are the names of the steps before this one.
    pub fn parse(text: &str, earlier: &[&str]) -> Result<Template, String> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("is longer than {MAX_TEMPLATE_BYTES} bytes"));
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| "has a '{{' without its '}}'".to_owned())?;
            let name = after[..close].trim();
            pieces.push(match name.strip_prefix("steps.") {
                None if name == "input" => Piece::Input,
                Some(step) => match earlier.iter().position(|s| *s == step) {
                    Some(i) => Piece::Step(i),
                    None => {
                        return Err(format!(
                            "names '{{{{steps.{step}}}}}', which is not an earlier step"
                        ));
                    }
                },
                None => {
                    return Err(format!(
                        "has an unknown placeholder '{{{{{name}}}}}' (use {{{{input}}}} or {{{{steps.<name>}}}})"
                    ));
                }
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    /// The text for `input` and the earlier steps' `outputs`.
    pub fn render(&self, input: &str, outputs: &[String]) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Input => out.push_str(input),
                Piece::Step(i) => out.push_str(outputs.get(*i).map_or("", String::as_str)),
            }
        }
        out
    }
}

/// `[pipelines]`, checked: names of letters, digits, `_` and `-`; 1 to
/// [`MAX_STEPS`] steps with unique names, each calling a model or router that
/// exists (`known`), templates that name only earlier steps.
pub fn validate(
    e: &mut Vec<ConfigError>,
    raw: BTreeMap<String, RawPipeline>,
    known: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, Pipeline> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let at = format!("pipelines.{name}");
        let mut ok = true;
        let mut bad = |path: String, why: String| {
            ok = false;
            e.push(ConfigError::new(path, why));
        };
        if !sy_protocol::is_valid_token(&name) {
            bad(at.clone(), "use 1-64 letters, digits, '_' or '-'".into());
        }
        if p.steps.is_empty() || p.steps.len() > MAX_STEPS {
            bad(
                format!("{at}.steps"),
                format!("must have 1 to {MAX_STEPS} steps"),
            );
        }
        let mut steps = Vec::new();
        let mut seen = HashSet::new();
        for (i, s) in p.steps.into_iter().enumerate() {
            let at = format!("{at}.steps[{i}]");
            if !sy_protocol::is_valid_token(&s.name) || !seen.insert(s.name.clone()) {
                bad(
                    format!("{at}.name"),
                    "must be 1-64 letters, digits, '_' or '-', unique in the pipeline".into(),
                );
            }
            if !known(&s.model) {
                bad(
                    format!("{at}.model"),
                    format!("'{}' names no model or router", s.model),
                );
            }
            if s.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                bad(format!("{at}.temperature"), "must be 0 to 2".into());
            }
            if s.max_tokens == Some(0) {
                bad(format!("{at}.max_tokens"), "must be at least 1".into());
            }
            let earlier: Vec<&str> = steps.iter().map(|s: &Step| s.name.as_str()).collect();
            let prompt = Template::parse(&s.prompt, &earlier);
            let system = s.system.as_deref().map(|t| Template::parse(t, &earlier));
            let (prompt, system) = match (prompt, system.transpose()) {
                (Ok(p), Ok(sys)) => (p, sys),
                (Err(why), _) => {
                    bad(format!("{at}.prompt"), why);
                    continue;
                }
                (_, Err(why)) => {
                    bad(format!("{at}.system"), why);
                    continue;
                }
            };
            steps.push(Step {
                name: s.name,
                model: s.model,
                prompt,
                system,
                max_tokens: s.max_tokens,
                temperature: s.temperature,
            });
        }
        if ok {
            out.insert(
                name.clone(),
                Pipeline {
                    name,
                    description: p.description,
                    steps,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_the_input_and_earlier_steps() {
        let t = Template::parse("Improve {{ steps.draft }} for: {{input}}.", &["draft"]).unwrap();
        assert_eq!(
            t.render("tides", &["A draft".into()]),
            "Improve A draft for: tides."
        );
        assert!(Template::parse("{{steps.later}}", &["draft"]).is_err());
        assert!(Template::parse("{{user}}", &[]).is_err());
        assert!(Template::parse("{{input", &[]).is_err());
        assert_eq!(
            Template::parse("no placeholders", &[])
                .unwrap()
                .render("x", &[]),
            "no placeholders"
        );
    }
}
