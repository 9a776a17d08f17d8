//! Runtime view of the configured providers: parsed base URLs, auth, and cached addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use filters::dialects::Dialect;
use http::{HeaderName, HeaderValue};

use crate::config::{AuthStyle, Config, ConfigError, Secret};

/// One upstream provider, ready to be called.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub tls: bool,
    /// Host name or IP literal (no brackets), used for DNS, SNI and certificate checks.
    pub host: String,
    pub port: u16,
    /// Value of the `Host` header (`host[:port]`).
    pub authority: String,
    /// Path of the base URL, without trailing slash (e.g. `/v1`).
    pub base_path: String,
    pub auth: AuthStyle,
    api_key: Option<Secret>,
    /// The credential header, built once (marked sensitive).
    auth_header: Option<(HeaderName, HeaderValue)>,
    /// `authority` as a `Host` value, built once.
    pub host_value: HeaderValue,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Extra query string (already encoded, no leading `?`), possibly empty.
    pub query: String,
    pub chat_path: String,
    pub completions_path: String,
    pub embeddings_path: String,
    pub models_path: String,
    /// Configured by the user (listed by `GET /v1/models`).
    pub configured: bool,
    /// API spoken on the chat endpoint.
    pub dialect: Dialect,
    /// `max_tokens` for APIs that require one, when the client and the model table set none.
    pub default_max_tokens: Option<u64>,
    /// Accepts `stream_options` (see `ProviderConfig::stream_usage`).
    pub stream_usage: bool,
    /// Serves the OpenAI Responses API on `responses_path` (`responses_api = "native"`).
    pub responses_native: bool,
    pub responses_path: String,
    /// Last resolved address of `host:port`.
    addr: RwLock<Option<SocketAddr>>,
}

