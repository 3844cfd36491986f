//! Prices in exact fixed point, nano-USD (10⁻⁹ USD) integers: a model's price
//! per token class and per unit, and what a call costs under it. Carried in
//! the request envelope (the price a request was admitted under) and parsed
//! from the config and the admin API's decimal strings by `sy_config::price`.

use serde::{Deserialize, Serialize};

use crate::TokenUsage;

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A model's price: nano-USD per million tokens of each class, and nano-USD
/// per request, per input image, per rerank search unit, per generated
/// image, per second of audio and per character spoken where the model has
/// such prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Price {
    /// Uncached input tokens.
    pub input: i64,
    /// Input tokens read from the cache.
    pub cached_input: i64,
    /// Input tokens written to the cache for five minutes (and every cache
    /// write of a provider with one kind).
    pub cache_write: i64,
    /// Input tokens written to the cache for an hour.
    pub cache_write_1h: i64,
    /// Output tokens besides reasoning.
    pub output: i64,
    /// Reasoning output tokens.
    pub reasoning_output: i64,
    /// Each request that reached the provider, nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_request: i64,
    /// Each image in the request, nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_image: i64,
    /// Each search unit of a rerank call (Cohere's unit: a query with up
    /// to 100 documents), nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_search_unit: i64,
    /// Each image generated, nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_output_image: i64,
    /// Each second of audio transcribed or translated (rounded up), nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_audio_second: i64,
    /// Each character of text spoken (text to speech), nano-USD.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_character: i64,
}

/// What is priced per unit rather than per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Units {
    /// Requests that reached the provider (0 or 1 for one attempt).
    pub requests: u64,
    /// Images in the request.
    pub images: u64,
    /// Rerank search units.
    pub search_units: u64,
    /// Images generated.
    pub output_images: u64,
    /// Seconds of audio (rounded up).
    pub audio_seconds: u64,
    /// Characters of text spoken.
    pub characters: u64,
}

impl Price {
    /// Token prices only, every class of input and output at one price each
    /// (the 1-hour cache at the 5-minute price, reasoning at the output's).
    pub fn per_token(input: i64, cached_input: i64, cache_write: i64, output: i64) -> Self {
        Price {
            input,
            cached_input,
            cache_write,
            cache_write_1h: cache_write,
            output,
            reasoning_output: output,
            per_request: 0,
            per_image: 0,
            per_search_unit: 0,
            per_output_image: 0,
            per_audio_second: 0,
            per_character: 0,
        }
    }

    /// The cost of `tokens`, nano-USD, rounded half up once at the end.
    pub fn cost_nanos(&self, tokens: &TokenUsage) -> i64 {
        self.cost_of(tokens, Units::default())
    }

    /// The cost of `tokens` and `units`, nano-USD: the token classes' sum
    /// rounded half up once, plus the per-unit prices (exact). The 1-hour
    /// cache writes are the part of the cache writes so marked, reasoning the
    /// part of the output.
    pub fn cost_of(&self, tokens: &TokenUsage, units: Units) -> i64 {
        let write_1h = tokens.cache_write_1h_tokens.min(tokens.cache_write_tokens);
        let reasoning = tokens.reasoning_tokens.min(tokens.output_tokens);
        let n = |v: u64| i128::from(v);
        let sum = n(tokens.input_tokens) * i128::from(self.input)
            + n(tokens.cached_input_tokens) * i128::from(self.cached_input)
            + n(tokens.cache_write_tokens - write_1h) * i128::from(self.cache_write)
            + n(write_1h) * i128::from(self.cache_write_1h)
            + n(tokens.output_tokens - reasoning) * i128::from(self.output)
            + n(reasoning) * i128::from(self.reasoning_output);
        let total = (sum + 500_000) / 1_000_000
            + n(units.requests) * i128::from(self.per_request)
            + n(units.images) * i128::from(self.per_image)
            + n(units.search_units) * i128::from(self.per_search_unit)
            + n(units.output_images) * i128::from(self.per_output_image)
            + n(units.audio_seconds) * i128::from(self.per_audio_second)
            + n(units.characters) * i128::from(self.per_character);
        i64::try_from(total).unwrap_or(i64::MAX)
    }
}
