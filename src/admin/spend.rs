//! `GET /admin/v1/spend?group_by=key|team|model|day|hour&from=&to=`: spend and tokens from the
//! store's ledger (hourly totals; a request is in it within about a second of its end).

use serde_json::{json, Value};

use super::{control, store_failed, AdminRequest};
use crate::errors::{ApiError, Code};
use crate::proxy::Gateway;
use crate::store::ledger::GroupBy;

/// A time as Unix seconds: RFC 3339, or a date (`2026-12-01`, its midnight UTC).
fn parse_time(field: &'static str, v: &str) -> Result<u64, ApiError> {
    let t = if v.len() == 10 {
        humantime::parse_rfc3339_weak(&format!("{v}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339_weak(v)
    };
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            ApiError::of(
                Code::InvalidValue,
                format!("{field}: expected an RFC 3339 time or a date (YYYY-MM-DD), UTC"),
            )
            .param(field)
        })
}

pub(super) async fn report(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    if req.method != http::Method::GET {
        return Err(req.not_allowed());
    }
    let cp = control(gw)?;
    let (by, name) = match req.param("group_by").as_deref().unwrap_or("key") {
        "key" => (GroupBy::Key, "key"),
        "team" => (GroupBy::Team, "team"),
        "model" => (GroupBy::Model, "model"),
        "day" => (GroupBy::Day, "day"),
        "hour" => (GroupBy::Hour, "hour"),
        _ => {
            return Err(ApiError::of(
                Code::InvalidValue,
                "group_by: expected key, team, model, day or hour",
            )
            .param("group_by"))
        }
    };
    let now = crate::store::now_ms() as u64 / 1000;
    let to = match req.param("to") {
        Some(v) => parse_time("to", &v)?,
        None => now + 1,
    };
    let from = match req.param("from") {
        Some(v) => parse_time("from", &v)?,
        None => to.saturating_sub(30 * 86_400),
    };
    if from >= to {
        return Err(ApiError::of(Code::InvalidValue, "from must be before to").param("from"));
    }
    // Whole hours: the ledger's grain (an hour that `to` cuts into is included).
    let groups = cp
        .store
        .spend_report(by, (from / 3600) as i64, to.div_ceil(3600) as i64)
        .await
        .map_err(store_failed)?;
    let mut total = (0i64, 0i64, 0i64, 0i64);
    let data: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            total.0 += g.requests;
            total.1 += g.prompt_tokens;
            total.2 += g.completion_tokens;
            total.3 += g.spend_micro;
            let label = match by {
                GroupBy::Day => {
                    let day = g.group.parse::<u64>().unwrap_or(0);
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(day * 86_400);
                    Value::String(humantime::format_rfc3339(t).to_string()[..10].to_string())
                }
                GroupBy::Hour => {
                    let hour = g.group.parse::<u64>().unwrap_or(0);
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(hour * 3600);
                    Value::String(humantime::format_rfc3339(t).to_string())
                }
                GroupBy::Key => Value::String(
                    g.group
                        .strip_prefix("key:")
                        .unwrap_or(&g.group)
                        .to_string(),
                ),
                _ => Value::String(g.group.clone()),
            };
            let mut v = json!({name: label, "requests": g.requests, "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens, "spend_usd": g.spend_micro as f64 / 1e6});
            if by == GroupBy::Key {
                v["principal"] = Value::String(g.group);
            }
            v
        })
        .collect();
    let at = |s: u64| {
        humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .to_string()
    };
    Ok(json!({
        "object": "spend_report", "group_by": name, "from": at(from), "to": at(to), "data": data,
        "total": {"requests": total.0, "prompt_tokens": total.1, "completion_tokens": total.2,
            "spend_usd": total.3 as f64 / 1e6},
    }))
}
