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
    redis: Option<Arc<Shared>>,
    /// The shared tier is the truth when it answers (a delete on one replica holds for all);
    /// memory is the fallback while it does not. Otherwise memory is read first (a cache).
    redis_first: bool,
    /// See `Bounds::lru`.
    lru: bool,
    ttl: Duration,
    max_bytes: usize,
    max_entries: usize,
    /// Largest single value kept.
    max_value: usize,
}

#[derive(Default)]
struct Memory {
    /// Value, expiry and the generation of its last write.
    entries: HashMap<String, (Instant, Arc<str>, u64)>,
    /// Writes in order, for eviction (oldest first); a record whose generation is not the
    /// entry's is stale (the key was written again or deleted) and skipped.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    generation: u64,
}

impl Memory {
    fn remove(&mut self, key: &str) -> Option<(Instant, Arc<str>, u64)> {
        let e = self.entries.remove(key)?;
        self.bytes -= key.len() + e.1.len();
        Some(e)
    }

    /// Drops stale order records once they outnumber the entries (repeated writes of one key,
    /// deletes): the queue stays proportional to what is stored.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.entries.len() + 1024 {
            return;
        }
        let entries = &self.entries;
        self.order
            .retain(|(k, g)| entries.get(k).is_some_and(|e| e.2 == *g));
    }
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
    /// See `KvStore::redis_first`.
    pub redis_first: bool,
    /// A read moves the entry to the back of the eviction order (least recently used goes
    /// first); otherwise the oldest write goes first.
    pub lru: bool,
}

impl KvStore {
    /// A store in memory, and in Redis under `namespace` when `REDIS_URL` is set.
    pub fn new(cfg: &Config, namespace: &str, b: Bounds) -> KvStore {
        let url = cfg
            .limits
            .redis_url
            .as_ref()
            .map(|u| u.expose().to_string());
        KvStore::with_redis(cfg, url, namespace, b)
    }

    /// As [`new`](Self::new), with the Redis server at `url` (none: memory only).
    pub fn with_redis(cfg: &Config, url: Option<String>, namespace: &str, b: Bounds) -> KvStore {
        KvStore {
            memory: Mutex::new(Memory::default()),
            redis: url.map(|u| {
                Arc::new(Shared::Redis(RedisKv {
                    url: u,
                    prefix: format!("{}:{namespace}:", cfg.limits.redis_prefix),
                    timeout: cfg.limits.redis_timeout.get(),
                    conn: OnceCell::new(),
                    down_until: Mutex::new(None),
                }))
            }),
            redis_first: b.redis_first,
            lru: b.lru,
            ttl: b.ttl,
            max_bytes: b.max_bytes,
            max_entries: b.max_entries,
            max_value: b.max_value,
        }
    }

    /// Keeps the shared copy in the control plane's store (`DATABASE_URL`) instead of Redis:
    /// durable, and the truth every replica reads first.
    pub fn use_store(&mut self, store: crate::store::Store, namespace: &str) {
        self.redis = Some(Arc::new(Shared::Sql {
            store,
            namespace: namespace.to_string(),
        }));
        self.redis_first = true;
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
                    log::warn!(
                        "state store: a value of {} bytes is over the per-value bound ({}); not kept",
                        text.len(),
                        self.max_value
                    );
                    continue;
                }
                m.generation += 1;
                let g = m.generation;
                m.remove(&key);
                m.bytes += key.len() + text.len();
                m.entries.insert(key.clone(), (expires, text.clone(), g));
                m.order.push_back((key.clone(), g));
                batch.push((key, text));
            }
            // Oldest first, past the bounds or the TTL; stale records on the way are dropped.
            while let Some((k, g)) = m.order.front().cloned() {
                let live = m.entries.get(&k).filter(|e| e.2 == g).map(|e| e.0);
                let evict = match live {
                    None => true,
                    Some(exp) => {
                        exp <= now || m.bytes > self.max_bytes || m.entries.len() > self.max_entries
                    }
                };
                if !evict {
                    break;
                }
                m.order.pop_front();
                if live.is_some() {
                    m.remove(&k);
                }
            }
            m.compact();
        }
        let r = self.redis.clone()?;
        if batch.is_empty() {
            return None;
        }
        let ttl = self.ttl;
        Some(async move {
            if let Err(e) = r.put(batch, ttl).await {
                log::warn!("state store: shared write failed: {e}");
            }
        })
    }

    /// The values of `keys` (memory first, then Redis for the rest), in order.
    pub async fn get(&self, keys: &[String]) -> Vec<Option<Arc<str>>> {
        let mut found = vec![None; keys.len()];
        if !self.enabled() || keys.is_empty() {
            return found;
        }
        if let (Some(r), true) = (&self.redis, self.redis_first) {
            let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
            match r.get(&wanted).await {
                Ok(values) => return values.into_iter().map(|v| v.map(Arc::from)).collect(),
                Err(e) => {
                    log::warn!("state store: shared read failed, using this replica's copy: {e}")
                }
            }
        }
        let now = Instant::now();
        let mut missing = Vec::new();
        {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for (i, k) in keys.iter().enumerate() {
                match m.entries.get(k) {
                    Some((exp, v, _)) if *exp > now => found[i] = Some(v.clone()),
                    _ => missing.push(i),
                }
                if self.lru && found[i].is_some() {
                    // To the back of the eviction order: its older record goes stale.
                    m.generation += 1;
                    let g = m.generation;
                    if let Some(e) = m.entries.get_mut(k) {
                        e.2 = g;
                    }
                    m.order.push_back((k.clone(), g));
                }
            }
            if self.lru {
                m.compact();
            }
        }
        if self.redis_first {
            return found;
        }
        if let (Some(r), false) = (&self.redis, missing.is_empty()) {
            let wanted: Vec<&str> = missing.iter().map(|i| keys[*i].as_str()).collect();
            match r.get(&wanted).await {
                Ok(values) => {
                    for (i, v) in missing.into_iter().zip(values) {
                        found[i] = v.map(Arc::from);
                    }
                }
                Err(e) => log::warn!("state store: shared read failed: {e}"),
            }
        }
        found
    }

    /// Removes `key`; whether it was there (in memory or in Redis).
    pub async fn delete(&self, key: &str) -> bool {
        let mut found = {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            // Its order record goes stale and is skipped later (no scan under the lock).
            let gone = m.remove(key).is_some_and(|e| e.0 > Instant::now());
            m.compact();
            gone
        };
        if let Some(r) = &self.redis {
            match r.delete(key).await {
                Ok(n) => found |= n > 0,
                Err(e) => log::warn!("state store: shared delete failed: {e}"),
            }
        }
        found
    }

    #[cfg(test)]
    pub(crate) fn memory_bytes(&self) -> (usize, usize) {
        let m = self.memory.lock().unwrap();
        let sum = m
            .entries
            .iter()
            .map(|(k, (_, t, _))| k.len() + t.len())
            .sum();
        (m.bytes, sum)
    }
}

