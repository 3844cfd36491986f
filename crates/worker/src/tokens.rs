//! Token estimates for attempts whose provider reported no usage (a stream cut
//! short, a client disconnect, a provider without usage). Each encoder is
//! loaded once per process, when first needed (150-250 ms; a runtime worker
//! thread hands its other tasks to another first), never per request: most
//! processes never need one, and the two together hold some 70 MB (a worker's
//! memory at rest was 89 MB with both loaded at start, 19 MB without). The
//! first embeddings or rerank answer that needs an estimate is that much later.

use std::sync::OnceLock;

use sy_protocol::chat::ChatRequest;
use sy_protocol::embeddings::EmbeddingsRequest;
use sy_protocol::rerank::RerankRequest;
use tiktoken_rs::CoreBPE;

static O200K: OnceLock<&'static CoreBPE> = OnceLock::new();
static CL100K: OnceLock<&'static CoreBPE> = OnceLock::new();

/// The encoder in `cell`, loaded by `load` the first time. On a worker thread
/// of a multi-threaded runtime the load runs in `block_in_place`: the
/// thread's other tasks move to another worker meanwhile.
fn loaded(
    cell: &'static OnceLock<&'static CoreBPE>,
    load: fn() -> &'static CoreBPE,
) -> &'static CoreBPE {
    if let Some(bpe) = cell.get() {
        return bpe;
    }
    let init = || {
        *cell.get_or_init(|| {
            let bpe = load();
            tracing::info!("A tokenizer was loaded for a token estimate (held from now on).");
            bpe
        })
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(init)
        }
        _ => init(),
    }
}

/// Which encoding counts `model`'s tokens: o200k for the GPT-4o/4.1/5 and o-series
/// families, cl100k for GPT-4 and GPT-3.5; o200k as the approximation for every
/// other family (their tokenizers are not public or not in tiktoken).
pub fn encoder_for(model: &str) -> &'static CoreBPE {
    let m = model.to_ascii_lowercase();
    let cl100k = (m.starts_with("gpt-4") && !m.starts_with("gpt-4o") && !m.starts_with("gpt-4."))
        || m.starts_with("gpt-3.5")
        || m.starts_with("text-embedding");
    if cl100k {
        loaded(&CL100K, tiktoken_rs::cl100k_base_singleton)
    } else {
        loaded(&O200K, tiktoken_rs::o200k_base_singleton)
    }
}

/// Loads every encoder now (150-250 ms each), for a measurement that must not
/// count the load; not needed otherwise.
pub fn warm_up() {
    let _ = loaded(&O200K, tiktoken_rs::o200k_base_singleton);
    let _ = loaded(&CL100K, tiktoken_rs::cl100k_base_singleton);
}

/// Prompt tokens as OpenAI counts chat input: each message's text plus 3 tokens of
/// framing per message, plus 3 for the reply's priming.
pub fn estimate_prompt(model: &str, req: &ChatRequest) -> u64 {
    let bpe = encoder_for(model);
    let text: u64 = req
        .messages
        .iter()
        .map(|m| bpe.count_ordinary(&m.text()) as u64 + 3)
        .sum();
    text + 3
}

/// Input tokens of an embeddings request: its texts' tokens, or the token arrays' lengths.
pub fn estimate_embeddings(model: &str, req: &EmbeddingsRequest) -> u64 {
    use sy_protocol::embeddings::EmbeddingInput;
    match &req.input {
        EmbeddingInput::Tokens(t) => t.len() as u64,
        EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
        input => {
            let bpe = encoder_for(model);
            input
                .texts()
                .unwrap_or_default()
                .iter()
                .map(|t| bpe.count_ordinary(t) as u64)
                .sum()
        }
    }
}

/// Input tokens of a rerank request: each document is read with the query.
pub fn estimate_rerank(model: &str, req: &RerankRequest) -> u64 {
    let bpe = encoder_for(model);
    let query = bpe.count_ordinary(&req.query) as u64;
    req.documents
        .iter()
        .map(|d| query + bpe.count_ordinary(d) as u64)
        .sum()
}

/// Output tokens of generated text.
pub fn estimate_output(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    encoder_for(model).count_ordinary(text) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_pick_their_encoding() {
        let o200k = tiktoken_rs::o200k_base_singleton() as *const CoreBPE;
        let cl100k = tiktoken_rs::cl100k_base_singleton() as *const CoreBPE;
        assert_eq!(encoder_for("gpt-4o-mini") as *const CoreBPE, o200k);
        assert_eq!(encoder_for("gpt-4.1") as *const CoreBPE, o200k);
        assert_eq!(encoder_for("o3-mini") as *const CoreBPE, o200k);
        assert_eq!(encoder_for("gpt-4-turbo") as *const CoreBPE, cl100k);
        assert_eq!(encoder_for("gpt-3.5-turbo") as *const CoreBPE, cl100k);
        assert_eq!(encoder_for("claude-sonnet-4-5") as *const CoreBPE, o200k);
    }

    // Each test runs in a process of its own under nextest (the suite's
    // runner), so the loads below are the first.
    #[test]
    fn encoders_load_on_first_need_on_either_kind_of_runtime() {
        // On a multi-threaded runtime's worker: loaded in `block_in_place`.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let n = rt.block_on(async {
            tokio::spawn(async { estimate_output("gpt-4-turbo", "Hello world") })
                .await
                .unwrap()
        });
        assert_eq!(n, 2);
        assert!(CL100K.get().is_some());
        // On a current-thread runtime (where `block_in_place` would panic).
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = rt.block_on(async { estimate_output("gpt-4o", "Hello world") });
        assert_eq!(n, 2);
        assert!(O200K.get().is_some());
    }

    #[test]
    fn estimates_count_real_tokens() {
        assert_eq!(estimate_output("gpt-4o", ""), 0);
        let n = estimate_output("gpt-4o", "Hello world, how are you today?");
        assert!((6..=10).contains(&n), "{n}");
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "Hello world"}]
        }))
        .unwrap();
        assert_eq!(estimate_prompt("gpt-4o", &req), 2 + 3 + 3);
    }
}
