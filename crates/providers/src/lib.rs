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
//! [`translate`] the rules for fields a dialect cannot honour.
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
use sy_protocol::chat::{ChatRequest, ChoiceDelta};
use sy_protocol::embeddings::EmbeddingsRequest;

/// A provider's answer as canonical chunks; ends after the last one or an error.
pub type ChunkStream = BoxStream<'static, Result<Chunk, ProviderError>>;

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
}
