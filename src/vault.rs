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

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;
use crate::kv::{Bounds, KvStore};

pub struct Vault {
    kv: KvStore,
}

/// Largest single entry kept (a turn's thinking blocks); larger ones are not kept.
const MAX_ENTRY_BYTES: usize = 1 << 20;

impl Vault {
    pub fn from_config(cfg: &Config) -> Vault {
        Vault {
            kv: KvStore::new(
                cfg,
                "vault",
                Bounds {
                    ttl: cfg.reasoning.vault_ttl.get(),
                    max_bytes: cfg.reasoning.vault_max_bytes,
                    max_entries: usize::MAX,
                    max_value: MAX_ENTRY_BYTES,
                    redis_first: false,
                    lru: false,
                },
            ),
        }
    }

    /// Whether the vault keeps anything (`reasoning.vault_max_bytes = 0` turns it off).
    pub fn enabled(&self) -> bool {
        self.kv.enabled()
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
        let items = entries
            .into_iter()
            .map(|(id, v)| (Self::key(scope, &id), Arc::from(v.to_string())))
            .collect();
        if let Some(write) = self.kv.put(items) {
            // Off the response path: the client's next turn comes well after.
            tokio::spawn(write);
        }
    }

    /// The kept state of `ids` for `scope` (missing ids are absent).
    pub async fn get(&self, scope: &str, ids: &[String]) -> HashMap<String, Value> {
        let keys: Vec<String> = ids.iter().map(|id| Self::key(scope, id)).collect();
        let values = self.kv.get(&keys).await;
        ids.iter()
            .zip(values)
            .filter_map(|(id, v)| Some((id.clone(), serde_json::from_str(&v?).ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use std::time::Duration;

    fn vault(max_bytes: usize, ttl: Duration) -> Vault {
        let mut cfg = Config::default();
        cfg.reasoning.vault_max_bytes = max_bytes;
        cfg.reasoning.vault_ttl = crate::config::HumanDuration::secs(1);
        let mut v = Vault::from_config(&cfg);
        v.kv = KvStore::new(
            &cfg,
            "vault",
            Bounds {
                ttl,
                max_bytes,
                max_entries: usize::MAX,
                max_value: MAX_ENTRY_BYTES,
                redis_first: false,
                lru: false,
            },
        );
        v
    }

    fn bytes(v: &Vault) -> (usize, usize) {
        v.kv.memory_bytes()
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
