//! The Responses door's server side (`/v1/responses`): decoding a request with its stored
//! conversation, keeping the answer, and the stored-response routes (`GET`, `DELETE`,
//! `input_items`).
//!
//! State works the same for every provider: a stored response keeps its input items, the
//! conversation before them and its output, so `previous_response_id` expands into the whole
//! conversation and the next turn can go anywhere (an OpenAI-served response continues on
//! Anthropic). The gateway issues its own ids (`resp_gw_...`) and mirrors responses an OpenAI
//! Responses upstream served under that upstream's id; an id it does not know and did not issue
//! is left to such an upstream (created before the gateway, or by another client), unless
//! another caller owns the gateway's mirror of it.
//!
//! Entries belong to the principal that created them (the store's key starts with its id):
//! another key's id is answered 404 exactly like an unknown one. Bounded by
//! `responses.max_entries` / `max_bytes` in memory and `responses.ttl` everywhere; in Redis when
//! `REDIS_URL` is set (then Redis is read first, so a delete on one replica holds for all).
//! Reasoning state is kept opened (`gateway_state`) and sealed again with the serving
//! replica's key when replayed, so stored conversations do not depend on one replica's key.

use std::sync::Arc;

use bytes::Bytes;
use filters::doors::responses::{self, ResponseMeta, Sealer, SealerRef, ID_MARKER, SEAL_PREFIX};
use http::Method;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::errors::{ApiError, Code};
use crate::exchange::{Inbound, OriginalRequest};
use crate::kv::{Bounds, KvStore};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::seal::{ScopedSealer, SealKey};
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
                    // A delete on one replica holds for all.
                    redis_first: true,
                    lru: false,
                },
            ),
            seal: Arc::new(
                SealKey::from_config(r.encryption_key.as_ref().map(|k| k.expose()))
                    .expect("validated at load"),
            ),
        }
    }

    /// Keeps stored responses in the control plane's store (`DATABASE_URL`).
    pub fn use_store(&mut self, store: crate::store::Store) {
        self.kv.use_store(store, "resp");
    }

    fn key(scope: &str, id: &str) -> String {
        // Ids never contain `|` (`valid_id`), so the last `|` splits scope and id.
        format!("{scope}|{id}")
    }

    /// Who owns the gateway's mirror of an upstream's response id (the upstream is never asked
    /// for it on behalf of another caller).
    fn owner_key(id: &str) -> String {
        format!("owner|{id}")
    }

    async fn load(&self, scope: &str, id: &str) -> Option<Stored> {
        let key = [Self::key(scope, id)];
        let mut v = self.kv.get(&key).await.pop()?;
        if v.is_none() && id.contains(ID_MARKER) {
            // A turn sent the instant the previous answer ended can arrive before that answer
            // is kept (the write follows its last byte; with Redis, by a round trip): one more
            // look, a moment later, before answering 404.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            v = self.kv.get(&key).await.pop()?;
        }
        serde_json::from_str(&v?).ok()
    }

    /// Whether another caller owns the mirror of this upstream id.
    async fn owned_by_another(&self, scope: &str, id: &str) -> bool {
        let owner = self.kv.get(&[Self::owner_key(id)]).await.pop().flatten();
        owner.is_some_and(|o| &*o != scope)
    }
}

/// Response ids are at most 128 characters of `[A-Za-z0-9_-]` (OpenAI's and the gateway's):
/// anything else is unknown, and cannot name another caller's entry.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Opened reasoning state as the store keeps it (never read from a client).
const STATE_FIELD: &str = "gateway_state";

/// Opens the gateway's sealed reasoning items for the store.
fn open_state(items: &mut [Value], sealer: &dyn Sealer) {
    for item in items.iter_mut().filter(|i| i["type"] == "reasoning") {
        let Value::Object(m) = item else { continue };
        let opened = m
            .get("encrypted_content")
            .and_then(Value::as_str)
            .filter(|e| e.starts_with(SEAL_PREFIX))
            .and_then(|e| sealer.open(e))
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(state) = opened {
            m.remove("encrypted_content");
            m.insert(STATE_FIELD.into(), state);
        }
    }
}

