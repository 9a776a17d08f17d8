use std::collections::HashMap;
use std::path::Path;

use super::*;

fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("igw-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml_text).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = Config::load_with_env(Some(&path), &|k| env.get(k).cloned());
    std::fs::remove_dir_all(&dir).ok();
    r
}

#[test]
fn defaults_include_every_builtin_provider() {
    let cfg = load("", &[]).unwrap();
    assert_eq!(cfg.server.port, 8080);
    assert_eq!(cfg.server.max_request_body_size, 10 * 1024 * 1024);
    for id in [
        "openai",
        "anthropic",
        "groq",
        "cohere",
        "ollama",
        "cloudflare",
        "deepseek",
        "google",
        "mistral",
    ] {
        assert!(cfg.providers.contains_key(id), "{id}");
        assert!(!cfg.providers[id].configured, "{id}");
    }
    let a = &cfg.providers["anthropic"];
    assert_eq!(a.auth_style(), AuthStyle::Header("x-api-key".into()));
    assert_eq!(a.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        cfg.providers["cohere"].chat_path.as_deref(),
        Some("/v2/chat")
    );
    assert_eq!(cfg.providers["cohere"].dialect.as_deref(), Some("cohere"));
    assert_eq!(
        cfg.providers["anthropic"].chat_path.as_deref(),
        Some("/messages")
    );
    assert_eq!(
        cfg.providers["google"].url(),
        "https://generativelanguage.googleapis.com/v1beta"
    );
    assert_eq!(
        cfg.providers["google"].auth_style(),
        AuthStyle::Header("x-goog-api-key".into())
    );
    assert_eq!(cfg.providers["openai"].dialect.as_deref(), Some("openai"));
    assert_eq!(cfg.providers["ollama"].auth_style(), AuthStyle::None);
}

#[test]
fn env_overrides_toml() {
    let cfg = load(
        "[server]\nport = 9000\nread_timeout = \"10s\"\n[providers.openai]\napi_key = \"from-toml\"\n",
        &[("SERVER_PORT", "9100"), ("OPENAI_API_KEY", "from-env"), ("GROQ_API_URL", "http://127.0.0.1:1/v1/"),
          ("ALLOWED_MODELS", "a, b ,"), ("CLIENT_TIMEOUT", "2m"), ("MISTRAL_ENABLED", "false")],
    )
    .unwrap();
    assert_eq!(cfg.server.port, 9100);
    assert_eq!(cfg.server.read_timeout.get(), Duration::from_secs(10));
    assert_eq!(
        cfg.providers["openai"].api_key.as_ref().unwrap().expose(),
        "from-env"
    );
    assert_eq!(cfg.providers["groq"].url(), "http://127.0.0.1:1/v1");
    assert!(cfg.providers["groq"].configured);
    assert_eq!(cfg.models.allowed, vec!["a", "b"]);
    assert_eq!(
        cfg.client.first_byte_timeout.get(),
        Duration::from_secs(120)
    );
    assert!(!cfg.providers.contains_key("mistral"));
}

#[test]
fn both_enable_spellings() {
    let e: HashMap<&str, &str> = [("X_ENABLE", "true"), ("Y_ENABLED", "0")].into();
    let g = |k: &str| e.get(k).map(|v| v.to_string());
    assert_eq!(env::flag(&g, "X").unwrap(), Some(true));
    assert_eq!(env::flag(&g, "Y").unwrap(), Some(false));
    assert_eq!(env::flag(&g, "Z").unwrap(), None);
    let bad: HashMap<&str, &str> = [("X_ENABLE", "maybe")].into();
    let g = |k: &str| bad.get(k).map(|v| v.to_string());
    assert!(env::flag(&g, "X").unwrap_err().0.contains("X_ENABLE"));
}

