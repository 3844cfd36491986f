//! The official `openai`, `anthropic` and `cohere` Python SDKs work unchanged
//! against Switchyard, whichever dialect serves the model, and every call is
//! accounted.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::stack::{KEY, Stack, StackOptions};

/// Runs one conformance script against `model` (served by `provider`); panics
/// with the script's output when a check fails.
async fn run(
    script: &'static str,
    base: String,
    model: &'static str,
    provider: &'static str,
    embedding_model: Option<&'static str>,
) {
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let path = sy_test_support::repo_root().join("tests/sdk").join(script);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(&python);
        cmd.arg(&path)
            .args(["--base-url", &base, "--api-key", KEY, "--model", model, "--provider", provider]);
        if let Some(m) = embedding_model {
            cmd.args(["--embedding-model", m]);
        }
        cmd
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (SY_TEST_PYTHON): {e}. Run scripts/test.sh, which creates .venv with the SDKs.")
            })
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{script} against {model} ({provider}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Successful usage rows per provider for `api`, once at least `min` each arrived.
async fn rows_per_provider(
    stack: &Stack,
    api: &str,
    providers: &[&str],
    min: u64,
) -> Vec<(String, u64)> {
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let rows: Vec<(String, u64)> = client
            .query(&format!(
                "SELECT provider, count() FROM {}.requests FINAL WHERE api = '{api}' AND status = 'ok' \
                 AND output_tokens > 0 AND input_tokens_source = 'provider' GROUP BY provider ORDER BY provider",
                ch.database
            ))
            .fetch_all()
            .await
            .unwrap();
        let done = providers
            .iter()
            .all(|p| rows.iter().any(|(q, n)| q == p && *n >= min));
        if done || Instant::now() > until {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn accounted_stack() -> Stack {
    Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_unchanged_against_every_dialect() {
    let stack = accounted_stack().await;
    let base = format!("{}/v1", stack.base);
    let targets = [
        ("gpt-4o-mini", "openai", Some("text-embedding-3-small")),
        ("claude-sonnet-4-5", "anthropic", None),
        ("gemini-2.5-flash", "gemini", Some("gemini-embedding-001")),
        ("command-r-plus", "cohere", Some("embed-v4.0")),
    ];
    let runs: Vec<_> = targets
        .iter()
        .map(|&(model, provider, embed)| {
            tokio::spawn(run(
                "openai_conformance.py",
                base.clone(),
                model,
                provider,
                embed,
            ))
        })
        .collect();
    for r in runs {
        r.await.unwrap();
    }
    let providers: Vec<&str> = targets.iter().map(|t| t.1).collect();
    // Each script makes 5 successful calls: plain, streamed, tool call plain and
    // streamed, tool result follow-up.
    // And 6 through the Responses API: plain, streamed twice, tool call plain and
    // streamed, tool result follow-up.
    for (api, min) in [("chat_completions", 5), ("responses", 6)] {
        let rows = rows_per_provider(&stack, api, &providers, min).await;
        for p in &providers {
            assert!(
                rows.iter().any(|(q, n)| q == p && *n >= min),
                "{api} usage rows with provider-reported tokens for {p}: {rows:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_python_sdk_works_unchanged_against_every_dialect() {
    let stack = accounted_stack().await;
    let targets = [
        ("gpt-4o-mini", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
        ("command-r-plus", "cohere"),
    ];
    let runs: Vec<_> = targets
        .iter()
        .map(|&(model, provider)| {
            tokio::spawn(run(
                "anthropic_conformance.py",
                stack.base.clone(),
                model,
                provider,
                None,
            ))
        })
        .collect();
    for r in runs {
        r.await.unwrap();
    }
    let providers: Vec<&str> = targets.iter().map(|t| t.1).collect();
    let rows = rows_per_provider(&stack, "messages", &providers, 5).await;
    for p in providers {
        assert!(
            rows.iter().any(|(q, n)| q == p && *n >= 5),
            "usage rows with provider-reported tokens for {p}: {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_generates_images_and_transcribes() {
    let stack = Stack::start().await;
    let audio = std::env::temp_dir().join(format!("sy-sdk-{}.wav", uuid::Uuid::now_v7()));
    std::fs::write(&audio, sy_mock_provider::audio::wav(2.0)).unwrap();
    let audio_path = audio.display().to_string();
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let script = sy_test_support::repo_root().join("tests/sdk/openai_media.py");
    let base = format!("{}/v1", stack.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--base-url", &base, "--api-key", KEY])
            .args([
                "--model",
                "gpt-image-1",
                "--link-model",
                "gemini-2.5-flash-image",
            ])
            .args(["--audio-model", "whisper-1", "--audio", &audio_path])
            .args(["--speech-model", "tts-1"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&audio);
    assert!(
        out.status.success(),
        "openai_media.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_cohere_python_sdk_reranks_unchanged() {
    let stack = accounted_stack().await;
    let targets = [("rerank-v3.5", "cohere"), ("bge-reranker-v2-m3", "vllm")];
    for (model, provider) in targets {
        run(
            "cohere_rerank.py",
            stack.base.clone(),
            model,
            provider,
            None,
        )
        .await;
    }
    // Four answered calls each (v2, v1, httpx; the refused one never reached
    // a provider): Cohere's in search units, the vLLM reranker's in tokens.
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows: Vec<(String, u64, u64, u64)> = client
            .query(&format!(
                "SELECT provider, count(), min(search_units), min(input_tokens) FROM {}.requests FINAL \
                 WHERE api = 'rerank' AND status = 'ok' GROUP BY provider ORDER BY provider",
                ch.database
            ))
            .fetch_all()
            .await
            .unwrap();
        if rows.iter().map(|r| r.1).sum::<u64>() >= 6 || Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (cohere, vllm) = (&rows[0], &rows[1]);
    assert_eq!((cohere.0.as_str(), cohere.1), ("cohere", 3), "{rows:?}");
    assert!(cohere.2 >= 1, "Cohere's rows count search units: {rows:?}");
    assert_eq!(
        (vllm.0.as_str(), vllm.1, vllm.2),
        ("vllm", 3, 0),
        "{rows:?}"
    );
    assert!(
        vllm.3 > 0,
        "the vLLM reranker's rows count tokens: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_runs_a_1000_item_batch_and_clickhouse_agrees() {
    let stack = accounted_stack().await;
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let script = sy_test_support::repo_root().join("tests/sdk/openai_batch.py");
    let base = format!("{}/v1", stack.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args([
                "--base-url",
                &base,
                "--api-key",
                KEY,
                "--model",
                "gpt-4o-mini",
            ])
            .args(["--items", "1000"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "openai_batch.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Vec<&str> = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("usage "))
        .expect("the script's last line is the output's usage")
        .split(' ')
        .collect();
    let batch_id = last[0].to_owned();
    let usage: Vec<u64> = last[1..].iter().map(|n| n.parse().unwrap()).collect();
    // Token sums in ClickHouse equal the output file's usage.
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (rows, prompt, completion): (u64, u64, u64) = client
            .query(&format!(
                "SELECT count(), toUInt64(sum(input_tokens + cached_input_tokens + cache_write_tokens)), \
                 toUInt64(sum(output_tokens)) FROM {}.requests FINAL \
                 WHERE batch_id = '{batch_id}' AND status = 'ok'",
                ch.database
            ))
            .fetch_one()
            .await
            .unwrap();
        if rows >= 1000 || Instant::now() > until {
            assert_eq!(rows, 1000, "one ok row per item");
            assert_eq!((prompt, completion), (usage[0], usage[1]));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
