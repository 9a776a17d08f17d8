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
    genai_metrics(m, ctx, model, &status);
    for name in &ctx.answer.tool_calls {
        let name = bounded(&TOOLS, name);
        m.tool_calls
            .with_label_values(&[provider, model, tool_type(name), name])
            .inc();
    }
}

/// The OpenTelemetry GenAI metrics of a model call (routed API requests only).
fn genai_metrics(m: &Metrics, ctx: &RequestCtx, upstream_model: &str, status: &str) {
    let (Some(op), Some(provider)) = (
        filters::genai::operation(ctx.route),
        ctx.upstream.provider.as_deref(),
    ) else {
        return;
    };
    // A cache hit, or a request refused before it was sent, is no model call.
    if ctx.upstream.calls == 0 {
        return;
    }
    let provider = filters::genai::provider_name(provider);
    let requested = bounded(&MODELS, ctx.model.as_deref().unwrap_or(""));
    let error_type = match ctx.answer.error {
        Some(e) => e,
        None if ctx.answer.status >= 400 => status,
        None => "",
    };
    m.genai_request_duration
        .with_label_values(&[op, provider, requested, upstream_model, error_type])
        .observe(ctx.start.elapsed().as_secs_f64());
    if let Some(t) = ctx.answer.ttft {
        m.genai_ttft
            .with_label_values(&[op, provider, requested, upstream_model, error_type])
            .observe(t.as_secs_f64());
    }
    if let Some(u) = &ctx.answer.usage {
        for (kind, n) in [("input", u.prompt_tokens), ("output", u.completion_tokens)] {
            m.genai_token_usage
                .with_label_values(&[op, provider, requested, upstream_model, kind])
                .observe(n as f64);
        }
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

/// The server span of a traced request, from its finished record: HTTP server attributes and
/// the GenAI conventions' (what was asked, of whom, what it cost, how it ended).
pub fn server_span(
    session: &Session,
    ctx: &RequestCtx,
    trace: &mut crate::otel::Trace,
) -> crate::otel::ServerSpan {
    use crate::otel::Attr;
    let usage = match (&ctx.answer.usage, ctx.answer.estimated_usage) {
        (Some(u), _) => Some((u.prompt_tokens, u.completion_tokens)),
        (None, pc) => pc,
    };
    // The attempt whose answer was relayed ends with the request. With one model call it is
    // that call's usage and finish; the MCP loop's rounds report theirs on the server span only.
    let single_call = ctx.mcp_rounds == 0;
    if let Some(s) = trace.end_open_attempt(std::time::Instant::now()) {
        if single_call {
            if let Some(m) = ctx.answer.model.as_ref().or(ctx.upstream.model.as_ref()) {
                s.set("gen_ai.response.model", m.as_str());
            }
            if let Some((input, output)) = usage {
                s.set("gen_ai.usage.input_tokens", input);
                s.set("gen_ai.usage.output_tokens", output);
            }
            if !ctx.answer.finish_reasons.is_empty() {
                s.set(
                    "gen_ai.response.finish_reasons",
                    Attr::Strs(ctx.answer.finish_reasons.clone()),
                );
            }
        }
        if let Some(e) = ctx.answer.error.filter(|_| !ctx.answer.client_gone) {
            s.set("error.type", e);
            s.error = Some(e.to_string());
        }
    }
    let req = session.req_header();
    let method = method_label(&req.method);
    let mut attrs: Vec<(&'static str, Attr)> = Vec::with_capacity(20);
    attrs.push(("http.request.method", method.into()));
    attrs.push(("url.path", req.uri.path().into()));
    if ctx.route != "other" {
        attrs.push(("http.route", ctx.route.into()));
    }
    attrs.push((
        "http.response.status_code",
        i64::from(ctx.answer.status).into(),
    ));
    if let Some(a) = session.client_addr().and_then(|a| a.as_inet()) {
        attrs.push(("client.address", a.ip().to_string().into()));
    }
    if let Some(ua) = req.headers.get(http::header::USER_AGENT) {
        let ua = String::from_utf8_lossy(ua.as_bytes());
        attrs.push((
            "user_agent.original",
            ua.chars().take(256).collect::<String>().into(),
        ));
    }
    attrs.push(("gateway.request.id", ctx.request_id.as_str().into()));
    if let Some(p) = &ctx.caller.principal {
        attrs.push(("gateway.principal", p.name.as_str().into()));
    }
    if let Some(op) = filters::genai::operation(ctx.route) {
        attrs.push(("gen_ai.operation.name", op.into()));
        if let Some(p) = &ctx.upstream.provider {
            attrs.push((
                "gen_ai.provider.name",
                filters::genai::provider_name(p).into(),
            ));
        }
        if let Some(m) = &ctx.model {
            attrs.push(("gen_ai.request.model", m.as_str().into()));
        }
        if let Some(m) = ctx.answer.model.as_ref().or(ctx.upstream.model.as_ref()) {
            attrs.push(("gen_ai.response.model", m.as_str().into()));
        }
        if let Some((input, output)) = usage {
            attrs.push(("gen_ai.usage.input_tokens", input.into()));
            attrs.push(("gen_ai.usage.output_tokens", output.into()));
            if ctx.answer.usage.is_none() {
                attrs.push(("gateway.usage.estimated", true.into()));
            }
        }
        if !ctx.answer.finish_reasons.is_empty() {
            attrs.push((
                "gen_ai.response.finish_reasons",
                Attr::Strs(ctx.answer.finish_reasons.clone()),
            ));
        }
        if let Some(c) = ctx.cache {
            attrs.push(("gateway.cache", c.as_str().into()));
        }
        if ctx.mcp_rounds > 0 {
            attrs.push(("gateway.mcp.rounds", i64::from(ctx.mcp_rounds).into()));
        }
        if ctx.upstream.calls > 0 {
            attrs.push((
                "gateway.upstream.calls",
                i64::from(ctx.upstream.calls).into(),
            ));
        }
    }
    // HTTP server spans: 5xx are the server's errors, and so is a stream that broke after its
    // 200; a 4xx is the caller's (recorded in `error.type`, status left unset), and so is a
    // client that hung up, as the HTTP conventions say.
    let error_type = match ctx.answer.error {
        Some(e) => Some(e.to_string()),
        None if ctx.answer.status >= 400 => Some(ctx.answer.status.to_string()),
        None => None,
    };
    if let Some(e) = &error_type {
        attrs.push(("error.type", e.as_str().into()));
    }
    let server_fault = ctx.answer.status >= 500
        || (ctx.answer.status < 400 && ctx.answer.error.is_some() && !ctx.answer.client_gone);
    let error = error_type.filter(|_| server_fault);
    crate::otel::ServerSpan {
        name: if ctx.route == "other" {
            method.to_string()
        } else {
            format!("{method} {}", ctx.route)
        },
        attrs,
        error,
    }
}
