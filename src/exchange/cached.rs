//! The response cache in the exchange: the lookup after permissions and before admission, a
//! hit answered in the door's format (as a stream when one was asked for), and the answer
//! kept once it is complete (`relay` calls [`keep`] for whole bodies and finished streams).
//! Errors, Responses relays and tool-loop answers are never kept; Messages relays to Anthropic
//! are kept in canonical form (translated beside the relay).

use std::sync::Arc;

use bytes::Bytes;
use filters::dialects::Dialect;
use filters::json_object::RawObject;
use serde_json::Value;

use super::client::{gateway_headers, ClientStream};
use super::plan::Plan;
use super::relay::door_encoder;
use super::{Endpoint, Exchange};
use crate::cache::Status;
use crate::errors::{ApiError, Code};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::routing::Route;

/// `Cache-Control` of the request: (`no-cache`: skip the lookup, `no-store`: do not keep).
fn cache_control(session: &pingora::proxy::Session) -> (bool, bool) {
    let mut out = (false, false);
    for v in session
        .req_header()
        .headers
        .get_all(http::header::CACHE_CONTROL)
    {
        for d in v.to_str().unwrap_or("").split(',') {
            match d.trim().to_ascii_lowercase().as_str() {
                "no-cache" => out.0 = true,
                "no-store" => out.1 = true,
                _ => {}
            }
        }
    }
    out
}

fn stream_requested(obj: &RawObject<'_>) -> bool {
    obj.get_as::<bool>("stream").ok().flatten().unwrap_or(false)
}

fn usage_requested(obj: &RawObject<'_>) -> bool {
    obj.get_as::<Value>("stream_options")
        .ok()
        .flatten()
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false)
}

fn count(gw: &Gateway, ctx: &mut RequestCtx, s: Status) {
    ctx.cache = Some(s);
    if let Some(m) = &gw.metrics {
        m.cache_lookups.with_label_values(&[s.as_str()]).inc();
    }
}

/// Keeps a complete canonical answer under the request's key (a miss that may be stored).
pub(super) fn keep(gw: &Gateway, ctx: &mut RequestCtx, body: &[u8]) {
    let (Some(cache), Some(key)) = (&gw.cache, ctx.cache_key.take()) else {
        return;
    };
    if cache.put(key, body) {
        if let Some(m) = &gw.metrics {
            m.cache_stored_bytes
                .with_label_values::<&str>(&[])
                .inc_by(body.len() as u64);
        }
    }
}

