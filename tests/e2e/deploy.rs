//! The deploy files (issue 19), checked offline by tests/deploy/check_deploy.py:
//! the Dockerfile's shape, `docker-compose config` (Debian's 1.29.2), and the
//! Kubernetes manifests rendered by `kubectl kustomize` and validated by
//! kubernetes-validate against the API schemas of two Kubernetes versions,
//! with the Switchyard config of each passing `switchyard config check`.
//! Nothing is built, pulled or applied: this machine has no Docker engine and
//! no cluster (docs/deploy.md).

#[test]
fn compose_file_and_kubernetes_manifests_pass_their_offline_checks() {
    let root = sy_test_support::repo_root();
    let venv = |bin: &str| root.join(".venv/bin").join(bin).display().to_string();
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| venv("python"));
    let validate =
        std::env::var("SY_KUBERNETES_VALIDATE").unwrap_or_else(|_| venv("kubernetes-validate"));
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/deploy/check_deploy.py"))
        .arg(&root)
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .arg(&validate)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}. Run scripts/test.sh."));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "docker-compose config",
        "kubernetes-validate --strict -k 1.29.0",
        "probes on /healthz and /readyz",
        "all checks passed",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
}
