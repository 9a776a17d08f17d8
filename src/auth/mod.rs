//! Who is calling: virtual API keys (only their SHA-256 is kept) and OIDC bearer JWTs.
//!
//! Credentials come from `Authorization: Bearer <token>` or `x-api-key` (Anthropic-style
//! clients). They are never forwarded upstream (the proxy strips them) and never logged: the
//! access log names the principal (`key_id`), not the secret.

pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use crate::config::auth::LimitsSpec;
use crate::config::Config;
use crate::errors::{ApiError, Code};
use crate::routing::Route;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Stable identity for limits and spend: `key:<name>` or `oidc:<subject>`.
    pub id: String,
    /// Shown in logs, metrics and `/v1/usage`.
    pub name: String,
    pub limits: Arc<LimitsSpec>,
    /// A key's `owner` and `metadata` (shown in `/v1/usage`).
    pub owner: Option<String>,
    /// A key's team (keys issued through the admin API): its spend is booked under it too.
    pub team: Option<String>,
    /// The team's limits and budget, shared by its keys: a request must pass both.
    pub team_limits: Option<Arc<LimitsSpec>>,
    pub metadata: Arc<std::collections::BTreeMap<String, String>>,
    /// May use raw `/proxy/*` (which no limit or model list can meter) when its limits allow:
    /// keys, and OIDC principals with a configured tier, never a token that got "no tiers".
    pub may_proxy: bool,
}

impl Principal {
    /// The principal the limiter counts the key's team as (`team:<name>`), when the key has a
    /// team with limits.
    pub fn team_principal(&self) -> Option<Principal> {
        let (team, limits) = (self.team.as_ref()?, self.team_limits.as_ref()?);
        Some(Principal {
            id: format!("team:{team}"),
            name: format!("team {team}"),
            limits: limits.clone(),
            owner: None,
            team: None,
            team_limits: None,
            metadata: Default::default(),
            may_proxy: true,
        })
    }

    /// Whether `requested` (as the client named it), routed to `route`, is allowed.
    /// Whether any model of `provider` is allowed (what may be asked of the provider beyond
    /// a model call, such as a stored response by id).
    pub fn may_use_provider(&self, provider: &str) -> bool {
        let m = &self.limits.models;
        m.is_empty()
            || m.iter()
                .any(|allowed| allowed.split_once('/').is_some_and(|(p, _)| p == provider))
    }

    pub fn allows(&self, requested: &str, route: &Route) -> bool {
        let m = &self.limits.models;
        if m.is_empty() {
            return true;
        }
        let provider = route.provider.name.as_str();
        m.iter().any(|allowed| {
            // A bare name is an alias: it must have been routed as one (with `?provider=` the
            // same name could reach any provider).
            (allowed == requested && route.alias.is_some())
                || allowed.strip_suffix("/*").is_some_and(|p| p == provider)
                || allowed
                    .split_once('/')
                    .is_some_and(|(p, model)| p == provider && model == route.upstream_model)
        })
    }
}

struct KeyEntry {
    digest: [u8; 32],
    name: String,
    owner: Option<String>,
    team: Option<String>,
    team_limits: Option<Arc<LimitsSpec>>,
    metadata: Arc<std::collections::BTreeMap<String, String>>,
    expires: Option<SystemTime>,
    limits: Arc<LimitsSpec>,
}

/// Keys by the first 8 bytes of their digest; the whole digest is compared in constant time.
type KeyTable = HashMap<[u8; 8], Vec<KeyEntry>>;

pub struct Auth {
    /// Credentials are required (keys configured, `auth.enable`, an issuer).
    configured_required: bool,
    /// Keys from the configuration file.
    keys: KeyTable,
    /// Keys issued through the admin API: the control plane's snapshot, swapped whole when the
    /// store changes (a read lock held for one lookup; never the store itself).
    store_keys: std::sync::RwLock<Arc<KeyTable>>,
    /// The store has issued keys (revoked ones count: revoking the last key must not open the
    /// gateway): callers must authenticate, as with keys in the file.
    store_has_keys: std::sync::atomic::AtomicBool,
    pub oidc: Option<Arc<oidc::Oidc>>,
}

/// The limits of a stored key or team.
pub fn limits_of(s: &crate::store::keys::KeySpec) -> LimitsSpec {
    LimitsSpec {
        models: s.models.clone(),
        rpm: s.rpm,
        tpm: s.tpm,
        max_concurrent: s.max_concurrent,
        budget_usd: s.budget_usd,
        budget_period: s.budget_period,
        tools: s.tools.clone(),
        guardrails: s.guardrails.clone(),
    }
}

fn digest_of(hash: &str) -> [u8; 32] {
    let hexd = hash.trim_start_matches("sha256:").to_ascii_lowercase();
    let mut digest = [0u8; 32];
    for (i, d) in digest.iter_mut().enumerate() {
        // Validated where it was written: 64 hex digits.
        *d = hexd
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    digest
}

fn insert(table: &mut KeyTable, e: KeyEntry) {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&e.digest[..8]);
    table.entry(prefix).or_default().push(e);
}

