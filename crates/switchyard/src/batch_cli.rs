//! `switchyard batch submit|status|list|cancel|results`: the Batches API from the
//! command line, against a running ingress (`--url`, `--api-key`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Uploads a JSONL file and starts a batch; with --wait, shows progress and
    /// writes the results file when it ends.
    Submit {
        /// Input: one `{"custom_id","method","url","body"}` request per line.
        input: PathBuf,
        /// The endpoint every line targets.
        #[arg(long, default_value = "/v1/chat/completions")]
        endpoint: String,
        /// Wait for the end, showing items done / failed / total, rate and ETA.
        #[arg(long)]
        wait: bool,
        /// Where --wait writes the answers (default: <input>.output.jsonl).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Where --wait writes the failures (default: <input>.errors.jsonl).
        #[arg(long)]
        errors: Option<PathBuf>,
        /// Metadata pairs, KEY=VALUE (repeatable).
        #[arg(long = "metadata", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Called (signed POST) when the batch ends.
        #[arg(long)]
        webhook_url: Option<String>,
    },
    /// Prints a batch as JSON.
    Status { id: String },
    /// Lists this key's batches, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancels a batch (items in flight finish; partial files are written).
    Cancel { id: String },
    /// Downloads a finished batch's output (and error) file.
    Results {
        id: String,
        /// Where to write the answers (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Where to write the failures (default: not downloaded).
        #[arg(long)]
        errors: Option<PathBuf>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("calling {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("HTTP {status}: {message}")
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(req).await?.json().await?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    async fn batch(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.http.get(self.url(&format!("/v1/batches/{id}"))))
            .await
    }

    async fn download(&self, file_id: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/files/{file_id}/content"))),
            )
            .await?;
        Ok(resp.bytes().await?.to_vec())
    }
}

/// Runs one batch command; `Ok(false)` when a waited-for batch did not complete.
pub async fn run(command: BatchCommand, base: String, key: String) -> anyhow::Result<bool> {
    let api = Api {
        http: reqwest::Client::builder().tcp_nodelay(true).build()?,
        base,
        key,
    };
    let mut out = std::io::stdout().lock();
    match command {
        BatchCommand::Submit {
            input,
            endpoint,
            wait,
            output,
            errors,
            metadata,
            webhook_url,
        } => {
            let data =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let name = input
                .file_name()
                .map_or("input.jsonl".into(), |n| n.to_string_lossy().into_owned());
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(data).file_name(name),
                );
            let file = api
                .json(api.http.post(api.url("/v1/files")).multipart(form))
                .await?;
            let file_id = file["id"].as_str().context("no file id")?;
            let mut body = serde_json::json!({
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": "24h",
                "metadata": metadata.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<_, _>>(),
            });
            if let Some(url) = webhook_url {
                body["webhook_url"] = url.into();
            }
            let batch = api
                .json(api.http.post(api.url("/v1/batches")).json(&body))
                .await?;
            let id = batch["id"].as_str().context("no batch id")?.to_owned();
            writeln!(out, "{id}")?;
            if !wait {
                return Ok(true);
            }
            let batch = watch(&api, &id).await?;
            let status = batch["status"].as_str().unwrap_or("");
            let output = output.unwrap_or_else(|| sibling(&input, "output"));
            let errors = errors.unwrap_or_else(|| sibling(&input, "errors"));
            save(&api, &batch, &output, &errors, &mut out).await?;
            Ok(status == "completed")
        }
        BatchCommand::Status { id } => {
            let b = api.batch(&id).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&b)?)?;
            Ok(true)
        }
        BatchCommand::List { limit } => {
            let list = api
                .json(api.http.get(api.url(&format!("/v1/batches?limit={limit}"))))
                .await?;
            for b in list["data"].as_array().into_iter().flatten() {
                let c = &b["request_counts"];
                writeln!(
                    out,
                    "{}  {:<11}  {}/{} done, {} failed  {}",
                    b["id"].as_str().unwrap_or(""),
                    b["status"].as_str().unwrap_or(""),
                    c["completed"],
                    c["total"],
                    c["failed"],
                    b["endpoint"].as_str().unwrap_or("")
                )?;
            }
            Ok(true)
        }
        BatchCommand::Cancel { id } => {
            let b = api
                .json(api.http.post(api.url(&format!("/v1/batches/{id}/cancel"))))
                .await?;
            writeln!(out, "{} {}", id, b["status"].as_str().unwrap_or(""))?;
            Ok(true)
        }
        BatchCommand::Results { id, output, errors } => {
            let b = api.batch(&id).await?;
            let Some(file) = b["output_file_id"].as_str() else {
                bail!(
                    "batch {id} has no output file (status {})",
                    b["status"].as_str().unwrap_or("?")
                );
            };
            let data = api.download(file).await?;
            match output {
                Some(p) => std::fs::write(&p, &data)?,
                None => out.write_all(&data)?,
            }
            if let (Some(p), Some(f)) = (errors, b["error_file_id"].as_str()) {
                std::fs::write(&p, api.download(f).await?)?;
            }
            Ok(true)
        }
    }
}

