//! The canonical embeddings request (OpenAI's `/v1/embeddings` shape) and the
//! vectors that come back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An embeddings request as the client sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// The model (route) the client asked for.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`: how the ingress encodes vectors for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Output dimensions, for models that can shorten their vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// The end user's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, passed through to OpenAI-compatible providers.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input`: one text, several, or pre-tokenized input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// One token array.
    Tokens(Vec<u32>),
    /// Several token arrays.
    ManyTokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many vectors the answer has.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Many(v) => v.len(),
            EmbeddingInput::ManyTokens(v) => v.len(),
        }
    }

    /// The tokens to embed: counted for token arrays, estimated at four
    /// bytes a token for texts.
    pub fn estimated_tokens(&self) -> u64 {
        match self {
            EmbeddingInput::One(s) => s.len() as u64 / 4 + 1,
            EmbeddingInput::Many(v) => v.iter().map(|s| s.len() as u64 / 4 + 1).sum(),
            EmbeddingInput::Tokens(t) => t.len() as u64,
            EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
        }
    }

    /// True when there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The texts, when the input is text (not tokens).
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            EmbeddingInput::One(s) => Some(vec![s.as_str()]),
            EmbeddingInput::Many(v) => Some(v.iter().map(String::as_str).collect()),
            _ => None,
        }
    }
}

/// One vector of the answer, on the reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingFrame {
    /// Position in the reply, from 0.
    pub seq: u32,
    /// Present on the first frame only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartInfo>,
    /// Which input this vector embeds.
    pub index: u32,
    /// The vector.
    pub embedding: Vec<f32>,
}