impl<'g> Exchange<'g, '_> {
    /// Looks the request up: the entry when there is one. Sets `x-gateway-cache` and, for a
    /// miss that may be stored, the key `keep` stores under. `will_loop`: the MCP loop answers
    /// this request (never cached: its answer depends on tools, not only on the request).
    pub(super) async fn cache_lookup(
        &mut self,
        ep: Endpoint,
        raw: &[u8],
        obj: &RawObject<'_>,
        route: &Route,
        will_loop: bool,
    ) -> Option<Arc<str>> {
        let cache = self.gw.cache.clone()?;
        let label = match ep {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::CountTokens => return None,
        };
        // Legacy completions are kept whole only (their stream has no canonical fold).
        if will_loop || (ep == Endpoint::Completions && stream_requested(obj)) {
            count(self.gw, self.ctx, Status::Bypass);
            return None;
        }
        // Relayed in its door's own API with fields the canonical form cannot carry, the request
        // is more than its canonical form: neither looked up nor kept under it.
        let door = self.ctx.door;
        let beyond_canonical = self
            .ctx
            .original
            .as_ref()
            .is_some_and(|o| o.relays_to(door, &route.provider) && !o.dropped.is_empty());
        if beyond_canonical {
            count(self.gw, self.ctx, Status::Bypass);
            return None;
        }
        let (no_cache, no_store) = cache_control(self.session);
        let principal = self.ctx.caller.principal.as_ref().map(|p| p.id.as_str());
        // Answers checked by one guardrail profile never serve callers of another (a shared
        // scope mixes callers).
        let label = match &self.ctx.output_guard {
            Some(p) => format!("{label}|guardrails:{}", p.name),
            None => label.to_string(),
        };
        let Some(key) = cache.key(
            principal,
            &label,
            &route.provider.name,
            &route.upstream_model,
            raw,
        ) else {
            count(self.gw, self.ctx, Status::Bypass);
            return None;
        };
        if no_cache {
            count(self.gw, self.ctx, Status::Bypass);
            if !no_store {
                self.ctx.cache_key = Some(key);
            }
            return None;
        }
        match cache.get(&key).await {
            Some(entry) => {
                count(self.gw, self.ctx, Status::Hit);
                Some(entry)
            }
            None => {
                count(self.gw, self.ctx, Status::Miss);
                if !no_store {
                    self.ctx.cache_key = Some(key);
                }
                None
            }
        }
    }

    /// Answers a hit: the entry in the door's format, whole or as a stream (one chunk with the
    /// message, the usage chunk when asked for, one `[DONE]`). Nothing is charged: the caller's
    /// admission counted the request, and no usage is recorded against it; the tokens and
    /// dollars it saved are counted in the metrics.
    pub(super) async fn serve_hit(
        &mut self,
        obj: &RawObject<'_>,
        route: &Route,
        entry: Arc<str>,
    ) -> Result<(), ApiError> {
        let stream = stream_requested(obj);
        let include_usage = usage_requested(obj);
        // Zero usage, not none: nothing is estimated from bytes and charged for a hit.
        self.ctx.answer.usage = Some(filters::usage::Usage::default());
        if let (Some(m), Some(u)) = (
            &self.gw.metrics,
            filters::usage::from_response_body(entry.as_bytes()),
        ) {
            m.cache_tokens_saved
                .with_label_values(&["prompt"])
                .inc_by(u.prompt_tokens);
            m.cache_tokens_saved
                .with_label_values(&["completion"])
                .inc_by(u.completion_tokens);
            let usd = self
                .gw
                .limiter
                .prices
                .cost(&route.provider.name, &route.upstream_model, &u);
            if usd > 0.0 {
                m.cache_saved_usd.inc_by(usd);
            }
        }
        let plan = Plan {
            dialect: Dialect::Openai,
            path: String::new(),
            body: Bytes::new(),
            stream,
            strip_usage_chunk: false,
            client_include_usage: include_usage,
            dropped: Vec::new(),
            json_tool: None,
            relayed: None,
            headers: Vec::new(),
        };
        if !stream {
            let body =
                super::relay::door_body(self.ctx, &plan, Bytes::copy_from_slice(entry.as_bytes()))?;
            let mut map = respond::header_map("application/json", self.ctx);
            gateway_headers(&mut map, self.ctx, route, &plan);
            let h = respond::finish_header(200, map, self.ctx);
            if respond::full(self.session, self.ctx, h, body)
                .await
                .is_err()
            {
                self.ctx.answer.client_gone = true;
            }
            return Ok(());
        }
        let mut whole: serde_json::Map<String, Value> =
            serde_json::from_str(&entry).map_err(|_| unreadable())?;
        if !include_usage {
            whole.remove("usage");
        }
        let whole = serde_json::to_vec(&whole).map_err(|_| unreadable())?;
        let sse = filters::tool_loop::completion_as_sse(&whole).ok_or_else(unreadable)?;
        let mut out = ClientStream::new(door_encoder(self.ctx, route, &plan));
        if !out
            .send_headers(self.gw, self.session, self.ctx, route, &plan)
            .await
        {
            return Ok(());
        }
        out.buf.extend_from_slice(&sse);
        out.flush(self.session, self.ctx, true).await;
        self.ctx.answer.generation = out.generation();
        Ok(())
    }
}

/// A stored entry that cannot be replayed (never expected: only complete answers are kept).
fn unreadable() -> ApiError {
    ApiError::of(
        Code::InternalError,
        "a cached answer could not be read; retry with Cache-Control: no-cache",
    )
}
