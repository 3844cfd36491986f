//! Provider adapters: how a worker talks to an LLM provider in its own dialect.
//!
//! Each dialect is one module implementing [`Provider`]; [`AnyProvider`] dispatches
//! over them (built from a [`ProviderConfig`] by [`AnyProvider::from_config`]). An
//! adapter turns a canonical [`ChatRequest`] into the provider's HTTP call and the
//! provider's answer (JSON or SSE) into a [`ChunkStream`] of canonical [`Chunk`]s,
//! and classifies failures into [`ProviderError`]s. The only dialect today is
//! OpenAI Chat Completions ([`openai`]), which also serves vLLM, DeepSeek, Groq and
//! every other OpenAI-compatible server. [`sse`] is the shared SSE parser.
//! Dropping a stream (or the future returning it) aborts the upstream request.

mod error;
pub mod openai;
pub mod sse;

pub use error::ProviderError;

use std::future::Future;

use futures::stream::BoxStream;
use sy_config::{ProviderConfig, ProviderKind};
use sy_protocol::chat::{ChatRequest, ChoiceDelta, Usage};

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
    pub usage: Option<Usage>,
}

/// The provider's own names for an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseMeta {
    /// Response id.
    pub id: Option<String>,
    /// The model that answered.
    pub model: Option<String>,
    /// Creation time, Unix seconds.
    pub created: Option<i64>,
    /// System fingerprint.
    pub system_fingerprint: Option<String>,
}

/// What a call needs beyond the request.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The upstream model to ask for.
    pub model: String,
    /// Stream the answer.
    pub stream: bool,
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
}

/// Every adapter, for dispatch without boxing.
#[derive(Debug, Clone)]
pub enum AnyProvider {
    /// OpenAI Chat Completions and compatibles.
    OpenAi(openai::OpenAiAdapter),
}

impl AnyProvider {
    /// Builds the adapter a provider entry asks for.
    pub fn from_config(config: &ProviderConfig) -> Result<AnyProvider, ProviderError> {
        match config.kind {
            ProviderKind::OpenAiCompatible => {
                openai::OpenAiAdapter::from_config(config).map(AnyProvider::OpenAi)
            }
        }
    }
}

impl Provider for AnyProvider {
    fn kind(&self) -> ProviderKind {
        match self {
            AnyProvider::OpenAi(a) => a.kind(),
        }
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        match self {
            AnyProvider::OpenAi(a) => a.chat(req, cx).await,
        }
    }
}