/// Seals stored reasoning state again, with this replica's key, to replay or show it.
fn seal_state(items: &mut [Value], sealer: &dyn Sealer) {
    for item in items.iter_mut() {
        let Value::Object(m) = item else { continue };
        if let Some(state) = m.remove(STATE_FIELD) {
            let sealed = sealer.seal(state.to_string().as_bytes());
            m.insert("encrypted_content".into(), Value::String(sealed));
        }
    }
}

/// Removes the store's opened state (from a client's items, or from what a client is shown).
fn strip_state(items: &mut [Value]) {
    for item in items.iter_mut() {
        if let Value::Object(m) = item {
            m.remove(STATE_FIELD);
        }
    }
}

/// A stored response.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The response object (reasoning state opened: `gateway_state`), kept as text: most
    /// answers are stored and never read again.
    response: Box<serde_json::value::RawValue>,
    /// This turn's own input items (with ids).
    input: Vec<Value>,
    /// The conversation before this turn's input, as it was sent.
    history: Vec<Value>,
    /// The provider that served it.
    #[serde(default)]
    provider: String,
    /// It continued a conversation only the provider holds (a `previous_response_id` the
    /// gateway never saw): `history` is not the whole conversation, so only that provider can
    /// continue it.
    #[serde(default)]
    partial: bool,
}

