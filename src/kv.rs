//! A bounded key-value store for state kept for callers between requests (the reasoning vault,
//! stored responses): in memory, bounded in entries and bytes, oldest dropped first, entries
//! expiring after a TTL; with `REDIS_URL` also in Redis (`<prefix>:<namespace>:<key>`, with the
//! TTL), so replicas share it.
//!
//! Redis is never waited on for long: every operation runs within `limits.redis_timeout`, and
//! after a failure Redis is skipped for a second (requests never queue behind a dead server; a
//! read then finds only what this replica holds).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::Config;

pub struct KvStore {
    memory: Mutex<Memory>,
    redis: Option<Arc<RedisKv>>,
    ttl: Duration,
    max_bytes: usize,
    max_entries: usize,
    /// Largest single value kept.
    max_value: usize,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, (Instant, Arc<str>)>,
    /// Insertion order, for eviction (oldest first).
    order: VecDeque<String>,
    bytes: usize,
}

struct RedisKv {
    url: String,
    /// `<limits.redis_prefix>:<namespace>:`
    prefix: String,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
    /// After a failure Redis is skipped for a second.
    down_until: Mutex<Option<Instant>>,
}

/// Bounds of one store.
pub struct Bounds {
    pub ttl: Duration,
    pub max_bytes: usize,
    pub max_entries: usize,
    pub max_value: usize,
}

impl KvStore {
    /// A store in memory, and in Redis under `namespace` when `REDIS_URL` is set.
    pub fn new(cfg: &Config, namespace: &str, b: Bounds) -> KvStore {
        KvStore {
            memory: Mutex::new(Memory::default()),
            redis: cfg.limits.redis_url.as_ref().map(|u| {
                Arc::new(RedisKv {
                    url: u.expose().to_string(),
                    prefix: format!("{}:{namespace}:", cfg.limits.redis_prefix),
                    timeout: cfg.limits.redis_timeout.get(),
                    conn: OnceCell::new(),
                    down_until: Mutex::new(None),
                })
            }),
            ttl: b.ttl,
            max_bytes: b.max_bytes,
            max_entries: b.max_entries,
            max_value: b.max_value,
        }
    }

    /// Whether the store keeps anything.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.max_entries > 0
    }

    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Keeps `items` in memory now; the returned future (when Redis is configured) writes them
    /// to Redis: awaited by a caller whose next request may land on another replica, spawned
    /// otherwise. Values larger than the per-value bound are not kept.
    pub fn put(
        &self,
        items: Vec<(String, Arc<str>)>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        if !self.enabled() {
            return None;
        }
        let now = Instant::now();
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        let mut batch = Vec::with_capacity(items.len());
        {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for (key, text) in items {
                if text.len() > self.max_value {
                    continue;
                }
                m.bytes += key.len() + text.len();
                if let Some((_, old)) = m.entries.insert(key.clone(), (expires, text.clone())) {
                    m.bytes -= key.len() + old.len();
                } else {
                    m.order.push_back(key.clone());
                }
                batch.push((key, text));
            }
            // Oldest first, past the bounds or the TTL.
            while m.bytes > self.max_bytes
                || m.entries.len() > self.max_entries
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
        let r = self.redis.clone()?;
        if batch.is_empty() {
            return None;
        }
        let ttl = self.ttl;
        Some(async move {
            if let Err(e) = r.put(batch, ttl).await {
                log::warn!("state store: Redis write failed: {e}");
            }
        })
    }

    /// The values of `keys` (memory first, then Redis for the rest), in order.
    pub async fn get(&self, keys: &[String]) -> Vec<Option<Arc<str>>> {
        let mut found = vec![None; keys.len()];
        if !self.enabled() || keys.is_empty() {
            return found;
        }
        let now = Instant::now();
        let mut missing = Vec::new();
        {
            let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for (i, k) in keys.iter().enumerate() {
                match m.entries.get(k) {
                    Some((exp, v)) if *exp > now => found[i] = Some(v.clone()),
                    _ => missing.push(i),
                }
            }
        }
        if let (Some(r), false) = (&self.redis, missing.is_empty()) {
            let wanted: Vec<&str> = missing.iter().map(|i| keys[*i].as_str()).collect();
            match r.get(&wanted).await {
                Ok(values) => {
                    for (i, v) in missing.into_iter().zip(values) {
                        found[i] = v.map(Arc::from);
                    }
                }
                Err(e) => log::warn!("state store: Redis read failed: {e}"),
            }
        }
        found
    }

    /// Removes `key`; whether it was there (in memory or in Redis).
    pub async fn delete(&self, key: &str) -> bool {
        let mut found = {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            match m.entries.remove(key) {
                Some((exp, v)) => {
                    m.bytes -= key.len() + v.len();
                    m.order.retain(|k| k != key);
                    exp > Instant::now()
                }
                None => false,
            }
        };
        if let Some(r) = &self.redis {
            match r.delete(key).await {
                Ok(n) => found |= n > 0,
                Err(e) => log::warn!("state store: Redis delete failed: {e}"),
            }
        }
        found
    }

    #[cfg(test)]
    pub(crate) fn memory_bytes(&self) -> (usize, usize) {
        let m = self.memory.lock().unwrap();
        let sum = m.entries.iter().map(|(k, (_, t))| k.len() + t.len()).sum();
        (m.bytes, sum)
    }
}

impl RedisKv {
    /// Runs `op` within the timeout (connecting included), unless Redis failed a moment ago.
    async fn guarded<T>(&self, op: impl Future<Output = Result<T, String>>) -> Result<T, String> {
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

    async fn put(&self, batch: Vec<(String, Arc<str>)>, ttl: Duration) -> Result<(), String> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for (k, v) in &batch {
                pipe.cmd("SET")
                    .arg(format!("{}{k}", self.prefix))
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

    async fn get(&self, keys: &[&str]) -> Result<Vec<Option<String>>, String> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let keys: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<u64, String> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            redis::cmd("DEL")
                .arg(format!("{}{key}", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }
}
