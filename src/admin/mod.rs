//! The admin API (`/admin/v1`): the control plane's keys at run time, in JSON, with the
//! OpenAI-style error envelope. It exists only when an admin credential is configured
//! (`ADMIN_API_KEY`); every route then needs it (`X-Admin-Key` or `Authorization: Bearer`,
//! compared in constant time). Writes go to the store (`DATABASE_URL`) and the replica's
//! snapshot is refreshed at once; other replicas follow within a second (`crate::control`).

mod catalog;
mod keys;
mod requests;
mod spend;
mod teams;

use bytes::Bytes;
use http::Method;
use pingora::proxy::Session;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::control::ControlPlane;
use crate::errors::{ApiError, Code};
use crate::proxy::{body, respond, Gateway, RequestCtx};

/// Largest admin request body (a key is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// Serves a request under `/admin/`; every answer is written here.
pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    if let Err(e) = serve(gw, session, ctx).await {
        respond::error(session, ctx, &e).await;
    }
}

async fn serve(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let path = session.req_header().uri.path().to_string();
    let method = session.req_header().method.clone();
    // Without an admin credential the admin API does not exist.
    if !gw.cfg.admin_api() {
        return Err(ApiError::of(
            Code::NotFound,
            format!("Invalid URL ({method} {path})"),
        ));
    }
    let actor = authenticate(gw, &session.req_header().headers).await?;
    let rest = path.strip_prefix("/admin/v1/").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let req = AdminRequest {
        actor: &actor,
        method: &method,
        parts: &parts,
        query: &query,
        client: &client,
    };
    let (status, body) = match parts.first().copied() {
        Some("keys") => keys::route(gw, session, ctx, &req).await?,
        Some("teams") => teams::route(gw, session, ctx, &req).await?,
        Some("providers") => {
            catalog::route(
                gw,
                session,
                ctx,
                &req,
                crate::store::catalog::Kind::Provider,
            )
            .await?
        }
        Some("models") => {
            catalog::route(gw, session, ctx, &req, crate::store::catalog::Kind::Model).await?
        }
        Some("requests") => (200, requests::route(gw, &req).await?),
        Some("spend") if parts.len() == 1 => (200, spend::report(gw, &req).await?),
        Some("audit") if parts.len() == 1 => (200, audit(gw, &req).await?),
        Some("health") if parts.len() == 1 => (200, health(gw, &req)?),
        Some("stats") if parts.len() == 1 => {
            if method != Method::GET {
                return Err(req.not_allowed());
            }
            let stats = gw.stats.as_deref().map(crate::stats::Stats::listing);
            (200, stats.unwrap_or(Value::Null))
        }
        _ => {
            return Err(ApiError::of(
                Code::NotFound,
                format!("Invalid URL ({method} {path})"),
            ))
        }
    };
    let body = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
    let _ = respond::json(session, ctx, status, body).await;
    Ok(())
}

struct AdminRequest<'a> {
    /// Who is asking: `admin-key`, or `oidc:<subject>` (an admin claim).
    actor: &'a str,
    method: &'a Method,
    parts: &'a [&'a str],
    query: &'a str,
    /// The caller's address (for the audit log).
    client: &'a str,
}

impl AdminRequest<'_> {
    /// An audit record of a change made by this request (the admin key is the actor).
    fn audit(&self, action: &str, target: &str, detail: Value) -> crate::store::audit::AuditEntry {
        crate::store::audit::AuditEntry::new(
            self.actor,
            self.client,
            action,
            target,
            detail.to_string(),
        )
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }

    fn not_allowed(&self) -> ApiError {
        ApiError::of(
            Code::MethodNotAllowed,
            format!("Method {} is not allowed here", self.method),
        )
    }
}

/// The admin credential, from `X-Admin-Key` or `Authorization: Bearer`: the admin key
/// (compared in constant time, as digests, so the length does not leak either), or an OIDC
/// token carrying `admin.oidc_claim`. Answers who it is, for the audit log.
async fn authenticate(gw: &Gateway, headers: &http::HeaderMap) -> Result<String, ApiError> {
    let sent = headers
        .get("x-admin-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(sent) = sent else {
        return Err(ApiError::of(
            Code::InvalidAdminKey,
            "The admin API needs the admin key (X-Admin-Key or Authorization: Bearer)",
        ));
    };
    if let Some(expected) = gw.cfg.admin.key() {
        let d = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
        if bool::from(d(sent).as_ref().ct_eq(d(expected).as_ref())) {
            return Ok("admin-key".into());
        }
    }
    let claim = gw
        .cfg
        .admin
        .oidc_claim
        .as_deref()
        .and_then(|c| c.split_once('='));
    if let (Some((name, wanted)), Some(oidc)) = (claim, &gw.auth.oidc) {
        if crate::auth::oidc::looks_like_jwt(sent) {
            let claims = oidc
                .verify(sent)
                .await
                .map_err(|e| ApiError::of(Code::InvalidAdminKey, e.message))?;
            let holds = match claims.get(name) {
                Some(Value::String(s)) => s == wanted,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(wanted)),
                _ => false,
            };
            if !holds {
                return Err(ApiError::of(
                    Code::InvalidAdminKey,
                    format!("The token does not carry the admin claim ({name})"),
                ));
            }
            let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("?");
            return Ok(format!("oidc:{subject}"));
        }
    }
    Err(ApiError::of(Code::InvalidAdminKey, "Incorrect admin key"))
}