fn sibling(input: &Path, what: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map_or("batch".into(), |s| s.to_string_lossy().into_owned());
    input.with_file_name(format!("{stem}.{what}.jsonl"))
}

/// Polls until the batch ends, drawing a progress line on stderr.
async fn watch(api: &Api, id: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut first_done: Option<(Instant, u64)> = None;
    loop {
        let b = api.batch(id).await?;
        let c = &b["request_counts"];
        let (total, completed, failed) = (
            c["total"].as_u64().unwrap_or(0),
            c["completed"].as_u64().unwrap_or(0),
            c["failed"].as_u64().unwrap_or(0),
        );
        let finished = completed + failed;
        let status = b["status"].as_str().unwrap_or("").to_owned();
        // Rate over what ran since progress was first seen (not the upload).
        let base = *first_done.get_or_insert((Instant::now(), finished));
        let secs = base.0.elapsed().as_secs_f64();
        let rate = if secs > 0.5 {
            (finished - base.1.min(finished)) as f64 / secs
        } else {
            0.0
        };
        let eta = if rate > 0.0 && total > finished {
            format!("{:.0}s", (total - finished) as f64 / rate)
        } else {
            "-".into()
        };
        let width = 30usize;
        let filled = (finished as usize * width)
            .checked_div(total as usize)
            .unwrap_or(0)
            .min(width);
        let line = format!(
            "[{}{}] {finished}/{total}  done {completed}  failed {failed}  {rate:.1}/s  ETA {eta}  {status}",
            "#".repeat(filled),
            "-".repeat(width - filled)
        );
        let ended = matches!(
            status.as_str(),
            "completed" | "failed" | "cancelled" | "expired"
        );
        let mut err = std::io::stderr().lock();
        if tty {
            write!(err, "\r{line}\x1b[K")?;
        } else if ended || last_line.elapsed() >= Duration::from_secs(2) {
            writeln!(err, "{line}")?;
            last_line = Instant::now();
        }
        if ended {
            if tty {
                writeln!(err)?;
            }
            writeln!(
                err,
                "batch {id} {status} in {:.1}s",
                started.elapsed().as_secs_f64()
            )?;
            return Ok(b);
        }
        drop(err);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn save(
    api: &Api,
    batch: &Value,
    output: &Path,
    errors: &Path,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Some(f) = batch["output_file_id"].as_str() {
        std::fs::write(output, api.download(f).await?)?;
        writeln!(out, "answers: {}", output.display())?;
    }
    if let Some(f) = batch["error_file_id"].as_str() {
        std::fs::write(errors, api.download(f).await?)?;
        writeln!(out, "failures: {}", errors.display())?;
    }
    Ok(())
}
