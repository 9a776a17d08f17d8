//! OpenTelemetry traces: a receiver built on OpenTelemetry's own protobuf bindings
//! (tests/sdk/otlp_receiver.py) decodes what the gateway exports; the span tree (server span,
//! cache lookup, one client span per upstream attempt, execute_tool per MCP call), the GenAI
//! attributes, W3C trace context in and out, sampling, content capture, OTLP/JSON, the
//! exporter's headers and resource, and the GenAI metrics on /metrics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::mcp_support::HttpMcpServer;
use crate::model::openai_model;

/// The tests' OTLP receiver: spans arrive as JSON lines; stopped on drop.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let path = format!("{}/tests/sdk/otlp_receiver.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the OTLP receiver (make test installs opentelemetry-proto)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port: u16 = lines
            .next()
            .expect("the receiver prints its port")
            .unwrap()
            .trim()
            .parse()
            .expect("a port");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("a span as JSON");
                sink.lock().unwrap().push(v);
            }
        });
        Receiver { child, port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans of trace `trace_id` once at least `n` have arrived.
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: {} of {n} spans arrived: {found:#?}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server span whose `gateway.request.id` is `id`, and the rest of its trace.
    async fn request(&self, id: &str, n: usize) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let trace_id = loop {
            let t = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s["attributes"]["gateway.request.id"] == id)
                .map(|s| s["trace_id"].as_str().unwrap().to_string());
            if let Some(t) = t {
                break t;
            }
            assert!(Instant::now() < deadline, "no server span for request {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let spans = self.trace(&trace_id, n).await;
        let (server, children): (Vec<Value>, Vec<Value>) =
            spans.into_iter().partition(|s| kind(s) == 2);
        assert_eq!(server.len(), 1, "one server span per request");
        (server[0].clone(), children)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kind` is the OTLP enum in the protobuf JSON mapping: a name, or a number in OTLP/JSON.
fn kind(s: &Value) -> i64 {
    match &s["kind"] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(k) => match k.as_str() {
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            _ => 0,
        },
        _ => 0,
    }
}

fn status_code(s: &Value) -> i64 {
    match &s["status"]["code"] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(c) if c == "STATUS_CODE_ERROR" => 2,
        Value::String(c) if c == "STATUS_CODE_OK" => 1,
        _ => 0,
    }
}

/// The traceparent's parent id, after checking it names `trace_id` and is sampled.
fn parent_in(traceparent: Option<&str>, trace_id: &str) -> String {
    let tp = traceparent.expect("a traceparent was sent upstream");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id, "01"),
        "{tp}"
    );
    parts[2].to_string()
}

fn request_id(r: &RawResponse) -> String {
    r.header("x-request-id").expect("x-request-id").to_string()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Retries and fallbacks as client spans under the caller's trace, the cache as its own span,
/// GenAI attributes on both levels, trace context forwarded to the provider that served (and
/// the one that failed), a stream's usage and finish reason, the exporter's headers and
/// resource, and the GenAI metrics.
#[tokio::test(flavor = "multi_thread")]
async fn traces_show_attempts_fallbacks_and_cache_with_genai_attributes() {
    let rx = Receiver::start();
    let primary = MockUpstream::start(|_| {
        json_response(
            503,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        )
    })
    .await;
    let fallback = MockUpstream::start(|req| {
        let body = req.json();
        if body["stream"] == true {
            let s = chat_stream("m", &["Hel", "lo"], true);
            return vec![
                Step::Write(sse_head()),
                Step::Write(chunk(s.as_bytes())),
                Step::Write(last_chunk()),
            ];
        }
        json_response(200, &chat_completion("m", "hello"))
    })
    .await;
    let toml = format!(
        "[providers.p]\nurl = \"{}\"\nauth = \"none\"\n\
         [providers.f]\nurl = \"{}\"\nauth = \"none\"\n\
         [aliases.smart]\ntarget = \"p/m\"\nfallbacks = [\"f/m\"]\n",
        primary.url("/v1"),
        fallback.url("/v1")
    );
    let mport = free_port();
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_SERVICE_NAME", "gw-under-test".to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20collector-secret".to_string(),
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".to_string(),
        ),
        ("CACHE_ENABLE", "true".to_string()),
        ("TELEMETRY_ENABLE", "true".to_string()),
        ("TELEMETRY_METRICS_PORT", mport.to_string()),
    ];
    let gw = GatewayProcess::start(&env, Some(&toml));
    let a = gw.addr();
    let body = json!({"model": "smart", "temperature": 0.25, "max_tokens": 50,
        "messages": [{"role": "user", "content": "secret prompt"}]})
    .to_string();
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = raw_request(
        a,
        "POST",
        "/v1/chat/completions",
        &[
            ("traceparent", &caller),
            ("tracestate", "vendor=abc"),
            ("baggage", "user=alice"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // What the providers were sent: this trace, each attempt's own span as the parent.
    let first_parent = parent_in(primary.last().header("traceparent"), TRACE);
    let served = fallback.last();
    let second_parent = parent_in(served.header("traceparent"), TRACE);
    assert_ne!(first_parent, second_parent);
    assert_eq!(served.header("tracestate"), Some("vendor=abc"));
    assert_eq!(served.header("baggage"), Some("user=alice"));

    let spans = rx.trace(TRACE, 4).await;
    assert_eq!(
        spans.len(),
        4,
        "server, cache lookup, two attempts: {spans:#?}"
    );
    let server = spans.iter().find(|s| kind(s) == 2).expect("a server span");
    assert_eq!(server["parent_span_id"], CALLER_SPAN);
    assert_eq!(server["trace_state"], "vendor=abc");
    assert_eq!(server["name"], "POST /v1/chat/completions");
    // Sampled, and the parent is known to be remote (bits 8 and 9).
    assert_eq!(server["flags"].as_u64().unwrap() & 0x301, 0x301);
    let sa = &server["attributes"];
    assert_eq!(sa["gen_ai.operation.name"], "chat");
    assert_eq!(sa["gen_ai.request.model"], "smart");
    assert_eq!(sa["gen_ai.response.model"], "m");
    assert_eq!(sa["gen_ai.provider.name"], "f");
    assert_eq!(sa["gen_ai.usage.input_tokens"], 9);
    assert_eq!(sa["gen_ai.usage.output_tokens"], 3);
    assert_eq!(sa["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(sa["gen_ai.request.temperature"], 0.25);
    assert_eq!(sa["gen_ai.request.max_tokens"], 50);
    assert_eq!(sa["http.response.status_code"], 200);
    assert_eq!(sa["http.request.method"], "POST");
    assert_eq!(sa["gateway.cache"], "miss");
    assert_eq!(sa["gateway.upstream.calls"], 2);
    assert!(
        sa.get("gen_ai.input.messages").is_none(),
        "content is off by default"
    );
    assert!(!server.to_string().contains("secret prompt"));
    assert_eq!(server["resource"]["service.name"], "gw-under-test");
    assert_eq!(server["resource"]["deployment.environment"], "test");
    assert_eq!(server["scope"], "inference-gateway");
    assert_eq!(
        server["headers"]["authorization"],
        "Bearer collector-secret"
    );
    assert_eq!(server["headers"]["content-type"], "application/x-protobuf");
    let server_id = server["span_id"].as_str().unwrap();
    let (start, end) = (
        server["start"].as_u64().unwrap(),
        server["end"].as_u64().unwrap(),
    );
    for c in spans.iter().filter(|s| kind(s) != 2) {
        assert_eq!(c["parent_span_id"], server_id, "{c}");
        let (cs, ce) = (c["start"].as_u64().unwrap(), c["end"].as_u64().unwrap());
        assert!(
            start <= cs && cs <= ce && ce <= end,
            "{c} within {start}..{end}"
        );
    }
    let cache = spans.iter().find(|s| kind(s) == 1).expect("a cache span");
    assert_eq!(cache["name"], "gateway.cache lookup");
    assert_eq!(cache["attributes"]["gateway.cache"], "miss");
    let attempt = |id: &str| {
        spans
            .iter()
            .find(|s| s["span_id"] == id)
            .unwrap_or_else(|| panic!("no span {id} (the attempt's traceparent): {spans:#?}"))
    };
    let failed = attempt(&first_parent);
    assert_eq!(kind(failed), 3);
    assert_eq!(failed["name"], "chat m");
    assert_eq!(failed["attributes"]["gen_ai.provider.name"], "p");
    assert_eq!(failed["attributes"]["http.response.status_code"], 503);
    assert_eq!(failed["attributes"]["error.type"], "503");
    assert_eq!(status_code(failed), 2);
    let ok = attempt(&second_parent);
    assert_eq!(kind(ok), 3);
    assert_eq!(ok["attributes"]["gen_ai.provider.name"], "f");
    assert_eq!(ok["attributes"]["http.response.status_code"], 200);
    assert_eq!(ok["attributes"]["gen_ai.usage.output_tokens"], 3);
    assert_eq!(ok["attributes"]["server.address"], "127.0.0.1");
    assert_eq!(status_code(ok), 0);
    assert!(failed["end"].as_u64() <= ok["start"].as_u64());

    // The same request again is a hit: a new root trace with only the lookup under it.
    let r = raw_request(a, "POST", "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(r.header("x-gateway-cache"), Some("hit"));
    let (server, children) = rx.request(&request_id(&r), 2).await;
    assert_ne!(server["trace_id"], TRACE);
    assert_eq!(server["parent_span_id"], "");
    assert_eq!(server["attributes"]["gateway.cache"], "hit");
    assert_eq!(children.len(), 1, "{children:#?}");
    assert_eq!(children[0]["attributes"]["gateway.cache"], "hit");

    // A stream: its usage and finish reason, on the server and the serving attempt.
    let stream = json!({"model": "f/m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream please"}]});
    let r = raw_request(
        a,
        "POST",
        "/v1/chat/completions",
        &[],
        stream.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let (server, children) = rx.request(&request_id(&r), 3).await;
    assert_eq!(server["attributes"]["gen_ai.usage.output_tokens"], 2);
    assert_eq!(
        server["attributes"]["gen_ai.response.finish_reasons"],
        json!(["stop"])
    );
    let attempt = children.iter().find(|c| kind(c) == 3).expect("an attempt");
    assert_eq!(
        attempt["attributes"]["gen_ai.response.finish_reasons"],
        json!(["stop"])
    );

    // The GenAI metrics, beside the gateway's own.
    let m = raw_request(([127, 0, 0, 1], mport).into(), "GET", "/metrics", &[], b"")
        .await
        .text();
    for series in [
        "gen_ai_client_token_usage_count{error_type",
        "gen_ai_server_request_duration_seconds_count{",
        "gen_ai_server_time_to_first_token_seconds_count{",
    ] {
        let name = series.split('{').next().unwrap();
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{m}"
        );
    }
    let input = m
        .lines()
        .find(|l| {
            l.starts_with("gen_ai_client_token_usage_sum{")
                && l.contains("gen_ai_token_type=\"input\"")
                && l.contains("gen_ai_provider_name=\"f\"")
                && l.contains("gen_ai_request_model=\"smart\"")
        })
        .unwrap_or_else(|| panic!("input token usage of f/smart:\n{m}"));
    assert!(input.ends_with(" 9"), "{input}");
    assert!(m
        .lines()
        .any(|l| l.starts_with("llm_trace_spans_total{outcome=\"exported\"}")));
}

/// OTLP/JSON with content capture: the MCP loop's rounds and its tool call as spans, messages
/// in the conventions' form; a caller's unsampled trace is not recorded and its context reaches
/// the provider unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn json_export_content_capture_tool_spans_and_an_unsampled_caller() {
    let rx = Receiver::start();
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(openai_model).await;
    let mut env = provider_env(&[("openai", model.url("/v1"))]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    env.push((
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        "true".into(),
    ));
    let gw = GatewayProcess::start(&env, None);
    wait_for_any_mcp_tool(gw.addr()).await;
    let body = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "add"}]});
    let r = post_chat(gw.addr(), body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (server, children) = rx.request(&request_id(&r), 4).await;
    assert_eq!(server["headers"]["content-type"], "application/json");
    let sa = &server["attributes"];
    assert_eq!(sa["gateway.mcp.rounds"], 2);
    let input: Value = serde_json::from_str(sa["gen_ai.input.messages"].as_str().unwrap()).unwrap();
    assert_eq!(
        input,
        json!([{"role": "user", "parts": [{"type": "text", "content": "add"}]}])
    );
    let output: Value =
        serde_json::from_str(sa["gen_ai.output.messages"].as_str().unwrap()).unwrap();
    assert_eq!(output[0]["role"], "assistant");
    assert_eq!(output[0]["parts"][0]["content"], "result: 5");
    let rounds: Vec<&Value> = children.iter().filter(|c| kind(c) == 3).collect();
    assert_eq!(rounds.len(), 2, "one client span per round: {children:#?}");
    let tool = children
        .iter()
        .find(|c| c["name"] == "execute_tool mcp_add")
        .unwrap_or_else(|| panic!("no execute_tool span: {children:#?}"));
    let ta = &tool["attributes"];
    assert_eq!(ta["gen_ai.operation.name"], "execute_tool");
    assert_eq!(ta["gen_ai.tool.name"], "mcp_add");
    assert_eq!(ta["gen_ai.tool.type"], "extension");
    assert_eq!(ta["mcp.method.name"], "tools/call");
    assert_eq!(ta["gen_ai.tool.call.result"], "5");
    assert!(ta["gen_ai.tool.call.id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    // The tool ran between the two rounds.
    let (first, second) = if rounds[0]["start"].as_u64() < rounds[1]["start"].as_u64() {
        (rounds[0], rounds[1])
    } else {
        (rounds[1], rounds[0])
    };
    assert!(first["end"].as_u64() <= tool["start"].as_u64());
    assert!(tool["end"].as_u64() <= second["start"].as_u64());

    // An unsampled caller (flags 00): nothing recorded, its context passed on as it came.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let plain =
        json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "plain"}]});
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("traceparent", unsampled), ("baggage", "k=v")],
        plain.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let sent = model.last();
    assert_eq!(sent.header("traceparent"), Some(unsampled));
    assert_eq!(sent.header("baggage"), Some("k=v"));
    // A traced request after it arrives; the unsampled one never does.
    let r = post_chat(gw.addr(), plain.to_string().as_bytes()).await;
    rx.request(&request_id(&r), 2).await;
    assert!(!rx
        .spans
        .lock()
        .unwrap()
        .iter()
        .any(|s| s["trace_id"] == "0af7651916cd43dd8448eb211c80319c"));
}

/// With tracing off nothing of the caller's trace context reaches a provider (baggage may carry
/// user ids).
#[tokio::test(flavor = "multi_thread")]
async fn tracing_off_forwards_no_trace_context() {
    let up = MockUpstream::start(|_| json_response(200, &chat_completion("m", "hi"))).await;
    let gw = inference_gateway::testing::InProcessGateway::start(
        &provider_env(&[("openai", up.url("/v1"))]),
        None,
    );
    let body = json!({"model": "openai/m", "messages": [{"role": "user", "content": "x"}]});
    let r = raw_request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01")),
            ("tracestate", "a=b"),
            ("baggage", "user=alice"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let sent = up.last();
    for h in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(sent.header(h), None, "{h} forwarded");
    }
}
