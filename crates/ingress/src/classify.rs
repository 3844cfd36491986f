//! The request's class: the client's explicit hint when it gave one, else the
//! classifier's prediction.
//!
//! Hints, strongest first: the `x-switchyard-class` header (a class name; any
//! other value is a 400), then a task type from the `x-switchyard-task-type`
//! header or the request's `metadata.task_type`, mapped by [`class_of_task`]
//! (an unknown task type is ignored and the model decides).

use axum::http::HeaderMap;
use sy_classifier::{Class, Classifier, Prediction};
use sy_protocol::chat::ChatRequest;
use sy_protocol::header as hdr;

use crate::error::ApiError;

/// The client's hints for classification: `x-switchyard-class` and
/// `x-switchyard-task-type` over HTTP; none for a batch item (its body's
/// `metadata.task_type` still counts).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hints<'a> {
    /// A class named by the client (checked against the classes).
    pub class: Option<&'a str>,
    /// A task type named by the client (mapped to a class when known).
    pub task_type: Option<&'a str>,
    /// `x-switchyard-tags` as sent (a value that is not text reads as an
    /// invalid tag).
    pub tags: Option<&'a str>,
}

impl<'a> Hints<'a> {
    /// The hints an HTTP request carries in its headers. A header that is
    /// not valid text counts as an empty value (refused as a class).
    pub(crate) fn from_headers(headers: &'a HeaderMap) -> Hints<'a> {
        Hints {
            class: headers.get(hdr::CLASS).map(|v| v.to_str().unwrap_or("")),
            task_type: headers.get(hdr::TASK_TYPE).and_then(|v| v.to_str().ok()),
            tags: headers
                .get(crate::tags::HEADER)
                .map(|v| v.to_str().unwrap_or("\u{1}")),
        }
    }
}

/// The class a task type names, if Switchyard knows it (docs/routing.md).
pub fn class_of_task(task: &str) -> Option<Class> {
    let t = task.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    Some(match t.as_str() {
        "code" | "coding" | "programming" | "code_generation" | "debugging" => Class::Code,
        "image" | "image_generation" | "text_to_image" | "vision" => Class::Image,
        "chitchat" | "chit_chat" | "greeting" | "simple_qa" | "factoid" | "lookup" => Class::Simple,
        "creative_writing"
        | "writing"
        | "rewriting"
        | "summarization"
        | "summarisation"
        | "translation"
        | "technical_explanation"
        | "explanation"
        | "extraction"
        | "classification"
        | "roleplay" => Class::Medium,
        "reasoning" | "math" | "maths" | "analysis" | "planning" | "research" | "complex" => {
            Class::Complex
        }
        other => return Class::parse(other),
    })
}

/// Decides the class of `req`.
pub(crate) fn decide(
    c: &Classifier,
    hints: &Hints<'_>,
    req: &ChatRequest,
) -> Result<Prediction, ApiError> {
    let hinted = |class: Class, source: &'static str| {
        let mut probs = [0.0; 5];
        probs[sy_classifier::CLASSES
            .iter()
            .position(|x| *x == class)
            .unwrap_or(0)] = 1.0;
        Prediction {
            class,
            probs,
            source,
        }
    };
    if let Some(name) = hints.class {
        return match Class::parse(name.trim()) {
            Some(class) => Ok(hinted(class, "header")),
            None => Err(ApiError::invalid(
                hdr::CLASS,
                format!(
                    "'{}' must be one of simple, medium, complex, code, image; got '{name}'.",
                    hdr::CLASS
                ),
            )),
        };
    }
    let task = hints.task_type.or_else(|| {
        req.extra
            .get("metadata")
            .and_then(|m| m["task_type"].as_str())
    });
    if let Some(class) = task.and_then(class_of_task) {
        return Ok(hinted(class, "task_type"));
    }
    Ok(c.classify(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_types_map_to_classes() {
        assert_eq!(class_of_task("Creative-Writing"), Some(Class::Medium));
        assert_eq!(class_of_task("code"), Some(Class::Code));
        assert_eq!(class_of_task("technical explanation"), Some(Class::Medium));
        assert_eq!(class_of_task("complex"), Some(Class::Complex));
        assert_eq!(class_of_task("astrology"), None);
    }
}
