//! Turns the finished per-request record into metric updates (called once, from `logging`).

use std::collections::HashSet;
use std::sync::Mutex;

use once_cell::sync::Lazy;
use pingora::proxy::Session;

use crate::metrics::{tool_type, Metrics};
use crate::proxy::RequestCtx;

pub fn metrics(m: &Metrics, session: &Session, ctx: &RequestCtx) {
    let provider = ctx.upstream.provider.as_deref().unwrap_or("");
    let method = method_label(&session.req_header().method);
    let status = ctx.answer.status.to_string();
    let labels = [provider, method, ctx.route, status.as_str()];
    m.requests.with_label_values(&labels).inc();
    if !ctx.answer.client_gone || ctx.answer.status != 0 {
        m.responses.with_label_values(&labels).inc();
    }
    let elapsed = ctx.start.elapsed();
    m.request_duration
        .with_label_values(&labels)
        .observe(elapsed.as_secs_f64() * 1000.0);
    // Time in the model and in MCP tools is not the gateway's.
    let overhead = elapsed.saturating_sub(ctx.upstream.wait + ctx.tool_wait);
    m.gateway_overhead
        .with_label_values(&[ctx.route])
        .observe(overhead.as_secs_f64());
    m.request_body_bytes
        .with_label_values(&[ctx.route])
        .observe(ctx.bytes_in as f64);
    m.response_body_bytes
        .with_label_values(&[ctx.route])
        .observe(ctx.answer.bytes_out as f64);

    if ctx.upstream.calls > 0 {
        m.upstream_attempts
            .with_label_values(&[provider])
            .inc_by(u64::from(ctx.upstream.calls));
        if ctx.upstream.retries > 0 {
            m.upstream_retries
                .with_label_values(&[provider, "stale_connection"])
                .inc_by(u64::from(ctx.upstream.retries));
        }
        if let Some(reason) = ctx.upstream.failure {
            m.upstream_failures
                .with_label_values(&[provider, reason])
                .inc();
        }
    }

    let model = bounded(
        &MODELS,
        ctx.upstream
            .model
            .as_deref()
            .or(ctx.model.as_deref())
            .unwrap_or(""),
    );
    let tm = [provider, model];
    let completion = match (&ctx.answer.usage, ctx.answer.estimated_usage) {
        (Some(u), _) => {
            m.prompt_tokens
                .with_label_values(&tm)
                .inc_by(u.prompt_tokens);
            m.completion_tokens
                .with_label_values(&tm)
                .inc_by(u.completion_tokens);
            m.total_tokens.with_label_values(&tm).inc_by(u.total_tokens);
            Some(u.completion_tokens)
        }
        (None, Some((p, c))) => {
            m.estimated_prompt_tokens
                .with_label_values(&[provider, model, "true"])
                .inc_by(p);
            m.estimated_completion_tokens
                .with_label_values(&[provider, model, "true"])
                .inc_by(c);
            Some(c)
        }
        (None, None) => None,
    };
    if let Some(t) = ctx.answer.ttft {
        m.ttft.with_label_values(&tm).observe(t.as_secs_f64());
    }
    // Generation speed: streams from the first event to the end; otherwise the whole call.
    let gen_time = ctx.answer.generation.unwrap_or(ctx.upstream.wait);
    if let Some(c) = completion.filter(|c| *c > 0) {
        if gen_time.as_secs_f64() > 0.0 {
            m.output_tokens_per_second
                .with_label_values(&tm)
                .observe(c as f64 / gen_time.as_secs_f64());
        }
    }
    for name in &ctx.answer.tool_calls {
        let name = bounded(&TOOLS, name);
        m.tool_calls
            .with_label_values(&[provider, model, tool_type(name), name])
            .inc();
    }
}

/// The HTTP method as a metric label: the standard methods by name, anything else `other`
/// (clients can send any token as a method; each would be a new series).
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Model names and tool names come from clients and models: past this many distinct values a
/// label becomes `other`, so a client cannot grow the metrics without bound.
const MAX_LABEL_VALUES: usize = 1000;
static MODELS: Lazy<Mutex<HashSet<String>>> = Lazy::new(Default::default);
static TOOLS: Lazy<Mutex<HashSet<String>>> = Lazy::new(Default::default);
static PRINCIPALS: Lazy<Mutex<HashSet<String>>> = Lazy::new(Default::default);

/// A model name as a metric label (bounded).
pub fn bounded_model(value: &str) -> &str {
    bounded(&MODELS, value)
}

/// A principal (key or OIDC subject) as a metric label (bounded).
pub fn bounded_principal(value: &str) -> &str {
    bounded(&PRINCIPALS, value)
}

/// A tool name as a metric label (bounded).
pub fn bounded_tool(value: &str) -> &str {
    bounded(&TOOLS, value)
}

fn bounded<'a>(seen: &Mutex<HashSet<String>>, value: &'a str) -> &'a str {
    let mut seen = seen.lock().expect("label set");
    if seen.contains(value) {
        return value;
    }
    if seen.len() < MAX_LABEL_VALUES {
        seen.insert(value.to_string());
        return value;
    }
    "other"
}
