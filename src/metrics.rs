//! Prometheus metrics: the Go gateway's metric names, labels and buckets (dashboards built for it
//! keep working), plus what an LLM gateway operator needs beyond them.
//!
//! Everything is recorded from one per-request record (`RequestCtx`) in `logging()`, except the
//! per-chunk inter-token latency and the active-streams gauge, which the stream loop updates.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The seed's buckets for durations in milliseconds.
const MS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
// Metrics beyond the seed use base units (seconds), as Prometheus conventions and promtool ask.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Time the gateway itself spends per request.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];
const TPS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2500.0,
];
const BYTES_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

// The GenAI semantic conventions' advised bucket boundaries.
const GENAI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const GENAI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const GENAI_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The conventions' attributes as labels (dots become underscores, as their Prometheus
/// exporter writes them).
const GENAI_LABELS: &[&str] = &[
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "error_type",
];
const GENAI_TOKEN_LABELS: &[&str] = &[
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_token_type",
];

pub const REQUEST_LABELS: &[&str] = &["provider", "request_method", "request_path", "status_code"];
const TOKEN_LABELS: &[&str] = &["provider", "model"];
const TOOL_LABELS: &[&str] = &["provider", "model", "tool_type", "tool_name"];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub request_duration: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub completion_tokens: IntCounterVec,
    pub total_tokens: IntCounterVec,
    pub estimated_prompt_tokens: IntCounterVec,
    pub estimated_completion_tokens: IntCounterVec,
    pub tool_calls: IntCounterVec,
    // Success/failure/duration apply to tool calls the gateway executes itself (the MCP loop);
    // tool calls returned to clients are counted in `tool_calls` only.
    pub tool_calls_success: IntCounterVec,
    pub tool_calls_failure: IntCounterVec,
    pub tool_call_duration: HistogramVec,
    /// 1 while the MCP server is connected.
    pub mcp_server_up: IntGaugeVec,
    /// Tools the MCP server offers (after include/exclude).
    pub mcp_tools: IntGaugeVec,
    /// 1 while a backend of a pool takes traffic (not ejected, not failing health checks).
    pub backend_up: IntGaugeVec,
    /// Requests served by a fallback model, by primary and serving provider.
    pub fallbacks: IntCounterVec,
    /// Requests refused by load shedding (503).
    pub shed: IntCounterVec,
    /// Requests refused by a key's or principal's limits, by reason.
    pub limited: IntCounterVec,
    /// Spend in USD by principal (keys: `key:<name>`).
    pub spend: prometheus::CounterVec,
    /// Failed calls to the limits backend (Redis).
    pub limits_backend_errors: prometheus::IntCounter,
    /// Spend-ledger rows written to the store, and bookings dropped (queue full, or the store
    /// down for too long).
    pub ledger: prometheus::IntCounterVec,
    /// Request-log rows written to the store, and rows dropped (buffer full).
    pub request_log: prometheus::IntCounterVec,
    pub ttft: HistogramVec,
    pub inter_token_latency: HistogramVec,
    pub output_tokens_per_second: HistogramVec,
    pub active_streams: IntGaugeVec,
    pub upstream_attempts: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    /// The response cache: lookups by result (hit, miss, bypass), bytes stored, and what hits
    /// saved (tokens by type, dollars).
    pub cache_lookups: IntCounterVec,
    pub cache_stored_bytes: IntCounterVec,
    pub cache_tokens_saved: IntCounterVec,
    pub cache_saved_usd: prometheus::Counter,
    /// Guardrail decisions: `guardrail` (deny_patterns, pii, output_patterns, webhook),
    /// `action` (block, redact, allow, rewrite, error).
    pub guardrail_actions: IntCounterVec,
    pub gateway_overhead: HistogramVec,
    /// Spans handed to the OTLP receiver (`exported`) or dropped (queue full, export failed).
    pub trace_spans: IntCounterVec,
    /// The OpenTelemetry GenAI metrics, under their Prometheus names.
    pub genai_token_usage: HistogramVec,
    pub genai_request_duration: HistogramVec,
    pub genai_ttft: HistogramVec,
    pub request_body_bytes: HistogramVec,
    pub response_body_bytes: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let active_streams = IntGaugeVec::new(
            Opts::new("llm_active_streams", "Streaming responses in progress"),
            &["provider"],
        )
        .expect("valid metric");
        r.register(Box::new(active_streams.clone()))
            .expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["server"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let mcp_server_up = gauge(
            "llm_mcp_server_up",
            "1 while the MCP server is connected, else 0",
        );
        let mcp_tools = gauge(
            "llm_mcp_tools",
            "Tools offered by the MCP server (after include/exclude)",
        );
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "llm_backend_up",
                "1 while the backend takes traffic (not ejected, passing health checks)",
            ),
            &["provider", "backend"],
        )
        .expect("valid metric");
        r.register(Box::new(backend_up.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            requests: counter(&r, "llm_requests_total", "Requests received", REQUEST_LABELS),
            responses: counter(&r, "llm_responses_total", "Responses sent", REQUEST_LABELS),
            request_duration: histogram(&r, "llm_request_duration", "Request duration in milliseconds", REQUEST_LABELS, MS_BUCKETS),
            prompt_tokens: counter(&r, "llm_usage_prompt_tokens_total", "Prompt tokens reported by providers", TOKEN_LABELS),
            completion_tokens: counter(&r, "llm_usage_completion_tokens_total", "Completion tokens reported by providers", TOKEN_LABELS),
            total_tokens: counter(&r, "llm_usage_total_tokens_total", "Total tokens reported by providers", TOKEN_LABELS),
            estimated_prompt_tokens: counter(&r, "llm_usage_prompt_tokens_estimated_total",
                "Prompt tokens estimated (request bytes / 4) for streams that ended without a usage report", &["provider", "model", "estimated"]),
            estimated_completion_tokens: counter(&r, "llm_usage_completion_tokens_estimated_total",
                "Completion tokens estimated (streamed text bytes / 4) for streams that ended without a usage report", &["provider", "model", "estimated"]),
            tool_calls: counter(&r, "llm_tool_calls_total", "Tool calls made by models", TOOL_LABELS),
            tool_calls_success: counter(&r, "llm_tool_calls_success_total", "Tool calls executed by the gateway that succeeded", TOOL_LABELS),
            tool_calls_failure: counter(&r, "llm_tool_calls_failure_total", "Tool calls executed by the gateway that failed",
                &["provider", "model", "tool_type", "tool_name", "error_type"]),
            tool_call_duration: histogram(&r, "llm_tool_call_duration", "Duration of tool calls executed by the gateway in milliseconds", TOOL_LABELS, MS_BUCKETS),
            ttft: histogram(&r, "llm_time_to_first_token_seconds", "Time from request to the first streamed event", TOKEN_LABELS, TTFT_BUCKETS),
            inter_token_latency: histogram(&r, "llm_inter_token_latency_seconds", "Gap between consecutive streamed writes", TOKEN_LABELS, ITL_BUCKETS),
            output_tokens_per_second: histogram(&r, "llm_output_tokens_per_second", "Completion tokens per second of generation", TOKEN_LABELS, TPS_BUCKETS),
            active_streams,
            mcp_server_up,
            mcp_tools,
            backend_up,
            fallbacks: counter(&r, "llm_fallbacks_total", "Requests that went to a fallback model", &["from_provider", "to_provider"]),
            shed: counter(&r, "llm_requests_shed_total", "Requests refused at a provider's concurrency limit", &["provider"]),
            limited: counter(&r, "llm_rate_limited_total", "Requests refused by a key's limits", &["reason"]),
            spend: {
                let c = prometheus::CounterVec::new(Opts::new("llm_spend_usd_total", "Spend in USD by principal, from exact usage and the price table"), &["principal"]).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            limits_backend_errors: {
                let c = prometheus::IntCounter::new("llm_limits_backend_errors_total", "Failed calls to the limits backend (Redis)").expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            ledger: {
                let c = prometheus::IntCounterVec::new(Opts::new("llm_ledger_rows_total", "Spend-ledger rows written to the store (outcome=written) and bookings dropped (outcome=dropped)"), &["outcome"]).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            request_log: {
                let c = prometheus::IntCounterVec::new(Opts::new("llm_request_log_rows_total", "Request-log rows written to the store (outcome=written) and rows dropped (outcome=dropped)"), &["outcome"]).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            upstream_attempts: counter(&r, "llm_upstream_attempts_total", "Requests sent to providers", &["provider"]),
            upstream_failures: counter(&r, "llm_upstream_failures_total", "Failed provider requests by reason", &["provider", "reason"]),
            upstream_retries: counter(&r, "llm_upstream_retries_total", "Provider requests retried by reason", &["provider", "reason"]),
            guardrail_actions: counter(&r, "llm_guardrail_actions_total", "Guardrail decisions by guardrail and action", &["guardrail", "action"]),
            cache_lookups: counter(&r, "llm_cache_lookups_total", "Response cache lookups by result (hit, miss, bypass)", &["result"]),
            cache_stored_bytes: counter(&r, "llm_cache_stored_bytes_total", "Bytes of answers stored in the response cache", &[]),
            cache_tokens_saved: counter(&r, "llm_cache_tokens_saved_total", "Tokens served from the response cache instead of a provider", &["type"]),
            cache_saved_usd: {
                let c = prometheus::Counter::new("llm_cache_saved_usd_total", "Dollars not spent thanks to response cache hits (at the model table's prices)").expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            gateway_overhead: histogram(&r, "llm_gateway_overhead_seconds",
                "Request time not spent waiting for the provider", &["request_path"], OVERHEAD_BUCKETS),
            trace_spans: counter(&r, "llm_trace_spans_total", "Trace spans exported to the OTLP receiver or dropped", &["outcome"]),
            genai_token_usage: histogram(&r, "gen_ai_client_token_usage", "Tokens used per model call (OpenTelemetry gen_ai.client.token.usage)", GENAI_TOKEN_LABELS, GENAI_TOKEN_BUCKETS),
            genai_request_duration: histogram(&r, "gen_ai_server_request_duration_seconds", "Time to the last byte of model calls (OpenTelemetry gen_ai.server.request.duration)", GENAI_LABELS, GENAI_DURATION_BUCKETS),
            genai_ttft: histogram(&r, "gen_ai_server_time_to_first_token_seconds", "Time to the first token of streamed model calls (OpenTelemetry gen_ai.server.time_to_first_token)", GENAI_LABELS, GENAI_TTFT_BUCKETS),
            request_body_bytes: histogram(&r, "llm_request_body_bytes", "Request body size", &["request_path"], BYTES_BUCKETS),
            response_body_bytes: histogram(&r, "llm_response_body_bytes", "Response body size", &["request_path"], BYTES_BUCKETS),
            registry: r,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

/// `tool_type` label: `mcp` / `a2a` for the gateway's MCP and A2A tools, else
/// `standard_tool_use`.
pub fn tool_type(name: &str) -> &'static str {
    if name.starts_with("mcp_") {
        "mcp"
    } else if name.starts_with(crate::a2a::TOOL_PREFIX) {
        "a2a"
    } else {
        "standard_tool_use"
    }
}

/// Serves `GET /metrics` (and `/` for convenience) on the telemetry port.
pub struct MetricsApp(pub Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        if path != "/metrics" && path != "/" {
            return Response::builder()
                .status(404)
                .header("content-type", "text/plain")
                .body(b"not found; metrics are at /metrics\n".to_vec())
                .expect("valid response");
        }
        let body = self.0.render();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .header("content-length", body.len())
            .body(body)
            .expect("valid response")
    }
}
