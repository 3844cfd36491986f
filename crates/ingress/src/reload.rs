//! The routing table's reload (the table is `crate::state::Routing`): on SIGHUP,
//! or when the config file's modification time changes (checked every second),
//! the file is loaded and validated whole; a valid one replaces the table in one
//! swap, an invalid one is refused with every problem logged and the old table
//! kept. Provider entries are not reloaded (their workers and consumers are
//! fixed at start): a file that changes them is refused, asking for a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sy_config::{Config, ProcessEnv};
use tokio_util::sync::CancellationToken;

use crate::state::{AppState, Routing};

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches `path` (and SIGHUP) until `shutdown`.
pub(crate) fn spawn(state: Arc<AppState>, path: PathBuf, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "No SIGHUP handler; the config file is still watched.");
                None
            }
        };
        let mut last = modified(&path);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = modified(&path);
                    if now == last {
                        continue;
                    }
                    last = now;
                    "file changed"
                }
            };
            reload(&state, &path, why).await;
        }
    });
}

async fn reload(state: &AppState, path: &Path, why: &str) {
    let p = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&p, &ProcessEnv)).await;
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
            tracing::error!(trigger = why, path = %path.display(), problems = ?problems,
                "New config refused; keeping the old routing table.");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "Config reload failed.");
            return;
        }
    };
    let same_providers = config.providers.len() == state.providers.len()
        && config.providers.iter().all(|(k, v)| {
            state
                .providers
                .get(k)
                .is_some_and(|o| o.kind == v.kind && o.base_url == v.base_url)
        });
    if !same_providers {
        tracing::error!(trigger = why, path = %path.display(),
            "New config refused: its [providers] differ; restart Switchyard to apply provider changes.");
        return;
    }
    let table = Arc::new(Routing::from_config(&config));
    sy_telemetry::metrics::set_vocabulary(config.model_names());
    match state.routing.write() {
        Ok(mut t) => *t = table,
        Err(poisoned) => *poisoned.into_inner() = table,
    }
    tracing::info!(
        trigger = why,
        models = config.models.len(),
        routers = config.routers.len(),
        "Routing table reloaded."
    );
}
