//! The Responses door's server side (`/v1/responses`): decoding a request with its stored
//! conversation, keeping the answer, and the stored-response routes (`GET`, `DELETE`,
//! `input_items`).
//!
//! State works the same for every provider: a stored response keeps its input items, the
//! conversation before them and its output, so `previous_response_id` expands into the whole
//! conversation and the next turn can go anywhere (an OpenAI-served response continues on
//! Anthropic). The gateway issues its own ids (`resp_gw_...`) and mirrors responses an OpenAI
//! Responses upstream served under that upstream's id; an id it does not know and did not issue
//! is left to such an upstream (created before the gateway, or by another client).
//!
//! Entries belong to the principal that created them (the store's key starts with its id):
//! another key's id is answered 404 exactly like an unknown one. Bounded by
//! `responses.max_entries` / `max_bytes` in memory and `responses.ttl` everywhere; in Redis when
//! `REDIS_URL` is set, so replicas share conversations.

use std::sync::Arc;

use bytes::Bytes;
use filters::doors::responses::{self, ResponseMeta, SealerRef, ID_MARKER};
use http::Method;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::errors::{ApiError, Code};
use crate::exchange::{Inbound, OriginalRequest};
use crate::kv::{Bounds, KvStore};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::seal::SealKey;
use crate::upstream::UpstreamRequest;

pub struct ResponseStore {
    kv: KvStore,
    pub seal: Arc<SealKey>,
}

impl ResponseStore {
    pub fn from_config(cfg: &crate::config::Config) -> ResponseStore {
        let r = &cfg.responses;
        ResponseStore {
            kv: KvStore::new(
                cfg,
                "resp",
                Bounds {
                    ttl: r.ttl.get(),
                    max_bytes: r.max_bytes,
                    max_entries: r.max_entries,
                    // One conversation can be as large as the bytes kept; a bound per entry
                    // keeps one caller from evicting everyone else's at once.
                    max_value: r.max_bytes / 4,
                },
            ),
            seal: Arc::new(
                SealKey::from_config(r.encryption_key.as_ref().map(|k| k.expose()))
                    .expect("validated at load"),
            ),
        }
    }

    fn key(scope: &str, id: &str) -> String {
        // `|` never occurs in a response id or a principal's name prefix.
        format!("{scope}|{id}")
    }

    async fn load(&self, scope: &str, id: &str) -> Option<Stored> {
        let v = self.kv.get(&[Self::key(scope, id)]).await.pop()??;
        serde_json::from_str(&v).ok()
    }
}

/// A stored response.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The response object (with sealed reasoning state the client may not have been shown).
    response: Value,
    /// This turn's own input items (with ids).
    input: Vec<Value>,
    /// The conversation before this turn's input, as it was sent.
    history: Vec<Value>,
    /// The provider that served it.
    #[serde(default)]
    provider: String,
}

/// A Responses request on its way: what encoders and storage need after the exchange.
pub struct Turn {
    pub meta: ResponseMeta,
    input: Vec<Value>,
    history: Vec<Value>,
}

/// The caller's scope: its principal id, or everyone on an open gateway.
fn scope(ctx: &RequestCtx) -> &str {
    ctx.caller.principal.as_ref().map_or("", |p| p.id.as_str())
}

fn not_found(id: &str, param: &'static str) -> ApiError {
    ApiError::of(
        Code::ResponseNotFound,
        format!("Response with id '{id}' not found."),
    )
    .param(param)
}

fn invalid(e: filters::doors::DecodeError) -> ApiError {
    let code = match e.code {
        Some("invalid_encrypted_content") => Code::InvalidEncryptedContent,
        _ => Code::InvalidRequest,
    };
    let mut err = ApiError::of(code, e.message);
    err.param = e.param;
    err
}

/// A configured provider that serves the Responses API itself (where unknown ids may live).
fn native_provider(gw: &Gateway) -> Option<Arc<crate::providers::Provider>> {
    let usable = |p: &&Arc<crate::providers::Provider>| {
        p.responses_native && p.configured && !p.missing_key()
    };
    let p = gw.providers.get("openai").filter(usable);
    p.or_else(|| gw.providers.iter().find(usable)).cloned()
}

