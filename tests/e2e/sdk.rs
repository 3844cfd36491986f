//! The official `openai` Python SDK works unchanged against Switchyard.

use std::process::Command;

use crate::stack::{KEY, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_unchanged() {
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let stack = Stack::start().await;
    let script = sy_test_support::repo_root().join("tests/sdk/openai_conformance.py");
    let base = format!("{}/v1", stack.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--base-url", &base, "--api-key", KEY, "--model", "gpt-4o-mini"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (SY_TEST_PYTHON): {e}. Run scripts/test.sh, which creates .venv with the openai SDK.")
            })
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "SDK conformance failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
