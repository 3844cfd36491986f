//! `switchyard admin orgs|projects|keys|audit ...`: the admin API from the
//! command line, over HTTP (`--url`, `--token` or `SWITCHYARD_ADMIN_TOKEN`).
//! Tables for people by default, the API's JSON with `--json`.
//! (`switchyard admin audit verify` reads the database itself; see main.rs.)

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the admin API is and who calls it.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The ingress serving the admin API.
    #[arg(
        long,
        env = "SWITCHYARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// The admin token.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Creates an org.
    Create { name: String },
    /// Lists orgs.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Disables an org (its keys stop working everywhere).
    Disable { id: String },
    /// Sets an org's rate limits (every key of the org counts against them).
    Limits {
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Makes an org prepaid (its requests spend its balance), or not.
    Prepaid {
        id: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        on: bool,
    },
    /// Credits an org's prepaid balance (a negative amount adjusts it down),
    /// once per reference.
    Credit {
        id: String,
        /// USD, e.g. 25.00.
        #[arg(long, allow_hyphen_values = true)]
        usd: String,
        /// The payment's reference: the same one credits once.
        #[arg(long = "ref")]
        reference: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Prints an org's prepaid balance.
    Balance { id: String },
    /// Prints an org's plan and multipliers.
    Pricing { id: String },
    /// Puts an org on a plan (or none) with its own multipliers, replacing
    /// what it had.
    SetPricing {
        id: String,
        /// The plan; none: the config's markup.
        #[arg(long)]
        plan: Option<String>,
        /// The org's own default multiplier (wins over its plan's), e.g. 1.1.
        #[arg(long)]
        multiplier: Option<String>,
        /// The org's own multiplier for one upstream model: MODEL=MULTIPLIER
        /// (repeatable).
        #[arg(long = "model", value_name = "MODEL=MULTIPLIER")]
        models: Vec<String>,
    },
}

/// `switchyard admin prices …`: the versioned price table (docs/billing.md).
// Parsed once per command line: the size of `Set` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum PriceCommand {
    /// Lists the price versions and the one in effect now.
    List,
    /// Prints one version's prices (a number, 0 for the config's, or current).
    Show {
        #[arg(default_value = "current")]
        version: String,
    },
    /// Makes a new version with one model's price set (USD per million
    /// tokens; per request, image, search unit, generated image, second of audio or character: USD each).
    Set {
        /// "<provider>/<upstream model>".
        key: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        cached_input: Option<String>,
        #[arg(long)]
        cache_write: Option<String>,
        #[arg(long)]
        cache_write_1h: Option<String>,
        #[arg(long)]
        reasoning_output: Option<String>,
        #[arg(long)]
        per_request: Option<String>,
        #[arg(long)]
        per_image: Option<String>,
        #[arg(long)]
        per_search_unit: Option<String>,
        #[arg(long)]
        per_output_image: Option<String>,
        #[arg(long)]
        per_audio_second: Option<String>,
        #[arg(long)]
        per_character: Option<String>,
        #[command(flatten)]
        when: VersionArgs,
    },
    /// Makes a new version without one model's price.
    Remove {
        key: String,
        #[command(flatten)]
        when: VersionArgs,
    },
}

/// When a new price version takes effect, and why.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VersionArgs {
    /// Unix seconds; now when absent.
    #[arg(long)]
    pub effective_at: Option<i64>,
    #[arg(long, default_value = "")]
    pub note: String,
}

/// `switchyard admin plans …`.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Lists plans.
    List,
    /// Prints one plan.
    Show { name: String },
    /// Makes a plan.
    Create {
        name: String,
        /// Over provider cost, e.g. 1.2.
        #[arg(long)]
        multiplier: String,
        /// MODEL=MULTIPLIER (repeatable).
        #[arg(long = "model", value_name = "MODEL=MULTIPLIER")]
        models: Vec<String>,
        /// What a response-cache hit is billed, as a fraction of a miss (e.g. 0.1).
        #[arg(long)]
        cache_hit_multiplier: Option<String>,
    },
    /// Changes a plan's multipliers (--model replaces its per-model ones).
    Update {
        name: String,
        #[arg(long)]
        multiplier: Option<String>,
        /// MODEL=MULTIPLIER (repeatable).
        #[arg(long = "model", value_name = "MODEL=MULTIPLIER")]
        models: Vec<String>,
        /// Remove every per-model multiplier.
        #[arg(long)]
        clear_models: bool,
        /// What a response-cache hit is billed, as a fraction of a miss (e.g. 0.1).
        #[arg(long, conflicts_with = "default_cache_hit_multiplier")]
        cache_hit_multiplier: Option<String>,
        /// Bill hits at the config's [cache] hit_multiplier again.
        #[arg(long)]
        default_cache_hit_multiplier: bool,
    },
    /// Deletes a plan no org is on.
    Delete { name: String },
}

