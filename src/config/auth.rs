//! `[auth]`, `[[keys]]`, `[limits]` and `[prices]`: who may call, how much, at what cost
//! (README "Security" and "Keys, limits and budgets").

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require credentials on every API endpoint (`AUTH_ENABLE`). Implied when keys exist.
    pub enable: bool,
    /// OIDC issuer URL (`AUTH_OIDC_ISSUER`): bearer JWTs are validated against its discovery
    /// document and JWKS.
    pub oidc_issuer: Option<String>,
    /// Expected audience of the JWTs (`AUTH_OIDC_CLIENT_ID`).
    pub oidc_client_id: Option<String>,
    /// Not used for validation (the gateway never exchanges codes); accepted for the Go names.
    pub oidc_client_secret: Option<Secret>,
    /// Claim naming the principal (default `sub`).
    pub subject_claim: String,
    /// Claim naming the limits tier (a key of `tiers`); absent: `default_tier`.
    pub tier_claim: Option<String>,
    pub default_tier: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: HumanDuration,
    /// Limits of OIDC principals, by tier.
    pub tiers: BTreeMap<String, LimitsSpec>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enable: false,
            oidc_issuer: None,
            oidc_client_id: None,
            oidc_client_secret: None,
            subject_claim: "sub".into(),
            tier_claim: None,
            default_tier: None,
            leeway: HumanDuration::secs(60),
            tiers: BTreeMap::new(),
        }
    }
}

/// What a key or tier may do. Unset limits are unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Models allowed: names as clients send them (`gpt-4o`, aliases), `provider/model`, or
    /// `provider/*`. Empty: all.
    pub models: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + completion).
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u64>,
    /// Spend allowed per `budget_period`, in USD.
    pub budget_usd: Option<f64>,
    pub budget_period: BudgetPeriod,
    /// Tools allowed on `/mcp` and in the server-side MCP loop: `/mcp` names (the loop's
    /// `mcp_` prefix stripped), `*` for any run of characters. Empty: all.
    pub tools: Vec<String>,
    /// The guardrail profile (`[guardrails.profiles.<name>]`) for this key's requests; unset:
    /// the top-level rules (or its team's profile).
    pub guardrails: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
    /// Never resets.
    Total,
}

/// One virtual API key. Only its SHA-256 is stored (`inference-gateway hash-key` makes both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Identity in logs, metrics and `/v1/usage` (never the key).
    pub name: String,
    /// `sha256:<64 hex>` of the key.
    pub hash: String,
    #[serde(default)]
    pub owner: Option<String>,
    /// RFC 3339 time after which the key is refused (`expires_at` also accepted, the admin
    /// API's name).
    #[serde(default, alias = "expires_at")]
    pub expires: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    pub limits: LimitsSpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Redis unreachable: enforce limits per replica (in memory) and serve.
    #[default]
    FailOpen,
    /// Redis unreachable: 503.
    FailClosed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Shared state across replicas (`REDIS_URL`); unset: in memory, per process.
    pub redis_url: Option<Secret>,
    /// Longest wait for Redis per operation.
    pub redis_timeout: HumanDuration,
    pub failure_mode: FailureMode,
    /// Prefix of every Redis key (several gateways fleets may share one Redis).
    pub redis_prefix: String,
    /// Completion tokens reserved against TPM and budget for a request without `max_tokens`
    /// (settlement replaces the reservation by what was used).
    pub default_completion_reserve: u64,
    /// Largest `n` (choices per request) accepted; each choice is reserved.
    pub max_n: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            redis_url: None,
            redis_timeout: HumanDuration(std::time::Duration::from_millis(100)),
            failure_mode: FailureMode::FailOpen,
            redis_prefix: "igw".into(),
            default_completion_reserve: 1024,
            max_n: 8,
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached prompt tokens (default: `input`).
    pub cached_input: Option<f64>,
}

impl AuthConfig {
    /// `control_plane`: keys can also come from the admin API (a store and an admin key).
    pub(super) fn validate(
        &self,
        keys: &[KeyConfig],
        control_plane: bool,
    ) -> Result<(), ConfigError> {
        if self.oidc_issuer.is_some() != self.oidc_client_id.is_some() {
            return Err(ConfigError(
                "auth.oidc_issuer (AUTH_OIDC_ISSUER) and auth.oidc_client_id (AUTH_OIDC_CLIENT_ID) go together".into(),
            ));
        }
        if let Some(i) = &self.oidc_issuer {
            if !(i.starts_with("https://") || i.starts_with("http://")) {
                return Err(ConfigError(format!(
                    "auth.oidc_issuer: {i:?} is not an http(s) URL"
                )));
            }
        }
        if self.enable && keys.is_empty() && self.oidc_issuer.is_none() && !control_plane {
            return Err(ConfigError(
                "auth.enable (AUTH_ENABLE): needs [[keys]], auth.oidc_issuer, or a store (DATABASE_URL) with an admin key (ADMIN_API_KEY) to issue keys, or nobody could call"
                    .into(),
            ));
        }
        // Tiers fail closed: a token whose tier claim is missing or unknown gets the default
        // tier, so one must exist (never "no limits" by omission).
        if (self.tier_claim.is_some() || !self.tiers.is_empty()) && self.default_tier.is_none() {
            return Err(ConfigError(
                "auth.default_tier: required when auth.tier_claim or auth.tiers is set (tokens without a known tier get it)".into(),
            ));
        }
        for t in [&self.default_tier].into_iter().flatten() {
            if !self.tiers.contains_key(t) {
                return Err(ConfigError(format!(
                    "auth.default_tier: {t:?} is not in auth.tiers"
                )));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            let key = format!("keys[{i}] ({})", k.name);
            if k.name.is_empty() || !names.insert(k.name.clone()) {
                return Err(ConfigError(format!("{key}.name: empty or not unique")));
            }
            let hex = k.hash.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError(format!(
                    "{key}.hash: must be sha256:<64 hex digits> (see `inference-gateway hash-key`)"
                )));
            }
            if !hashes.insert(hex.to_ascii_lowercase()) {
                return Err(ConfigError(format!(
                    "{key}.hash: two keys have the same hash"
                )));
            }
            if let Some(e) = &k.expires {
                if humantime::parse_rfc3339_weak(e).is_err() {
                    return Err(ConfigError(format!(
                        "{key}.expires: {e:?} is not an RFC 3339 time"
                    )));
                }
            }
            k.limits.validate(&key)?;
        }
        for (name, t) in &self.tiers {
            t.validate(&format!("auth.tiers.{name}"))?;
        }
        Ok(())
    }
}

impl LimitsSpec {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(b) = self.budget_usd {
            if !(b.is_finite() && b >= 0.0) {
                return Err(ConfigError(format!("{key}.budget_usd: must be >= 0")));
            }
        }
        for m in &self.models {
            if m.is_empty() || (m.contains('*') && !m.ends_with("/*")) {
                return Err(ConfigError(format!(
                    "{key}.models: {m:?}: a name, provider/model or provider/*"
                )));
            }
        }
        Ok(())
    }
}
