//! Rate limits, concurrency and budgets per principal, exact across replicas.
//!
//! One admission decides everything a request needs, atomically: budget not spent (spend plus
//! the cost reserved by requests in flight), a concurrency slot, one request of the minute's
//! RPM, a reservation of its most tokens (prompt bytes / 4 + `max_tokens` (or
//! `limits.default_completion_reserve`) x `n`) against the minute's TPM, and a reservation of
//! its most cost against the budget. Nothing is consumed when any check fails. When the request
//! ends, [`Limiter::settle`] releases both reservations (the tokens from the minute they were
//! made in), books the tokens actually used in the minute it ends in (a long stream counts
//! against the minute it finishes), frees the slot and adds the actual cost to the period's
//! spend. So parallel requests overshoot a budget by at most one request, and each MCP loop
//! round is admitted the same way ([`Limiter::admit_round`]: TPM and budget only).
//!
//! State lives in memory (one process) or in Redis, where admission and settlement are Lua
//! scripts (no read-modify-write race between replicas). Redis calls are bounded by
//! `limits.redis_timeout`; when Redis fails, `fail_open` enforces the limits in this process's
//! memory instead, `fail_closed` answers 503.

mod memory;
pub mod prices;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Principal;
use crate::config::auth::{BudgetPeriod, FailureMode, LimitsSpec};
use crate::config::Config;
use crate::metrics::Metrics;

/// What an admission checks, in integer units (spend in micro-dollars).
#[derive(Debug, Clone)]
pub struct Ask {
    pub id: String,
    /// Minute window number (Unix minutes).
    pub minute: u64,
    pub period: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
    pub budget_micro: Option<i64>,
    pub budget_period: BudgetPeriod,
    /// Tokens reserved against the minute's TPM.
    pub tokens: u64,
    /// Micro-dollars reserved against the budget.
    pub cost_micro: i64,
    /// Counts one request of the RPM (an MCP loop round does not).
    pub counts_request: bool,
    /// Unique per request: its concurrency lease in Redis.
    pub lease: String,
}

/// What an admission reserves: the most tokens and cost the request can use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reserve {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Counters after an admission (for the `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub requests: u64,
    pub tokens: u64,
    pub spend_micro: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Budget,
    Concurrency,
    Rpm,
    Tpm,
}

/// A request that was let in; settle it when it ends.
#[derive(Debug, Clone)]
pub struct Admission {
    pub ask: Ask,
    /// Decided in memory because Redis failed (settle there too).
    local: bool,
}

/// `x-ratelimit-*` values.
#[derive(Debug, Clone, Copy)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: u64,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: u64,
    /// Seconds until the minute window resets.
    pub reset: u64,
}

#[derive(Debug)]
pub enum Denied {
    Refused(Refusal, RateHeaders),
    /// Redis is down and `fail_closed`.
    Unavailable,
}

/// A backend error (Redis unreachable, timeout, script error).
#[derive(Debug)]
pub struct BackendError(pub String);