/// Pipelines declared through the admin API.
#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Lists them.
    List,
    /// Prints one.
    Show { name: String },
    /// Creates or replaces one from a JSON file (`{"description"?, "steps": [...]}`).
    Put {
        name: String,
        /// The definition, as JSON (`-` for standard input).
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Deletes one.
    Delete { name: String },
}

/// `MODEL=MULTIPLIER` pairs as a JSON object.
fn model_multipliers(pairs: &[String]) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for p in pairs {
        let Some((model, m)) = p.rsplit_once('=') else {
            bail!("--model takes MODEL=MULTIPLIER, not '{p}'");
        };
        out.insert(model.to_owned(), json!(m));
    }
    Ok(Value::Object(out))
}

/// Rate limits to set on an org, project or key (docs/limits.md). The kinds
/// given replace the scope's limits (or, with `--model`, its limits for that
/// model); `--clear` removes them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// Only for requests naming this model (or router).
    #[arg(long)]
    pub model: Option<String>,
    /// Remove the limits (the model's with `--model`) instead.
    #[arg(long, conflicts_with_all = ["rpm", "tpm", "concurrency"])]
    pub clear: bool,
    /// A budget in USD, e.g. 12.50.
    #[arg(long, conflicts_with = "no_budget")]
    pub budget_usd: Option<String>,
    /// The budget's period: day, month (the default) or none.
    #[arg(long, requires = "budget_usd")]
    pub period: Option<String>,
    /// Remove the budget.
    #[arg(long)]
    pub no_budget: bool,
    /// A project's: lower max_tokens to what its budgets can pay for (true), or refuse with 402 (false).
    #[arg(long)]
    pub lower_max_tokens: Option<bool>,
    /// A project's cap on what one x-switchyard-session may spend, USD.
    #[arg(long, conflicts_with = "no_session_budget")]
    pub session_budget_usd: Option<String>,
    /// Remove a project's session cap.
    #[arg(long)]
    pub no_session_budget: bool,
    /// A project's response cache: on, off, or default (the config's [cache] models).
    #[arg(long, value_parser = ["on", "off", "default"])]
    pub cache: Option<String>,
}

impl LimitArgs {
    /// The `PATCH` body: `limits`, or `model_limits` with `current` (the
    /// scope's model limits now) changed for one model.
    fn body(&self, current: Option<&Value>) -> anyhow::Result<Value> {
        let mut set = serde_json::Map::new();
        for (k, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrency", self.concurrency),
        ] {
            if let Some(v) = v {
                set.insert(k.into(), json!(v));
            }
        }
        let budget = match (&self.budget_usd, self.no_budget) {
            (Some(usd), _) => {
                Some(json!({"usd": usd, "period": self.period.as_deref().unwrap_or("month")}))
            }
            (None, true) => Some(Value::Null),
            (None, false) => None,
        };
        let mut body = if set.is_empty() && !self.clear {
            if budget.is_none()
                && self.lower_max_tokens.is_none()
                && self.session_budget_usd.is_none()
                && !self.no_session_budget
                && self.cache.is_none()
            {
                anyhow::bail!(
                    "name a limit (--rpm, --tpm, --concurrency), --clear, a budget (--budget-usd, --no-budget), --lower-max-tokens or --cache"
                );
            }
            json!({})
        } else {
            self.limits_body(current)
        };
        if let Some(b) = budget {
            body["budget"] = b;
        }
        if let Some(l) = self.lower_max_tokens {
            body["lower_max_tokens"] = json!(l);
        }
        match self.cache.as_deref() {
            Some("on") => body["cache"] = json!(true),
            Some("off") => body["cache"] = json!(false),
            Some(_) => body["cache"] = Value::Null,
            None => {}
        }
        match (&self.session_budget_usd, self.no_session_budget) {
            (Some(usd), _) => body["session_budget"] = json!({ "usd": usd }),
            (None, true) => body["session_budget"] = Value::Null,
            (None, false) => {}
        }
        Ok(body)
    }