impl Provider {
    pub(crate) fn from_config(
        name: &str,
        p: &crate::config::ProviderConfig,
    ) -> Result<Provider, ConfigError> {
        let url = p.url();
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (false, url.strip_prefix("http://").unwrap_or(url)),
        };
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let bad = |what: &str| ConfigError(format!("providers.{name}.url: {url:?}: {what}"));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("invalid port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let api_key = p.api_key.clone().filter(|k| !k.is_empty());
        let auth = p.auth_style();
        let auth_header = match (&auth, &api_key) {
            (AuthStyle::None, _) | (_, None) => None,
            (AuthStyle::Bearer, Some(k)) => Some((
                http::header::AUTHORIZATION,
                secret_header(&format!("Bearer {}", k.expose()), name)?,
            )),
            (AuthStyle::Header(h), Some(k)) => Some((
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    ConfigError(format!(
                        "providers.{name}.auth_header: {h:?} is not a valid header name"
                    ))
                })?,
                secret_header(k.expose(), name)?,
            )),
        };
        let host_value =
            HeaderValue::from_str(authority).map_err(|_| bad("invalid host in the URL"))?;
        let headers = p
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("invalid header name"))?,
                    HeaderValue::from_str(v).map_err(|_| bad("invalid header value"))?,
                ))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let query = p
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect::<Vec<_>>()
            .join("&");
        let literal: Option<std::net::IpAddr> = host.parse().ok();
        Ok(Provider {
            name: name.to_string(),
            tls,
            authority: authority.to_string(),
            base_path: base_path.trim_end_matches('/').to_string(),
            port,
            addr: RwLock::new(literal.map(|ip| SocketAddr::new(ip, port))),
            host,
            auth,
            api_key,
            auth_header,
            host_value,
            headers,
            query,
            chat_path: p.chat_path.clone().unwrap_or_default(),
            completions_path: p.completions_path.clone().unwrap_or_default(),
            embeddings_path: p.embeddings_path.clone().unwrap_or_default(),
            models_path: p.models_path.clone().unwrap_or_default(),
            configured: p.configured,
            dialect: p
                .dialect
                .as_deref()
                .and_then(Dialect::parse)
                .unwrap_or_default(),
            default_max_tokens: p.default_max_tokens,
            stream_usage: p.stream_usage.unwrap_or(true),
            responses_native: p.responses_api.as_deref() == Some("native"),
            responses_path: p
                .responses_path
                .clone()
                .unwrap_or_else(|| "/responses".into()),
        })
    }

    /// The credential header to send, if the provider needs one and has a key.
    pub fn auth_header(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.auth_header.as_ref().map(|(n, v)| (n, v))
    }

    /// True when the provider needs a key and none is configured.
    pub fn missing_key(&self) -> bool {
        self.auth != AuthStyle::None && self.api_key.is_none()
    }

    /// Full upstream path for an endpoint path, with the provider's and the caller's query.
    pub fn path_and_query(&self, endpoint: &str, caller_query: Option<&str>) -> String {
        let mut s = String::with_capacity(self.base_path.len() + endpoint.len() + 32);
        s.push_str(&self.base_path);
        s.push_str(endpoint);
        if s.is_empty() {
            s.push('/');
        }
        let caller_query = caller_query.filter(|q| !q.is_empty());
        if !self.query.is_empty() || caller_query.is_some() {
            s.push('?');
            s.push_str(&self.query);
            if let Some(q) = caller_query {
                if !self.query.is_empty() {
                    s.push('&');
                }
                s.push_str(q);
            }
        }
        s
    }

    pub fn cached_addr(&self) -> Option<SocketAddr> {
        *self.addr.read().expect("addr lock")
    }

    pub fn set_addr(&self, addr: SocketAddr) {
        *self.addr.write().expect("addr lock") = Some(addr);
    }

    pub fn is_ip_literal(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

fn secret_header(v: &str, name: &str) -> Result<HeaderValue, ConfigError> {
    let mut h = HeaderValue::from_str(v).map_err(|_| {
        ConfigError(format!(
            "providers.{name}.api_key: not a valid header value"
        ))
    })?;
    h.set_sensitive(true);
    Ok(h)
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// All providers by name.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    pub fn from_config(cfg: &Config) -> Result<Providers, ConfigError> {
        let mut by_name = BTreeMap::new();
        for (name, p) in &cfg.providers {
            by_name.insert(name.clone(), Arc::new(Provider::from_config(name, p)?));
        }
        Ok(Providers { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(url: &str) -> Provider {
        let p = crate::config::ProviderConfig {
            url: Some(url.into()),
            api_key: Some(Secret::new("k")),
            query: [("api-version".to_string(), "2024 02".to_string())].into(),
            ..Default::default()
        };
        Provider::from_config("t", &p).unwrap()
    }

    #[test]
    fn parses_urls() {
        let p = provider("https://api.example.com/openai/v1");
        assert!(p.tls);
        assert_eq!(
            (p.host.as_str(), p.port, p.base_path.as_str()),
            ("api.example.com", 443, "/openai/v1")
        );
        assert_eq!(
            p.path_and_query("/chat/completions", None),
            "/openai/v1/chat/completions?api-version=2024%2002"
        );
        assert_eq!(
            p.path_and_query("/x", Some("a=1")),
            "/openai/v1/x?api-version=2024%2002&a=1"
        );
        let p = provider("http://[::1]:8000");
        assert_eq!(
            (p.host.as_str(), p.port, p.base_path.as_str()),
            ("::1", 8000, "")
        );
        assert_eq!(p.cached_addr(), Some("[::1]:8000".parse().unwrap()));
        assert_eq!(p.authority, "[::1]:8000");
        let p = provider("http://127.0.0.1:9/v1");
        let (name, value) = p.auth_header().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer k")
        );
        assert!(value.is_sensitive());
        assert_eq!(p.host_value, "127.0.0.1:9");
    }

    #[test]
    fn auth_header_names_are_checked_at_start() {
        let with = |auth: &str, header: Option<&str>| {
            let p = crate::config::ProviderConfig {
                url: Some("https://api.example.com".into()),
                api_key: Some(Secret::new("k")),
                auth: Some(auth.into()),
                auth_header: header.map(Into::into),
                ..Default::default()
            };
            Provider::from_config("t", &p)
        };
        let p = with("header", Some("X-Goog-Api-Key")).unwrap();
        let (name, value) = p.auth_header().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-goog-api-key", "k")
        );
        // Was skipped silently before: every call went out without its credential.
        let Err(e) = with("header", Some("bad name")) else {
            panic!("an invalid auth header name must not start");
        };
        assert!(e.0.contains("providers.t.auth_header"), "{}", e.0);
        assert!(with("none", None).unwrap().auth_header().is_none());
    }
}