/// Where replicas share a namespace: Redis, or the control plane's store.
enum Shared {
    Redis(RedisKv),
    Sql {
        store: crate::store::Store,
        namespace: String,
    },
}

/// Longest wait for the store (its pool gives up on a connection within 2 s).
const SQL_TIMEOUT: Duration = Duration::from_secs(3);

async fn sql<T>(
    op: impl Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(SQL_TIMEOUT, op).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the store timed out".into()),
    }
}

impl Shared {
    async fn put(&self, batch: Vec<(String, Arc<str>)>, ttl: Duration) -> Result<(), String> {
        match self {
            Shared::Redis(r) => r.put(batch, ttl).await,
            Shared::Sql { store, namespace } => {
                sql(store.put_state(namespace, &batch, ttl.as_millis() as i64)).await
            }
        }
    }

    async fn get(&self, keys: &[&str]) -> Result<Vec<Option<String>>, String> {
        match self {
            Shared::Redis(r) => r.get(keys).await,
            Shared::Sql { store, namespace } => sql(store.get_state(namespace, keys)).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<u64, String> {
        match self {
            Shared::Redis(r) => r.delete(key).await,
            Shared::Sql { store, namespace } => sql(store.delete_state(namespace, key)).await,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: usize, max_entries: usize) -> KvStore {
        KvStore::new(
            &Config::default(),
            "t",
            Bounds {
                ttl: Duration::from_secs(60),
                max_bytes,
                max_entries,
                max_value: 1 << 20,
                redis_first: false,
                lru: false,
            },
        )
    }

    fn put(s: &KvStore, k: &str, v: &str) {
        assert!(
            s.put(vec![(k.into(), Arc::from(v))]).is_none(),
            "no Redis here"
        );
    }

    #[tokio::test]
    async fn with_lru_a_read_keeps_an_entry() {
        let mut s = store(1 << 20, 2);
        s.lru = true;
        put(&s, "a", "1");
        put(&s, "b", "2");
        assert!(s.get(&["a".into()]).await[0].is_some()); // a is now the most recently used
        put(&s, "c", "3"); // evicts b, the least recently used
        let got = s.get(&["a".into(), "b".into(), "c".into()]).await;
        assert_eq!(got[0].as_deref(), Some("1"));
        assert_eq!(got[1], None);
        assert_eq!(got[2].as_deref(), Some("3"));
        // Many reads leave a bounded eviction queue.
        for _ in 0..10_000 {
            s.get(&["a".into()]).await;
        }
        assert!(s.memory.lock().unwrap().order.len() < 2 * 2 + 1024 + 2);
    }

    #[tokio::test]
    async fn rewrites_move_to_the_back_and_deletes_leave_no_scan() {
        let s = store(1 << 20, 2);
        put(&s, "a", "1");
        put(&s, "b", "2");
        put(&s, "a", "3"); // a is now the newest
        put(&s, "c", "4"); // evicts b, the oldest write
        let got = s.get(&["a".into(), "b".into(), "c".into()]).await;
        assert_eq!(got[0].as_deref(), Some("3"));
        assert!(got[1].is_none());
        assert!(s.delete("c").await);
        assert!(!s.delete("c").await);
        let (counted, real) = s.memory_bytes();
        assert_eq!(counted, real);
        // Many rewrites of one key keep the order queue bounded.
        for i in 0..10_000 {
            put(&s, "a", &i.to_string());
        }
        let m = s.memory.lock().unwrap();
        assert!(
            m.order.len() <= 2 * m.entries.len() + 1024,
            "{}",
            m.order.len()
        );
    }
}