/// Decodes a `POST /v1/responses` body: the stored conversation of `previous_response_id`
/// before the input, sealed reasoning opened, the canonical request for the exchange.
pub async fn decode(gw: &Gateway, ctx: &mut RequestCtx, raw: Bytes) -> Result<Inbound, ApiError> {
    let mut body: Map<String, Value> = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::of(
            Code::InvalidJson,
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })?;
    let own: Vec<Value> = match body.get("input") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(ApiError::of(
                Code::InvalidRequest,
                "Invalid type for 'input': expected a string or an array of input items.",
            )
            .param("input"))
        }
    };
    let previous = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::of(
                Code::InvalidRequest,
                "Invalid type for 'previous_response_id': expected a string.",
            )
            .param("previous_response_id"))
        }
    };
    let scope = scope(ctx).to_string();
    let mut history = Vec::new();
    let mut previous_upstream = false;
    let mut relay_thin = None;
    if let Some(id) = &previous {
        match gw.responses.load(&scope, id).await {
            Some(prev) => {
                // Served and stored by a Responses upstream under its own id: that upstream
                // continues from its own state (its reasoning items stay its own).
                let upstream_holds = !id.contains(ID_MARKER)
                    && prev.response.get("store").and_then(Value::as_bool) == Some(true)
                    && gw
                        .providers
                        .get(&prev.provider)
                        .is_some_and(|p| p.responses_native);
                if upstream_holds {
                    relay_thin = Some((prev.provider.clone(), raw.clone()));
                }
                history = prev.history;
                history.extend(prev.input);
                if let Some(Value::Array(out)) = prev.response.get("output") {
                    history.extend(out.iter().cloned());
                }
                body.remove("previous_response_id");
            }
            // Not ours and never issued by us: perhaps the upstream's own.
            None if !id.contains(ID_MARKER) && native_provider(gw).is_some() => {
                previous_upstream = true;
            }
            None => return Err(not_found(id, "previous_response_id")),
        }
    }
    let id = format!("resp{ID_MARKER}{}", uuid::Uuid::new_v4().simple());
    let input = with_ids(own, &id);
    if !history.is_empty() {
        let mut all = history.clone();
        all.extend(input.iter().cloned());
        body.insert("input".into(), Value::Array(all));
    }
    let expanded = Bytes::from(serde_json::to_vec(&body).expect("serializes"));
    let sealer = gw.responses.seal.for_scope(&scope);
    let decoded = responses::decode_request_with(&expanded, Some(&sealer)).map_err(invalid)?;
    let chat = Bytes::from(serde_json::to_vec(&decoded.chat).expect("request serializes"));
    ctx.original = Some(Box::new(OriginalRequest {
        body: expanded,
        dropped: decoded.dropped,
        headers: Vec::new(),
        relay: true,
        hosted_tools: decoded.hosted_tools,
        previous_upstream,
        relay_thin,
    }));
    ctx.responses = Some(Box::new(Turn {
        meta: ResponseMeta {
            id,
            created_at: crate::exchange::unix_now(),
            custom_tools: decoded.custom_tools,
            previous_response_id: previous,
            store: decoded.store,
            sealer: Some(SealerRef(Arc::new(sealer))),
            show_encrypted: decoded.encrypted_reasoning,
        },
        input,
        history,
    }));
    Ok(Inbound {
        body: chat,
        default_provider: None,
        estimate: None,
    })
}

/// Input items as stored: each with an id (`input_items` lists them by id).
fn with_ids(items: Vec<Value>, response_id: &str) -> Vec<Value> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if let Value::Object(m) = &mut item {
                if !m.contains_key("id") {
                    let kind = m.get("type").and_then(Value::as_str).unwrap_or("message");
                    let prefix = match kind {
                        "message" => "msg",
                        "function_call_output" => "fco",
                        _ => "item",
                    };
                    let id = format!("{prefix}_{}_in{i}", &response_id["resp_".len()..]);
                    m.insert("id".into(), Value::String(id));
                }
                if !m.contains_key("type") {
                    m.insert("type".into(), Value::String("message".into()));
                }
            }
            item
        })
        .collect()
}

/// Keeps the answer of a `store: true` request (after it was written to the client; with Redis
/// the write is awaited so the caller's next turn finds it on any replica).
pub async fn keep(gw: &Gateway, ctx: &mut RequestCtx) {
    let Some(turn) = ctx.responses.take() else {
        return;
    };
    let Some(doc) = ctx.answer.document.take() else {
        return;
    };
    if !turn.meta.store || ctx.answer.status >= 400 {
        return;
    }
    let Ok(response) = serde_json::from_slice::<Value>(&doc) else {
        return;
    };
    let Some(id) = response
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return;
    };
    let stored = Stored {
        response,
        input: turn.input,
        history: turn.history,
        provider: ctx.upstream.provider.clone().unwrap_or_default(),
    };
    let text: Arc<str> = Arc::from(serde_json::to_string(&stored).expect("serializes"));
    let key = ResponseStore::key(scope(ctx), &id);
    if let Some(write) = gw.responses.kv.put(vec![(key, text)]) {
        write.await;
    }
}

/// What a stored-response route does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Get,
    Delete,
    InputItems,
}

/// `/v1/responses/{id}` (`GET`, `DELETE`) and `/v1/responses/{id}/input_items` (`GET`), or
/// `None` when the path is not one of them.
pub fn route(method: &Method, path: &str) -> Option<(Action, String)> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, action) = match rest.split_once('/') {
        Some((id, "input_items")) if method == Method::GET => (id, Action::InputItems),
        Some(_) => return None,
        None if method == Method::GET => (rest, Action::Get),
        None if method == Method::DELETE => (rest, Action::Delete),
        None => return None,
    };
    (!id.is_empty()).then(|| (action, id.to_string()))
}

/// Serves a stored-response route.
pub async fn serve(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    action: Action,
    id: &str,
) {
    if let Err(e) = serve_inner(gw, session, ctx, action, id).await {
        respond::error(session, ctx, &e).await;
    }
}

