//! `[cache]`: the response cache (see README "Response cache").

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Per principal when auth is configured, shared on an open gateway.
    Auto,
    /// Every entry belongs to the key (or OIDC subject) that stored it.
    Principal,
    /// One cache for every caller (only sensible when callers may see each other's answers).
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Answers of chat, completions, Messages, Responses and embeddings are kept and replayed
    /// (`CACHE_ENABLE`).
    pub enable: bool,
    /// How long an entry lives (`CACHE_TTL`).
    pub ttl: HumanDuration,
    /// Bytes of entries kept in memory, least recently used dropped first (`CACHE_MAX_BYTES`).
    pub max_bytes: usize,
    /// Largest single entry (`CACHE_MAX_ENTRY_BYTES`); larger answers are not kept.
    pub max_entry_bytes: usize,
    /// Shared by replicas through this Redis (`CACHE_REDIS_URL`; else `REDIS_URL` when set).
    pub redis_url: Option<Secret>,
    /// Whose entries a caller sees (`CACHE_SCOPE`: `auto`, `principal`, `shared`).
    pub scope: CacheScope,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enable: false,
            ttl: HumanDuration::secs(3600),
            max_bytes: 256 << 20,
            max_entry_bytes: 4 << 20,
            redis_url: None,
            scope: CacheScope::Auto,
        }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enable && self.ttl.get().is_zero() {
            return Err(ConfigError("cache.ttl must be more than 0s".into()));
        }
        if self.enable && (self.max_bytes == 0 || self.max_entry_bytes == 0) {
            return Err(ConfigError(
                "cache.max_bytes and cache.max_entry_bytes must be more than 0".into(),
            ));
        }
        Ok(())
    }
}
