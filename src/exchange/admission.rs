//! Admission: may this caller use this model, how much may the call cost, and do the caller's
//! limits (RPM, TPM, concurrency, budget) let it through.

use filters::json_object::RawObject;
use filters::usage;

use super::plan::model_entry;
use super::Endpoint;
use super::Exchange;
use crate::errors::{ApiError, Code};
use crate::proxy::Gateway;
use crate::routing::Route;

/// Whether `p` may use `route` (requested as `requested`): its model list, and a price when it
/// has a budget (a budget cannot hold if a model costs nothing by omission). `what` names the
/// model in the message (built only for a refusal). Also checked for every fallback.
pub(super) fn model_permitted(
    gw: &Gateway,
    p: &crate::auth::Principal,
    requested: &str,
    route: &Route,
    what: impl Fn() -> String,
) -> Result<(), ApiError> {
    if !p.allows(requested, route) {
        return Err(ApiError::of(
            Code::ModelNotAllowed,
            format!("{} is not allowed for {}", what(), p.name),
        )
        .param("model"));
    }
    if p.limits.budget_usd.is_some()
        && !gw
            .limiter
            .prices
            .has(&route.provider.name, &route.upstream_model)
    {
        return Err(ApiError::of(Code::ModelNotPriced, format!(
                "{} ({}/{}) has no price, so it cannot be charged to {}'s budget (add it to [models.\"provider/model\"] or [prices])",
                what(), route.provider.name, route.upstream_model, p.name
            ))
        .param("model"));
    }
    Ok(())
}

/// The most completion tokens a request may generate: `max_completion_tokens`, else
/// `max_tokens`, else `limits.default_completion_reserve` (never a provider default the gateway
/// adds), times the choices it asks for (`n`, `best_of`). Malformed values are refused here:
/// read leniently they would reserve nothing while the provider (vLLM coerces `"500"` and
/// `500.0`) generates the full amount.
pub(super) fn completion_reserve(
    gw: &Gateway,
    obj: &RawObject<'_>,
    ep: Endpoint,
    route: &Route,
) -> Result<u64, ApiError> {
    if matches!(ep, Endpoint::Embeddings | Endpoint::CountTokens) {
        return Ok(0);
    }
    let limits = &gw.cfg.limits;
    // The larger of the two: an upstream may read either (DeepSeek and others read only
    // `max_tokens`). 0, which some servers read as "their default", reserves the default.
    let mut max_out: Option<u64> = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        let v = obj.get_as::<u64>(field).map_err(|_| {
            ApiError::of(
                Code::InvalidValue,
                format!("Invalid value for '{field}': expected a non-negative integer."),
            )
            .param(field)
        })?;
        max_out = max_out.max(v.filter(|&n| n > 0));
    }
    let mut choices = 1;
    for field in ["n", "best_of"] {
        let v = obj.get_as::<u64>(field).map_err(|_| {
            ApiError::of(
                Code::InvalidValue,
                format!("Invalid value for '{field}': expected a positive integer."),
            )
            .param(field)
        })?;
        match v {
            Some(0) => {
                return Err(ApiError::of(
                    Code::InvalidValue,
                    format!("Invalid value for '{field}': expected a positive integer."),
                )
                .param(field))
            }
            Some(n) if n > limits.max_n => {
                return Err(ApiError::of(
                    Code::InvalidValue,
                    format!(
                    "Invalid value for '{field}': at most {} choices per request on this gateway.",
                    limits.max_n
                ),
                )
                .param(field))
            }
            Some(n) => choices = choices.max(n),
            None => {}
        }
    }
    // The model table may set the default per model (looked up only when it is needed).
    let default = || {
        model_entry(gw, route)
            .and_then(|e| e.completion_reserve)
            .unwrap_or(limits.default_completion_reserve)
    };
    Ok(max_out
        .unwrap_or_else(default)
        .min(1 << 32)
        .saturating_mul(choices))
}

/// What a call of `prompt_bytes` reserves: prompt bytes / 4 plus the completion reserve, and
/// their cost at `route`'s price.
pub(super) fn reserve_for(
    gw: &Gateway,
    route: &Route,
    prompt_bytes: usize,
    completion: u64,
) -> crate::limits::Reserve {
    let prompt = (prompt_bytes as u64).div_ceil(4);
    let usage = usage::Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        ..Default::default()
    };
    crate::limits::Reserve {
        // Capped so a silly max_tokens cannot overflow the counters (it still exceeds any TPM).
        tokens: usage.total_tokens.min(1 << 40),
        cost_usd: gw
            .limiter
            .prices
            .cost(&route.provider.name, &route.upstream_model, &usage),
    }
}