#[test]
fn errors_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[server]\nprot = 1\n", &[], "prot"),
        ("[server]\nread_timeout = 30\n", &[], "read_timeout"),
        ("[server]\nread_timeout = \"soon\"\n", &[], "read_timeout"),
        ("", &[("SERVER_PORT", "http")], "SERVER_PORT"),
        ("", &[("SERVER_READ_TIMEOUT", "30")], "SERVER_READ_TIMEOUT"),
        (
            "[providers.vllm]\nauth = \"none\"\n",
            &[],
            "providers.vllm.url",
        ),
        (
            "[providers.vllm]\nurl = \"ftp://x\"\n",
            &[],
            "providers.vllm.url",
        ),
        (
            "[providers.openai]\nurl = \"https://x\"\ntypo = 1\n",
            &[],
            "typo",
        ),
        (
            "[aliases.fast]\ntarget = \"nope/model\"\n",
            &[],
            "aliases.fast.target",
        ),
        (
            "[aliases.fast]\ntarget = \"openai/gpt-4o\"\n[aliases.fast.defaults]\nmodel = \"x\"\n",
            &[],
            "aliases.fast.defaults.model",
        ),
        (
            "",
            &[("CLIENT_TLS_MIN_VERSION", "TLS13")],
            "CLIENT_TLS_MIN_VERSION",
        ),
        ("", &[("ENVIRONMENT", "staging")], "ENVIRONMENT"),
        ("", &[("CLIENT_TIMEOUT", "0")], "CLIENT_TIMEOUT"),
        (
            "[client]\nstream_idle_timeout = \"0s\"\n",
            &[],
            "stream_idle_timeout",
        ),
    ];
    for (toml_text, env, key) in cases {
        let err = load(toml_text, env).expect_err(key).0;
        assert!(err.contains(key), "error {err:?} should name {key}");
    }
}

