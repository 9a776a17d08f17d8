//! The reasoning-state vault: provider state a turn needs back (Anthropic's signed thinking,
//! Gemini's thought signatures), kept by tool-call id after each answer of a native dialect and
//! put back into later requests whose client echoed only the standard fields (see
//! `filters::reasoning`).
//!
//! Entries belong to the caller that received them (keyed by principal), are bounded in bytes
//! and expire after `reasoning.vault_ttl`. In memory by default; with `REDIS_URL` also in Redis,
//! so a conversation can move between replicas. Nothing here is on the request path unless the
//! request has tool calls without their state: writes to Redis run in the background, and a
//! Redis failure only means the entry is not found (the request then falls back as documented).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::Config;

pub struct Vault {
    memory: Mutex<Memory>,
    redis: Option<Arc<RedisVault>>,
    ttl: Duration,
    max_bytes: usize,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, (Instant, Arc<str>)>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<String>,
    bytes: usize,
}

struct RedisVault {
    url: String,
    prefix: String,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
    /// After a failure Redis is skipped for a second (requests never queue behind it).
    down_until: Mutex<Option<Instant>>,
}

/// Largest single entry kept (a turn's thinking blocks); larger ones are not kept.
const MAX_ENTRY_BYTES: usize = 1 << 20;

impl Vault {
    pub fn from_config(cfg: &Config) -> Vault {
        Vault {
            memory: Mutex::new(Memory::default()),
            redis: cfg.limits.redis_url.as_ref().map(|u| {
                Arc::new(RedisVault {
                    url: u.expose().to_string(),
                    prefix: cfg.limits.redis_prefix.clone(),
                    timeout: cfg.limits.redis_timeout.get(),
                    conn: OnceCell::new(),
                    down_until: Mutex::new(None),
                })
            }),
            ttl: cfg.reasoning.vault_ttl.get(),
            max_bytes: cfg.reasoning.vault_max_bytes,
        }
    }

    /// Whether the vault keeps anything (`reasoning.vault_max_bytes = 0` turns it off).
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn key(scope: &str, id: &str) -> String {
        // The scope is the principal id (`key:<name>`, `oidc:<sub>`) or empty on an open
        // gateway; `|` never occurs in a tool-call id.
        format!("{scope}|{id}")
    }

    /// Keeps `entries` (tool-call id -> state) for `scope`.
    pub fn put(&self, scope: &str, entries: Vec<(String, Value)>) {
        if !self.enabled() || entries.is_empty() {
            return;
        }
        let now = Instant::now();
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        let mut redis_batch = Vec::new();
        {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for (id, v) in entries {
                let text: Arc<str> = Arc::from(v.to_string());
                if text.len() > MAX_ENTRY_BYTES {
                    continue;
                }
                let key = Self::key(scope, &id);
                m.bytes += key.len() + text.len();
                if let Some((_, old)) = m.entries.insert(key.clone(), (expires, text.clone())) {
                    m.bytes -= key.len() + old.len();
                } else {
                    m.order.push_back(key.clone());
                }
                redis_batch.push((key, text));
            }
            // Oldest first, past the size bound or the TTL.
            while m.bytes > self.max_bytes
                || m.order
                    .front()
                    .and_then(|k| m.entries.get(k))
                    .is_some_and(|(exp, _)| *exp <= now)
            {
                let Some(k) = m.order.pop_front() else { break };
                if let Some((_, v)) = m.entries.remove(&k) {
                    m.bytes -= k.len() + v.len();
                }
            }
        }
        if let Some(r) = &self.redis {
            let r = r.clone();
            let ttl = self.ttl;
            // Off the response path: the client's next turn comes well after.
            tokio::spawn(async move {
                if let Err(e) = r.put(redis_batch, ttl).await {
                    log::warn!("reasoning vault: Redis write failed: {e}");
                }
            });
        }
    }

