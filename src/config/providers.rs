//! Provider configuration: the built-in table (the Go gateway's defaults) and custom providers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use filters::dialects::Dialect;

use super::{ConfigError, Secret};

/// How the provider's API key is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `<header>: <key>` (e.g. `x-api-key`, Azure's `api-key`, `x-goog-api-key`)
    Header(String),
    /// No credentials (local servers).
    None,
}

/// One provider as written in TOML (`[providers.<name>]`). For built-in providers every field is
/// optional and falls back to the built-in default; custom providers need at least `url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL; endpoint paths are appended to it.
    pub url: Option<String>,
    pub api_key: Option<Secret>,
    /// File holding the API key (e.g. a mounted secret); trailing whitespace is ignored.
    pub api_key_file: Option<PathBuf>,
    /// `bearer`, `none`, `header` (with `auth_header`), or a header name such as `x-api-key`.
    pub auth: Option<String>,
    pub auth_header: Option<String>,
    /// Extra headers sent with every request (e.g. `anthropic-version`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters sent with every request (e.g. Azure's `api-version`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub chat_path: Option<String>,
    pub completions_path: Option<String>,
    pub embeddings_path: Option<String>,
    pub models_path: Option<String>,
    /// API spoken on the chat endpoint: `openai`, `anthropic`, `google` or `cohere`.
    /// Built-in anthropic, google and cohere default to their native API.
    pub dialect: Option<String>,
    /// `max_tokens` sent to APIs that require one (Anthropic) when the client sets none.
    pub default_max_tokens: Option<u64>,
    /// OpenAI dialect: the server accepts `stream_options` (the gateway asks for the usage
    /// chunk). Default on; off for `mistral`, whose API refuses the field (422
    /// `extra_forbidden`) and reports usage in its last chunk anyway. Off: `stream_options` is
    /// never sent.
    pub stream_usage: Option<bool>,
    /// How `/v1/responses` reaches this provider: `native` (an OpenAI Responses server: the
    /// request is relayed on `responses_path`) or `chat` (translated to its chat API). Default
    /// `native` for the built-in `openai`, else `chat`.
    pub responses_api: Option<String>,
    /// Path of the Responses endpoint under `url` (default `/responses`).
    pub responses_path: Option<String>,
    /// `false` removes the provider entirely.
    pub enabled: Option<bool>,
    /// Several backends serving this provider (see README "Resilience"); `url` stays the
    /// provider's identity and is used for `/proxy` and model lists.
    #[serde(default)]
    pub backends: Vec<super::resilience::BackendConfig>,
    /// `round_robin` (weighted, default) or `least_outstanding`.
    #[serde(default)]
    pub balance: super::resilience::Balance,
    /// Active health checks (off unless set).
    pub health_check: Option<super::resilience::HealthCheckConfig>,
    /// Passive ejection; default on for two or more backends.
    pub circuit_breaker: Option<super::resilience::BreakerConfig>,
    /// Overrides of `client.*` timeouts for this provider.
    #[serde(default)]
    pub timeouts: super::resilience::TimeoutsConfig,
    /// Overrides the top-level `[retry]`.
    pub retry: Option<super::resilience::RetryConfig>,
    /// Requests in flight to this provider at once (0 or unset = unlimited).
    #[serde(default)]
    pub max_concurrent: usize,
    /// Requests that may wait beyond `max_concurrent` (default 16); more get 503 at once.
    pub max_queue: Option<usize>,
    /// Longest wait in that queue before 503 (default 1s).
    pub queue_timeout: Option<super::HumanDuration>,
    /// Set when the user configured this provider (TOML section or environment variable);
    /// only configured providers are listed by `GET /v1/models`.
    #[serde(skip)]
    pub configured: bool,
}

