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
                if let Some((_, old)) = m
                    .entries
                    .insert(key.clone(), (now + self.ttl, text.clone()))
                {
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
        {
            let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match m.entries.get(&Self::key(scope, id)) {
                    Some((exp, v)) if *exp > now => {
                        if let Ok(v) = serde_json::from_str(v) {
                            found.insert(id.clone(), v);
                        }
                    }
                    _ => missing.push(id.clone()),
                }
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
    async fn conn(&self) -> Result<ConnectionManager, String> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(c.clone())
    }

    fn key(&self, k: &str) -> String {
        format!("{}:vault:{k}", self.prefix)
    }

    async fn put(&self, batch: Vec<(String, Arc<str>)>, ttl: Duration) -> Result<(), String> {
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
        tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<String>>, String> {
        let mut conn = self.conn().await?;
        let keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET").arg(&keys).query_async(&mut conn),
        )
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
    }
}
