//! `mock-provider`: the mock LLM provider as a process, for the local stack and benchmarks.

use std::net::SocketAddr;

use clap::Parser;
use sy_mock_provider::{MockOptions, MockProvider};

#[derive(Parser, Debug)]
#[command(
    name = "mock-provider",
    about = "Deterministic mock LLM provider (OpenAI, Anthropic, Gemini and Cohere dialects) with fault injection"
)]
struct Args {
    /// Instance name, matched by `only=` directives.
    #[arg(long, env = "MOCK_NAME", default_value = "openai")]
    name: String,
    /// Listen address.
    #[arg(long, env = "MOCK_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Directives applied to every request, e.g. "ttft_ms=20,delay_ms=5".
    #[arg(long, env = "MOCK_DEFAULTS", default_value = "")]
    defaults: String,
    /// Require this bearer key.
    #[arg(long, env = "MOCK_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut opts = MockOptions::new(&args.name)
        .with_listen(args.listen)
        .with_defaults(args.defaults);
    if let Some(k) = args.api_key {
        opts = opts.with_api_key(k);
    }
    let mock = MockProvider::start(opts).await?;
    tracing::info!(name = %args.name, addr = %mock.addr(), "Mock provider listening.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    mock.shutdown().await;
    Ok(())
}
