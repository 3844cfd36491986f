//! `switchyard`: every component of the router in one binary.
//!
//! Subcommands: `all` (ingress, batch dispatcher, workers and, with
//! `[clickhouse]` configured, accounting, in one process with one NATS
//! connection), `ingress [--no-dispatcher]`, `dispatcher`,
//! `worker [--providers a,b]`, `accounting`, `migrate`, `config check [PATH]`,
//! `route simulate`, the Batches API client `batch submit|status|list|cancel|results`,
//! and over the admin API `admin ...` and `billing invoice`. The config
//! file comes from `--config` or `SWITCHYARD_CONFIG`; the ingress reloads its
//! routing table (models and routers) from it on SIGHUP or when it changes.
//! Startup errors are printed with their causes and exit non-zero; SIGINT/SIGTERM
//! drain and exit 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sy_bus::Bus;
use sy_config::{Config, ProcessEnv};

mod admin_cli;
mod batch_cli;
mod simulate;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "The Switchyard LLM API router")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_CONFIG",
        default_value = "switchyard.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Ingress and workers for every provider, in one process.
    All,
    /// The HTTP ingress (and, unless told otherwise, a batch dispatcher).
    Ingress {
        /// Serve HTTP only; batch jobs run on other processes.
        #[arg(long)]
        no_dispatcher: bool,
    },
    /// The batch dispatcher only (runs batch jobs from `<ns>.batch.submit`).
    Dispatcher,
    /// The accounting consumer only (usage events into ClickHouse).
    Accounting,
    /// Applies the ClickHouse and PostgreSQL migrations (idempotent).
    Migrate,
    /// The admin API from the command line (orgs, projects, keys, the audit
    /// log), over HTTP; `admin audit verify` reads `[postgres]` itself.
    Admin {
        #[command(flatten)]
        conn: admin_cli::Connection,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Billing documents over the admin API (docs/billing.md).
    Billing {
        #[command(flatten)]
        conn: admin_cli::Connection,
        #[command(subcommand)]
        command: BillingCommand,
    },
    /// Workers only.
    Worker {
        /// Providers to serve (config names, comma-separated); all when omitted.
        #[arg(long, value_delimiter = ',')]
        providers: Vec<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Routing tools.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Batch jobs through a running ingress (OpenAI's Batches API).
    Batch {
        /// The ingress.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The API key.
        #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(subcommand)]
        command: batch_cli::BatchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Orgs.
    Orgs {
        #[command(subcommand)]
        command: admin_cli::OrgCommand,
    },
    /// Projects.
    Projects {
        #[command(subcommand)]
        command: admin_cli::ProjectCommand,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: admin_cli::KeyCommand,
    },
    /// Admin tokens issued from the database (owners only).
    Tokens {
        #[command(subcommand)]
        command: admin_cli::TokenCommand,
    },
    /// Provider credentials (sealed; never shown).
    Credentials {
        #[command(subcommand)]
        command: admin_cli::CredentialCommand,
    },
    /// Price versions (docs/billing.md).
    Prices {
        #[command(subcommand)]
        command: admin_cli::PriceCommand,
    },
    /// Plans: multipliers over provider cost.
    Plans {
        #[command(subcommand)]
        command: admin_cli::PlanCommand,
    },
    /// Pipelines clients call as pipeline:<name> (docs/pipelines.md).
    Pipelines {
        #[command(subcommand)]
        command: admin_cli::PipelineCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BillingCommand {
    /// An org's invoice for a month (JSON or CSV), byte for byte what
    /// `GET /admin/v1/orgs/{id}/invoices/{period}` serves.
    Invoice(admin_cli::InvoiceArgs),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Recomputes the audit log's hash chain from the database itself and
    /// names the first row that does not fit (exit 1).
    Verify,
    /// The newest audit rows (over the admin API).
    List {
        /// Only about this target (an id).
        #[arg(long)]
        target: Option<String>,
        /// Only by this actor.
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Replays prompts through the classifier and a router; reports the class and
    /// target mix and the cost against one baseline target. Calls no provider.
    Simulate {
        /// JSONL: {"text": ...} or chat request bodies, one per line.
        #[arg(long)]
        input: PathBuf,
        /// The router (`auto`, `auto:<name>`).
        #[arg(long, default_value = "auto")]
        router: String,
        /// PROVIDER/MODEL to compare with (default: the router's most expensive target).
        #[arg(long)]
        baseline: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validates a config file and prints every problem with its key path.
    Check {
        /// The file to check (defaults to --config).
        path: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Config {
        command: ConfigCommand::Check { path },
    } = &cli.command
    {
        return config_check(path.as_ref().unwrap_or(&cli.config));
    }
    if let Command::Route {
        command:
            RouteCommand::Simulate {
                input,
                router,
                baseline,
            },
    } = &cli.command
    {
        let run = || -> anyhow::Result<()> {
            let config = Config::load(&cli.config, &ProcessEnv)
                .with_context(|| format!("loading config {}", cli.config.display()))?;
            simulate::run(
                &config,
                input,
                router,
                baseline.as_deref(),
                &mut std::io::stdout().lock(),
            )
        };
        return match run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match cli.command {
        Command::Batch {
            url,
            api_key,
            command,
        } => return batch(command, url, api_key),
        Command::Admin { conn, command } => {
            let call = match command {
                AdminCommand::Orgs { command } => admin_cli::Call::Orgs(command),
                AdminCommand::Projects { command } => admin_cli::Call::Projects(command),
                AdminCommand::Keys { command } => admin_cli::Call::Keys(command),
                AdminCommand::Credentials { command } => admin_cli::Call::Credentials(command),
                AdminCommand::Tokens { command } => admin_cli::Call::Tokens(command),
                AdminCommand::Prices { command } => admin_cli::Call::Prices(command),
                AdminCommand::Plans { command } => admin_cli::Call::Plans(command),
                AdminCommand::Pipelines { command } => admin_cli::Call::Pipelines(command),
                AdminCommand::Audit {
                    command:
                        AuditCommand::List {
                            target,
                            actor,
                            limit,
                        },
                } => admin_cli::Call::Audit {
                    target,
                    actor,
                    limit,
                },
                AdminCommand::Audit {
                    command: AuditCommand::Verify,
                } => return audit_verify(&cli.config),
            };
            return over_http(admin_cli::run(&conn, call, &mut std::io::stdout().lock()));
        }
        Command::Billing {
            conn,
            command: BillingCommand::Invoice(args),
        } => {
            return over_http(admin_cli::invoice(
                &conn,
                &args,
                &mut std::io::stdout().lock(),
            ));
        }
        _ => cli,
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let served = runtime.block_on(serve(cli));
    // The last spans, exported outside the runtime (the exporter blocks).
    drop(runtime);
    sy_telemetry::trace::shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Switchyard stopped.");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime from `builder`, or `None` after saying why it could not start.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}

fn batch(command: batch_cli::BatchCommand, url: String, key: String) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(batch_cli::run(command, url, key)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(path: &std::path::Path) -> ExitCode {
    match Config::load(path, &ProcessEnv) {
        Ok(c) => {
            let _ = writeln!(
                std::io::stdout(),
                "{}: OK ({} providers, {} models, {} keys)",
                path.display(),
                c.providers.len(),
                c.models.len(),
                c.keys.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid", path.display());
            for p in e.problems() {
                eprintln!("  {p}");
            }
            ExitCode::from(2)
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config, &ProcessEnv)
        .with_context(|| format!("loading config {}", cli.config.display()))?;
    sy_telemetry::init(&config.log);
    // The exporter's HTTP client needs the process's TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if sy_telemetry::trace::init(&config.tracing)
        .map_err(|e| anyhow::anyhow!("starting the trace exporter: {e}"))?
    {
        tracing::info!("Exporting traces over OTLP.");
    }
    let config = Arc::new(config);
    let role = match &cli.command {
        Command::All => "all",
        Command::Ingress { .. } => "ingress",
        Command::Dispatcher => "dispatcher",
        Command::Worker { .. } => "worker",
        Command::Accounting => "accounting",
        Command::Migrate => return migrate(&config).await,
        Command::Config { .. }
        | Command::Route { .. }
        | Command::Batch { .. }
        | Command::Admin { .. }
        | Command::Billing { .. } => {
            unreachable!("handled before the runtime starts")
        }
    };
    let bus = Bus::connect(&config.nats, &format!("switchyard-{role}"))
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats.url))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    sy_telemetry::metrics::set_vocabulary(config.model_names());
    // A process without the ingress's port serves its metrics on
    // `[metrics] listen`, when set.
    let serves_http = matches!(cli.command, Command::Ingress { .. } | Command::All);
    if let (Some(addr), false) = (config.metrics.listen, serves_http) {
        let (token, bus, shutdown) = (config.metrics.token.clone(), bus.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = sy_ingress::metrics::listen(addr, token, bus, shutdown).await {
                tracing::error!(error = %e, %addr, "Serving /metrics failed.");
            }
        });
    }
    match cli.command {
        Command::Ingress { no_dispatcher } => {
            let roles = sy_ingress::Roles {
                http: true,
                dispatcher: !no_dispatcher,
            };
            sy_ingress::run_roles(config, Some(cli.config.clone()), bus, shutdown, roles).await?
        }
        Command::Dispatcher => {
            let roles = sy_ingress::Roles {
                http: false,
                dispatcher: true,
            };
            sy_ingress::run_roles(config, Some(cli.config.clone()), bus, shutdown, roles).await?
        }
        Command::Worker { providers } => sy_worker::run(config, bus, providers, shutdown).await?,
        Command::Accounting => {
            let _reconcile = AbortOnDrop(
                sy_control::reconcile::start(&config, bus.client(), bus.subjects().key_notices())
                    .await,
            );
            let _ledger = AbortOnDrop(sy_control::ledger::start(
                &config,
                bus.jetstream().clone(),
                bus.subjects().usage_stream(),
            ));
            sy_accounting::run(config, bus, shutdown).await?
        }
        Command::All => {
            let worker = tokio::spawn(sy_worker::run(
                config.clone(),
                bus.clone(),
                Vec::new(),
                shutdown.clone(),
            ));
            let _reconcile = AbortOnDrop(
                sy_control::reconcile::start(&config, bus.client(), bus.subjects().key_notices())
                    .await,
            );
            let _ledger = AbortOnDrop(sy_control::ledger::start(
                &config,
                bus.jetstream().clone(),
                bus.subjects().usage_stream(),
            ));
            let accounting = config.clickhouse.is_some().then(|| {
                tokio::spawn(sy_accounting::run(
                    config.clone(),
                    bus.clone(),
                    shutdown.clone(),
                ))
            });
            let ingress =
                sy_ingress::run_reloading(config, Some(cli.config.clone()), bus, shutdown.clone())
                    .await;
            shutdown.cancel();
            let worker = worker.await.context("worker task panicked")?;
            if let Some(a) = accounting {
                a.await.context("accounting task panicked")??;
            }
            ingress?;
            worker?;
        }
        Command::Migrate
        | Command::Admin { .. }
        | Command::Billing { .. }
        | Command::Config { .. }
        | Command::Route { .. }
        | Command::Batch { .. } => {
            unreachable!("handled before connecting to NATS")
        }
    }
    tracing::info!("Switchyard stopped.");
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    if config.clickhouse.is_none() && config.postgres.is_none() {
        anyhow::bail!(
            "`switchyard migrate` needs a [clickhouse] or a [postgres] section in the config"
        );
    }
    let mut out = std::io::stdout();
    if let Some(ch) = &config.clickhouse {
        let applied = sy_accounting::migrate(ch)
            .await
            .with_context(|| format!("migrating ClickHouse at {}", ch.url))?;
        if applied.is_empty() {
            writeln!(out, "ClickHouse database {} is up to date.", ch.database)?;
        }
        for name in applied {
            writeln!(out, "applied {name}")?;
        }
    }
    if let Some(pg) = &config.postgres {
        // The URL may carry a password: never in a message.
        let applied = sy_control::store::migrate_url(pg.url.expose())
            .await
            .context("migrating PostgreSQL ([postgres] url)")?;
        if applied.is_empty() {
            writeln!(out, "PostgreSQL database is up to date.")?;
        }
        for name in applied {
            writeln!(out, "applied postgres/{name}")?;
        }
    }
    Ok(())
}

/// `switchyard admin ...` and `switchyard billing ...`: runs one call of the admin API's client on a runtime of its own.
fn over_http(call: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(call) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchyard admin audit verify`: the chain, from the database itself
/// (not through the admin API it is meant to check).
fn audit_verify(config_path: &std::path::Path) -> ExitCode {
    let run = async {
        let config = Config::load(config_path, &ProcessEnv)
            .with_context(|| format!("loading config {}", config_path.display()))?;
        let pg = config
            .postgres
            .as_ref()
            .context("`switchyard admin audit verify` needs a [postgres] section in the config")?;
        let pool = sqlx::PgPool::connect(pg.url.expose())
            .await
            .context("connecting to PostgreSQL ([postgres] url)")?;
        match sy_control::audit::verify(&pool).await? {
            Ok(n) => writeln!(std::io::stdout(), "The audit chain verifies: {n} rows.")?,
            Err(broken) => anyhow::bail!("{broken}"),
        }
        anyhow::Ok(())
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn watch_signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("Shutdown requested, draining.");
    shutdown.cancel();
}

/// Stops a background task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
