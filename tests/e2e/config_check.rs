//! `switchyard config check` names every problem with its key path.

use std::process::Command;

#[test]
fn config_check_accepts_the_local_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(sy_test_support::repo_root().join("deploy/local/switchyard.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn config_check_accepts_the_fallback_chain_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(sy_test_support::repo_root().join("deploy/examples/fallback-chain.toml"))
        .env("SWITCHYARD_APP_KEY", "sk-app-0123456789")
        .env("OPENAI_API_KEY", "sk-openai")
        .env("ANTHROPIC_API_KEY", "sk-ant")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "nowhere"
[providers.openai]
kind = "openai_compatible"
base_url = "ftp://x"
[models."m"]
targets = [{ provider = "missing", model = "x" }]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "providers.openai.base_url",
        "models.\"m\".targets[0].provider",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[nats]\nurl = \"nats://127.0.0.1:1\"\nnamespace = \"a.b\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .arg("all")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats.namespace"));
}