/// The control plane, or 503 naming what is missing.
fn control(gw: &Gateway) -> Result<&ControlPlane, ApiError> {
    gw.control.as_deref().ok_or_else(|| {
        ApiError::of(
            Code::StoreUnavailable,
            "This route needs a store: set DATABASE_URL (sqlite://path or postgres://...)",
        )
    })
}

/// The request's JSON object (at most `MAX_BODY` bytes).
async fn json_body(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Map<String, Value>, ApiError> {
    let limit = gw.cfg.server.body_timeout.get();
    let raw = tokio::time::timeout(limit, body::read_limited(session, MAX_BODY))
        .await
        .map_err(|_| {
            session.set_keepalive(None);
            ApiError::of(Code::BodyTimeout, "Timed out reading the request body")
        })??;
    ctx.bytes_in = raw.len();
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::of(
            Code::InvalidJson,
            "The request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::of(
            Code::InvalidJson,
            format!("We could not parse the JSON body of your request: {e}"),
        )),
    }
}

/// `limit` (default 100, at most 1,000) and `cursor` of a list.
fn page_params(req: &AdminRequest<'_>) -> Result<(usize, Option<String>), ApiError> {
    let limit = match req.param("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::of(
                    Code::InvalidValue,
                    "limit must be an integer from 1 to 1000",
                )
                .param("limit")
            })?,
    };
    Ok((limit, req.param("cursor").filter(|c| !c.is_empty())))
}

/// One page of `items` (each with an `id`) after `cursor`: `{"data", "next_cursor"}`.
fn page(items: Vec<Value>, limit: usize, cursor: Option<&str>) -> Result<Value, ApiError> {
    let start = match cursor {
        None => 0,
        Some(c) => {
            items
                .iter()
                .position(|i| i["id"].as_str() == Some(c))
                .ok_or_else(|| {
                    ApiError::of(
                        Code::InvalidValue,
                        "cursor does not name an item of this list",
                    )
                    .param("cursor")
                })?
                + 1
        }
    };
    let rest = items.len().saturating_sub(start);
    let data: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let next = (rest > data.len())
        .then(|| {
            data.last()
                .and_then(|i| i["id"].as_str())
                .map(str::to_string)
        })
        .flatten();
    Ok(serde_json::json!({"object": "list", "data": data, "next_cursor": next}))
}

/// `GET /admin/v1/health`: this replica's providers and backends (health, ejections, in
/// flight, latency), MCP servers (whatever `MCP_EXPOSE` says), the store, version and uptime:
/// what the UI and the CLI show.
fn health(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    if req.method != Method::GET {
        return Err(req.not_allowed());
    }
    let providers: Map<String, Value> = gw
        .pools
        .all()
        .iter()
        .filter(|p| p.slots.iter().any(|s| s.provider.configured))
        .map(|p| (p.name.clone(), p.describe()))
        .collect();
    let (mcp, mcp_tools) = gw.mcp.as_ref().map_or_else(
        || (Value::Array(Vec::new()), Value::Array(Vec::new())),
        |hub| {
            let mut listing = hub.tools_listing();
            (listing["servers"].take(), listing["data"].take())
        },
    );
    Ok(serde_json::json!({
        "object": "health",
        "status": if crate::drain::draining() { "draining" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": crate::drain::uptime().as_secs(),
        "providers": providers,
        "mcp_servers": mcp,
        "mcp_tools": mcp_tools,
        "a2a_agents": gw.a2a.as_ref().map_or(Value::Array(Vec::new()), |h| h.listing()["data"].clone()),
        "store": gw.control.as_deref().map(ControlPlane::describe),
    }))
}

/// `GET /admin/v1/audit?limit=&cursor=`: changes made through the admin API, newest first.
async fn audit(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    if req.method != Method::GET {
        return Err(req.not_allowed());
    }
    let cp = control(gw)?;
    let (limit, cursor) = page_params(req)?;
    let before = match cursor {
        None => None,
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| {
                    ApiError::of(Code::InvalidValue, "cursor is not one this list gave")
                        .param("cursor")
                })?,
        ),
    };
    let rows = cp
        .store
        .audit(limit + 1, before)
        .await
        .map_err(store_failed)?;
    let more = rows.len() > limit;
    let data: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|e| {
            serde_json::json!({"id": e.id, "object": "audit_entry", "at": rfc3339(e.at),
                "actor": e.actor, "client": e.client, "action": e.action, "target": e.target,
                "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null)})
        })
        .collect();
    let next = more
        .then(|| rows.get(limit - 1).map(|e| format!("{}.{}", e.at, e.id)))
        .flatten();
    Ok(serde_json::json!({"object": "list", "data": data, "next_cursor": next}))
}

/// Unix milliseconds as RFC 3339.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn store_failed(e: crate::store::StoreError) -> ApiError {
    log::warn!("admin API: store failed: {e}");
    ApiError::of(
        Code::StoreUnavailable,
        "The store could not be reached; nothing was changed",
    )
}