/// A Responses request on its way: what encoders and storage need after the exchange.
pub struct Turn {
    pub meta: ResponseMeta,
    input: Vec<Value>,
    history: Vec<Value>,
    partial: bool,
    sealer: Arc<ScopedSealer>,
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

/// What `previous_response_id` brings to a request.
#[derive(Default)]
struct Previous {
    /// Items before the request's own input (reasoning state opened, as stored).
    history: Vec<Value>,
    /// Only a Responses upstream holds (the start of) the conversation.
    upstream_only: bool,
    /// The client's body, for a relay to the provider that holds the conversation itself.
    relay_thin: Option<(String, Bytes)>,
}

async fn previous(gw: &Gateway, scope: &str, id: &str, raw: &Bytes) -> Result<Previous, ApiError> {
    let found = match valid_id(id) {
        true => gw.responses.load(scope, id).await,
        false => None,
    };
    let Some(prev) = found else {
        // Not issued by the gateway and not another caller's: perhaps the upstream's own
        // (created before the gateway, or by another client).
        let upstream_may = valid_id(id)
            && !id.contains(ID_MARKER)
            && native_provider(gw).is_some()
            && !gw.responses.owned_by_another(scope, id).await;
        if !upstream_may {
            return Err(not_found(id, "previous_response_id"));
        }
        return Ok(Previous {
            upstream_only: true,
            ..Default::default()
        });
    };
    let response: Value = serde_json::from_str(prev.response.get()).unwrap_or_default();
    // Served and stored by a Responses upstream under its own id: that upstream continues from
    // its own state (its reasoning items stay its own).
    let upstream_holds = !id.contains(ID_MARKER)
        && response.get("store").and_then(Value::as_bool) == Some(true)
        && gw
            .providers
            .get(&prev.provider)
            .is_some_and(|p| p.responses_native);
    if prev.partial && !upstream_holds {
        // Only that upstream has the start of this conversation.
        return Err(not_found(id, "previous_response_id"));
    }
    let mut history = prev.history;
    history.extend(prev.input);
    if let Some(Value::Array(out)) = response.get("output") {
        history.extend(out.iter().cloned());
    }
    Ok(Previous {
        history,
        upstream_only: prev.partial,
        relay_thin: upstream_holds.then(|| (prev.provider.clone(), raw.clone())),
    })
}

/// Decodes a `POST /v1/responses` body: the stored conversation of `previous_response_id`
/// before the input, sealed reasoning opened, the canonical request for the exchange. The body
/// is parsed once; it is serialized again only when a stored conversation was added to it.
pub async fn decode(gw: &Gateway, ctx: &mut RequestCtx, raw: Bytes) -> Result<Inbound, ApiError> {
    let mut req = responses::parse_request(&raw).map_err(invalid)?;
    let own: Vec<Value> = match &req.input {
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
    // (A wrong type was refused by the typed parse, naming the field.)
    let previous_id = req.previous_response_id.clone().filter(|s| !s.is_empty());
    let scope = scope(ctx).to_string();
    let sealer = Arc::new(gw.responses.seal.for_scope(&scope));
    let prev = match &previous_id {
        Some(id) => previous(gw, &scope, id, &raw).await?,
        None => Previous::default(),
    };
    let expanded = if prev.history.is_empty() && previous_id.is_none() {
        raw
    } else {
        if !prev.history.is_empty() {
            // The stored conversation, its state sealed with this replica's key, then the input.
            let mut all = prev.history.clone();
            seal_state(&mut all, sealer.as_ref());
            all.extend(own.iter().cloned());
            req.input = Some(Value::Array(all));
        }
        if !prev.upstream_only || !prev.history.is_empty() {
            req.previous_response_id = None;
        }
        Bytes::from(serde_json::to_vec(&req).expect("serializes"))
    };
    if !prev.history.is_empty() {
        // Limits and estimates count the whole conversation sent, not the few bytes naming it.
        ctx.prompt_bytes = Some(expanded.len());
    }
    let decoded = responses::decode_parsed(req, Some(sealer.as_ref())).map_err(invalid)?;
    let chat = Bytes::from(serde_json::to_vec(&decoded.chat).expect("request serializes"));
    let id = format!("resp{ID_MARKER}{}", uuid::Uuid::new_v4().simple());
    // Only a response that will be stored needs its input kept.
    let input = match decoded.store {
        true => {
            let mut input = with_ids(own, &id);
            open_state(&mut input, sealer.as_ref());
            input
        }
        false => Vec::new(),
    };
    ctx.original = Some(Box::new(OriginalRequest {
        body: expanded,
        dropped: decoded.dropped,
        headers: Vec::new(),
        relay: true,
        hosted_tools: decoded.hosted_tools,
        native_only: decoded.native_only,
        previous_upstream: prev.upstream_only,
        relay_thin: prev.relay_thin,
    }));
    ctx.responses = Some(Box::new(Turn {
        meta: ResponseMeta {
            id,
            created_at: crate::exchange::unix_now(),
            custom_tools: decoded.custom_tools,
            previous_response_id: previous_id,
            store: decoded.store,
            sealer: Some(SealerRef(sealer.clone())),
            show_encrypted: decoded.encrypted_reasoning,
        },
        input,
        history: prev.history,
        partial: prev.upstream_only,
        sealer,
    }));
    Ok(Inbound {
        body: chat,
        default_provider: None,
        estimate: None,
    })
}

/// Input items as stored: each with an id (`input_items` lists them by id).
fn with_ids(items: Vec<Value>, response_id: &str) -> Vec<Value> {
    let suffix = response_id.strip_prefix("resp").unwrap_or(response_id);
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if let Value::Object(m) = &mut item {
                // The store's own field, never taken from a client.
                m.remove(STATE_FIELD);
                if !m.contains_key("id") {
                    let kind = m.get("type").and_then(Value::as_str).unwrap_or("message");
                    let prefix = match kind {
                        "message" => "msg",
                        "function_call_output" => "fco",
                        _ => "item",
                    };
                    m.insert(
                        "id".into(),
                        Value::String(format!("{prefix}{suffix}_in{i}")),
                    );
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
/// the write is awaited, so the caller's next turn finds it on any replica).
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
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let Some(id) = serde_json::from_slice::<Id<'_>>(&doc)
        .ok()
        .map(|r| r.id.into_owned())
        .filter(|i| valid_id(i))
    else {
        return;
    };
    let has_state = |b: &[u8]| {
        b.windows(SEAL_PREFIX.len())
            .any(|w| w == SEAL_PREFIX.as_bytes())
    };
    let text = if has_state(&doc) {
        // Sealed reasoning state: kept opened (see `STATE_FIELD`).
        let Ok(mut v) = serde_json::from_slice::<Value>(&doc) else {
            return;
        };
        if let Some(Value::Array(out)) = v.get_mut("output") {
            open_state(out, turn.sealer.as_ref());
        }
        v.to_string()
    } else {
        match String::from_utf8(doc.to_vec()) {
            Ok(t) => t,
            Err(_) => return,
        }
    };
    let Ok(response) = serde_json::value::RawValue::from_string(text) else {
        return;
    };
    let stored = Stored {
        response,
        input: turn.input,
        history: turn.history,
        provider: ctx.upstream.provider.clone().unwrap_or_default(),
        partial: turn.partial,
    };
    let text: Arc<str> = Arc::from(serde_json::to_string(&stored).expect("serializes"));
    let scope = scope(ctx);
    let mut items = vec![(ResponseStore::key(scope, &id), text)];
    if !id.contains(ID_MARKER) {
        // A mirror of the upstream's response: its owner, for forwarding decisions.
        items.push((ResponseStore::owner_key(&id), Arc::from(scope)));
    }
    if let Some(write) = gw.responses.kv.put(items) {
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
    if !valid_id(id) {
        return Err(not_found(id, "response_id"));
    }
    let scope = scope(ctx).to_string();
    // An upstream's id is asked of the upstream only for its owner (or when nobody here owns
    // it: created before the gateway, or by another client).
    let allowed = |p: &crate::providers::Provider| {
        ctx.caller
            .principal
            .as_ref()
            .is_none_or(|c| c.may_use_provider(&p.name))
    };
    let upstream = match native_provider(gw) {
        Some(p)
            if !id.contains(ID_MARKER)
                && allowed(&p)
                && !gw.responses.owned_by_another(&scope, id).await =>
        {
            Some(p)
        }
        _ => None,
    };
    let found = match action {
        Action::Delete => {
            let local = gw
                .responses
                .kv
                .delete(&ResponseStore::key(&scope, id))
                .await;
            if local && !id.contains(ID_MARKER) {
                gw.responses.kv.delete(&ResponseStore::owner_key(id)).await;
            }
            let answer = match (local, &upstream) {
                // A mirror: the upstream's copy goes too (its answer, unless ours was here).
                (_, Some(p)) => {
                    let (status, body) = call_upstream(gw, session, ctx, p).await?;
                    Some(if local {
                        (200, deleted(id))
                    } else {
                        (status, body)
                    })
                }
                (true, None) => Some((200, deleted(id))),
                (false, None) => None,
            };
            if let Some((status, body)) = answer {
                let _ = respond::json(session, ctx, status, body).await;
                return Ok(());
            }
            None
        }
        _ => gw.responses.load(&scope, id).await,
    };
    let Some(stored) = found else {
        if let Some(p) = upstream {
            let (status, body) = call_upstream(gw, session, ctx, &p).await?;
            let _ = respond::json(session, ctx, status, body).await;
            return Ok(());
        }
        return Err(not_found(id, "response_id"));
    };
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let body = match action {
        Action::Get => {
            let mut r: Value = serde_json::from_str(stored.response.get()).unwrap_or_default();
            if let Some(Value::Array(out)) = r.get_mut("output") {
                // Sealed state only when asked for (`include[]=reasoning.encrypted_content`).
                if query.contains("reasoning.encrypted_content") {
                    seal_state(out, &gw.responses.seal.for_scope(&scope));
                } else {
                    strip_state(out);
                }
            }
            r
        }
        _ => {
            let mut items = stored.input;
            strip_state(&mut items);
            input_items(items, &query)?
        }
    };
    let _ = respond::json(session, ctx, 200, Bytes::from(body.to_string())).await;
    Ok(())
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
    // Only these routes' parameters: nothing that could replace the provider's own query
    // (Azure's `api-version`).
    let query: Vec<&str> = req_header
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            matches!(
                k,
                "after" | "before" | "limit" | "order" | "include" | "include[]" | "include%5B%5D"
            )
        })
        .collect();
    let query = query.join("&");
    let path = p.path_and_query(&path, Some(query.as_str()).filter(|q| !q.is_empty()));
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