    /// The `limits` or `model_limits` part of the body.
    fn limits_body(&self, current: Option<&Value>) -> Value {
        let mut set = serde_json::Map::new();
        for (k, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrency", self.concurrency),
        ] {
            if let Some(v) = v {
                set.insert(k.into(), json!(v));
            }
        }
        match &self.model {
            None => json!({ "limits": set }),
            Some(m) => {
                let mut all = current
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                if self.clear {
                    all.remove(m);
                } else {
                    all.insert(m.clone(), Value::Object(set));
                }
                json!({ "model_limits": all })
            }
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Creates a project in an org.
    Create {
        /// The org.
        #[arg(long)]
        org: String,
        name: String,
    },
    /// Lists projects.
    List {
        /// Only this org's.
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Disables a project (its keys stop working everywhere).
    Disable { id: String },
    /// Sets a project's rate limits (every key of the project counts against them).
    Limits {
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Creates an API key and prints its secret (shown this once).
    Create {
        /// The project.
        #[arg(long)]
        project: String,
        name: String,
        /// A model or router the key may name (repeatable; none: every one).
        #[arg(long = "model")]
        models: Vec<String>,
        /// A client network the key may be used from (repeatable; none: any).
        #[arg(long = "cidr")]
        cidrs: Vec<String>,
        /// When it stops working, Unix seconds.
        #[arg(long)]
        expires_at: Option<i64>,
        /// A default tag of its requests, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Lists keys (never their secrets).
    List {
        /// Only this project's.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Prints one key.
    Get { id: String },
    /// Revokes a key: refused on every ingress within a second.
    Revoke { id: String },
    /// A new secret for the key (printed once); the old one works for --grace seconds.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace: u32,
    },
    /// Sets a key's rate limits.
    Limits {
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialCommand {
    /// Sets a provider's credential (global, or one org's), read from
    /// standard input so it stays out of the shell's history.
    Set {
        /// The provider entry (config name).
        #[arg(long)]
        provider: String,
        /// The org (none: global).
        #[arg(long)]
        org: Option<String>,
    },
    /// Lists credentials' metadata (never a secret).
    List {
        /// Only this org's.
        #[arg(long)]
        org: Option<String>,
    },
    /// Deletes a credential.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issues an admin token (owners only) and prints it (shown this once).
    Create {
        /// `owner`, `admin`, `operator`, `billing` or `viewer`.
        #[arg(long)]
        role: String,
        /// Limits the token to one org.
        #[arg(long)]
        org: Option<String>,
        name: String,
    },
    /// Lists admin tokens issued from the database (never the tokens).
    List,
    /// Revokes an admin token: refused from its next request on.
    Revoke { id: String },
}

/// One admin call.
#[derive(Debug)]
pub enum Call {
    Tokens(TokenCommand),
    Orgs(OrgCommand),
    Projects(ProjectCommand),
    Keys(KeyCommand),
    Credentials(CredentialCommand),
    Prices(PriceCommand),
    Plans(PlanCommand),
    Pipelines(PipelineCommand),
    /// The newest audit rows, filtered by target id and actor.
    Audit {
        target: Option<String>,
        actor: Option<String>,
        limit: u32,
    },
}

/// `switchyard billing invoice`.
#[derive(Args, Debug)]
pub struct InvoiceArgs {
    /// The org's id.
    #[arg(long)]
    pub org: String,
    /// The month, e.g. 2026-11 (UTC).
    #[arg(long)]
    pub period: String,
    /// `json` or `csv`.
    #[arg(long, default_value = "json")]
    pub format: String,
    /// Writes it to this file instead of standard output.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(conn: &Connection) -> anyhow::Result<Api> {
        let token = conn
            .token
            .clone()
            .context("an admin token is needed: --token or SWITCHYARD_ADMIN_TOKEN")?;
        Ok(Api {
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .context("making the HTTP client")?,
            base: conn.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// PATCHes the limits of the org, project or key `id` (`kind` is the
    /// path's word); a model's limits are merged into its others.
    async fn set_limits(&self, kind: &str, id: &str, args: &LimitArgs) -> anyhow::Result<Value> {
        let path = format!("/admin/v1/{kind}/{}", urlencode(id));
        let current = match &args.model {
            Some(_) => Some(self.call(reqwest::Method::GET, &path, None).await?),
            None => None,
        };
        let body = args.body(current.as_ref().map(|c| &c["model_limits"]))?;
        self.call(reqwest::Method::PATCH, &path, Some(body)).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let bytes = self.bytes(method, path, body).await?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned())))
    }

    /// The answer's body as it came; an error status is an error with the
    /// API's message.
    async fn bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the answer")?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
            let message = v["error"]["message"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_owned);
            bail!("{status}: {message}");
        }
        Ok(bytes.to_vec())
    }
}

/// `switchyard billing invoice`: an org's invoice for a month, the API's
/// bytes as they came, to `--output` or `out`.
pub async fn invoice(
    conn: &Connection,
    a: &InvoiceArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let path = format!(
        "/admin/v1/orgs/{}/invoices/{}?format={}",
        urlencode(&a.org),
        urlencode(&a.period),
        urlencode(&a.format)
    );
    let bytes = Api::new(conn)?
        .bytes(reqwest::Method::GET, &path, None)
        .await?;
    match &a.output {
        Some(file) => {
            std::fs::write(file, &bytes).with_context(|| format!("writing {}", file.display()))
        }
        None => out.write_all(&bytes).context("writing the invoice"),
    }
}

/// Runs one admin call; prints its answer to `out`.
pub async fn run(conn: &Connection, call: Call, out: &mut impl Write) -> anyhow::Result<()> {
    use reqwest::Method;
    let api = Api::new(conn)?;
    let q = |pairs: &[(&str, Option<&str>)]| {
        let parts: Vec<String> = pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    };
    let (v, shape) = match call {
        Call::Orgs(OrgCommand::Create { name }) => (
            api.call(Method::POST, "/admin/v1/orgs", Some(json!({"name": name})))
                .await?,
            Shape::Org,
        ),
        Call::Orgs(OrgCommand::List { limit }) => (
            api.call(Method::GET, &format!("/admin/v1/orgs?limit={limit}"), None)
                .await?,
            Shape::Org,
        ),
        Call::Orgs(OrgCommand::Disable { id }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/orgs/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Org,
        ),
        Call::Projects(ProjectCommand::Create { org, name }) => (
            api.call(
                Method::POST,
                "/admin/v1/projects",
                Some(json!({"org_id": org, "name": name})),
            )
            .await?,
            Shape::Project,
        ),
        Call::Projects(ProjectCommand::List { org, limit }) => {
            let limit = limit.to_string();
            let path = format!(
                "/admin/v1/projects{}",
                q(&[("org_id", org.as_deref()), ("limit", Some(&limit))])
            );
            (api.call(Method::GET, &path, None).await?, Shape::Project)
        }
        Call::Projects(ProjectCommand::Disable { id }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/projects/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Project,
        ),
        Call::Keys(KeyCommand::Create {
            project,
            name,
            models,
            cidrs,
            expires_at,
            tags,
        }) => {
            let mut body = json!({"project_id": project, "name": name});
            if !tags.is_empty() {
                let mut m = serde_json::Map::new();
                for t in &tags {
                    let Some((k, v)) = t.split_once('=') else {
                        anyhow::bail!("--tag takes KEY=VALUE, not '{t}'");
                    };
                    m.insert(k.to_owned(), json!(v));
                }
                body["tags"] = Value::Object(m);
            }
            if !models.is_empty() {
                body["scopes"] = json!({ "models": models });
            }
            if !cidrs.is_empty() {
                body["allowed_cidrs"] = json!(cidrs);
            }
            if let Some(e) = expires_at {
                body["expires_at"] = json!(e);
            }
            (
                api.call(Method::POST, "/admin/v1/keys", Some(body)).await?,
                Shape::NewKey,
            )
        }
        Call::Keys(KeyCommand::List { project, limit }) => {
            let limit = limit.to_string();
            let path = format!(
                "/admin/v1/keys{}",
                q(&[("project_id", project.as_deref()), ("limit", Some(&limit))])
            );
            (api.call(Method::GET, &path, None).await?, Shape::Key)
        }
        Call::Keys(KeyCommand::Get { id }) => (
            api.call(
                Method::GET,
                &format!("/admin/v1/keys/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Key,
        ),
        Call::Keys(KeyCommand::Revoke { id }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/keys/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Key,
        ),
        Call::Orgs(OrgCommand::Prepaid { id, on }) => (
            api.call(
                Method::PATCH,
                &format!("/admin/v1/orgs/{}", urlencode(&id)),
                Some(json!({ "prepaid": on })),
            )
            .await?,
            Shape::Org,
        ),
        Call::Orgs(OrgCommand::Credit {
            id,
            usd,
            reference,
            note,
        }) => (
            api.call(
                Method::POST,
                &format!("/admin/v1/orgs/{}/credits", urlencode(&id)),
                Some(json!({ "usd": usd, "ref": reference, "note": note })),
            )
            .await?,
            Shape::Balance,
        ),
        Call::Orgs(OrgCommand::Balance { id }) => (
            api.call(
                Method::GET,
                &format!("/admin/v1/orgs/{}/balance", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Balance,
        ),
        Call::Orgs(OrgCommand::Pricing { id }) => (
            api.call(
                Method::GET,
                &format!("/admin/v1/orgs/{}/pricing", urlencode(&id)),
                None,
            )
            .await?,
            Shape::OrgPricing,
        ),
        Call::Orgs(OrgCommand::SetPricing {
            id,
            plan,
            multiplier,
            models,
        }) => (
            api.call(
                Method::PUT,
                &format!("/admin/v1/orgs/{}/pricing", urlencode(&id)),
                Some(json!({"plan": plan, "multiplier": multiplier,
                            "model_multipliers": model_multipliers(&models)?})),
            )
            .await?,
            Shape::OrgPricing,
        ),
        Call::Prices(PriceCommand::List) => (
            api.call(Method::GET, "/admin/v1/prices", None).await?,
            Shape::PriceVersion,
        ),
        Call::Prices(PriceCommand::Show { version }) => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/admin/v1/prices/{}", urlencode(&version)),
                    None,
                )
                .await?;
            (price_rows(v), Shape::Price)
        }
        Call::Prices(PriceCommand::Set {
            key,
            input,
            output,
            cached_input,
            cache_write,
            cache_write_1h,
            reasoning_output,
            per_request,
            per_image,
            per_search_unit,
            per_output_image,
            per_audio_second,
            per_character,
            when,
        }) => {
            let mut price = json!({"input": input, "output": output});
            for (k, v) in [
                ("cached_input", cached_input),
                ("cache_write", cache_write),
                ("cache_write_1h", cache_write_1h),
                ("reasoning_output", reasoning_output),
                ("per_request", per_request),
                ("per_image", per_image),
                ("per_search_unit", per_search_unit),
                ("per_output_image", per_output_image),
                ("per_audio_second", per_audio_second),
                ("per_character", per_character),
            ] {
                if let Some(v) = v {
                    price[k] = json!(v);
                }
            }
            let body = json!({"effective_at": when.effective_at, "note": when.note,
                              "set": {key: price}});
            let v = api
                .call(Method::POST, "/admin/v1/prices", Some(body))
                .await?;
            (v, Shape::PriceVersion)
        }
        Call::Prices(PriceCommand::Remove { key, when }) => {
            let body = json!({"effective_at": when.effective_at, "note": when.note,
                              "remove": [key]});
            let v = api
                .call(Method::POST, "/admin/v1/prices", Some(body))
                .await?;
            (v, Shape::PriceVersion)
        }
        Call::Pipelines(PipelineCommand::List) => (
            api.call(Method::GET, "/admin/v1/pipelines", None).await?,
            Shape::Pipeline,
        ),
        Call::Pipelines(PipelineCommand::Show { name }) => (
            api.call(
                Method::GET,
                &format!("/admin/v1/pipelines/{}", urlencode(&name)),
                None,
            )
            .await?,
            Shape::Pipeline,
        ),
        Call::Pipelines(PipelineCommand::Put { name, file }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)?
            };
            let definition: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
            (
                api.call(
                    Method::PUT,
                    &format!("/admin/v1/pipelines/{}", urlencode(&name)),
                    Some(definition),
                )
                .await?,
                Shape::Pipeline,
            )
        }
        Call::Pipelines(PipelineCommand::Delete { name }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/pipelines/{}", urlencode(&name)),
                None,
            )
            .await?,
            Shape::Pipeline,
        ),
        Call::Plans(PlanCommand::List) => (
            api.call(Method::GET, "/admin/v1/plans", None).await?,
            Shape::Plan,
        ),
        Call::Plans(PlanCommand::Show { name }) => (
            api.call(
                Method::GET,
                &format!("/admin/v1/plans/{}", urlencode(&name)),
                None,
            )
            .await?,
            Shape::Plan,
        ),
        Call::Plans(PlanCommand::Create {
            name,
            multiplier,
            models,
            cache_hit_multiplier,
        }) => (
            api.call(
                Method::POST,
                "/admin/v1/plans",
                Some(json!({"name": name, "multiplier": multiplier,
                            "model_multipliers": model_multipliers(&models)?,
                            "cache_hit_multiplier": cache_hit_multiplier})),
            )
            .await?,
            Shape::Plan,
        ),
        Call::Plans(PlanCommand::Update {
            name,
            multiplier,
            models,
            clear_models,
            cache_hit_multiplier,
            default_cache_hit_multiplier,
        }) => {
            let mut body = json!({});
            if let Some(m) = multiplier {
                body["multiplier"] = json!(m);
            }
            if let Some(m) = cache_hit_multiplier {
                body["cache_hit_multiplier"] = json!(m);
            } else if default_cache_hit_multiplier {
                body["cache_hit_multiplier"] = Value::Null;
            }
            if clear_models || !models.is_empty() {
                body["model_multipliers"] = model_multipliers(&models)?;
            }
            (
                api.call(
                    Method::PATCH,
                    &format!("/admin/v1/plans/{}", urlencode(&name)),
                    Some(body),
                )
                .await?,
                Shape::Plan,
            )
        }
        Call::Plans(PlanCommand::Delete { name }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/plans/{}", urlencode(&name)),
                None,
            )
            .await?,
            Shape::Plan,
        ),
        Call::Orgs(OrgCommand::Limits { id, limits }) => {
            (api.set_limits("orgs", &id, &limits).await?, Shape::Org)
        }
        Call::Projects(ProjectCommand::Limits { id, limits }) => (
            api.set_limits("projects", &id, &limits).await?,
            Shape::Project,
        ),
        Call::Keys(KeyCommand::Limits { id, limits }) => {
            (api.set_limits("keys", &id, &limits).await?, Shape::Key)
        }
        Call::Keys(KeyCommand::Rotate { id, grace }) => (
            api.call(
                Method::POST,
                &format!("/admin/v1/keys/{}/rotate", urlencode(&id)),
                Some(json!({"grace_seconds": grace})),
            )
            .await?,
            Shape::NewKey,
        ),
        Call::Tokens(TokenCommand::Create { role, org, name }) => {
            let mut body = json!({"name": name, "role": role});
            if let Some(org) = org {
                body["org_id"] = json!(org);
            }
            (
                api.call(Method::POST, "/admin/v1/admin-tokens", Some(body))
                    .await?,
                Shape::NewToken,
            )
        }
        Call::Tokens(TokenCommand::List) => (
            api.call(Method::GET, "/admin/v1/admin-tokens", None)
                .await?,
            Shape::Token,
        ),
        Call::Tokens(TokenCommand::Revoke { id }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/admin-tokens/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Token,
        ),
        Call::Credentials(CredentialCommand::Set { provider, org }) => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the credential from standard input")?;
            let mut body = json!({"provider": provider, "api_key": secret.trim()});
            if let Some(org) = org {
                body["org_id"] = json!(org);
            }
            (
                api.call(Method::POST, "/admin/v1/credentials", Some(body))
                    .await?,
                Shape::Credential,
            )
        }
        Call::Credentials(CredentialCommand::List { org }) => {
            let path = format!("/admin/v1/credentials{}", q(&[("org_id", org.as_deref())]));
            (api.call(Method::GET, &path, None).await?, Shape::Credential)
        }
        Call::Credentials(CredentialCommand::Delete { id }) => (
            api.call(
                Method::DELETE,
                &format!("/admin/v1/credentials/{}", urlencode(&id)),
                None,
            )
            .await?,
            Shape::Credential,
        ),
        Call::Audit {
            target,
            actor,
            limit,
        } => {
            let limit = limit.to_string();
            let path = format!(
                "/admin/v1/audit{}",
                q(&[
                    ("target_id", target.as_deref()),
                    ("actor", actor.as_deref()),
                    ("limit", Some(&limit)),
                ])
            );
            (api.call(Method::GET, &path, None).await?, Shape::Audit)
        }
    };
    if conn.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        print_table(&v, shape, out)?;
    }
    Ok(())
}

