//! Provider adapters: how a worker talks to an LLM provider in its own dialect.
//!
//! Each dialect is one module implementing [`Provider`]; [`AnyProvider`] dispatches
//! over them (built from a [`ProviderConfig`] by [`AnyProvider::from_config`]). An
//! adapter turns a canonical [`ChatRequest`] into the provider's HTTP call and the
//! provider's answer (JSON or SSE) into a [`ChunkStream`] of canonical [`Chunk`]s,
//! and classifies failures into [`ProviderError`]s (one [`classify`] for every
//! dialect). Dialects: OpenAI Chat Completions ([`openai`], also Azure, vLLM,
//! DeepSeek, Groq and every other compatible server), Anthropic Messages
//! ([`anthropic`]), Google Gemini ([`gemini`]) and Cohere v2 ([`cohere`]). Adding
//! one is one module plus a variant here. [`call`] holds the shared client,
//! error handling and SSE-to-chunk plumbing, [`sse`] the SSE parser, and
//! [`translate`] the rules for fields a dialect cannot honour. Embeddings
//! ([`Provider::embed`]) and rerank ([`Provider::rerank`]) are one JSON call
//! each where the dialect has them.
//! Dropping a stream (or the future returning it) aborts the upstream request.

pub mod anthropic;
pub mod call;
pub mod cohere;
mod error;
pub mod gemini;
pub mod openai;
pub mod sse;
pub mod translate;

pub use call::install_crypto_provider;
pub use error::{ErrorBody, ProviderError, classify};

use std::future::Future;

use futures::stream::BoxStream;
use sy_config::{ProviderConfig, ProviderKind};
pub use sy_protocol::ResponseMeta;
use sy_protocol::TokenUsage;
use sy_protocol::audio::{SpeechRequest, TranscriptionRequest};
use sy_protocol::chat::{ChatRequest, ChoiceDelta};
use sy_protocol::embeddings::EmbeddingsRequest;
use sy_protocol::images::ImagesRequest;
use sy_protocol::rerank::RerankRequest;

/// A provider's answer as canonical chunks; ends after the last one or an error.
pub type ChunkStream = BoxStream<'static, Result<Chunk, ProviderError>>;

/// A binary answer (speech) as it arrives.
pub type ByteStream = BoxStream<'static, Result<bytes::Bytes, ProviderError>>;

/// One piece of a provider's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// How the provider names the answer; on the first chunk that carries it.
    pub meta: Option<ResponseMeta>,
    /// Choice increments (a non-streamed answer comes as one chunk of whole messages).
    pub choices: Vec<ChoiceDelta>,
    /// Usage, when the provider reports it (usually on the last chunk).
    pub usage: Option<TokenUsage>,
}

/// What a call needs beyond the request.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The upstream model to ask for.
    pub upstream_model: String,
    /// Stream the answer.
    pub stream: bool,
    /// The credential to call with instead of the entry's own (an org's
    /// key, or one from the control plane); none: the entry's.
    pub credential: Option<Credential>,
}

/// A provider secret for one call; printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(pub std::sync::Arc<str>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// An embeddings answer: one vector per input, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    /// The vectors.
    pub vectors: Vec<Vec<f32>>,
    /// Usage, when the provider reports it (prompt tokens only).
    pub usage: Option<TokenUsage>,
    /// The model the provider says answered.
    pub model: Option<String>,
}

/// A rerank answer: the documents' indexes and scores, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reranked {
    /// `(index, relevance score)`, best first.
    pub results: Vec<(u32, f64)>,
    /// Tokens, when the provider bills them (Jina, vLLM).
    pub usage: Option<TokenUsage>,
    /// Search units, when the provider bills them (Cohere).
    pub search_units: Option<u64>,
    /// The model the provider says answered.
    pub model: Option<String>,
    /// The provider's id of the answer.
    pub id: Option<String>,
}

/// One generated image: the provider's link, or its bytes as base64.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneratedImage {
    /// The provider's link to it.
    pub url: Option<String>,
    /// Its bytes, base64.
    pub b64: Option<String>,
    /// Its media type, when known (`image/png`).
    pub content_type: Option<String>,
    /// The prompt the provider rewrote the client's into.
    pub revised_prompt: Option<String>,
}

/// An image generation answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Images {
    /// The images, in order.
    pub images: Vec<GeneratedImage>,
    /// Tokens, when the provider bills them (gpt-image-1, Gemini).
    pub usage: Option<TokenUsage>,
    /// The model the provider says answered.
    pub model: Option<String>,
}

/// A transcript in the format the client asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    /// The body as the client gets it.
    pub body: String,
    /// Its media type.
    pub content_type: String,
    /// The audio's length in seconds, when the answer says.
    pub seconds: Option<f64>,
    /// Tokens, when the provider bills them (gpt-4o-transcribe).
    pub usage: Option<TokenUsage>,
}

/// The contract every adapter meets.
pub trait Provider: Send + Sync {
    /// Which dialect.
    fn kind(&self) -> ProviderKind;