#[test]
fn custom_provider_and_key_file() {
    let dir = std::env::temp_dir().join(format!("igw-key-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "sk-file\n").unwrap();
    let cfg = load(
        &format!(
            "[providers.my-vllm]\nurl = \"http://10.0.0.1:8000/v1\"\nauth = \"api-key\"\napi_key_file = {:?}\n\
             query = {{ api-version = \"2024-02-01\" }}\n[aliases.fast]\ntarget = \"my-vllm/llama\"\n\
             system_prompt_prefix = \"Be brief.\"\n[aliases.fast.defaults]\ntemperature = 0.2\n",
            key.display().to_string()
        ),
        &[],
    )
    .unwrap();
    let p = &cfg.providers["my-vllm"];
    assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-file");
    assert_eq!(p.auth_style(), AuthStyle::Header("api-key".into()));
    assert_eq!(p.chat_path.as_deref(), Some("/chat/completions"));
    assert!(p.configured);
    assert_eq!(cfg.aliases["fast"].defaults["temperature"], 0.2);
    // Secrets never show in debug output.
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("sk-file"), "{dbg}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn shipped_config_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/gateway.toml");
    Config::load_with_env(Some(&path), &|_| None).unwrap();
}

#[test]
fn dialects_switch_to_compatible_endpoints() {
    let cfg = load(
        "[providers.cohere]\ndialect = \"openai\"\n",
        &[("GOOGLE_DIALECT", "openai")],
    )
    .unwrap();
    let c = &cfg.providers["cohere"];
    assert_eq!(
        c.chat_path.as_deref(),
        Some("/compatibility/v1/chat/completions")
    );
    let g = &cfg.providers["google"];
    assert_eq!(
        g.url(),
        "https://generativelanguage.googleapis.com/v1beta/openai"
    );
    assert_eq!(g.auth_style(), AuthStyle::Bearer);
    assert_eq!(g.chat_path.as_deref(), Some("/chat/completions"));
    // A Go-era GOOGLE_API_URL pointing at the compatible endpoint keeps working.
    let cfg = load(
        "",
        &[(
            "GOOGLE_API_URL",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
        )],
    )
    .unwrap();
    assert_eq!(cfg.providers["google"].dialect.as_deref(), Some("openai"));
    // Custom providers may speak a native dialect.
    let cfg = load("[providers.claude-proxy]\nurl = \"http://10.0.0.1/v1\"\ndialect = \"anthropic\"\nauth = \"x-api-key\"\n", &[]).unwrap();
    assert_eq!(
        cfg.providers["claude-proxy"].chat_path.as_deref(),
        Some("/messages")
    );
    for (toml_text, env, key) in [
        (
            "[providers.groq]\ndialect = \"anthropic\"\n",
            vec![],
            "providers.groq.dialect",
        ),
        (
            "",
            vec![("ANTHROPIC_DIALECT", "klingon")],
            "ANTHROPIC_DIALECT",
        ),
        (
            "[providers.google]\ndialect = \"cohere\"\n",
            vec![],
            "providers.google.dialect",
        ),
    ] {
        let err = load(toml_text, &env).unwrap_err().0;
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn mcp_from_env_and_toml() {
    let cfg = load(
        r#"
[mcp]
enable = false
[[mcp.servers]]
name = "files"
command = "npx"
args = ["-y", "server"]
[[mcp.servers]]
url = "http://a:1/mcp"
bearer_token = "tok"
timeout = "30s"
"#,
        &[
            ("MCP_ENABLE", "true"),
            ("MCP_EXPOSE", "true"),
            (
                "MCP_SERVERS",
                "http://a:1/mcp, http://b:2/mcp, http://u:pw@b:2/other",
            ),
            ("MCP_REQUEST_TIMEOUT", "2s"),
            ("MCP_MAX_ITERATIONS", "4"),
            ("MCP_ENABLE_RECONNECT", "false"),
            ("MCP_POLLING_ENABLE", "false"),
            ("MCP_EXCLUDE_TOOLS", "rm,drop"),
        ],
    )
    .unwrap();
    let m = &cfg.mcp;
    assert!(m.enable && m.expose && !m.enable_reconnect && !m.polling_enable);
    assert_eq!(m.request_timeout.get(), Duration::from_secs(2));
    assert_eq!(m.max_iterations, 4);
    assert_eq!(m.exclude_tools, ["rm", "drop"]);
    // TOML servers first, then MCP_SERVERS (a URL already listed is not added twice).
    let names: Vec<String> = m.servers.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, ["files", "a:1", "b:2", "b:2-2"]);
    assert_eq!(m.servers[1].timeout.unwrap().get(), Duration::from_secs(30));
    // The token never prints.
    assert!(!format!("{:?}", m.servers[1]).contains("tok\""));
    assert!(format!("{:?}", m.servers[1]).contains("<redacted>"));
}

#[test]
fn mcp_rejects_bad_servers_and_values() {
    for (toml, needle) in [
        ("[[mcp.servers]]\nname = \"x\"\n", "needs url"),
        (
            "[[mcp.servers]]\nurl = \"http://a/mcp\"\ncommand = \"x\"\n",
            "not both",
        ),
        (
            "[[mcp.servers]]\nurl = \"ftp://a/mcp\"\n",
            "not an http(s) URL",
        ),
        (
            "[[mcp.servers]]\nname = \"x\"\nurl = \"http://a/mcp\"\n[[mcp.servers]]\nname = \"x\"\nurl = \"http://b/mcp\"\n",
            "two MCP servers are named",
        ),
        ("[mcp]\nmax_iterations = 0\n", "at least 1"),
        ("[mcp]\nrequest_timeout = \"0\"\n", "greater than 0"),
        ("[mcp]\nservers = []\nsurprise = 1\n", "unknown field"),
    ] {
        let e = load(toml, &[]).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml:?}: {e}");
    }
    let e = load("", &[("MCP_ENABLE", "maybe")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("MCP_ENABLE"), "{e}");
}

#[test]
fn auth_and_limits_validation() {
    let h = "sha256:".to_string() + &"ab".repeat(32);
    let ok = format!(
        "[[keys]]\nname = \"a\"\nhash = \"{h}\"\nrpm = 5\nmodels = [\"openai/*\", \"smart\"]\nexpires = \"2030-01-01T00:00:00Z\"\n"
    );
    let cfg = load(
        &ok,
        &[
            ("REDIS_URL", "redis://u:secretpw@r:6379/0"),
            ("LIMITS_FAILURE_MODE", "fail_closed"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.keys[0].limits.rpm, Some(5));
    assert_eq!(cfg.limits.failure_mode, auth::FailureMode::FailClosed);
    assert!(!format!("{:?}", cfg.limits).contains("secretpw"));
    // The built-in model table is there.
    assert!(cfg
        .model_table
        .find("openai", "gpt-4o")
        .is_some_and(|e| e.priced()));
    for (toml, env, needle) in [
        (
            "[[keys]]\nname = \"a\"\nhash = \"abc\"\n".to_string(),
            vec![],
            "sha256:<64 hex digits>",
        ),
        (
            format!("{ok}{}", ok.replace("name = \"a\"", "name = \"b\"")),
            vec![],
            "same hash",
        ),
        (format!("{ok}{ok}"), vec![], "not unique"),
        (
            ok.replace("2030-01-01T00:00:00Z", "soon"),
            vec![],
            "RFC 3339",
        ),
        (ok.replace("\"smart\"", "\"open*\""), vec![], "provider/*"),
        (
            "[auth]\nenable = true\n".into(),
            vec![],
            "needs [[keys]], auth.oidc_issuer, or a store",
        ),
        (
            String::new(),
            vec![("DATABASE_URL", "mysql://u:pw@h/db")],
            "sqlite://path or postgres",
        ),
        (
            String::new(),
            vec![("ADMIN_API_KEY", "short")],
            "at least 16",
        ),
        (
            String::new(),
            vec![("AUTH_OIDC_ISSUER", "https://idp")],
            "go together",
        ),
        (
            "[prices]\n\"m\" = { input = 1.0, output = 1.0 }\n".into(),
            vec![],
            "provider/model",
        ),
        (
            "[auth]\ndefault_tier = \"gold\"\n".into(),
            vec![],
            "not in auth.tiers",
        ),
    ] {
        let e = load(&toml, &env).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml:?}: {e}");
    }
}

#[test]
fn stream_usage_defaults_and_env_without_configuring() {
    let cfg = load("", &[("GROQ_STREAM_USAGE", "false")]).unwrap();
    assert_eq!(cfg.providers["mistral"].stream_usage, Some(false));
    assert_eq!(cfg.providers["groq"].stream_usage, Some(false));
    assert!(
        !cfg.providers["groq"].configured,
        "a switch is not a configuration"
    );
    assert_eq!(cfg.providers["openai"].stream_usage, None);
    let cfg = load("", &[("MISTRAL_STREAM_USAGE", "true")]).unwrap();
    assert_eq!(cfg.providers["mistral"].stream_usage, Some(true));
}

#[test]
fn responses_settings_and_the_responses_api_switch() {
    let cfg = load("", &[]).unwrap();
    assert_eq!(cfg.responses.max_entries, 10_000);
    assert_eq!(
        cfg.responses.ttl.get(),
        std::time::Duration::from_secs(86_400)
    );
    assert_eq!(
        cfg.providers["openai"].responses_api.as_deref(),
        Some("native")
    );
    assert_eq!(cfg.providers["groq"].responses_api.as_deref(), Some("chat"));
    let cfg = load(
        "[responses]\nmax_entries = 5\nttl = \"1h\"\n[providers.vllm]\nurl = \"http://h/v1\"\nresponses_api = \"native\"\n",
        &[("GROQ_RESPONSES_API", "native"), ("RESPONSES_MAX_BYTES", "1024")],
    )
    .unwrap();
    assert_eq!(cfg.responses.max_entries, 5);
    assert_eq!(cfg.responses.max_bytes, 1024);
    assert_eq!(
        cfg.providers["vllm"].responses_api.as_deref(),
        Some("native")
    );
    assert_eq!(
        cfg.providers["groq"].responses_api.as_deref(),
        Some("native")
    );
    let e = load("", &[("OPENAI_RESPONSES_API", "yes")]).unwrap_err();
    assert!(e.0.contains("OPENAI_RESPONSES_API"), "{e:?}");
    let key = "ab".repeat(32);
    assert!(load("", &[("RESPONSES_ENCRYPTION_KEY", key.as_str())]).is_ok());
    let e = load("", &[("RESPONSES_ENCRYPTION_KEY", "short")]).unwrap_err();
    assert!(e.0.contains("RESPONSES_ENCRYPTION_KEY"), "{e:?}");
    assert!(
        !format!("{e:?}").contains("short"),
        "the key is never printed"
    );
}

#[test]
fn store_and_admin_settings() {
    // AUTH_ENABLE without keys is valid when keys come from the admin API.
    let cfg = load(
        "[auth]\nenable = true\n",
        &[
            ("DATABASE_URL", "sqlite://igw.db"),
            ("ADMIN_API_KEY", "admin-key-0123456789"),
        ],
    )
    .unwrap();
    assert!(cfg.control_plane());
    assert_eq!(cfg.admin.key(), Some("admin-key-0123456789"));
    assert!(!format!("{:?}", cfg.admin).contains("admin-key-0123456789"));
    // The key from a file (trailing newline ignored); an explicit key wins.
    let f = std::env::temp_dir().join(format!("igw-admin-{}", uuid::Uuid::new_v4()));
    std::fs::write(&f, "file-admin-key-0123456789\n").unwrap();
    let path = f.to_string_lossy().to_string();
    let cfg = load("", &[("ADMIN_API_KEY_FILE", path.as_str())]).unwrap();
    assert_eq!(cfg.admin.key(), Some("file-admin-key-0123456789"));
    assert!(!cfg.control_plane(), "no store");
    let _ = std::fs::remove_file(f);
    let e = load(
        "",
        &[
            ("DATABASE_URL", "postgres://u:hunter2hunter2@h/db"),
            ("ADMIN_API_KEY", "x"),
        ],
    )
    .unwrap_err();
    assert!(!e.0.contains("hunter2"), "{e:?}");
    // An OIDC admin claim makes the admin API without a key, and needs an issuer.
    let oidc = [
        ("AUTH_OIDC_ISSUER", "https://issuer.example"),
        ("AUTH_OIDC_CLIENT_ID", "gateway"),
        ("ADMIN_OIDC_CLAIM", "groups=igw-admins"),
    ];
    let cfg = load("", &oidc).unwrap();
    assert!(cfg.admin_api() && cfg.admin.key().is_none());
    let e = load("", &[("ADMIN_OIDC_CLAIM", "groups=igw-admins")]).unwrap_err();
    assert!(e.0.contains("auth.oidc_issuer"), "{e:?}");
    let e = load("", &[oidc[0], oidc[1], ("ADMIN_OIDC_CLAIM", "groups")]).unwrap_err();
    assert!(e.0.contains("claim=value"), "{e:?}");
    // The request log's settings.
    let cfg = load(
        "[store]\nrequest_log_retention = \"2d\"\n",
        &[("STORE_LOG_BODIES", "true")],
    )
    .unwrap();
    assert_eq!(cfg.store.request_log_retention.get().as_secs(), 2 * 86400);
    assert!(cfg.store.log_bodies);
    let cfg = load("", &[("STORE_REQUEST_LOG_RETENTION", "0s")]).unwrap();
    assert!(cfg.store.request_log_retention.get().is_zero());
    assert_eq!(
        load("", &[])
            .unwrap()
            .store
            .request_log_retention
            .get()
            .as_secs(),
        7 * 86400
    );
}

#[test]
fn a2a_settings() {
    let cfg = load(
        "[a2a]\nclient_timeout = \"5s\"\n[[a2a.agents]]\nurl = \"https://agents.example.com/travel/\"\nname = \"travel\"\ninclude_skills = [\"book\"]\n",
        &[
            ("A2A_ENABLE", "true"),
            ("A2A_EXPOSE", "true"),
            ("A2A_AGENTS", "http://a:9999,https://agents.example.com/travel"),
        ],
    )
    .unwrap();
    assert!(cfg.a2a.enable && cfg.a2a.expose);
    assert_eq!(cfg.a2a.client_timeout.get().as_secs(), 5);
    let urls: Vec<&str> = cfg.a2a.agents.iter().map(|a| a.url.as_str()).collect();
    assert_eq!(
        urls,
        ["https://agents.example.com/travel/", "http://a:9999"]
    );
    assert_eq!(
        load("", &[]).unwrap().a2a.client_timeout.get().as_secs(),
        30
    );
    let e = load("", &[("A2A_AGENTS", "ftp://x")]).unwrap_err();
    assert!(e.0.contains("A2A_AGENTS"), "{e:?}");
    let e = load("", &[("A2A_CLIENT_TIMEOUT", "0s")]).unwrap_err();
    assert!(e.0.contains("A2A_CLIENT_TIMEOUT"), "{e:?}");
}

#[test]
fn cache_settings() {
    let cfg = load(
        "[cache]\nmax_bytes = 1048576\n",
        &[
            ("CACHE_ENABLE", "true"),
            ("CACHE_TTL", "10m"),
            ("CACHE_SCOPE", "principal"),
            ("CACHE_REDIS_URL", "redis://127.0.0.1:6379"),
        ],
    )
    .unwrap();
    assert!(cfg.cache.enable);
    assert_eq!(cfg.cache.ttl.get().as_secs(), 600);
    assert_eq!(cfg.cache.max_bytes, 1 << 20);
    assert_eq!(cfg.cache.scope, super::cache::CacheScope::Principal);
    assert!(cfg.cache.redis_url.is_some());
    let e = load("", &[("CACHE_SCOPE", "everyone")]).unwrap_err();
    assert!(e.0.contains("CACHE_SCOPE"), "{}", e.0);
    let e = load("[cache]\nenable = true\nttl = \"0s\"\n", &[]).unwrap_err();
    assert!(e.0.contains("cache.ttl"), "{}", e.0);
    assert!(
        load("[cache]\nsize = 1\n", &[]).is_err(),
        "unknown keys refused"
    );
}

#[test]
fn guardrail_settings() {
    let cfg = load(
        "[guardrails]\nredact_pii = true\n[guardrails.profiles.strict]\ndeny_patterns = [\"x\"]\n[[keys]]\nname = \"k\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nguardrails = \"strict\"\n",
        &[
            ("GUARDRAILS_DENY_PATTERNS", r#"["a+", "b"]"#),
            ("GUARDRAILS_OUTPUT_DENY_PATTERNS", "[0-9]{4} secret"),
            ("GUARDRAILS_WEBHOOK_FAILURE_MODE", "fail_open"),
        ],
    )
    .unwrap();
    let g = &cfg.guardrails;
    assert_eq!(g.deny_patterns, ["a+", "b"]);
    assert_eq!(
        g.output_deny_patterns,
        ["[0-9]{4} secret"],
        "one pattern when not JSON"
    );
    assert!(g.redact_pii && g.profiles.contains_key("strict"));
    assert_eq!(
        g.webhook_failure_mode,
        super::guardrails::WebhookFailureMode::FailOpen
    );
    // A bad regex, an unknown profile, a bad failure mode: refused, naming the setting.
    let e = load("[guardrails]\ndeny_patterns = [\"(\"]\n", &[]).unwrap_err();
    assert!(e.0.contains("guardrails.deny_patterns"), "{}", e.0);
    let e = load(
        "[[keys]]\nname = \"k\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nguardrails = \"nope\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.0.contains("guardrails.profiles.nope"), "{}", e.0);
    let e = load("", &[("GUARDRAILS_WEBHOOK_FAILURE_MODE", "maybe")]).unwrap_err();
    assert!(e.0.contains("GUARDRAILS_WEBHOOK_FAILURE_MODE"), "{}", e.0);
}

#[test]
fn otel_settings() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.otel.traces_url(), None, "off without an endpoint");
    let c = load(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250ms"),
            ("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=a%20b"),
        ],
    )
    .unwrap();
    let o = &c.otel;
    assert_eq!(
        o.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        o.exporter_otlp_protocol,
        super::otel::OtlpProtocol::HttpJson
    );
    assert_eq!(
        o.exporter_otlp_timeout.get(),
        std::time::Duration::from_millis(2500)
    );
    assert_eq!(
        o.bsp_schedule_delay.get(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(o.traces_sampler, "parentbased_traceidratio");
    assert_eq!(o.traces_sampler_arg, Some(0.25));
    assert!(o.instrumentation_genai_capture_message_content);
    let headers =
        super::otel::OtelConfig::pairs(o.exporter_otlp_headers.as_ref().unwrap().expose());
    assert_eq!(headers, [("x-token".to_string(), "a b".to_string())]);
    // The traces endpoint is used as is; OTEL_SDK_DISABLED wins.
    let c = load(
        "[otel]\nexporter_otlp_traces_endpoint = \"https://x.example/otlp/traces\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.otel.traces_url().as_deref(),
        Some("https://x.example/otlp/traces")
    );
    let c = load(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    )
    .unwrap();
    assert_eq!(c.otel.traces_url(), None);
    for (env, named) in [
        (("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), "grpc"),
        (("OTEL_TRACES_SAMPLER", "sometimes"), "OTEL_TRACES_SAMPLER"),
        (
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ] {
        let e = load("", &[env]).unwrap_err();
        assert!(e.0.contains(named), "{env:?}: {}", e.0);
    }
}
