//! `GET /v1/models`: every configured provider's models, fetched concurrently, ids prefixed with
//! `provider/`, plus the configured aliases. A provider that fails or is slow is skipped (and
//! logged), never failing the whole list. Each provider's list is reused for
//! `client.models_cache_ttl` (one caller cannot make the gateway call every provider on every
//! request), the call counts against the caller's RPM, and a caller sees only the models its
//! key may use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use filters::openai::{Model, ModelList};
use http::{HeaderValue, Method};
use log::warn;
use pingora::proxy::Session;
use serde::Deserialize;

use crate::errors::{ApiError, Code};
use crate::providers::Provider;
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::upstream::UpstreamRequest;

/// A provider's model list (or why it failed) and when it was fetched.
type Fetched = (Instant, Result<Arc<Vec<Model>>, String>);

/// A failed fetch is remembered this long (or the TTL, if shorter): a provider that is down is
/// not asked again by every caller, each waiting `models_timeout`.
const FAILURE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Each provider's model list with the time it was fetched; one fetch per provider at a time.
#[derive(Default)]
pub struct ModelsCache {
    by_provider: Mutex<HashMap<String, Fetched>>,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ModelsCache {
    fn get(
        &self,
        provider: &str,
        ttl: std::time::Duration,
    ) -> Option<Result<Arc<Vec<Model>>, String>> {
        let map = self.by_provider.lock().unwrap_or_else(|e| e.into_inner());
        map.get(provider)
            .filter(|(at, r)| at.elapsed() < if r.is_ok() { ttl } else { ttl.min(FAILURE_TTL) })
            .map(|(_, r)| r.clone())
    }

    fn put(&self, provider: &str, r: Result<Arc<Vec<Model>>, String>) {
        let mut map = self.by_provider.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(provider.to_string(), (Instant::now(), r));
    }

    fn fetch_lock(&self, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(provider.to_string()).or_default().clone()
    }

    /// The cached list, or one fetch shared by every caller that misses at the same time.
    async fn list(
        &self,
        gw: &Gateway,
        p: &Provider,
        request_id: &str,
    ) -> Result<Arc<Vec<Model>>, String> {
        let ttl = gw.cfg.client.models_cache_ttl.get();
        if let Some(r) = self.get(&p.name, ttl) {
            return r;
        }
        let lock = self.fetch_lock(&p.name);
        let _one = lock.lock().await;
        if let Some(r) = self.get(&p.name, ttl) {
            return r;
        }
        let r = fetch(gw, p, request_id).await.map(Arc::new);
        self.put(&p.name, r.clone());
        r
    }
}

pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    // Counts one request of the caller's RPM (and needs a concurrency slot), nothing more.
    if let Some(p) = &ctx.caller.principal {
        match gw
            .limiter
            .admit(p, Default::default(), &crate::request_id::generate())
            .await
        {
            Ok((adm, headers)) => {
                ctx.caller.rate_headers = Some(headers);
                gw.limiter.settle(&adm, 0, 0.0).await;
            }
            Err(denied) => {
                let (err, headers) = crate::exchange::limit_error(p, denied, 0);
                if headers.is_some() {
                    ctx.caller.rate_headers = headers;
                }
                return respond::error(session, ctx, &err).await;
            }
        }
    }
    let wanted = session.req_header().uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("provider="))
            .map(str::to_string)
    });
    let providers: Vec<Arc<Provider>> = match &wanted {
        Some(name) => match gw.providers.get(name).filter(|p| p.configured) {
            Some(p) => vec![p.clone()],
            None => {
                let err = ApiError::of(
                    Code::UnknownProvider,
                    format!("Unknown provider {name:?} in ?provider="),
                )
                .param("provider");
                return respond::error(session, ctx, &err).await;
            }
        },
        None => gw
            .providers
            .iter()
            .filter(|p| p.configured && !p.missing_key())
            .cloned()
            .collect(),
    };
    let fetches = providers
        .iter()
        .map(|p| gw.models_cache.list(gw, p, &ctx.request_id));
    let results = futures::future::join_all(fetches).await;
    let principal = ctx.caller.principal.as_ref();
    // A model is listed when the caller could use it: the gateway's allow and deny lists,
    // then the key's model list.
    let usable = |id: &str| match gw.router.route(id, None) {
        Ok(route) => principal.is_none_or(|p| p.allows(id, &route)),
        Err(_) => false,
    };
    let mut data = Vec::new();
    for (p, r) in providers.iter().zip(results) {
        match r {
            Ok(models) => data.extend(models.iter().filter(|m| usable(&m.id)).cloned()),
            Err(e) => warn!("models: skipping provider {}: {e}", p.name),
        }
    }
    if wanted.is_none() {
        let now = unix_now();
        for (alias, a) in gw.router.aliases() {
            if !usable(alias) {
                continue;
            }
            let provider = a.target.split_once('/').map_or("", |(p, _)| p);
            data.push(Model {
                id: alias.clone(),
                object: "model".into(),
                created: now,
                owned_by: provider.to_string(),
                served_by: provider.to_string(),
            });
        }
    }
    let list = ModelList {
        object: "list".into(),
        data,
    };
    let body = Bytes::from(serde_json::to_vec(&list).expect("model list serializes"));
    let _ = respond::json(session, ctx, 200, body).await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn fetch(gw: &Gateway, p: &Provider, request_id: &str) -> Result<Vec<Model>, String> {
    let path = p.path_and_query(&p.models_path, None);
    let headers = [(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    )];
    let req = UpstreamRequest {
        method: Method::GET,
        path: &path,
        headers: &headers,
        body: Bytes::new(),
        request_id,
        timeouts: None,
    };
    let limit = gw.cfg.client.models_timeout.get();
    let work = async {
        let mut resp = gw
            .client
            .send(p, &req)
            .await
            .map_err(|e| e.message(&p.name))?;
        let status = resp.status();
        let body = resp
            .read_all(8 << 20)
            .await
            .map_err(|e| e.message(&p.name))?;
        gw.client.release(resp).await;
        if !(200..300).contains(&status) {
            return Err(format!("HTTP {status}"));
        }
        parse_models(&p.name, &body)
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

#[derive(Deserialize)]
struct AnyList {
    #[serde(default)]
    data: Option<Vec<Entry>>,
    #[serde(default)]
    models: Option<Vec<Entry>>,
    #[serde(default)]
    result: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    created: Option<u64>,
    /// Anthropic: RFC 3339 creation time.
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    owned_by: Option<String>,
}

/// `2025-02-19T00:00:00Z` -> Unix seconds (UTC; offsets and fractions are ignored: a model
/// list only needs the day right).
fn rfc3339_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Reads OpenAI's `{"data":[{"id"}]}` and the native shapes some providers use for their list
/// (`{"models":[{"name"}]}` for Cohere and Gemini, `{"result":[{"name"}]}` for Cloudflare).
pub fn parse_models(provider: &str, body: &[u8]) -> Result<Vec<Model>, String> {
    let list: AnyList =
        serde_json::from_slice(body).map_err(|e| format!("invalid model list: {e}"))?;
    let entries = list
        .data
        .or(list.models)
        .or(list.result)
        .unwrap_or_default();
    let now = unix_now();
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let id = e.id.or(e.name)?;
            let id = id.strip_prefix("models/").unwrap_or(&id).to_string();
            Some(Model {
                id: format!("{provider}/{id}"),
                object: "model".into(),
                created: e
                    .created
                    .or_else(|| e.created_at.as_deref().and_then(rfc3339_seconds))
                    .unwrap_or(now),
                owned_by: e.owned_by.unwrap_or_else(|| provider.to_string()),
                served_by: provider.to_string(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_shapes() {
        let m = parse_models(
            "openai",
            br#"{"object":"list","data":[{"id":"gpt-4o","created":1,"owned_by":"system"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (
                m[0].id.as_str(),
                m[0].created,
                m[0].owned_by.as_str(),
                m[0].served_by.as_str()
            ),
            ("openai/gpt-4o", 1, "system", "openai")
        );
        let m = parse_models(
            "google",
            br#"{"models":[{"name":"models/gemini-2.0-flash"}]}"#,
        )
        .unwrap();
        assert_eq!(m[0].id, "google/gemini-2.0-flash");
        let m = parse_models("cloudflare", br#"{"result":[{"name":"@cf/meta/llama"}]}"#).unwrap();
        assert_eq!(m[0].id, "cloudflare/@cf/meta/llama");
        let m = parse_models("anthropic", br#"{"data":[{"type":"model","id":"claude-sonnet-4-20250514","display_name":"Claude Sonnet 4","created_at":"2025-05-22T00:00:00Z"}],"has_more":false}"#).unwrap();
        assert_eq!(
            (m[0].id.as_str(), m[0].created),
            ("anthropic/claude-sonnet-4-20250514", 1_747_872_000)
        );
        let m = parse_models(
            "cohere",
            br#"{"models":[{"name":"command-a-03-2025","endpoints":["chat"]}]}"#,
        )
        .unwrap();
        assert_eq!(m[0].id, "cohere/command-a-03-2025");
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2000-03-01T12:30:15.5+00:00"),
            Some(951_913_815)
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
        assert!(parse_models("x", b"<html>").is_err());
        assert!(parse_models("x", b"{}").unwrap().is_empty());
    }
}