    /// Sends `req` and returns the answer as chunks. Errors before the first byte of
    /// the answer come back here; later ones inside the stream.
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<ChunkStream, ProviderError>> + Send + 'a;

    /// Embeds `req`'s input (a dialect without embeddings answers `Unsupported`).
    fn embed<'a>(
        &'a self,
        req: &'a EmbeddingsRequest,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<Embeddings, ProviderError>> + Send + 'a;

    /// Ranks `req`'s documents against its query (a dialect without a
    /// rerank API answers `Unsupported`).
    fn rerank<'a>(
        &'a self,
        req: &'a RerankRequest,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<Reranked, ProviderError>> + Send + 'a;

    /// Generates images (a dialect without image generation answers
    /// `Unsupported`).
    fn images<'a>(
        &'a self,
        req: &'a ImagesRequest,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<Images, ProviderError>> + Send + 'a;

    /// Transcribes (or translates) `audio` (a dialect without such an API
    /// answers `Unsupported`).
    fn transcribe<'a>(
        &'a self,
        req: &'a TranscriptionRequest,
        audio: Vec<u8>,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<Transcript, ProviderError>> + Send + 'a {
        let _ = (req, audio, cx);
        std::future::ready(Err(ProviderError::Unsupported(format!(
            "{:?} models have no transcription API; route this model to an OpenAI-compatible (Whisper) model",
            self.kind()
        ))))
    }

    /// Edits `images` (each upload's record and bytes; the mask last, when
    /// `req.edit` has one) as `req` asks (a dialect without an edit API
    /// answers `Unsupported`).
    fn edit_images<'a>(
        &'a self,
        req: &'a ImagesRequest,
        images: Vec<(sy_protocol::audio::Upload, Vec<u8>)>,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<Images, ProviderError>> + Send + 'a {
        let _ = (req, images, cx);
        std::future::ready(Err(ProviderError::Unsupported(format!(
            "{:?} models have no image edit API; route this model to an OpenAI-compatible image model",
            self.kind()
        ))))
    }

    /// Speaks `req`'s text, its audio streamed as it comes (a dialect
    /// without such an API answers `Unsupported`).
    fn speech<'a>(
        &'a self,
        req: &'a SpeechRequest,
        cx: &'a CallContext,
    ) -> impl Future<Output = Result<ByteStream, ProviderError>> + Send + 'a {
        let _ = (req, cx);
        std::future::ready(Err(ProviderError::Unsupported(format!(
            "{:?} models have no text-to-speech API; route this model to an OpenAI-compatible one",
            self.kind()
        ))))
    }
}

/// Every adapter, for dispatch without boxing.
#[derive(Debug, Clone)]
pub enum AnyProvider {
    /// OpenAI Chat Completions and compatibles, Azure OpenAI.
    OpenAi(openai::OpenAiAdapter),
    /// Anthropic Messages.
    Anthropic(anthropic::AnthropicAdapter),
    /// Google Gemini.
    Gemini(gemini::GeminiAdapter),
    /// Cohere v2 chat.
    Cohere(cohere::CohereAdapter),
}

impl AnyProvider {
    /// Builds the adapter a provider entry asks for.
    pub fn from_config(config: &ProviderConfig) -> Result<AnyProvider, ProviderError> {
        match config.kind {
            ProviderKind::OpenAiCompatible | ProviderKind::AzureOpenAi => {
                openai::OpenAiAdapter::from_config(config).map(AnyProvider::OpenAi)
            }
            ProviderKind::Anthropic => {
                anthropic::AnthropicAdapter::from_config(config).map(AnyProvider::Anthropic)
            }
            ProviderKind::Gemini => {
                gemini::GeminiAdapter::from_config(config).map(AnyProvider::Gemini)
            }
            ProviderKind::Cohere => {
                cohere::CohereAdapter::from_config(config).map(AnyProvider::Cohere)
            }
        }
    }
}