/// What kind of thing an answer holds.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Org,
    Project,
    Key,
    NewKey,
    Token,
    NewToken,
    Credential,
    Audit,
    Balance,
    OrgPricing,
    PriceVersion,
    Price,
    Plan,
    Pipeline,
}

/// A price version's prices as table rows.
fn price_rows(v: Value) -> Value {
    let rows: Vec<Value> = v["prices"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(key, p)| {
                    let mut row = p.clone();
                    row["model"] = json!(key);
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"data": rows})
}

impl Shape {
    fn columns(self) -> &'static [&'static str] {
        match self {
            Shape::Org => &["id", "name", "status"],
            Shape::Project => &["id", "org_id", "name", "status"],
            Shape::Key | Shape::NewKey => &["id", "prefix", "name", "status", "project_id"],
            Shape::Token | Shape::NewToken => &["id", "prefix", "name", "role", "org_id", "status"],
            Shape::Credential => &["id", "provider", "org_id", "key_version", "fingerprint"],
            Shape::Audit => &["seq", "actor", "role", "action", "target_kind", "target_id"],
            Shape::Balance => &[
                "org_id",
                "prepaid",
                "balance_usd",
                "credited_usd",
                "debited_usd",
            ],
            Shape::OrgPricing => &["org_id", "plan", "multiplier", "plan_multiplier"],
            Shape::PriceVersion => &["version", "effective_at", "models", "note"],
            Shape::Price => &[
                "model",
                "input",
                "output",
                "cached_input",
                "cache_write",
                "cache_write_1h",
                "reasoning_output",
                "per_request",
                "per_image",
                "per_search_unit",
                "per_output_image",
                "per_audio_second",
                "per_character",
            ],
            Shape::Plan => &["name", "multiplier", "model_multipliers"],
            Shape::Pipeline => &["name", "model", "description"],
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The rows of a list answer (or the one object), as a table.
fn print_table(v: &Value, shape: Shape, out: &mut impl Write) -> anyhow::Result<()> {
    let rows: Vec<&Value> = match v.get("data").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![v],
    };
    let cols = shape.columns();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        out,
        "{}",
        line(cols.iter().map(|c| c.to_uppercase()).collect())
    )?;
    for r in cells {
        writeln!(out, "{}", line(r))?;
    }
    if let Shape::NewKey = shape
        && let Some(key) = v["key"].as_str()
    {
        writeln!(out)?;
        writeln!(out, "key: {key}")?;
        writeln!(
            out,
            "(shown this once: store it now; Switchyard keeps only its hash)"
        )?;
    }
    if v.get("has_more").and_then(Value::as_bool) == Some(true) {
        writeln!(out, "(more: raise --limit)")?;
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_prints_as_a_table_and_a_new_key_shows_its_secret_once() {
        let v = json!({"object": "list", "has_more": true, "data": [
            {"id": "1", "name": "Acme\u{1b}[31m", "status": "active"},
            {"id": "22", "name": null, "status": "disabled"}]});
        let mut out = Vec::new();
        print_table(&v, Shape::Org, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ID  NAME       STATUS\n1   Acme\u{fffd}[31m  active\n22  -          disabled\n(more: raise --limit)\n"
        );
        let k = json!({"id": "k", "prefix": "sy_live_x", "name": "n", "status": "active",
            "project_id": "p", "key": "sy_live_x_secret_c"});
        let mut out = Vec::new();
        print_table(&k, Shape::NewKey, &mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("key: sy_live_x_secret_c\n")
        );
        assert_eq!(urlencode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