/// The answer to a refused admission (and its `x-ratelimit-*` values).
pub(crate) fn limit_error(
    p: &crate::auth::Principal,
    denied: crate::limits::Denied,
    asked_tokens: u64,
) -> (ApiError, Option<crate::limits::RateHeaders>) {
    use crate::limits::{Denied, Refusal};
    let (r, headers) = match denied {
        Denied::Unavailable => {
            return (
                ApiError::of(
                    Code::LimitsUnavailable,
                    "Rate limits cannot be checked right now (limits backend unavailable)",
                ),
                None,
            )
        }
        Denied::Refused(r, headers) => (r, headers),
    };
    let mut err = match r {
        Refusal::Budget => ApiError::of(Code::InsufficientQuota, format!(
                "You exceeded your current quota: the budget of {} is spent.",
                p.name
            )),
        Refusal::Concurrency => {
            ApiError::of(Code::RateLimitExceeded, format!("Too many concurrent requests for {}.", p.name))
        }
        Refusal::Rpm => ApiError::of(Code::RateLimitExceeded, format!("Rate limit reached for {}: requests per minute.", p.name)),
        Refusal::Tpm => match p.limits.tpm {
            Some(tpm) if asked_tokens > tpm => ApiError::of(Code::RateLimitExceeded, format!(
                    "Request too large for {}: it may use up to {asked_tokens} tokens (prompt, max_tokens x n), more than its limit of {tpm} tokens per minute. Lower max_tokens or n.",
                    p.name
                )),
            _ => ApiError::of(Code::RateLimitExceeded, format!("Rate limit reached for {}: tokens per minute.", p.name)),
        },
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    err.retry_after = match r {
        Refusal::Concurrency => Some(std::time::Duration::from_secs(1)),
        // A budget comes back with its next period (never, for `total`).
        Refusal::Budget => crate::limits::period_reset_secs(p.limits.budget_period, now)
            .map(std::time::Duration::from_secs),
        Refusal::Rpm | Refusal::Tpm => Some(crate::limits::retry_after(&headers)),
    };
    (err, Some(headers))
}

impl<'g> Exchange<'g, '_> {
    /// The caller's limits (keys, OIDC tiers; the model allowance is checked before): 429 or 503
    /// before any upstream call; on success the admission is kept for settlement when the request
    /// ends.
    pub(super) async fn admit(&mut self, route: &Route) -> Result<(), ApiError> {
        let reserve = reserve_for(
            self.gw,
            route,
            self.ctx.prompt_bytes.unwrap_or(self.ctx.bytes_in),
            self.ctx.caller.completion_reserve,
        );
        self.admit_reserve(reserve).await
    }

    /// As [`admit`](Self::admit) for a given reserve (a cache hit reserves nothing: it counts
    /// as a request, never as tokens or spend).
    pub(super) async fn admit_reserve(
        &mut self,
        reserve: crate::limits::Reserve,
    ) -> Result<(), ApiError> {
        let Some(p) = &self.ctx.caller.principal else {
            return Ok(());
        };
        // Every principal is admitted (its spend is recorded even without limits).
        // The concurrency lease is named by the gateway, never by the client's X-Request-Id (a
        // reused id would share one slot).
        match self
            .gw
            .limiter
            .admit(p, reserve, &crate::request_id::generate())
            .await
        {
            Ok((adm, headers)) => {
                // The key's team: its shared limits and budget must admit the request too;
                // when they do not, the key's admission is given back.
                if let Some(team) = p.team_principal() {
                    match self
                        .gw
                        .limiter
                        .admit(&team, reserve, &crate::request_id::generate())
                        .await
                    {
                        Ok((team_adm, _)) => self.ctx.caller.team_admission = Some(team_adm),
                        Err(denied) => {
                            self.gw.limiter.settle(&adm, 0, 0.0).await;
                            let (err, headers) = limit_error(&team, denied, reserve.tokens);
                            if headers.is_some() {
                                self.ctx.caller.rate_headers = headers;
                            }
                            return Err(err);
                        }
                    }
                }
                self.ctx.caller.admission = Some(adm);
                self.ctx.caller.rate_headers = Some(headers);
                Ok(())
            }
            Err(denied) => {
                let (err, headers) = limit_error(p, denied, reserve.tokens);
                if headers.is_some() {
                    self.ctx.caller.rate_headers = headers;
                }
                Err(err)
            }
        }
    }
}
