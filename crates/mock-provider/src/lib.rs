//! The mock provider: a deterministic stand-in for paid LLM APIs, for tests and
//! benchmarks. Nothing else in Switchyard's tests is mocked.
//!
//! It speaks OpenAI Chat Completions (`POST /v1/chat/completions`, streamed as
//! SSE or not, with usage and tool calls) and answers with [`reply_text`], a pure
//! function of the prompt, so a test knows the answer in advance. Faults are
//! chosen per request by `[[mock:key=value,...]]` directives in the last user
//! message (they pass unchanged through any gateway), an `x-mock` header, or
//! per-run defaults; see [`Directives`] and docs/mock-provider.md. It counts
//! requests, completions, cancellations and faults ([`MockStats`], also at
//! `GET /mock/stats`), so tests can prove that bad input never reached it and that
//! a disconnect cancelled the upstream call. [`MockProvider::start`] runs it
//! in-process; the `mock-provider` binary runs the same code.

pub mod audio;
mod dialect;
mod directives;
pub mod png;
mod server;
mod stripe;
mod yookassa;

pub use dialect::relevance as rerank_relevance;

/// The PNG the mock draws for image `index` of an edit of `prompt`
/// (directives removed) at `size`.
pub fn edited_png(prompt: &str, size: Option<&str>, index: usize) -> Vec<u8> {
    let (text, _) = extract(prompt);
    let (w, h) = png::dimensions(size);
    png::png(w, h, seed(&format!("edit: {text}"), index))
}

/// The PNG the mock draws for image `index` of `prompt` (directives
/// removed) at `size` (`WIDTHxHEIGHT`; 32×32 when absent).
pub fn generated_png(prompt: &str, size: Option<&str>, index: usize) -> Vec<u8> {
    let (text, _) = extract(prompt);
    let (w, h) = png::dimensions(size);
    png::png(w, h, seed(&text, index))
}
pub use dialect::vector as embedding_vector;
pub use directives::{DirectiveError, Directives, extract, resolve};
pub use server::{MockOptions, MockProvider, MockStats};

/// Answer length when no `tokens` directive is given.
pub const DEFAULT_TOKENS: usize = 16;

const WORDS: [&str; 32] = [
    "river", "stone", "light", "quiet", "north", "amber", "signal", "orbit", "garden", "copper",
    "window", "harbor", "echo", "meadow", "vector", "lantern", "cloud", "ember", "canyon",
    "silver", "pulse", "forest", "tide", "marble", "falcon", "prism", "valley", "thunder", "maple",
    "comet", "anchor", "willow",
];

pub(crate) fn seed(prompt: &str, index: usize) -> u64 {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes().chain((index as u64).to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The answer's streamed pieces: one per token; concatenated they are [`reply_text`].
pub fn reply_tokens(prompt: &str, tokens: usize, index: usize) -> Vec<String> {
    let mut state = seed(prompt, index);
    (0..tokens)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let word = WORDS[(state >> 59) as usize];
            if i == 0 {
                let mut w = word.to_owned();
                w[..1].make_ascii_uppercase();
                w
            } else {
                format!(" {word}")
            }
        })
        .collect()
}

/// The deterministic answer to `prompt` (the last user message's text without
/// directives, trimmed) with `tokens` tokens, for choice `index`.
pub fn reply_text(prompt: &str, tokens: usize, index: usize) -> String {
    reply_tokens(prompt, tokens, index).concat()
}

/// Prompt tokens as the mock counts them: whitespace-separated words of every
/// message's text, plus 3 per message.
pub fn prompt_tokens(texts: &[String]) -> u64 {
    texts
        .iter()
        .map(|t| t.split_whitespace().count() as u64 + 3)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_deterministic_and_tokens_concatenate() {
        assert_eq!(reply_text("hello", 10, 0), reply_text("hello", 10, 0));
        assert_ne!(reply_text("hello", 10, 0), reply_text("hello", 10, 1));
        assert_ne!(reply_text("hello", 10, 0), reply_text("hullo", 10, 0));
        let pieces = reply_tokens("abc", 7, 0);
        assert_eq!(pieces.len(), 7);
        assert_eq!(pieces.concat(), reply_text("abc", 7, 0));
        assert!(reply_text("abc", 0, 0).is_empty());
    }

    #[test]
    fn prompt_tokens_count_words_and_messages() {
        assert_eq!(
            prompt_tokens(&["one two".into(), "three".into()]),
            2 + 3 + 1 + 3
        );
    }
}