async fn serve_inner(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    action: Action,
    id: &str,
) -> Result<(), ApiError> {
    let scope = scope(ctx).to_string();
    let found = match action {
        Action::Delete => {
            let local = gw
                .responses
                .kv
                .delete(&ResponseStore::key(&scope, id))
                .await;
            let upstream = native_provider(gw).filter(|_| !id.contains(ID_MARKER));
            match (local, upstream) {
                // A mirror: the upstream's copy goes too (its answer is the answer).
                (_, Some(p)) => {
                    let (status, body) = call_upstream(gw, session, ctx, &p).await?;
                    let status = if local { 200 } else { status };
                    let body = if local { deleted(id) } else { body };
                    let _ = respond::json(session, ctx, status, body).await;
                    return Ok(());
                }
                (true, None) => {
                    let _ = respond::json(session, ctx, 200, deleted(id)).await;
                    return Ok(());
                }
                (false, None) => None,
            }
        }
        _ => gw.responses.load(&scope, id).await,
    };
    let Some(stored) = found else {
        if !id.contains(ID_MARKER) {
            if let Some(p) = native_provider(gw) {
                let (status, body) = call_upstream(gw, session, ctx, &p).await?;
                let _ = respond::json(session, ctx, status, body).await;
                return Ok(());
            }
        }
        return Err(not_found(id, "response_id"));
    };
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let body = match action {
        Action::Get => {
            let mut r = stored.response;
            if !query.contains("reasoning.encrypted_content") {
                strip_sealed(&mut r);
            }
            r
        }
        _ => input_items(stored.input, &query)?,
    };
    let _ = respond::json(session, ctx, 200, Bytes::from(body.to_string())).await;
    Ok(())
}

/// Sealed state is shown only when asked for (`include[]=reasoning.encrypted_content`).
fn strip_sealed(r: &mut Value) {
    if let Some(Value::Array(items)) = r.get_mut("output") {
        for i in items {
            if let Value::Object(m) = i {
                m.remove("encrypted_content");
            }
        }
    }
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// One page of a response's input items (OpenAI's `after`, `limit` 1-100 (20), `order`
/// `asc` | `desc` (default)).
fn input_items(mut items: Vec<Value>, query: &str) -> Result<Value, ApiError> {
    let limit = match query_value(query, "limit") {
        None => 20,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::of(
                    Code::InvalidValue,
                    "limit must be an integer between 1 and 100",
                )
                .param("limit")
            })?,
    };
    match query_value(query, "order") {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => {
            return Err(
                ApiError::of(Code::InvalidValue, "order must be asc or desc").param("order"),
            )
        }
    }
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    let start = match query_value(query, "after") {
        None => 0,
        Some(after) => {
            let after = percent_encoding::percent_decode_str(after).decode_utf8_lossy();
            items
                .iter()
                .position(|i| id_of(i).as_deref() == Some(&after))
                .map(|p| p + 1)
                .ok_or_else(|| {
                    ApiError::of(
                        Code::InvalidValue,
                        format!("No input item with id '{after}' in this response"),
                    )
                    .param("after")
                })?
        }
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < items.len();
    Ok(json!({
        "object": "list",
        "data": page,
        "first_id": page.first().and_then(id_of),
        "last_id": page.last().and_then(id_of),
        "has_more": has_more,
    }))
}

fn deleted(id: &str) -> Bytes {
    Bytes::from(json!({"id": id, "object": "response", "deleted": true}).to_string())
}

/// The same route asked of the Responses upstream (an id the gateway does not hold, or the
/// upstream's copy of a mirror being deleted): its status and body (errors in OpenAI's
/// envelope).
async fn call_upstream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    p: &crate::providers::Provider,
) -> Result<(u16, Bytes), ApiError> {
    let req_header = session.req_header();
    let method = req_header.method.clone();
    let suffix = req_header
        .uri
        .path()
        .strip_prefix("/v1/responses")
        .unwrap_or("");
    let path = format!("{}{suffix}", p.responses_path);
    let query = req_header.uri.query().map(str::to_string);
    let path = p.path_and_query(&path, query.as_deref());
    let headers = [(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    )];
    let req = UpstreamRequest {
        method,
        path: &path,
        headers: &headers,
        body: Bytes::new(),
        request_id: &ctx.request_id,
        timeouts: None,
    };
    ctx.upstream.provider = Some(p.name.clone());
    let mut resp = gw
        .client
        .send(p, &req)
        .await
        .map_err(|e| ApiError::upstream(&e, &p.name))?;
    let status = resp.status();
    let body = resp
        .read_all(gw.cfg.client.max_response_body_size)
        .await
        .map_err(|e| ApiError::upstream(&e, &p.name))?;
    gw.client.release(resp).await;
    let body = if status >= 400 {
        Bytes::from(filters::dialects::translate_error(
            filters::dialects::Dialect::Openai,
            status,
            &p.name,
            &body,
        ))
    } else {
        body
    };
    Ok((status, body))
}
