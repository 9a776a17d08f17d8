//! The response cache (`[cache]`): answers kept by the normalised canonical request, so an
//! entry stored through one door (chat, Messages, Responses) serves every door in its own
//! format, streamed or not. Entries are whole canonical bodies (`chat.completion`, an
//! embeddings list); a streamed answer is folded into one when it completes (see
//! `filters::cache`). Memory with least-recently-used eviction, and Redis when configured, so
//! replicas share entries. Off by default; when off nothing here runs on the request path.

use std::sync::Arc;

use crate::config::cache::CacheScope;
use crate::config::Config;
use crate::kv::{Bounds, KvStore};

/// What the cache did for a request (`x-gateway-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    /// Not looked up (`Cache-Control: no-cache`, a tool-loop request, an endpoint without a
    /// cache).
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Bypass => "bypass",
        }
    }
}

pub struct ResponseCache {
    kv: KvStore,
    scope: CacheScope,
    max_entry: usize,
}

impl ResponseCache {
    /// The cache, when `cache.enable` is on.
    pub fn from_config(cfg: &Config) -> Option<ResponseCache> {
        let c = &cfg.cache;
        if !c.enable {
            return None;
        }
        let url = c
            .redis_url
            .as_ref()
            .or(cfg.limits.redis_url.as_ref())
            .map(|u| u.expose().to_string());
        let kv = KvStore::with_redis(
            cfg,
            url,
            "cache",
            Bounds {
                ttl: c.ttl.get(),
                max_bytes: c.max_bytes,
                max_entries: usize::MAX,
                max_value: c.max_entry_bytes,
                redis_first: false,
                lru: true,
            },
        );
        Some(ResponseCache {
            kv,
            scope: c.scope,
            max_entry: c.max_entry_bytes,
        })
    }

    /// The entry key of a request: its scope (the principal's id, or `shared`), the endpoint, the
    /// provider and upstream model, and the SHA-256 of the normalised request. `None` when the
    /// body is not a JSON object.
    pub fn key(
        &self,
        principal: Option<&str>,
        endpoint: &str,
        provider: &str,
        upstream_model: &str,
        body: &[u8],
    ) -> Option<String> {
        let normalised = filters::cache::normalised_request(body)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        // `auto`: the caller's own entries whenever there is a caller (keys, OIDC, keys issued
        // at run time), one shared cache on an open gateway.
        let scope = match (self.scope, principal) {
            (CacheScope::Shared, _) => "shared",
            (_, Some(p)) => p,
            (CacheScope::Principal, None) => "anonymous",
            (CacheScope::Auto, None) => "shared",
        };
        for part in [scope, endpoint, provider, upstream_model] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        ctx.update(&normalised);
        let digest = ctx.finish();
        let mut hex = String::with_capacity(64);
        for b in digest.as_ref() {
            hex.push_str(&format!("{b:02x}"));
        }
        Some(hex)
    }

    pub async fn get(&self, key: &str) -> Option<Arc<str>> {
        self.kv.get(&[key.to_string()]).await.pop().flatten()
    }

    /// Keeps `body` (a whole canonical answer) under `key`; Redis is written in the
    /// background. Answers: whether it was kept (not over the entry bound, valid UTF-8).
    pub fn put(&self, key: String, body: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        if body.len() > self.max_entry {
            return false;
        }
        if let Some(write) = self.kv.put(vec![(key, Arc::from(text))]) {
            tokio::spawn(write);
        }
        true
    }
}
