//! The canonical rerank request (Cohere's and Jina's `/v1/rerank` shape,
//! documents as texts) and the ranking that comes back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A rerank request, validated: the documents are texts (a client's
/// `{"text": …}` objects are read as their text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    /// The model (route) the client asked for.
    pub model: String,
    /// What the documents are ranked against.
    pub query: String,
    /// The documents, in the client's order (results name them by index).
    pub documents: Vec<String>,
    /// Return only the best this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<u32>,
    /// Return each ranked document's text with its score.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub return_documents: bool,
    /// Cohere v2's limit on each document's tokens (longer ones are cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_doc: Option<u32>,
    /// Every other field, passed through to OpenAI-compatible (Jina, vLLM)
    /// providers.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl RerankRequest {
    /// The tokens the provider reads, estimated at four bytes a token: each
    /// document with the query.
    pub fn estimated_tokens(&self) -> u64 {
        let query = self.query.len() as u64 / 4 + 1;
        self.documents
            .iter()
            .map(|d| query + d.len() as u64 / 4 + 1)
            .sum()
    }

    /// Cohere's search units for this request: one per query with up to 100
    /// documents, where a document longer than 500 tokens with the query
    /// counts once per 500 (tokens estimated from `chars_per_token`-sized
    /// pieces). What a provider that does not report them is billed.
    pub fn estimated_search_units(&self, chars_per_token: usize) -> u64 {
        let per = chars_per_token.max(1);
        let query = self.query.chars().count().div_ceil(per);
        let chunks: u64 = self
            .documents
            .iter()
            .map(|d| {
                let tokens = query + d.chars().count().div_ceil(per);
                tokens.div_ceil(500).max(1) as u64
            })
            .sum();
        chunks.div_ceil(100).max(1)
    }
}

/// One ranked document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// Which document, by its position in the request.
    pub index: u32,
    /// How relevant to the query (higher is more).
    pub relevance_score: f64,
    /// Its text, when the request asked for the documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

/// A rerank answer on the reply subject: the ranking, best first, in one
/// frame (followed by the final frame with its usage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankFrame {
    /// Position in the reply (0).
    pub seq: u32,
    /// Present on the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartInfo>,
    /// Best first, at most `top_n`.
    pub results: Vec<RerankResult>,
    /// The search units billed (reported by the provider, else estimated);
    /// 0 for a provider that bills tokens.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub search_units: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str, docs: &[&str]) -> RerankRequest {
        RerankRequest {
            model: "m".into(),
            query: query.into(),
            documents: docs.iter().map(|d| (*d).to_owned()).collect(),
            top_n: None,
            return_documents: false,
            max_tokens_per_doc: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn search_units_count_hundreds_of_documents_and_long_ones_per_500_tokens() {
        assert_eq!(req("q", &["a"]).estimated_search_units(4), 1);
        let hundred = vec!["doc"; 100];
        assert_eq!(req("q", &hundred).estimated_search_units(4), 1);
        let more = vec!["doc"; 101];
        assert_eq!(req("q", &more).estimated_search_units(4), 2);
        // 100 documents of 2,000 characters (500 tokens) plus the query's
        // token: each counts twice.
        let long = "x".repeat(2000);
        let docs = vec![long.as_str(); 100];
        assert_eq!(req("q", &docs).estimated_search_units(4), 2);
    }
}