pub struct Limiter {
    memory: memory::Memory,
    redis: Option<redis::Redis>,
    failure_mode: FailureMode,
    pub prices: prices::Prices,
    metrics: Option<Arc<Metrics>>,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The budget period's key part: `d<days>`, `w<weeks>`, `m<yyyymm>`, `all`.
pub fn period_key(p: BudgetPeriod, now_secs: u64) -> String {
    // Without `format!`: two of these per admitted request, and it was measurable.
    fn push_digits(s: &mut String, n: u64, width: usize) {
        let mut b = itoa::Buffer::new();
        let digits = b.format(n);
        s.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
        s.push_str(digits);
    }
    let days = now_secs / 86_400;
    let mut s = String::with_capacity(12);
    match p {
        BudgetPeriod::Daily => {
            s.push('d');
            push_digits(&mut s, days, 1);
        }
        // Weeks start on Monday (1970-01-01 was a Thursday).
        BudgetPeriod::Weekly => {
            s.push('w');
            push_digits(&mut s, (days + 3) / 7, 1);
        }
        BudgetPeriod::Monthly => {
            let (y, m) = civil_month(days as i64);
            s.push('m');
            push_digits(&mut s, y.max(0) as u64, 4);
            push_digits(&mut s, u64::from(m), 2);
        }
        BudgetPeriod::Total => s.push_str("all"),
    }
    s
}

/// When the budget period containing `now_secs` began (Unix seconds; 0 for `total`).
pub fn period_start_secs(p: BudgetPeriod, now_secs: u64) -> u64 {
    let days = now_secs / 86_400;
    match p {
        BudgetPeriod::Daily => days * 86_400,
        BudgetPeriod::Weekly => (days - (days + 3) % 7) * 86_400,
        BudgetPeriod::Monthly => {
            let (y, m) = civil_month(days as i64);
            days_from_civil(y, m).max(0) as u64 * 86_400
        }
        BudgetPeriod::Total => 0,
    }
}

/// Seconds until the budget period after `now_secs` begins (`None` for `total`).
pub fn period_reset_secs(p: BudgetPeriod, now_secs: u64) -> Option<u64> {
    let days = now_secs / 86_400;
    let next_day = (days + 1) * 86_400;
    let next = match p {
        BudgetPeriod::Daily => next_day,
        // Weeks start on Monday: day 4 (1970-01-05) was one.
        BudgetPeriod::Weekly => (days + 7 - (days + 3) % 7) * 86_400,
        BudgetPeriod::Monthly => {
            let (y, m) = civil_month(days as i64);
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m) as u64 * 86_400
        }
        BudgetPeriod::Total => return None,
    };
    Some(next.saturating_sub(now_secs))
}