impl ProviderConfig {
    pub fn auth_style(&self) -> AuthStyle {
        match self.auth.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("bearer") => AuthStyle::Bearer,
            Some("none") => AuthStyle::None,
            Some("header") => AuthStyle::Header(
                self.auth_header
                    .clone()
                    .unwrap_or_else(|| "x-api-key".into())
                    .to_ascii_lowercase(),
            ),
            Some(name) => AuthStyle::Header(name.to_string()),
        }
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or_default()
    }

    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    pub(crate) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        super::resilience::validate_pool(self, name)?;
        let url = self.url();
        if url.is_empty() {
            return Err(ConfigError(format!(
                "providers.{name}.url: required for a custom provider"
            )));
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                ConfigError(format!(
                    "providers.{name}.url ({}_API_URL): {url:?} must start with http:// or https://",
                    env_prefix(name)
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ConfigError(format!(
                "providers.{name}.url: {url:?} has no host"
            )));
        }
        if let Some(r) = &self.responses_api {
            if r != "native" && r != "chat" {
                return Err(ConfigError(format!(
                    "providers.{name}.responses_api ({}_RESPONSES_API): {r:?} is not native or chat",
                    env_prefix(name)
                )));
            }
        }
        if let Some(a) = &self.auth {
            let ok = matches!(
                a.to_ascii_lowercase().as_str(),
                "bearer" | "none" | "header"
            ) || is_token(a);
            if !ok {
                return Err(ConfigError(format!(
                    "providers.{name}.auth: {a:?} is not bearer, none, header or a header name"
                )));
            }
        }
        for (h, v) in &self.headers {
            if !is_token(h) || v.contains(['\r', '\n']) {
                return Err(ConfigError(format!(
                    "providers.{name}.headers.{h}: invalid header"
                )));
            }
        }
        for (k, p) in [
            (
                "chat_path",
                &self.chat_path.as_ref().filter(|p| !p.is_empty()).cloned(),
            ),
            ("completions_path", &self.completions_path),
            ("embeddings_path", &self.embeddings_path),
            ("models_path", &self.models_path),
        ] {
            if let Some(p) = p.as_ref() {
                if !p.starts_with('/') {
                    return Err(ConfigError(format!(
                        "providers.{name}.{k}: {p:?} must start with /"
                    )));
                }
            }
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError(format!(
                "providers.{name}: a provider name may only hold letters, digits, - and _"
            )));
        }
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `my-vllm` -> `MY_VLLM` (the prefix of a provider's environment variables).
pub fn env_prefix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// How a provider is reached in one dialect.
struct Endpoints {
    url: &'static str,
    auth: &'static str,
    chat: &'static str,
    completions: &'static str,
    embeddings: &'static str,
    models: &'static str,
}

const fn openai_at(
    url: &'static str,
    auth: &'static str,
    prefix_chat: &'static str,
    prefix_completions: &'static str,
    prefix_embeddings: &'static str,
    models: &'static str,
) -> Endpoints {
    Endpoints {
        url,
        auth,
        chat: prefix_chat,
        completions: prefix_completions,
        embeddings: prefix_embeddings,
        models,
    }
}

struct Builtin {
    id: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The OpenAI-compatible endpoints (the Go gateway's defaults).
    compat: Endpoints,
    /// The native API, for providers whose default dialect is native.
    native: Option<(Dialect, Endpoints)>,
}

const OPENAI_PATHS: (&str, &str, &str) = ("/chat/completions", "/completions", "/embeddings");

/// The built-in providers.
const BUILTINS: &[Builtin] = &[
    Builtin {
        id: "openai",
        headers: &[],
        compat: openai_at(
            "https://api.openai.com/v1",
            "bearer",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: None,
    },
    Builtin {
        id: "anthropic",
        headers: &[("anthropic-version", "2023-06-01")],
        compat: openai_at(
            "https://api.anthropic.com/v1",
            "x-api-key",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: Some((
            Dialect::Anthropic,
            Endpoints {
                url: "https://api.anthropic.com/v1",
                auth: "x-api-key",
                chat: "/messages",
                completions: "/completions",
                embeddings: "/embeddings",
                models: "/models",
            },
        )),
    },
    Builtin {
        id: "groq",
        headers: &[],
        compat: openai_at(
            "https://api.groq.com/openai/v1",
            "bearer",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: None,
    },
    Builtin {
        id: "cohere",
        headers: &[],
        compat: openai_at(
            "https://api.cohere.ai",
            "bearer",
            "/compatibility/v1/chat/completions",
            "/compatibility/v1/completions",
            "/compatibility/v1/embeddings",
            "/v1/models",
        ),
        native: Some((
            Dialect::Cohere,
            Endpoints {
                url: "https://api.cohere.ai",
                auth: "bearer",
                chat: "/v2/chat",
                completions: "/compatibility/v1/completions",
                embeddings: "/compatibility/v1/embeddings",
                models: "/v1/models",
            },
        )),
    },
    Builtin {
        id: "ollama",
        headers: &[],
        compat: openai_at(
            "http://ollama:8080/v1",
            "none",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: None,
    },
    Builtin {
        id: "cloudflare",
        headers: &[],
        compat: openai_at(
            "https://api.cloudflare.com/client/v4/accounts/{ACCOUNT_ID}/ai",
            "bearer",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/models/search",
        ),
        native: None,
    },
    Builtin {
        id: "deepseek",
        headers: &[],
        compat: openai_at(
            "https://api.deepseek.com",
            "bearer",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: None,
    },
    Builtin {
        id: "google",
        headers: &[],
        compat: openai_at(
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "bearer",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        // Chat paths are per model (`/models/{model}:generateContent`); embeddings use the
        // OpenAI-compatible endpoint under the same base.
        native: Some((
            Dialect::Google,
            Endpoints {
                url: "https://generativelanguage.googleapis.com/v1beta",
                auth: "x-goog-api-key",
                chat: "",
                completions: "/openai/completions",
                embeddings: "/openai/embeddings",
                models: "/models",
            },
        )),
    },
    Builtin {
        id: "mistral",
        headers: &[],
        compat: openai_at(
            "https://api.mistral.ai/v1",
            "bearer",
            OPENAI_PATHS.0,
            OPENAI_PATHS.1,
            OPENAI_PATHS.2,
            "/models",
        ),
        native: None,
    },
];

/// Ids of the built-in providers.
pub fn builtin_ids() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.id)
}

fn set_dialect(p: &mut ProviderConfig, name: &str) -> Result<Dialect, ConfigError> {
    match p.dialect.as_deref() {
        None => Ok(Dialect::Openai),
        Some(d) => Dialect::parse(d).ok_or_else(|| {
            ConfigError(format!(
                "providers.{name}.dialect ({}_DIALECT): {d:?} is not openai, anthropic, google or cohere",
                env_prefix(name)
            ))
        }),
    }
}

/// Fills every unset field of built-in providers from the table, adds the built-ins the user did
/// not mention, fills custom providers' defaults for their dialect, and drops disabled providers.
pub(super) fn merge_builtins(
    providers: &mut BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    for b in BUILTINS {
        let p = providers.entry(b.id.to_string()).or_default();
        if b.id == "mistral" {
            p.stream_usage.get_or_insert(false);
        }
        // A Go-era URL pointing at Google's OpenAI-compatible endpoint keeps meaning that.
        if b.id == "google"
            && p.dialect.is_none()
            && p.url
                .as_deref()
                .is_some_and(|u| u.trim_end_matches('/').ends_with("/openai"))
        {
            p.dialect = Some("openai".into());
        }
        let native = b.native.as_ref();
        let wanted = match p.dialect.as_deref() {
            None => native.map_or(Dialect::Openai, |(d, _)| *d),
            Some(_) => set_dialect(p, b.id)?,
        };
        let e = match native {
            Some((d, e)) if *d == wanted => e,
            Some((d, _)) if wanted != Dialect::Openai => {
                return Err(ConfigError(format!(
                    "providers.{}.dialect: {} speaks {} or openai, not {}",
                    b.id,
                    b.id,
                    d.name(),
                    wanted.name()
                )))
            }
            None if wanted != Dialect::Openai => {
                return Err(ConfigError(format!(
                    "providers.{}.dialect: {} only has an OpenAI-compatible API",
                    b.id, b.id
                )))
            }
            _ => &b.compat,
        };
        p.dialect = Some(wanted.name().to_string());
        p.url.get_or_insert_with(|| e.url.to_string());
        p.auth.get_or_insert_with(|| e.auth.to_string());
        for (h, v) in b.headers {
            p.headers
                .entry(h.to_string())
                .or_insert_with(|| v.to_string());
        }
        p.chat_path.get_or_insert_with(|| e.chat.to_string());
        p.completions_path
            .get_or_insert_with(|| e.completions.to_string());
        p.embeddings_path
            .get_or_insert_with(|| e.embeddings.to_string());
        p.models_path.get_or_insert_with(|| e.models.to_string());
    }
    for (name, p) in providers.iter_mut() {
        fill_defaults(name, p)?;
    }
    providers.retain(|_, p| p.enabled());
    Ok(())
}

/// A provider's dialect, endpoint paths and Responses mode where it says nothing (also for
/// providers added at run time).
pub(crate) fn fill_defaults(name: &str, p: &mut ProviderConfig) -> Result<(), ConfigError> {
    {
        // A pool without `url`: the first backend names the provider.
        if p.url.is_none() {
            p.url = p.backends.first().map(|b| b.url.clone());
        }
        let d = set_dialect(p, name)?;
        p.dialect = Some(d.name().to_string());
        let chat = match d {
            Dialect::Openai => "/chat/completions",
            Dialect::Anthropic => "/messages",
            Dialect::Cohere => "/v2/chat",
            Dialect::Google => "",
        };
        p.chat_path.get_or_insert_with(|| chat.into());
        p.completions_path
            .get_or_insert_with(|| "/completions".into());
        p.embeddings_path
            .get_or_insert_with(|| "/embeddings".into());
        p.models_path.get_or_insert_with(|| "/models".into());
        p.responses_path.get_or_insert_with(|| "/responses".into());
        // OpenAI's own API serves Responses; any other server says so (`responses_api`).
        p.responses_api.get_or_insert_with(|| {
            if name == "openai" && d == Dialect::Openai {
                "native".into()
            } else {
                "chat".into()
            }
        });
        if let Some(u) = &mut p.url {
            while u.ends_with('/') {
                u.pop();
            }
        }
    }
    Ok(())
}

/// Reads `api_key_file`s (an explicit `api_key` wins).
pub(super) fn load_key_files(
    providers: &mut BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    for (name, p) in providers.iter_mut() {
        if p.api_key.as_ref().is_some_and(|k| !k.is_empty()) {
            continue;
        }
        if let Some(path) = &p.api_key_file {
            let key = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "providers.{name}.api_key_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            p.api_key = Some(Secret::new(key.trim_end()));
        }
    }
    Ok(())
}