/// SHA-256 of a key, as `sha256:<hex>` (what `[[keys]].hash` holds).
pub fn hash_key(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    format!("sha256:{}", hex(d.as_ref()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new random key with the `igw-` prefix (two v4 UUIDs: 244 random bits from the OS).
pub fn new_key() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut bytes = a.as_bytes().to_vec();
    bytes.extend_from_slice(b.as_bytes());
    format!("igw-{}", hex(&bytes))
}

impl Auth {
    pub fn from_config(cfg: &Config) -> Auth {
        let mut keys = KeyTable::new();
        for k in &cfg.keys {
            let expires = k
                .expires
                .as_deref()
                .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
            insert(
                &mut keys,
                KeyEntry {
                    digest: digest_of(&k.hash),
                    name: k.name.clone(),
                    owner: k.owner.clone(),
                    team: None,
                    team_limits: None,
                    metadata: Arc::new(k.metadata.clone()),
                    expires,
                    limits: Arc::new(k.limits.clone()),
                },
            );
        }
        Auth {
            // Configuring keys or an issuer means callers must identify themselves.
            configured_required: cfg.auth.enable
                || !cfg.keys.is_empty()
                || cfg.auth.oidc_issuer.is_some(),
            keys,
            store_keys: Default::default(),
            store_has_keys: Default::default(),
            oidc: oidc::Oidc::from_config(cfg).map(Arc::new),
        }
    }

    /// Whether callers must authenticate: keys (in the file or the store), `auth.enable`, or
    /// an issuer.
    pub fn required(&self) -> bool {
        self.configured_required
            || self
                .store_has_keys
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces the keys issued through the admin API (the live ones of the store's snapshot),
    /// with their live teams' limits.
    pub fn set_store_keys(
        &self,
        stored: &[crate::store::keys::StoredKey],
        teams: &[crate::store::teams::StoredTeam],
    ) {
        let team_limits: HashMap<&str, Arc<LimitsSpec>> = teams
            .iter()
            .filter(|t| t.deleted_at.is_none())
            .map(|t| (t.name.as_str(), Arc::new(limits_of(&t.spec))))
            .collect();
        let mut table = KeyTable::new();
        for k in stored.iter().filter(|k| k.revoked_at.is_none()) {
            let s = &k.spec;
            insert(
                &mut table,
                KeyEntry {
                    digest: digest_of(&k.hash),
                    name: k.name.clone(),
                    owner: k.owner.clone(),
                    team: k.team.clone(),
                    team_limits: k.team.as_deref().and_then(|t| team_limits.get(t).cloned()),
                    metadata: Arc::new(s.metadata.clone()),
                    expires: k.expires_at.map(|ms| {
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
                    }),
                    limits: Arc::new(limits_of(s)),
                },
            );
        }
        *self.store_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.store_has_keys
            .store(!stored.is_empty(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The caller of a request, `Ok(None)` when the gateway is open and no known credential
    /// was sent (an open gateway ignores whatever token a client sends, as the Go gateway did).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Principal>, ApiError> {
        let required = self.required();
        if !required {
            // Open gateway: no keys, no issuer. Whatever token a client sends is ignored.
            return Ok(None);
        }
        let token = bearer(headers).or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        });
        let Some(token) = token else {
            if required {
                return Err(unauthorized(
                    "You didn't provide an API key. Send it as Authorization: Bearer <key> or x-api-key.",
                    Code::MissingApiKey,
                ));
            }
            return Ok(None);
        };
        if let Some(p) = self.key(token)? {
            return Ok(Some(p));
        }
        if let Some(oidc) = &self.oidc {
            if oidc::looks_like_jwt(token) {
                return oidc.validate(token).await.map(Some);
            }
        }
        if required {
            return Err(unauthorized(
                "Incorrect API key provided.",
                Code::InvalidApiKey,
            ));
        }
        Ok(None)
    }

    fn key(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let digest = d.as_ref();
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        if let Some(p) = Self::find(&self.keys, &prefix, digest)? {
            return Ok(Some(p));
        }
        let store = self
            .store_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Self::find(&store, &prefix, digest)
    }

    fn find(
        table: &KeyTable,
        prefix: &[u8; 8],
        digest: &[u8],
    ) -> Result<Option<Principal>, ApiError> {
        let Some(candidates) = table.get(prefix) else {
            return Ok(None);
        };
        for k in candidates {
            if bool::from(k.digest.ct_eq(digest)) {
                if k.expires.is_some_and(|e| SystemTime::now() >= e) {
                    return Err(unauthorized(
                        &format!("API key {} has expired.", k.name),
                        Code::ExpiredApiKey,
                    ));
                }
                return Ok(Some(Principal {
                    id: format!("key:{}", k.name),
                    name: k.name.clone(),
                    limits: k.limits.clone(),
                    owner: k.owner.clone(),
                    team: k.team.clone(),
                    team_limits: k.team_limits.clone(),
                    metadata: k.metadata.clone(),
                    may_proxy: true,
                }));
            }
        }
        Ok(None)
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn unauthorized(message: &str, code: Code) -> ApiError {
    ApiError::of(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_and_generate() {
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = new_key();
        assert!(k.starts_with("igw-") && k.len() == 4 + 64);
        assert_ne!(new_key(), k);
    }
}
