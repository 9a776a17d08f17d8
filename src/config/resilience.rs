//! Backend pools, health checks, circuit breaking, retries, timeouts and load shedding (see
//! README "Resilience").

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

/// One backend of a provider's pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL, as a provider's `url`.
    pub url: String,
    /// Share of the traffic relative to the other backends (round robin).
    #[serde(default = "one")]
    pub weight: u32,
    /// This backend's own key; default: the provider's.
    pub api_key: Option<Secret>,
}

fn one() -> u32 {
    1
}

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin (pingora-load-balancing's `Weighted<RoundRobin>`).
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight (weights ignored).
    LeastOutstanding,
}

/// Active health checks: `GET <origin><path>` on every backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Absolute path on the backend's host (`/health`, `/v1/models`).
    pub path: String,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// Consecutive passes that bring an unhealthy backend back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a backend out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/health".into(),
            interval: HumanDuration::secs(10),
            timeout: HumanDuration::secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive ejection: consecutive failures open the circuit for a cool-down, doubled each time
/// the half-open probe fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive connect errors, 5xx or timeouts that eject a backend (0 = never).
    pub failures: u32,
    pub cooldown: HumanDuration,
    pub max_cooldown: HumanDuration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown: HumanDuration::secs(10),
            max_cooldown: HumanDuration::secs(300),
        }
    }
}

/// Timeouts that override `client.*` for a provider or an alias (alias wins).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub connect: Option<HumanDuration>,
    pub first_byte: Option<HumanDuration>,
    pub stream_idle: Option<HumanDuration>,
    /// Whole request, all retries and fallbacks included (default: none).
    pub total: Option<HumanDuration>,
}

impl TimeoutsConfig {
    /// `self` where set, else `base`.
    pub fn over(self, base: TimeoutsConfig) -> TimeoutsConfig {
        TimeoutsConfig {
            connect: self.connect.or(base.connect),
            first_byte: self.first_byte.or(base.first_byte),
            stream_idle: self.stream_idle.or(base.stream_idle),
            total: self.total.or(base.total),
        }
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (k, d) in [
            ("connect", self.connect),
            ("first_byte", self.first_byte),
            ("stream_idle", self.stream_idle),
            ("total", self.total),
        ] {
            if d.is_some_and(|d| d.get().is_zero()) {
                return Err(ConfigError(format!(
                    "{key}.timeouts.{k}: must be greater than 0"
                )));
            }
        }
        Ok(())
    }
}

/// Retries within a provider's pool (before falling back to the next model).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per provider, the first included (1 = no retry).
    pub attempts: u32,
    /// First wait between tries, doubled each time, with full jitter.
    pub backoff: HumanDuration,
    pub max_backoff: HumanDuration,
    /// A `Retry-After` up to this long is waited for before retrying; a longer one moves on to
    /// the next backend or fallback at once.
    pub max_retry_after: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            backoff: HumanDuration(std::time::Duration::from_millis(100)),
            max_backoff: HumanDuration::secs(2),
            max_retry_after: HumanDuration::secs(10),
        }
    }
}

/// Checks the pool settings of `[providers.<name>]`.
pub(super) fn validate_pool(p: &super::ProviderConfig, name: &str) -> Result<(), ConfigError> {
    let key = format!("providers.{name}");
    for (i, b) in p.backends.iter().enumerate() {
        let ok = (b.url.starts_with("http://") || b.url.starts_with("https://"))
            && b.url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
        if !ok {
            return Err(ConfigError(format!(
                "{key}.backends[{i}].url: {:?} is not an http(s) URL",
                b.url
            )));
        }
        if b.weight == 0 || b.weight > 1000 {
            return Err(ConfigError(format!(
                "{key}.backends[{i}].weight: must be 1 to 1000"
            )));
        }
    }
    if p.backends.len() > 1000 {
        return Err(ConfigError(format!("{key}.backends: at most 1000")));
    }
    if let Some(h) = &p.health_check {
        if !h.path.starts_with('/') {
            return Err(ConfigError(format!(
                "{key}.health_check.path: must start with /"
            )));
        }
        if h.interval.get().is_zero()
            || h.timeout.get().is_zero()
            || h.healthy_threshold == 0
            || h.unhealthy_threshold == 0
        {
            return Err(ConfigError(format!(
                "{key}.health_check: interval, timeout and thresholds must be greater than 0"
            )));
        }
    }
    if let Some(b) = &p.circuit_breaker {
        let day = std::time::Duration::from_secs(86_400);
        if b.cooldown.get().is_zero()
            || b.max_cooldown.get() < b.cooldown.get()
            || b.max_cooldown.get() > day
        {
            return Err(ConfigError(format!(
                "{key}.circuit_breaker: cooldown must be > 0 and <= max_cooldown <= 24h"
            )));
        }
    }
    if p.max_concurrent > 1_000_000 {
        return Err(ConfigError(format!(
            "{key}.max_concurrent: at most 1000000"
        )));
    }
    if let Some(r) = &p.retry {
        r.validate(&format!("{key}.retry"))?;
    }
    if p.queue_timeout.is_some_and(|d| d.get().is_zero()) {
        return Err(ConfigError(format!(
            "{key}.queue_timeout: must be greater than 0"
        )));
    }
    p.timeouts.validate(&key)
}

impl RetryConfig {
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.attempts == 0 || self.attempts > 10 {
            return Err(ConfigError(format!("{key}.attempts: must be 1 to 10")));
        }
        if self.max_backoff.get() < self.backoff.get() {
            return Err(ConfigError(format!(
                "{key}: max_backoff must be >= backoff"
            )));
        }
        Ok(())
    }
}

pub(crate) fn validate_alias_timeouts(alias: &str, t: &TimeoutsConfig) -> Result<(), ConfigError> {
    t.validate(&format!("aliases.{alias}"))
}
