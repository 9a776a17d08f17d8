//! `GET /admin/v1/requests?key=&model=&status=&request_id=&limit=&cursor=`: recent requests from the
//! store's request log, newest first (`GET /admin/v1/requests/{id}`: one, with its record and,
//! when `store.log_bodies` is on, its bodies).
//!
//! `key` is a key's name or admin id (`key_...`, `config:<name>`); `model` the requested model
//! or `provider/model` as sent upstream; `status` a code (`429`), a class (`4xx`) or `error`
//! (400-599).

use http::Method;
use serde_json::{json, Value};

use super::{control, page_params, rfc3339, store_failed, AdminRequest};
use crate::errors::{ApiError, Code};
use crate::proxy::Gateway;
use crate::store::requests::{RequestFilter, RequestRow};

pub(super) async fn route(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    if req.method != Method::GET {
        return Err(req.not_allowed());
    }
    match &req.parts[1..] {
        [] => list(gw, req).await,
        [id] => one(gw, id).await,
        _ => Err(ApiError::of(Code::NotFound, "Invalid URL")),
    }
}

fn bad(param: &'static str, what: &str) -> ApiError {
    ApiError::of(Code::InvalidValue, format!("{param}: {what}")).param(param)
}

fn row_json(r: &RequestRow, full: bool) -> Value {
    let mut v = json!({"id": r.id, "object": "request", "request_id": r.request_id,
        "created_at": rfc3339(r.at),
        "key": (!r.key_name.is_empty()).then_some(&r.key_name),
        "team": (!r.team.is_empty()).then_some(&r.team),
        "model": r.model, "provider": (!r.provider.is_empty()).then_some(&r.provider),
        "upstream_model": (!r.upstream_model.is_empty()).then_some(&r.upstream_model),
        "status": r.status, "duration_ms": r.duration_ms,
        "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
        "spend_usd": r.spend_micro as f64 / 1e6});
    let record: Value = serde_json::from_str(&r.record).unwrap_or(Value::Null);
    for k in [
        "method",
        "path",
        "ttft_ms",
        "error",
        "client_disconnected",
        "usage_estimated",
    ] {
        v[k] = record.get(k).cloned().unwrap_or(Value::Null);
    }
    if full {
        v["record"] = record;
        v["request_body"] = json!(r.request_body);
        v["response_body"] = json!(r.response_body);
    }
    v
}

/// A key's name from what the caller gave: a name, or an admin id.
fn key_name(gw: &Gateway, given: &str) -> String {
    if let Some(name) = given.strip_prefix("config:") {
        return name.to_string();
    }
    gw.control
        .as_deref()
        .and_then(|cp| {
            cp.keys()
                .iter()
                .find(|k| k.id == given)
                .map(|k| k.name.clone())
        })
        .unwrap_or_else(|| given.to_string())
}

fn status_range(s: &str) -> Option<(i64, i64)> {
    match s {
        "error" => Some((400, 599)),
        _ if s.len() == 3 && s.ends_with("xx") => {
            let c = s[..1].parse::<i64>().ok().filter(|c| (1..=5).contains(c))?;
            Some((c * 100, c * 100 + 99))
        }
        _ => s
            .parse::<i64>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .map(|c| (c, c)),
    }
}

async fn list(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    let cp = control(gw)?;
    if cp.requests.is_none() {
        return Err(ApiError::of(
            Code::InvalidValue,
            "The request log is off (store.request_log_retention = 0)",
        ));
    }
    let (limit, cursor) = page_params(req)?;
    let status = match req.param("status") {
        None => None,
        Some(s) => Some(status_range(&s).ok_or_else(|| {
            bad(
                "status",
                "expected a status code, a class such as 4xx, or error",
            )
        })?),
    };
    let before = match cursor {
        None => None,
        Some(c) => {
            let (at, id) = c
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| bad("cursor", "not a cursor of this list"))?;
            Some((at, id))
        }
    };
    let filter = RequestFilter {
        key_name: req.param("key").map(|k| key_name(gw, &k)),
        request_id: req.param("request_id").filter(|r| !r.is_empty()),
        model: req.param("model").filter(|m| !m.is_empty()),
        status,
        before,
    };
    // One more than asked tells whether there is a next page.
    let mut rows = cp
        .store
        .requests(&filter, limit + 1)
        .await
        .map_err(store_failed)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more
        .then(|| rows.last().map(|r| format!("{}.{}", r.at, r.id)))
        .flatten();
    let data: Vec<Value> = rows.iter().map(|r| row_json(r, false)).collect();
    Ok(json!({"object": "list", "data": data, "next_cursor": next}))
}

async fn one(gw: &Gateway, id: &str) -> Result<Value, ApiError> {
    let cp = control(gw)?;
    match cp.store.request(id).await.map_err(store_failed)? {
        Some(r) => Ok(row_json(&r, true)),
        None => Err(ApiError::of(
            Code::NotFound,
            format!("No request with id '{id}' in the request log"),
        )
        .param("id")),
    }
}