/// Day number of the first day of month `m` of year `y` (inverse of [`civil_month`]).
fn days_from_civil(y: i64, m: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year and month of a day number (days since 1970-01-01), proleptic Gregorian.
fn civil_month(days: i64) -> (i64, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

impl Limiter {
    pub fn from_config(cfg: &Config, metrics: Option<Arc<Metrics>>) -> Limiter {
        Limiter {
            memory: memory::Memory::default(),
            redis: cfg.limits.redis_url.as_ref().map(|u| {
                redis::Redis::new(
                    u.expose(),
                    cfg.limits.redis_timeout.get(),
                    &cfg.limits.redis_prefix,
                )
            }),
            failure_mode: cfg.limits.failure_mode,
            prices: prices::Prices::from_config(cfg),
            metrics,
        }
    }

    /// A principal's spend in its current budget period, from the store's ledger (at start),
    /// in this process's counters.
    pub fn seed_spend_local(&self, id: &str, period: BudgetPeriod, micro: i64) {
        let now = unix_secs();
        self.memory
            .seed_spend(id, now / 60, &period_key(period, now), micro);
    }

    /// The same in Redis, where no replica has a counter yet (never added twice).
    pub async fn seed_spend_shared(&self, id: &str, period: BudgetPeriod, micro: i64) {
        if let Some(r) = &self.redis {
            let now = unix_secs();
            if let Err(e) = r.seed_spend(id, &period_key(period, now), micro).await {
                self.backend_error(&e);
            }
        }
    }

    /// Whether a principal with these limits needs the limiter at all.
    pub fn applies(l: &LimitsSpec) -> bool {
        l.rpm.is_some() || l.tpm.is_some() || l.max_concurrent.is_some() || l.budget_usd.is_some()
    }

    pub async fn admit(
        &self,
        p: &Principal,
        reserve: Reserve,
        request_id: &str,
    ) -> Result<(Admission, RateHeaders), Denied> {
        let l = &p.limits;
        self.admit_ask(p, reserve, request_id, l.rpm, l.max_concurrent, true)
            .await
    }

    /// Admits one more model call of an admitted request (an MCP loop round): its tokens
    /// against TPM and its cost against the budget, no RPM and no concurrency slot. Settle it
    /// with 0 when the request ends (its actual usage is in the request's own settlement).
    pub async fn admit_round(
        &self,
        p: &Principal,
        reserve: Reserve,
    ) -> Result<(Admission, RateHeaders), Denied> {
        let lease = crate::request_id::generate();
        self.admit_ask(p, reserve, &lease, None, None, false).await
    }

    async fn admit_ask(
        &self,
        p: &Principal,
        reserve: Reserve,
        lease: &str,
        rpm: Option<u64>,
        concurrent: Option<u64>,
        counts_request: bool,
    ) -> Result<(Admission, RateHeaders), Denied> {
        let now = unix_secs();
        let l = &p.limits;
        let ask = Ask {
            id: p.id.clone(),
            minute: now / 60,
            period: period_key(l.budget_period, now),
            rpm,
            tpm: l.tpm,
            concurrent,
            budget_micro: l.budget_usd.map(|b| (b * 1e6) as i64),
            budget_period: l.budget_period,
            tokens: reserve.tokens.min(1 << 40),
            // Reserved only against a budget (nothing to hold it against otherwise).
            cost_micro: if l.budget_usd.is_some() {
                usd_to_micro(reserve.cost_usd)
            } else {
                0
            },
            counts_request,
            lease: lease.to_string(),
        };
        let reset = 60 - now % 60;
        let (result, local) = match &self.redis {
            None => (self.memory.admit(&ask), true),
            Some(r) => match r.admit(&ask).await {
                Ok(x) => (x, false),
                Err(e) => {
                    self.backend_error(&e);
                    match self.failure_mode {
                        FailureMode::FailClosed => return Err(Denied::Unavailable),
                        FailureMode::FailOpen => (self.memory.admit(&ask), true),
                    }
                }
            },
        };
        let headers = |c: Counts| RateHeaders {
            limit_requests: ask.rpm,
            remaining_requests: ask.rpm.map_or(0, |l| l.saturating_sub(c.requests)),
            limit_tokens: ask.tpm,
            remaining_tokens: ask.tpm.map_or(0, |l| l.saturating_sub(c.tokens)),
            reset,
        };
        match result {
            Ok(c) => Ok((
                Admission {
                    ask: ask.clone(),
                    local,
                },
                headers(c),
            )),
            Err((r, c)) => {
                if let Some(m) = &self.metrics {
                    let reason = match r {
                        Refusal::Budget => "budget",
                        Refusal::Concurrency => "concurrency",
                        Refusal::Rpm => "rpm",
                        Refusal::Tpm => "tpm",
                    };
                    m.limited.with_label_values(&[reason]).inc();
                }
                Err(Denied::Refused(r, headers(c)))
            }
        }
    }

    /// Ends an admitted request: `tokens` actually used, `cost` in USD. Releases the
    /// reservations and books the usage in the current minute and budget period.
    pub async fn settle(&self, a: &Admission, tokens: u64, cost_usd: f64) {
        let tokens = tokens.min(1 << 40);
        // Never negative, never absurd (a hostile usage report cannot switch a budget off).
        let micro = usd_to_micro(cost_usd);
        if let Some(m) = &self.metrics {
            if cost_usd > 0.0 {
                m.spend
                    .with_label_values(&[crate::proxy::record::bounded_principal(&a.ask.id)])
                    .inc_by(cost_usd);
            }
        }
        let now = unix_secs();
        let at = Settlement {
            tokens,
            micro,
            minute: now / 60,
            period: period_key(a.ask.budget_period, now),
        };
        if a.local {
            self.memory.settle(&a.ask, &at);
            return;
        }
        if let Some(r) = &self.redis {
            if let Err(e) = r.settle(&a.ask, &at).await {
                // The spend is lost for the shared total; keep it locally at least.
                self.backend_error(&e);
                self.memory.settle_spend_only(&a.ask.id, &at);
            }
        }
    }

    /// Spend of this period and this minute's counts, for `GET /v1/usage`.
    pub async fn usage(&self, p: &Principal) -> Result<Counts, BackendError> {
        let now = unix_secs();
        let period = period_key(p.limits.budget_period, now);
        let minute = now / 60;
        match &self.redis {
            Some(r) => r.counts(&p.id, minute, &period).await,
            None => Ok(self.memory.counts(&p.id, minute, &period)),
        }
    }

    fn backend_error(&self, e: &BackendError) {
        log::warn!("limits backend (Redis) failed: {}", e.0);
        if let Some(m) = &self.metrics {
            m.limits_backend_errors.inc();
        }
    }
}

/// What a request used, booked when it ends.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub tokens: u64,
    pub micro: i64,
    /// The minute and budget period the request ends in.
    pub minute: u64,
    pub period: String,
}

/// Dollars as the integer micro-dollars limits, the ledger and stats count (never negative,
/// never absurd).
pub fn usd_to_micro(usd: f64) -> i64 {
    (usd.clamp(0.0, 1e12) * 1e6).round() as i64
}

/// Seconds until the minute window resets (for `Retry-After`).
pub fn retry_after(h: &RateHeaders) -> Duration {
    Duration::from_secs(h.reset.max(1))
}

#[cfg(test)]
mod tests {

    #[test]
    fn period_starts() {
        // 2026-12-02 (a Wednesday) 10:00 UTC.
        let now = 1_796_205_600;
        let day = 1_796_169_600;
        assert_eq!(period_start_secs(BudgetPeriod::Daily, now), day);
        assert_eq!(
            period_start_secs(BudgetPeriod::Weekly, now),
            day - 2 * 86_400
        );
        assert_eq!(period_start_secs(BudgetPeriod::Monthly, now), day - 86_400);
        assert_eq!(period_start_secs(BudgetPeriod::Total, now), 0);
        for p in [
            BudgetPeriod::Daily,
            BudgetPeriod::Weekly,
            BudgetPeriod::Monthly,
        ] {
            let start = period_start_secs(p, now);
            assert_eq!(period_key(p, start), period_key(p, now), "{p:?}");
            assert_ne!(period_key(p, start - 1), period_key(p, now), "{p:?}");
        }
    }
    use super::*;

    #[test]
    fn periods() {
        // 2026-11-21 (a Saturday) 12:00 UTC.
        let t = 1_795_262_400;
        assert_eq!(period_key(BudgetPeriod::Monthly, t), "m202611");
        assert_eq!(
            period_key(BudgetPeriod::Daily, t),
            format!("d{}", t / 86_400)
        );
        assert_eq!(period_key(BudgetPeriod::Total, t), "all");
        // Monday 2026-11-16 and Sunday 2026-11-22 share a week; Monday 23rd does not.
        let mon = period_key(BudgetPeriod::Weekly, t - 5 * 86_400);
        assert_eq!(mon, period_key(BudgetPeriod::Weekly, t + 86_400));
        assert_ne!(mon, period_key(BudgetPeriod::Weekly, t + 2 * 86_400));
        assert_eq!(civil_month(0), (1970, 1));
        // Resets: midnight, next Monday, the 1st of December (UTC).
        assert_eq!(period_reset_secs(BudgetPeriod::Daily, t), Some(12 * 3600));
        assert_eq!(period_reset_secs(BudgetPeriod::Weekly, t), Some(36 * 3600));
        assert_eq!(
            period_reset_secs(BudgetPeriod::Monthly, t),
            Some(9 * 86_400 + 12 * 3600)
        );
        assert_eq!(period_reset_secs(BudgetPeriod::Total, t), None);
        assert_eq!(days_from_civil(1970, 1), 0);
        assert_eq!(civil_month(19_782), (2024, 2)); // 2024-02-29
    }
}