    /// The kept state of `ids` for `scope` (missing ids are absent).
    pub async fn get(&self, scope: &str, ids: &[String]) -> HashMap<String, Value> {
        let mut found = HashMap::new();
        if !self.enabled() || ids.is_empty() {
            return found;
        }
        let now = Instant::now();
        let mut missing = Vec::new();
        let mut texts = Vec::new();
        {
            // Only clones under the lock; parsing happens after it.
            let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match m.entries.get(&Self::key(scope, id)) {
                    Some((exp, v)) if *exp > now => texts.push((id.clone(), v.clone())),
                    _ => missing.push(id.clone()),
                }
            }
        }
        for (id, text) in texts {
            if let Ok(v) = serde_json::from_str(&text) {
                found.insert(id, v);
            }
        }
        if let (Some(r), false) = (&self.redis, missing.is_empty()) {
            let keys: Vec<String> = missing.iter().map(|id| Self::key(scope, id)).collect();
            match r.get(&keys).await {
                Ok(values) => {
                    for (id, v) in missing.into_iter().zip(values) {
                        if let Some(v) = v.and_then(|t| serde_json::from_str(&t).ok()) {
                            found.insert(id, v);
                        }
                    }
                }
                Err(e) => log::warn!("reasoning vault: Redis read failed: {e}"),
            }
        }
        found
    }
}

impl RedisVault {
    /// Runs `op` within the timeout (connecting included), unless Redis failed a moment ago.
    async fn guarded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        let now = Instant::now();
        if self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| now < t)
        {
            return Err("Redis failed moments ago; not retried yet".into());
        }
        let r = match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        };
        if r.is_err() {
            *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(now + Duration::from_secs(1));
        }
        r
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        let c = self
            .conn
            .get_or_try_init(|| crate::limits::redis::connect(&self.url, self.timeout))
            .await?;
        Ok(c.clone())
    }

    fn key(&self, k: &str) -> String {
        format!("{}:vault:{k}", self.prefix)
    }

    async fn put(&self, batch: Vec<(String, Arc<str>)>, ttl: Duration) -> Result<(), String> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for (k, v) in &batch {
                pipe.cmd("SET")
                    .arg(self.key(k))
                    .arg(v.as_ref())
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<String>>, String> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vault(max_bytes: usize, ttl: Duration) -> Vault {
        Vault {
            memory: Mutex::new(Memory::default()),
            redis: None,
            ttl,
            max_bytes,
        }
    }

    fn bytes(v: &Vault) -> (usize, usize) {
        let m = v.memory.lock().unwrap();
        let sum = m.entries.iter().map(|(k, (_, t))| k.len() + t.len()).sum();
        (m.bytes, sum)
    }

    #[tokio::test]
    async fn bounded_by_bytes_oldest_first_and_scoped() {
        let v = vault(200, Duration::from_secs(60));
        let e = |s: &str| vec![(s.to_string(), json!({"thinking_blocks": ["x".repeat(40)]}))];
        v.put("key:a", e("c1"));
        v.put("key:a", e("c1")); // overwrite: counted once
        let (counted, real) = bytes(&v);
        assert_eq!(counted, real);
        v.put("key:a", e("c2"));
        v.put("key:a", e("c3"));
        let (counted, real) = bytes(&v);
        assert_eq!(counted, real);
        assert!(counted <= 200, "{counted}");
        let ids = ["c1".to_string(), "c2".to_string(), "c3".to_string()];
        let got = v.get("key:a", &ids).await;
        assert!(!got.contains_key("c1"), "oldest dropped first");
        assert!(got.contains_key("c3"));
        assert!(
            v.get("key:b", &ids).await.is_empty(),
            "another scope sees nothing"
        );
        // An entry larger than the per-entry bound is not kept.
        v.put(
            "key:a",
            vec![("big".into(), json!("y".repeat(MAX_ENTRY_BYTES)))],
        );
        assert!(v.get("key:a", &["big".to_string()]).await.is_empty());
    }

    #[tokio::test]
    async fn entries_expire() {
        let v = vault(1 << 20, Duration::from_millis(50));
        v.put("", vec![("c1".into(), json!({"extra_content": {}}))]);
        assert_eq!(v.get("", &["c1".to_string()]).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(v.get("", &["c1".to_string()]).await.is_empty());
    }
}