impl Provider for AnyProvider {
    fn kind(&self) -> ProviderKind {
        match self {
            AnyProvider::OpenAi(a) => a.kind(),
            AnyProvider::Anthropic(a) => a.kind(),
            AnyProvider::Gemini(a) => a.kind(),
            AnyProvider::Cohere(a) => a.kind(),
        }
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.chat(req, cx).await,
            AnyProvider::Anthropic(a) => a.chat(req, cx).await,
            AnyProvider::Gemini(a) => a.chat(req, cx).await,
            AnyProvider::Cohere(a) => a.chat(req, cx).await,
        }
    }

    async fn embed(
        &self,
        req: &EmbeddingsRequest,
        cx: &CallContext,
    ) -> Result<Embeddings, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.embed(req, cx).await,
            AnyProvider::Anthropic(a) => a.embed(req, cx).await,
            AnyProvider::Gemini(a) => a.embed(req, cx).await,
            AnyProvider::Cohere(a) => a.embed(req, cx).await,
        }
    }

    async fn rerank(
        &self,
        req: &RerankRequest,
        cx: &CallContext,
    ) -> Result<Reranked, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.rerank(req, cx).await,
            AnyProvider::Anthropic(a) => a.rerank(req, cx).await,
            AnyProvider::Gemini(a) => a.rerank(req, cx).await,
            AnyProvider::Cohere(a) => a.rerank(req, cx).await,
        }
    }

    async fn images(&self, req: &ImagesRequest, cx: &CallContext) -> Result<Images, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.images(req, cx).await,
            AnyProvider::Anthropic(a) => a.images(req, cx).await,
            AnyProvider::Gemini(a) => a.images(req, cx).await,
            AnyProvider::Cohere(a) => a.images(req, cx).await,
        }
    }

    async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        audio: Vec<u8>,
        cx: &CallContext,
    ) -> Result<Transcript, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.transcribe(req, audio, cx).await,
            AnyProvider::Anthropic(a) => a.transcribe(req, audio, cx).await,
            AnyProvider::Gemini(a) => a.transcribe(req, audio, cx).await,
            AnyProvider::Cohere(a) => a.transcribe(req, audio, cx).await,
        }
    }

    async fn edit_images(
        &self,
        req: &ImagesRequest,
        images: Vec<(sy_protocol::audio::Upload, Vec<u8>)>,
        cx: &CallContext,
    ) -> Result<Images, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.edit_images(req, images, cx).await,
            AnyProvider::Anthropic(a) => a.edit_images(req, images, cx).await,
            AnyProvider::Gemini(a) => a.edit_images(req, images, cx).await,
            AnyProvider::Cohere(a) => a.edit_images(req, images, cx).await,
        }
    }

    async fn speech(
        &self,
        req: &SpeechRequest,
        cx: &CallContext,
    ) -> Result<ByteStream, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.speech(req, cx).await,
            AnyProvider::Anthropic(a) => a.speech(req, cx).await,
            AnyProvider::Gemini(a) => a.speech(req, cx).await,
            AnyProvider::Cohere(a) => a.speech(req, cx).await,
        }
    }
}

/// A ranking read from a provider's answer: each index within the
/// documents and named once, best first, at most `top_n`.
pub fn ranking(
    mut results: Vec<(u32, f64)>,
    req: &RerankRequest,
) -> Result<Vec<(u32, f64)>, ProviderError> {
    let n = req.documents.len();
    let mut seen = vec![false; n];
    for &(i, score) in &results {
        let slot = seen.get_mut(i as usize).ok_or_else(|| {
            ProviderError::Protocol(format!("a rerank result names document {i} of {n}"))
        })?;
        if std::mem::replace(slot, true) {
            return Err(ProviderError::Protocol(format!(
                "a rerank answer names document {i} twice"
            )));
        }
        if !score.is_finite() {
            return Err(ProviderError::Protocol(format!(
                "a rerank score that is no number: {score}"
            )));
        }
    }
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(top) = req.top_n {
        results.truncate(top as usize);
    }
    Ok(results)
}

#[cfg(test)]
mod rerank_tests {
    use super::*;

    fn req(docs: usize, top_n: Option<u32>) -> RerankRequest {
        RerankRequest {
            model: "m".into(),
            query: "q".into(),
            documents: (0..docs).map(|i| format!("d{i}")).collect(),
            top_n,
            return_documents: false,
            max_tokens_per_doc: None,
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn both_wire_shapes_read_into_one_ranking_best_first() {
        let cohere = br#"{"id":"r","results":[{"index":0,"relevance_score":0.2},{"index":2,"relevance_score":0.9}],
            "meta":{"billed_units":{"search_units":1}}}"#;
        let r = cohere::from_rerank(cohere, &req(3, None)).unwrap();
        assert_eq!(r.results, [(2, 0.9), (0, 0.2)]);
        assert_eq!(
            (r.search_units, r.usage, r.id.as_deref()),
            (Some(1), None, Some("r"))
        );
        let jina = br#"{"model":"bge","usage":{"total_tokens":12},
            "results":[{"index":1,"relevance_score":0.5,"document":{"text":"d1"}},{"index":0,"relevance_score":0.7}]}"#;
        let r = openai::from_rerank(jina, &req(2, Some(1))).unwrap();
        assert_eq!(
            r.results,
            [(0, 0.7)],
            "top_n holds even if the server ignored it"
        );
        assert_eq!(r.usage.map(|u| u.input_tokens), Some(12));
        assert_eq!(r.model.as_deref(), Some("bge"));
    }

    #[test]
    fn a_ranking_that_names_no_document_or_one_twice_is_a_protocol_error() {
        for bad in [
            &br#"{"results":[{"index":3,"relevance_score":0.1}]}"#[..],
            br#"{"results":[{"index":0,"relevance_score":0.1},{"index":0,"relevance_score":0.2}]}"#,
            br#"{"results":[{"index":0}]}"#,
            br#"{"results":{}}"#,
        ] {
            assert!(matches!(
                openai::from_rerank(bad, &req(2, None)),
                Err(ProviderError::Protocol(_))
            ));
            assert!(matches!(
                cohere::from_rerank(bad, &req(2, None)),
                Err(ProviderError::Protocol(_))
            ));
        }
    }
}
