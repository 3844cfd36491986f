use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

fn repo_root() -> PathBuf {
    // At run time first: the compile-time value names wherever this was
    // last built (another checkout when several share one target dir).
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(manifest).join("../..")
}

fn env(pairs: &[(&str, &str)]) -> MapEnv {
    MapEnv(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    )
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(text, &env(&[])) {
        Ok(_) => panic!("config was accepted"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn local_stack_config_is_valid() {
    let config =
        Config::load(&repo_root().join("deploy/local/switchyard.toml"), &env(&[])).unwrap();
    assert_eq!(config.server.listen.port(), 8080);
    assert!(
        config
            .keys
            .iter()
            .any(|k| k.key.expose() == "sk-sy-local-dev")
    );
    let owner = &config.admin_tokens[0];
    assert_eq!(
        (owner.token.expose(), owner.role.as_str()),
        ("sk-sy-admin-local-dev", "owner")
    );
    assert!(config.tenants.is_some() && config.postgres.is_some());
    for model in ["gpt-4o-mini", "gpt-4o"] {
        assert_eq!(config.models[model].targets[0].provider, "openai");
    }
    assert_eq!(
        config.providers["openai"].kind,
        ProviderKind::OpenAiCompatible
    );
    assert_eq!(config.models["gpt-4.1"].token, "gpt-4_1");
    let p = config.providers["openai"].prices["gpt-4o-mini"];
    assert_eq!(
        (p.input, p.cached_input, p.output),
        (150_000_000, 75_000_000, 600_000_000)
    );
}

#[test]
fn the_postgres_url_is_checked_and_kept_secret() {
    let p = problems("[postgres]\nurl = \"mysql://root:pw@db/x\"\n");
    assert!(p.iter().any(|s| s.starts_with("postgres.url")), "{p:?}");
    assert!(!p.iter().any(|s| s.contains("pw@")), "{p:?}");
    let c = Config::from_toml(
        "[postgres]\nurl = \"postgresql://u:secret@127.0.0.1:5432/switchyard\"\n",
        &MapEnv::default(),
    )
    .unwrap();
    let pg = c.postgres.unwrap();
    assert_eq!(
        pg.url.expose(),
        "postgresql://u:secret@127.0.0.1:5432/switchyard"
    );
    assert!(!format!("{pg:?}").contains("secret"));
}

#[test]
fn tenants_need_postgres_a_long_pepper_and_a_short_env() {
    let p = problems("[tenants]\nkey_pepper = \"short\"\nkey_env = \"Live\"\nresync_seconds = 0\n");
    for field in [
        "tenants.key_pepper",
        "tenants.key_env",
        "tenants.resync_seconds",
        "tenants:",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    assert!(
        !p.iter().any(|s| s.contains("short")),
        "the pepper is not echoed: {p:?}"
    );
    let c = Config::from_toml(
        "[postgres]\nurl = \"postgres://u@127.0.0.1/s\"\n[tenants]\nkey_pepper = \"${PEPPER}\"\n",
        &env(&[("PEPPER", "0123456789abcdef0123456789abcdef")]),
    )
    .unwrap();
    let t = c.tenants.unwrap();
    assert_eq!(t.key_pepper.expose(), "0123456789abcdef0123456789abcdef");
    assert_eq!((t.key_env.as_str(), t.resync.as_secs()), ("live", 60));
    assert!(!format!("{t:?}").contains("0123456789"));
}

#[test]
fn admin_tokens_need_a_known_role_a_long_token_and_an_org_id() {
    let p = problems(
        "[[keys]]\nname = \"k\"\nkey = \"sk-shared-key-1234\"\n\
         [[admin_tokens]]\nname = \"a\"\ntoken = \"short\"\nrole = \"root\"\norg_id = \"acme\"\n\
         [[admin_tokens]]\nname = \"b\"\ntoken = \"sk-shared-key-1234\"\nrole = \"viewer\"\n",
    );
    for field in [
        "admin_tokens[0].token",
        "admin_tokens[0].role",
        "admin_tokens[0].org_id",
        "admin_tokens[1].token",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    assert!(
        !p.iter().any(|s| s.contains("sk-shared")),
        "tokens are not echoed: {p:?}"
    );
}

#[test]
fn credentials_need_a_32_byte_master_key_and_postgres() {
    let p = problems(
        "[credentials]\nmaster_key = \"too-short\"\nmaster_key_version = 0\n\
         [credentials.previous_master_keys]\nx = \"also-bad\"\n",
    );
    for field in [
        "credentials.master_key",
        "credentials.master_key_version",
        "credentials.previous_master_keys.x",
        "credentials:",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    assert!(!p.iter().any(|s| s.contains("too-short")), "{p:?}");
    let hex = "ab".repeat(32);
    let c = Config::from_toml(
        &format!(
            "[postgres]\nurl = \"postgres://u@h/d\"\n[credentials]\nmaster_key = \"${{MK}}\"\n\
             master_key_version = 2\n[credentials.previous_master_keys]\n1 = \"{hex}\"\n"
        ),
        &env(&[("MK", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")]),
    )
    .unwrap();
    let creds = c.credentials.unwrap();
    assert_eq!(creds.current.0, 2);
    assert_eq!(creds.previous[0].0, 1);
    assert!(!format!("{creds:?}").contains(&hex));
}

#[test]
fn prices_markup_and_clickhouse_are_validated() {
    let p = problems(
        r#"
[billing]
markup_percent = "lots"
[clickhouse]
url = "tcp://x"
[accounting]
max_rows = 0
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[providers.p.prices."m"]
input = "-1"
output = "0.5"
"#,
    );
    for expected in [
        "billing.markup_percent",
        "clickhouse.url",
        "accounting.max_rows",
        "providers.p.prices.\"m\".input",
    ] {
        assert!(
            p.iter().any(|s| s.starts_with(expected)),
            "{expected} missing from {p:?}"
        );
    }
    let ok = Config::from_toml(
        "[billing]\nmarkup_percent = \"20\"\n[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[providers.p.prices.\"m\"]\ninput = \"1\"\noutput = \"2\"\n",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(ok.markup_ppb, 200_000_000);
    let price = ok.providers["p"].prices["m"];
    assert_eq!(
        price.cached_input, price.input,
        "cached input defaults to the input price"
    );
}

#[test]
fn interpolation_fills_secrets_and_defaults() {
    let text = "a = \"${KEY}\"\nb = \"${MISSING:-fallback}\"\nc = \"$${KEY}\"";
    let out = interpolate(text, &env(&[("KEY", "s3cret")])).unwrap();
    assert_eq!(out, "a = \"s3cret\"\nb = \"fallback\"\nc = \"${KEY}\"");
}

#[test]
fn missing_variable_names_it_and_its_line() {
    let errs = interpolate("x = 1\ny = \"${NOPE}\"", &env(&[])).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].path, "line 2");
    assert!(errs.0[0].message.contains("NOPE"));
}

#[test]
fn secret_prints_as_stars() {
    let s = Secret::new("sk-live-123");
    assert_eq!(format!("{s:?}"), "***");
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("server.lisen"), "{p:?}");
}

#[test]
fn wrong_type_is_reported_with_its_path() {
    let p = problems("[providers.openai]\nkind = \"openai\"\nbase_url = 5\n");
    assert!(p[0].starts_with("providers.openai.base_url"), "{p:?}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let p = problems(
        r#"
[server]
listen = "nowhere"
request_timeout = "soon"

[nats]
namespace = "a.b"

[[keys]]
name = "short"
key = "abc"

[providers.openai]
kind = "cohere-ish"
base_url = "not a url"

[providers.vllm]
kind = "openai_compatible"
base_url = "http://127.0.0.1:8000/v1"

[models."m"]
targets = [{ provider = "nope", model = "x" }]

[models."empty"]
targets = []
"#,
    );
    let paths: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
    for expected in [
        "server.listen",
        "server.request_timeout",
        "nats.namespace",
        "keys[0].key",
        "providers.openai.kind",
        "providers.openai.base_url",
        "models.\"m\".targets[0].provider",
        "models.\"empty\".targets",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {p:?}");
    }
}

#[test]
fn colliding_route_tokens_are_refused() {
    let p = problems(
        r#"
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[models."gpt-4.1"]
targets = [{ provider = "p", model = "a" }]
[models."gpt-4_1"]
targets = [{ provider = "p", model = "b" }]
"#,
    );
    assert!(p.iter().any(|s| s.contains("same subject token")), "{p:?}");
}

#[test]
fn local_config_matches_the_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schemas/config.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let text = std::fs::read_to_string(repo_root().join("deploy/local/switchyard.toml")).unwrap();
    let doc: serde_json::Value = toml::from_str(&text).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let bad: serde_json::Value = serde_json::json!({"server": {"lisen": 1}});
    assert!(!validator.is_valid(&bad));
}

#[test]
fn comments_are_not_interpolated() {
    let text = "# api_key = \"${UNSET}\"\nk = \"a#b\" # ${ALSO_UNSET}\nv = \"${SET}\"\n";
    let out = interpolate(text, &env(&[("SET", "x")])).unwrap();
    assert_eq!(
        out,
        "# api_key = \"${UNSET}\"\nk = \"a#b\" # ${ALSO_UNSET}\nv = \"x\"\n"
    );
}

#[test]
fn presets_default_their_url_and_dialects_check_their_fields() {
    let c = Config::from_toml(
        "[providers.a]\nkind = \"anthropic\"\n[providers.g]\nkind = \"gemini\"\n[providers.d]\nkind = \"deepseek\"\n",
        &MapEnv::default(),
    )
    .unwrap();
    assert_eq!(
        c.providers["a"].base_url.as_str(),
        "https://api.anthropic.com/v1"
    );
    assert_eq!(c.providers["a"].api_version.as_deref(), Some("2023-06-01"));
    assert_eq!(c.providers["a"].default_max_tokens, 4096);
    assert_eq!(c.providers["g"].kind, crate::ProviderKind::Gemini);
    assert_eq!(c.providers["d"].kind, crate::ProviderKind::OpenAiCompatible);
    assert_eq!(
        c.providers["d"].base_url.as_str(),
        "https://api.deepseek.com/v1"
    );
    let p = problems("[providers.x]\nkind = \"openai_compatible\"\n");
    assert!(p[0].starts_with("providers.x.base_url"), "{p:?}");
    let p = problems(
        "[providers.x]\nkind = \"azure_openai\"\nbase_url = \"https://r.openai.azure.com\"\n",
    );
    assert!(p[0].starts_with("providers.x.api_version"), "{p:?}");
    let p = problems("[providers.x]\nkind = \"bard\"\n");
    assert!(p[0].contains("anthropic, gemini, cohere"), "{p:?}");
}

#[test]
fn resilience_settings_per_provider_model_and_router() {
    let text = r#"
[providers.p]
kind = "openai"
retries = 1
ttft_timeout = "2s"
max_queue = 50
[providers.a]
kind = "anthropic"
[models.m]
mid_stream = "error"
fallback_on_refusal = true
idle_timeout = "750ms"
targets = [{ provider = "p", model = "x" }, { provider = "a", model = "y" }]
[routers.auto]
fallback_on_refusal = true
ttft_timeout = "3s"
routes = [{ name = "all", targets = [{ provider = "p", model = "x" }] }]
[health]
error_rate = 0.4
window = 30
min_calls = 5
"#;
    let c = Config::from_toml(text, &env(&[])).unwrap();
    let p = &c.providers["p"];
    assert_eq!((p.retries, p.max_queue, p.prefill), (1, Some(50), false));
    assert_eq!(p.ttft_timeout, std::time::Duration::from_secs(2));
    assert!(c.providers["a"].prefill, "anthropic continues prefills");
    let m = &c.models["m"];
    assert_eq!(m.policy.mid_stream, sy_protocol::MidStream::Error);
    assert!(m.policy.fallback_on_refusal);
    assert_eq!(m.policy.watchdogs.idle_ms, Some(750));
    let r = &c.routers["auto"];
    assert!(r.policy.fallback_on_refusal);
    assert_eq!(r.policy.watchdogs.ttft_ms, Some(3000));
    assert_eq!((c.health.window, c.health.min_calls), (30, 5));
    let bad = problems(
        r#"
[providers.p]
kind = "openai"
retries = 11
[models.m]
mid_stream = "sometimes"
targets = [{ provider = "p", model = "x" }]
[health]
error_rate = 0
window = 65
"#,
    );
    for want in [
        "providers.p.retries",
        "models.\"m\".mid_stream",
        "health.error_rate",
        "health.window",
    ] {
        assert!(bad.iter().any(|p| p.starts_with(want)), "{want}: {bad:?}");
    }
}

#[test]
fn metrics_listen_is_an_address_and_its_token_is_long() {
    let c = Config::from_toml(
        "[metrics]\nlisten = \"127.0.0.1:9464\"\ntoken = \"0123456789abcdef\"\n",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        c.metrics.token.as_ref().map(|t| t.expose()),
        Some("0123456789abcdef")
    );
    let none = Config::from_toml("", &env(&[])).unwrap();
    assert!(none.metrics.listen.is_none() && none.metrics.token.is_none());
    let bad = problems("[metrics]\nlisten = \"localhost\"\ntoken = \"short\"\n");
    for want in ["metrics.listen", "metrics.token"] {
        assert!(bad.iter().any(|p| p.starts_with(want)), "{want}: {bad:?}");
    }
}

#[test]
fn tracing_and_log_settings_are_checked() {
    let c = Config::from_toml(
        "[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\nprotocol = \"http/json\"\nsample_ratio = 0.25\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.tracing.enabled, Some(true));
    assert_eq!(c.tracing.protocol.as_deref(), Some("http/json"));
    assert_eq!(c.tracing.sample_ratio, 0.25);
    assert!(!c.tracing.record_content);
    let viewer = Config::from_toml(
        "[tracing]\nviewer_url = \"http://127.0.0.1:16686/trace/{trace_id}\"\n",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(
        viewer.tracing.viewer_url.as_deref(),
        Some("http://127.0.0.1:16686/trace/{trace_id}")
    );
    assert!(c.log.json);
    assert_eq!(c.log.level.as_deref(), Some("debug"));
    let none = Config::from_toml("", &env(&[])).unwrap();
    assert_eq!(none.tracing, crate::TracingConfig::default());
    assert!(!none.log.json);
    let bad = problems(
        "[tracing]\nendpoint = \"localhost:4318\"\nprotocol = \"grpc\"\nsample_ratio = 1.5\nviewer_url = \"http://jaeger:16686/trace/\"\n[log]\nformat = \"xml\"\n",
    );
    for want in [
        "tracing.endpoint",
        "tracing.protocol",
        "tracing.sample_ratio",
        "tracing.viewer_url",
        "log.format",
    ] {
        assert!(bad.iter().any(|p| p.starts_with(want)), "{want}: {bad:?}");
    }
}

#[test]
fn batch_settings_and_their_defaults() {
    let text = r#"
[providers.p]
kind = "openai"
max_concurrency = 40
[providers.q]
kind = "openai"
batch_concurrency = 3
[batch]
max_lines = 10
price_multiplier = "0.25"
max_rate = 0
webhook_secret = "${HOOK_SECRET}"
webhook_allow = ["10.1.0.0/16", "127.0.0.1"]
max_running_per_key = 2
max_deliver = 4
"#;
    let c = Config::from_toml(text, &env(&[("HOOK_SECRET", "s3cret")])).unwrap();
    assert_eq!(
        c.providers["p"].batch_concurrency.get(),
        10,
        "a quarter of max_concurrency"
    );
    assert_eq!(c.providers["q"].batch_concurrency.get(), 3);
    assert_eq!(c.batch.max_lines, 10);
    assert_eq!(c.batch.price_multiplier_ppb, 250_000_000);
    assert_eq!(c.batch.max_rate, 0);
    assert_eq!(
        c.batch.webhook_allow,
        vec![
            "10.1.0.0/16".parse::<ipnet::IpNet>().unwrap(),
            "127.0.0.1/32".parse().unwrap()
        ],
        "a bare address is a network of one"
    );
    assert_eq!(c.batch.max_running_per_key, 2);
    assert_eq!(c.batch.max_deliver, 4);
    assert_eq!(
        c.batch.webhook_secret.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(
        c.batch.max_file_bytes,
        200 * 1024 * 1024,
        "OpenAI's limit by default"
    );
    let d = Config::from_toml("", &env(&[])).unwrap();
    assert_eq!((d.batch.window, d.batch.max_rate), (64, 100));
    assert_eq!(d.batch.price_multiplier_ppb, 500_000_000, "OpenAI's 50 %");
    assert!(
        d.batch.webhook_allow.is_empty(),
        "nothing internal by default"
    );
    assert_eq!((d.batch.max_running_per_key, d.batch.max_deliver), (4, 10));
    let bad = problems(
        "[batch]\nprice_multiplier = \"half\"\nwindow = 0\nwebhook_allow = [\"10.0.0.0/33\"]\nmax_running_per_key = 0\nmax_deliver = 0\n",
    );
    for want in [
        "batch.price_multiplier",
        "batch.window",
        "batch.webhook_allow[0]",
        "batch.max_running_per_key",
        "batch.max_deliver",
    ] {
        assert!(bad.iter().any(|p| p.starts_with(want)), "{want}: {bad:?}");
    }
}

#[test]
fn connection_and_body_limits_have_defaults_and_are_checked() {
    let base =
        "[providers.openai]\nkind = \"openai_compatible\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
    let c = Config::from_toml(base, &env(&[])).unwrap();
    let s = &c.server;
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.header_timeout, std::time::Duration::from_secs(30));
    assert_eq!(s.body_timeout, std::time::Duration::from_secs(10));
    assert_eq!(s.min_body_rate, 32 * 1024);
    assert_eq!(s.max_body_bytes_in_flight, 256 * 1024 * 1024);
    assert!(s.max_body_bytes_in_flight as u64 >= c.batch.max_file_bytes);
    let p = problems(&format!(
        "[server]\nmax_connections = 0\nheader_timeout = \"0s\"\nbody_timeout = \"0s\"\n\
         min_body_rate = 0\nmax_body_bytes = 2000000\nmax_body_bytes_in_flight = 1000000\n\n\
         [batch]\nmax_file_bytes = 1500000\n\n{base}"
    ));
    let paths: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
    for expected in [
        "server.max_connections",
        "server.header_timeout",
        "server.body_timeout",
        "server.min_body_rate",
        "server.max_body_bytes_in_flight",
        "batch.max_file_bytes",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {p:?}");
    }
}

#[test]
fn what_a_model_serves_is_one_of_the_known_apis() {
    let base = "[providers.openai]\nkind = \"openai\"\n";
    let p = problems(&format!(
        "{base}[providers.openai.models.\"a\"]\nserves = [\"chat\", \"telepathy\"]\n\
         [providers.openai.models.\"b\"]\nserves = []\n"
    ));
    assert!(
        p.iter()
            .any(|s| s.starts_with("providers.openai.models.\"a\".serves[1]")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("providers.openai.models.\"b\".serves")),
        "{p:?}"
    );
    let c = Config::from_toml(
        &format!("{base}[providers.openai.models.\"e\"]\nserves = [\"embeddings\"]\n"),
        &env(&[]),
    )
    .unwrap();
    let info = &c.providers["openai"].models["e"];
    assert_eq!(info.serves.as_deref(), Some(&["embeddings".to_owned()][..]));
}

#[test]
fn the_cache_needs_redis_known_models_and_bounded_settings() {
    let p = problems(
        "[cache]\nenabled = true\nttl = \"2d\"\nmax_ttl = \"1d\"\nmodels = [\"nope\"]\n\
         max_temperature = 3.0\nmax_entry_bytes = 0\nhit_multiplier = \"-1\"\n",
    );
    for field in [
        "cache.enabled",
        "cache.ttl",
        "cache.models.nope",
        "cache.max_temperature",
        "cache.max_entry_bytes",
        "cache.hit_multiplier",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    // Off (the default), nothing is checked and there is no cache.
    let c = Config::from_toml("[cache]\nmodels = [\"nope\"]\n", &env(&[])).unwrap();
    assert!(c.cache.is_none());
    let c = Config::from_toml(
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[cache]\nenabled = true\nhit_multiplier = \"0.25\"\n",
        &env(&[]),
    )
    .unwrap();
    let cache = c.cache.unwrap();
    assert_eq!(cache.hit_multiplier_ppb, 250_000_000);
    assert_eq!(cache.ttl, std::time::Duration::from_secs(3600));
    assert!(!cache.store_tool_calls && !cache.store_length && !cache.share_across_projects);
}

#[test]
fn rate_limits_need_redis_and_bounded_values() {
    let p = problems(
        "[limits]\nlease_seconds = 0\nreconcile_seconds = 0\nreserve_output_tokens = 0\n[limits.defaults.key]\nrpm = 0\ntpm = 5000000000\n\
         [[keys]]\nname = \"a\"\nkey = \"sk-aaaaaaaa\"\nlimits = { concurrency = 0 }\n",
    );
    for field in [
        "limits.lease_seconds",
        "limits.reconcile_seconds",
        "limits.reserve_output_tokens",
        "limits.defaults.key.rpm",
        "limits.defaults.key.tpm",
        "keys[0].limits.concurrency",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    let p = problems("[redis]\nurl = \"http://127.0.0.1:6379\"\n");
    assert!(p.iter().any(|s| s.starts_with("redis.url")), "{p:?}");
    let p = problems("[redis]\nurl = \"redis+unix://\"\n");
    assert!(p.iter().any(|s| s.starts_with("redis.url")), "{p:?}");
    for ok in [
        "redis+unix:///run/redis/redis.sock",
        "unix:///tmp/redis.sock?db=2",
    ] {
        let c = Config::from_toml(&format!("[redis]\nurl = \"{ok}\"\n"), &env(&[]));
        assert!(c.is_ok_and(|c| c.redis.is_some()), "{ok}");
    }
    // Limits anywhere without [redis] would not be enforced: refused.
    let p = problems("[[keys]]\nname = \"a\"\nkey = \"sk-aaaaaaaa\"\nlimits = { rpm = 5 }\n");
    assert!(p.iter().any(|s| s.contains("need [redis]")), "{p:?}");
    let c = Config::from_toml(
        "[redis]\nurl = \"redis://:${PW}@127.0.0.1:6379/2\"\n\
         [limits]\nreserve_output_tokens_by_model = { \"gpt-4o\" = 4096 }\n\
         [limits.defaults.org]\ntpm = 100000\n\
         [[keys]]\nname = \"a\"\nkey = \"sk-aaaaaaaa\"\nlimits = { rpm = 5 }\n",
        &env(&[("PW", "hunter2")]),
    )
    .unwrap();
    assert!(
        !format!("{:?}", c.redis).contains("hunter2"),
        "the URL is a secret"
    );
    assert_eq!(c.limits.lease, std::time::Duration::from_secs(30));
    assert_eq!(c.limits.reconcile, std::time::Duration::from_secs(30));
    assert_eq!(c.limits.reserve_output_for("gpt-4o"), 4096);
    assert_eq!(c.limits.reserve_output_for("other"), 1024);
    assert_eq!(c.limits.default_org.tpm, Some(100_000));
    assert_eq!(c.keys[0].limits.and_then(|l| l.rpm), Some(5));
}

#[test]
fn stripe_webhooks_need_a_secret_a_sane_tolerance_and_the_control_plane() {
    let p = problems("[billing.stripe]\nwebhook_secrets = []\ntolerance_seconds = 0\n");
    for field in [
        "billing.stripe.webhook_secrets",
        "billing.stripe.tolerance_seconds",
        "billing.stripe: needs [postgres] and [tenants]",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    let c = Config::from_toml(
        "[postgres]\nurl = \"postgres://u@127.0.0.1/s\"\n\
         [tenants]\nkey_pepper = \"0123456789abcdef0123456789abcdef\"\n\
         [billing]\nmarkup_percent = \"10\"\n\
         [billing.stripe]\nwebhook_secrets = [\"${OLD}\", \"whsec_new_secret_0001\"]\n",
        &env(&[("OLD", "whsec_old_secret_0001")]),
    )
    .unwrap();
    let stripe = c.billing.stripe.unwrap();
    assert_eq!(stripe.webhook_secrets.len(), 2);
    assert_eq!(stripe.webhook_secrets[0].expose(), "whsec_old_secret_0001");
    assert_eq!(stripe.tolerance, std::time::Duration::from_secs(300));
    assert!(
        !format!("{stripe:?}").contains("whsec"),
        "secrets are never printed"
    );
}

#[test]
fn stripe_top_ups_need_a_secret_key_and_http_urls() {
    let base = "[postgres]\nurl = \"postgres://u@127.0.0.1/s\"\n\
                [tenants]\nkey_pepper = \"0123456789abcdef0123456789abcdef\"\n\
                [billing.stripe]\nwebhook_secrets = [\"whsec_new_secret_0001\"]\n";
    let c = Config::from_toml(base, &env(&[])).unwrap();
    assert!(
        c.billing.stripe.unwrap().checkout.is_none(),
        "no key, no top-ups"
    );
    let c = Config::from_toml(
        &format!("{base}secret_key = \"${{KEY}}\"\nsuccess_url = \"https://acme.test/ok\"\n"),
        &env(&[("KEY", "sk_test_abc")]),
    )
    .unwrap();
    let stripe = c.billing.stripe.unwrap();
    let checkout = stripe.checkout.as_ref().unwrap();
    assert_eq!(checkout.api_base, "https://api.stripe.com");
    assert_eq!(checkout.secret_key.expose(), "sk_test_abc");
    assert_eq!(
        checkout.cancel_url, "https://acme.test/ok",
        "cancel defaults to success"
    );
    assert!(
        !format!("{stripe:?}").contains("sk_test_abc"),
        "never printed"
    );
    let p = problems(&format!(
        "{base}secret_key = \"sk_x\"\napi_base = \"ftp://stripe\"\ncancel_url = \"nowhere\"\n"
    ));
    for field in ["billing.stripe.api_base", "billing.stripe.cancel_url"] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
}

#[test]
fn yookassa_needs_a_shop_and_a_key_and_takes_notifications_from_its_ranges() {
    let base = "[postgres]\nurl = \"postgres://u@127.0.0.1/s\"\n\
                [tenants]\nkey_pepper = \"0123456789abcdef0123456789abcdef\"\n";
    let c = Config::from_toml(
        &format!(
            "{base}[billing.yookassa]\nshop_id = \"100500\"\nsecret_key = \"${{YK}}\"\n\
             [billing.exchange_rates]\nrub = \"0.0125\"\nkzt = \"0.002\"\n"
        ),
        &env(&[("YK", "live_secret_0001")]),
    )
    .unwrap();
    let y = c.billing.yookassa.as_ref().unwrap();
    assert_eq!(y.api_base, "https://api.yookassa.ru");
    assert_eq!(y.secret_key.expose(), "live_secret_0001");
    assert_eq!(
        y.notification_ips.len(),
        crate::YOOKASSA_NOTIFICATION_RANGES.len()
    );
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(
        y.notification_ips
            .iter()
            .any(|n| n.contains(&ip("77.75.156.35")))
    );
    assert!(
        !y.notification_ips
            .iter()
            .any(|n| n.contains(&ip("127.0.0.1")))
    );
    assert!(
        !format!("{y:?}").contains("live_secret_0001"),
        "never printed"
    );
    assert_eq!(c.billing.exchange_rates["rub"], 12_500_000);
    assert_eq!(c.billing.exchange_rates["kzt"], 2_000_000);

    let p = problems(
        "[billing.yookassa]\nshop_id = \"\"\nsecret_key = \"k\"\nreturn_url = \"mailto:x\"\n\
         notification_ips = [\"185.71.76.0/33\"]\ntrusted_proxies = [\"proxy\"]\n\
         [billing.exchange_rates]\nRUB = \"0.01\"\nusd = \"1\"\neur = \"-1\"\njpy = \"0\"\n",
    );
    for field in [
        "billing.yookassa: needs [postgres] and [tenants]",
        "billing.yookassa.shop_id",
        "billing.yookassa.return_url",
        "billing.yookassa.notification_ips[0]",
        "billing.yookassa.trusted_proxies[0]",
        "billing.exchange_rates.RUB",
        "billing.exchange_rates.usd",
        "billing.exchange_rates.eur",
        "billing.exchange_rates.jpy",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
    let p = problems(&format!(
        "{base}[billing.yookassa]\nshop_id = \"1\"\nsecret_key = \"k\"\n\
         notification_ips = [\"185.71.76.0/27\", \"0.0.0.0/0\"]\ntrusted_proxies = [\"::/0\"]\n"
    ));
    for field in [
        "billing.yookassa.notification_ips[1]",
        "billing.yookassa.trusted_proxies[0]",
    ] {
        assert!(p.iter().any(|s| s.starts_with(field)), "{field}: {p:?}");
    }
}

#[test]
fn a_route_may_require_tags_but_the_last_may_not_and_keys_are_checked() {
    let ok = r#"
[providers.p]
kind = "openai"
[[routers.auto.routes]]
name = "free"
tags = { tier = "free", "exp.v2" = "b" }
targets = [{ provider = "p", model = "x" }]
[[routers.auto.routes]]
name = "all"
targets = [{ provider = "p", model = "y" }]
"#;
    let c = Config::from_toml(ok, &env(&[])).unwrap();
    let free = &c.routers["auto"].routes[0];
    let tags = |t: &[(&str, &str)]| -> Vec<(String, String)> {
        t.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert!(free.matches(
        "chat",
        Some("code"),
        None,
        &tags(&[("exp.v2", "b"), ("tier", "free"), ("x", "y")])
    ));
    assert!(!free.matches("chat", Some("code"), None, &tags(&[("tier", "free")])));
    assert!(!free.matches("chat", Some("code"), None, &[]));
    // Routes without kinds take chat requests only.
    assert!(!free.matches(
        "images",
        None,
        None,
        &tags(&[("exp.v2", "b"), ("tier", "free")])
    ));
    let bad = problems(
        r#"
[providers.p]
kind = "openai"
[[routers.auto.routes]]
name = "odd"
tags = { "bad key" = "x" }
targets = [{ provider = "p", model = "x" }]
[[routers.auto.routes]]
name = "last"
tags = { tier = "free" }
targets = [{ provider = "p", model = "y" }]
"#,
    );
    let all = bad.join("\n");
    assert!(all.contains("tags.bad key"), "{all}");
    assert!(all.contains("no tags"), "{all}");
}
