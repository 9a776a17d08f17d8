//! Provider configuration: the built-in table (the Go gateway's defaults) and custom providers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// `false` removes the provider entirely.
    pub enabled: Option<bool>,
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

    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
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
            ("chat_path", &self.chat_path),
            ("completions_path", &self.completions_path),
            ("embeddings_path", &self.embeddings_path),
            ("models_path", &self.models_path),
        ] {
            if let Some(p) = p {
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

struct Builtin {
    id: &'static str,
    url: &'static str,
    auth: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Prefix of the OpenAI-compatible API under `url` (chat, completions, embeddings).
    compat_prefix: &'static str,
    models_path: &'static str,
}

/// The built-in providers, with the Go gateway's defaults.
const BUILTINS: &[Builtin] = &[
    Builtin {
        id: "openai",
        url: "https://api.openai.com/v1",
        auth: "bearer",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "anthropic",
        url: "https://api.anthropic.com/v1",
        auth: "x-api-key",
        headers: &[("anthropic-version", "2023-06-01")],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "groq",
        url: "https://api.groq.com/openai/v1",
        auth: "bearer",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "cohere",
        url: "https://api.cohere.ai",
        auth: "bearer",
        headers: &[],
        compat_prefix: "/compatibility/v1",
        models_path: "/v1/models",
    },
    Builtin {
        id: "ollama",
        url: "http://ollama:8080/v1",
        auth: "none",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "cloudflare",
        url: "https://api.cloudflare.com/client/v4/accounts/{ACCOUNT_ID}/ai",
        auth: "bearer",
        headers: &[],
        compat_prefix: "/v1",
        models_path: "/models/search",
    },
    Builtin {
        id: "deepseek",
        url: "https://api.deepseek.com",
        auth: "bearer",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "google",
        url: "https://generativelanguage.googleapis.com/v1beta/openai",
        auth: "bearer",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
    Builtin {
        id: "mistral",
        url: "https://api.mistral.ai/v1",
        auth: "bearer",
        headers: &[],
        compat_prefix: "",
        models_path: "/models",
    },
];

/// Ids of the built-in providers.
pub fn builtin_ids() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.id)
}

/// Fills every unset field of built-in providers from the table, adds the built-ins the user did
/// not mention, fills custom providers' OpenAI defaults, and drops disabled providers.
pub(super) fn merge_builtins(
    providers: &mut BTreeMap<String, ProviderConfig>,
) -> Result<(), ConfigError> {
    for b in BUILTINS {
        let p = providers.entry(b.id.to_string()).or_default();
        p.url.get_or_insert_with(|| b.url.to_string());
        p.auth.get_or_insert_with(|| b.auth.to_string());
        for (h, v) in b.headers {
            p.headers
                .entry(h.to_string())
                .or_insert_with(|| v.to_string());
        }
        p.chat_path
            .get_or_insert_with(|| format!("{}/chat/completions", b.compat_prefix));
        p.completions_path
            .get_or_insert_with(|| format!("{}/completions", b.compat_prefix));
        p.embeddings_path
            .get_or_insert_with(|| format!("{}/embeddings", b.compat_prefix));
        p.models_path
            .get_or_insert_with(|| b.models_path.to_string());
    }
    for p in providers.values_mut() {
        p.chat_path
            .get_or_insert_with(|| "/chat/completions".into());
        p.completions_path
            .get_or_insert_with(|| "/completions".into());
        p.embeddings_path
            .get_or_insert_with(|| "/embeddings".into());
        p.models_path.get_or_insert_with(|| "/models".into());
        if let Some(u) = &mut p.url {
            while u.ends_with('/') {
                u.pop();
            }
        }
    }
    providers.retain(|_, p| p.enabled());
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
