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
    let include = match Include::parse(session.req_header().uri.query()) {
        Ok(i) => i,
        Err(e) => return respond::error(session, ctx, &e).await,
    };
    let wanted = session.req_header().uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("provider="))
            .map(str::to_string)
    });
    let providers: Vec<Arc<Provider>> = match &wanted {
        Some(name) => match gw.router.provider_named(name).filter(|p| p.configured) {
            Some(p) => vec![p],
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
            .cloned()
            .chain(gw.router.runtime_providers())
            .filter(|p| p.configured && !p.missing_key())
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
        for (alias, provider) in gw.router.aliases() {
            if !usable(&alias) {
                continue;
            }
            data.push(Model {
                id: alias,
                object: "model".into(),
                created: now,
                owned_by: provider.clone(),
                served_by: provider,
                ..Default::default()
            });
        }
    }
    if include.any() {
        for m in &mut data {
            include.describe(gw, m);
        }
    }
    let list = ModelList {
        object: "list".into(),
        data,
    };
    let body = Bytes::from(serde_json::to_vec(&list).expect("model list serializes"));
    let _ = respond::json(session, ctx, 200, body).await;
}

/// `?include=context_window,pricing,modalities` (comma-separated or repeated): what the Go
/// gateway's SDK asks for, from the model table.
#[derive(Default)]
struct Include {
    context_window: bool,
    pricing: bool,
    modalities: bool,
}

/// When the built-in model table's prices were last checked (`pricing.updated_at`).
const MODEL_TABLE_CHECKED: &str = "2026-12-01T00:00:00Z";

impl Include {
    fn parse(query: Option<&str>) -> Result<Include, ApiError> {
        let mut inc = Include::default();
        let lists = query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.strip_prefix("include="))
            .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy());
        for list in lists {
            for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                match v {
                    "context_window" => inc.context_window = true,
                    "pricing" => inc.pricing = true,
                    "modalities" => inc.modalities = true,
                    other => {
                        return Err(ApiError::of(
                            Code::InvalidValue,
                            format!("Unsupported include value: {other:?}. Supported values: pricing, context_window, modalities"),
                        )
                        .param("include"))
                    }
                }
            }
        }
        Ok(inc)
    }

    fn any(&self) -> bool {
        self.context_window || self.pricing || self.modalities
    }

    /// Adds what was asked for (`null` where the model table has nothing).
    fn describe(&self, gw: &Gateway, m: &mut Model) {
        use filters::openai::{per_token, ContextWindow, Modalities, Pricing};
        let entry = gw.router.route(&m.id, None).ok().and_then(|r| {
            gw.cfg
                .model_table
                .find(&r.provider.name, &r.upstream_model)
                .cloned()
        });
        let e = entry.as_ref();
        if self.context_window {
            m.context_window = Some(
                e.and_then(|e| e.context_window)
                    .map(|tokens| ContextWindow {
                        tokens,
                        source: "provider".into(),
                    }),
            );
        }
        if self.pricing {
            m.pricing = Some(e.and_then(|e| {
                Some(Pricing {
                    currency: "USD".into(),
                    input_per_token: per_token(e.input?),
                    output_per_token: per_token(e.output?),
                    cache_read_per_token: e.cached_input.map(per_token),
                    cache_write_per_token: e.cache_write_5m.map(per_token),
                    source: "provider".into(),
                    updated_at: MODEL_TABLE_CHECKED.into(),
                    subscription: false,
                })
            }));
        }
        if self.modalities {
            m.modalities = Some(e.filter(|e| !e.modalities.is_empty()).map(|e| {
                Modalities {
                    // The Go gateway's values; a PDF is read as text and images.
                    input: e
                        .modalities
                        .iter()
                        .filter(|k| matches!(k.as_str(), "text" | "image" | "audio" | "video"))
                        .cloned()
                        .collect(),
                    output: vec!["text".into()],
                }
            }));
        }
    }
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
        filters::dialects::model_list::parse_models(&p.name, &body, unix_now())
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}
