//! The MCP tool loop, black-box: the gateway binary, real rmcp MCP servers (streamable HTTP on
//! 127.0.0.1 and stdio), and mock model upstreams that call tools deterministically in OpenAI's
//! and Anthropic's wire formats.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::mcp_support::HttpMcpServer;
use crate::model::{anthropic_model, gemini_model, openai_model};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

struct Setup {
    gw: GatewayProcess,
    model: MockUpstream,
    mcp: HttpMcpServer,
}

/// Environment for a gateway with `provider` at `model`, MCP on and exposed, `mcp` as its server.
fn mcp_env(
    provider: &str,
    model: &MockUpstream,
    mcp: &HttpMcpServer,
) -> Vec<(&'static str, String)> {
    let mut env = provider_env(&[(provider, model.url("/v1"))]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    env
}

/// A gateway with MCP on, one HTTP MCP server and the OpenAI-format model; `extra` env added.
async fn setup(extra: &[(&str, &str)]) -> Setup {
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(openai_model).await;
    let mut env = mcp_env("openai", &model, &mcp);
    for (k, v) in extra {
        env.push((k, v.to_string()));
    }
    let gw = GatewayProcess::start(&env, None);
    wait_for_tools(&gw, 1).await;
    Setup { gw, model, mcp }
}

/// Waits until `/v1/mcp/tools` lists at least `n` healthy tools; returns the listing.
async fn wait_for_tools(gw: &GatewayProcess, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &[], b"").await;
        let v = r.json();
        let healthy = v["data"]
            .as_array()
            .map_or(0, |d| d.iter().filter(|t| t["healthy"] == true).count());
        if healthy >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "tools did not appear: {v}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/chat/completions` with `X-MCP-Bypass`: the client runs its own tool loop.
async fn post_bypass(addr: std::net::SocketAddr, body: &[u8]) -> RawResponse {
    raw_request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mcp-bypass", "1")],
        body,
    )
    .await
}

fn chat(prompt: &str, stream: bool) -> Vec<u8> {
    json!({"model": "openai/gpt-4o", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
        .to_string()
        .into_bytes()
}

/// The `data:` payloads of an SSE body, `[DONE]` included.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

/// Accumulates a streamed answer: content, tool calls by index, finish reasons, usage chunks.
struct Streamed {
    content: String,
    calls: Vec<(String, String)>,
    finishes: Vec<String>,
    usage: Vec<Value>,
    done: usize,
    errors: Vec<Value>,
}

fn accumulate(body: &str) -> Streamed {
    let mut s = Streamed {
        content: String::new(),
        calls: Vec::new(),
        finishes: Vec::new(),
        usage: Vec::new(),
        done: 0,
        errors: Vec::new(),
    };
    for d in sse_data(body) {
        if d == "[DONE]" {
            s.done += 1;
            continue;
        }
        assert_eq!(s.done, 0, "event after [DONE]: {d}");
        let v: Value = serde_json::from_str(&d).unwrap();
        if v.get("error").is_some() {
            s.errors.push(v);
            continue;
        }
        if !v["usage"].is_null() {
            s.usage.push(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            if let Some(t) = c["delta"]["content"].as_str() {
                s.content.push_str(t);
            }
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if s.calls.len() <= i {
                    s.calls.resize(i + 1, (String::new(), String::new()));
                }
                if let Some(n) = tc["function"]["name"].as_str() {
                    s.calls[i].0.push_str(n);
                }
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    s.calls[i].1.push_str(a);
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                s.finishes.push(f.to_string());
            }
        }
    }
    s
}

fn tool_names(req: &Recorded) -> Vec<String> {
    req.json()["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn single_tool_non_stream_sums_usage_and_feeds_the_result_back() {
    let s = setup(&[]).await;
    let r = post_chat(s.gw.addr(), &chat("add", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "result: 5");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Two rounds of (10, 5).
    assert_eq!(v["usage"]["prompt_tokens"], 20);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["usage"]["total_tokens"], 30);
    assert_eq!(r.headers.get("x-mcp-rounds").map(String::as_str), Some("2"));
    let reqs = s.model.requests();
    assert_eq!(reqs.len(), 2);
    // Every round offers the MCP tools, with their JSON schema.
    let tools = reqs[0].json()["tools"].clone();
    let add = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "mcp_add")
        .expect("mcp_add offered");
    assert_eq!(add["function"]["description"], "Add two integers");
    assert_eq!(
        add["function"]["parameters"]["properties"]["a"]["type"],
        "integer"
    );
    assert!(tool_names(&reqs[1]).contains(&"mcp_add".to_string()));
    // Round 2 carries the assistant's call and the tool's answer.
    let msgs = reqs[1].json()["messages"].clone();
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "call_0_0");
    assert_eq!(msgs[1]["tool_calls"][0]["function"]["name"], "mcp_add");
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["tool_call_id"], "call_0_0");
    assert_eq!(msgs[2]["content"], "5");
    assert_eq!(s.mcp.observed.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn single_tool_stream_is_one_stream_with_one_done() {
    let s = setup(&[]).await;
    let r = post_chat(s.gw.addr(), &chat("add", true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("text/event-stream")
    );
    let body = r.text();
    let st = accumulate(&body);
    assert_eq!(st.done, 1, "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    // The gateway's tool call is visible as progress, then the final answer.
    assert_eq!(
        st.calls,
        vec![("mcp_add".to_string(), "{\"a\":2,\"b\":3}".to_string())]
    );
    assert_eq!(st.content, "result: 5");
    // Only the final round's finish reason reaches the client; no usage was asked for.
    assert_eq!(st.finishes, vec!["stop"]);
    assert!(st.usage.is_empty(), "{body}");
    assert_eq!(s.model.count(), 2);
}

#[tokio::test]
async fn stream_usage_is_one_summed_chunk_when_asked() {
    let s = setup(&[]).await;
    let req = json!({"model": "openai/gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "multi"}]});
    let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
    let st = accumulate(&r.text());
    assert_eq!(st.usage.len(), 1, "{}", r.text());
    assert_eq!(st.usage[0]["prompt_tokens"], 30);
    assert_eq!(st.usage[0]["completion_tokens"], 15);
    assert_eq!(st.usage[0]["total_tokens"], 45);
    // Three rounds: two tool calls at indexes 0 and 1 (never merged), then the answer.
    assert_eq!(st.calls.len(), 2);
    assert_eq!(st.calls[0].1, "{\"a\":1,\"b\":2}");
    assert_eq!(st.calls[1].1, "{\"a\":3,\"b\":10}");
    assert_eq!(st.content, "result: 13");
    assert_eq!(st.done, 1);
}

#[tokio::test]
async fn parallel_calls_run_concurrently_in_order() {
    let s = setup(&[("MCP_REQUEST_TIMEOUT", "10s")]).await;
    let r = post_chat(s.gw.addr(), &chat("parallel", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: slept 400 ms | slept 400 ms | 2"
    );
    // Both 400 ms sleeps were running at the same time (sequential calls never overlap).
    assert_eq!(s.mcp.observed.max_running.load(Ordering::SeqCst), 2);
    let msgs = s.model.requests()[1].json()["messages"].clone();
    let ids: Vec<&str> = msgs.as_array().unwrap()[2..]
        .iter()
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["call_0_0", "call_0_1", "call_0_2"]);
}

#[tokio::test]
async fn tool_errors_become_tool_messages_and_the_loop_continues() {
    let s = setup(&[
        ("MCP_REQUEST_TIMEOUT", "300ms"),
        ("TELEMETRY_ENABLE", "true"),
        ("TELEMETRY_METRICS_PORT", &free_port().to_string()),
    ])
    .await;
    // isError from the tool.
    let r = post_chat(s.gw.addr(), &chat("fail", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: Error: boom"
    );
    // A tool the gateway does not know.
    let r = post_chat(s.gw.addr(), &chat("unknown", false)).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: Error: unknown tool \"mcp_nope\""
    );
    // A tool slower than MCP_REQUEST_TIMEOUT.
    let started = Instant::now();
    let r = post_chat(s.gw.addr(), &chat("slow", true)).await;
    let st = accumulate(&r.text());
    assert_eq!(
        st.content,
        "result: Error: tool mcp_sleep timed out after 300 ms"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(st.done, 1);
}

#[tokio::test]
async fn iteration_limit_returns_the_last_reply_and_says_so() {
    let s = setup(&[("MCP_MAX_ITERATIONS", "3")]).await;
    let r = post_chat(s.gw.addr(), &chat("forever", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.model.count(), 3);
    assert_eq!(
        r.headers
            .get("x-mcp-max-iterations-reached")
            .map(String::as_str),
        Some("true")
    );
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "mcp_echo"
    );
    assert_eq!(v["usage"]["total_tokens"], 45);

    let r = post_chat(s.gw.addr(), &chat("forever", true)).await;
    let body = r.text();
    let st = accumulate(&body);
    assert_eq!(s.model.count(), 6);
    assert_eq!(st.calls.len(), 3);
    assert_eq!(st.finishes, vec!["tool_calls"]);
    assert!(body.contains(": mcp max iterations reached\n\n"));
    assert_eq!(st.done, 1);
}

#[tokio::test]
async fn bypass_header_skips_the_loop() {
    let s = setup(&[]).await;
    let r = raw_request(
        s.gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("x-mcp-bypass", "1")],
        &chat("add", false),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.model.count(), 1);
    assert!(tool_names(&s.model.last()).is_empty());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(s.mcp.observed.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_tools_are_merged_and_their_calls_go_back_to_the_client() {
    let s = setup(&[]).await;
    let weather = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    for stream in [false, true] {
        let req = json!({"model": "openai/gpt-4o", "stream": stream, "tools": [weather],
            "messages": [{"role": "user", "content": "client"}]});
        let before = s.model.count();
        let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200);
        assert_eq!(s.model.count(), before + 1);
        let names = tool_names(&s.model.last());
        assert_eq!(names[0], "get_weather");
        assert!(names.contains(&"mcp_add".to_string()) && names.contains(&"mcp_echo".to_string()));
        if stream {
            let st = accumulate(&r.text());
            assert_eq!(st.calls[0].0, "get_weather");
            assert_eq!(st.finishes, vec!["tool_calls"]);
            assert_eq!(st.done, 1);
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
            assert_eq!(
                v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
                "get_weather"
            );
        }
    }
    // A reply calling both kinds goes back to the client, which sees only its own call.
    let req = json!({"model": "openai/gpt-4o", "tools": [weather], "messages": [{"role": "user", "content": "mixed"}]});
    let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
    let calls = r.json()["choices"][0]["message"]["tool_calls"].clone();
    assert_eq!(calls.as_array().unwrap().len(), 1, "{calls}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(s.mcp.observed.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tool_choice_none_gets_no_tools() {
    let s = setup(&[]).await;
    let req = json!({"model": "openai/gpt-4o", "tool_choice": "none", "messages": [{"role": "user", "content": "plain"}]});
    let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200);
    assert!(tool_names(&s.model.last()).is_empty());
}

#[tokio::test]
async fn native_anthropic_dialect_runs_the_loop() {
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(anthropic_model).await;
    let env = mcp_env("anthropic", &model, &mcp);
    let gw = GatewayProcess::start(&env, None);
    wait_for_tools(&gw, 1).await;
    for stream in [false, true] {
        let req = json!({"model": "anthropic/claude-sonnet-4", "stream": stream, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "add"}]});
        let req = if stream {
            req
        } else {
            json!({"model": "anthropic/claude-sonnet-4", "messages": [{"role": "user", "content": "add"}]})
        };
        let before = model.count();
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(model.count(), before + 2);
        // The native request of round 2 carries a tool_use and its tool_result.
        let second = model.last().json();
        assert_eq!(
            second["tools"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "mcp_add")
                .count(),
            1
        );
        let last = second["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["content"][0]["type"], "tool_result", "{second}");
        assert_eq!(last["content"][0]["tool_use_id"], "toolu_0_0");
        if stream {
            let st = accumulate(&r.text());
            assert_eq!(st.content, "result: 5");
            assert_eq!(st.calls[0].0, "mcp_add");
            assert_eq!(st.usage.len(), 1);
            assert_eq!(st.usage[0]["total_tokens"], 30);
            assert_eq!(st.done, 1);
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["message"]["content"], "result: 5");
            assert_eq!(v["usage"]["total_tokens"], 30);
        }
    }
}

#[tokio::test]
async fn client_disconnect_mid_loop_cancels_the_tool_and_the_loop() {
    let s = setup(&[("MCP_REQUEST_TIMEOUT", "30s")]).await;
    let mut sock = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
    let body = chat("slow", true);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body).await.unwrap();
    // Read until the tool call was relayed, then wait until the tool runs and hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("mcp_sleep") {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.mcp.observed.running.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "tool never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sock);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.mcp.observed.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the tool call was not cancelled: {}",
            s.gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No further model round.
    assert_eq!(s.model.count(), 1);
}

#[tokio::test]
async fn server_down_at_start_then_up_reconnects_and_tools_appear() {
    let mut dead = DeadPort::new();
    let url = format!("http://127.0.0.1:{}/mcp", dead.port);
    let model = MockUpstream::start(openai_model).await;
    let mut env = provider_env(&[("openai", model.url("/v1"))]);
    env.extend([
        ("MCP_ENABLE", "true".to_string()),
        ("MCP_EXPOSE", "true".to_string()),
        ("MCP_SERVERS", url.clone()),
        ("MCP_INITIAL_BACKOFF", "100ms".to_string()),
        ("MCP_RETRY_INTERVAL", "200ms".to_string()),
        ("MCP_MAX_RETRIES", "2".to_string()),
        ("MCP_RECONNECT_INTERVAL", "300ms".to_string()),
    ]);
    // The gateway starts and serves although its only MCP server is down.
    let gw = GatewayProcess::start(&env, None);
    let r = post_chat(gw.addr(), &chat("plain", false)).await;
    assert_eq!(r.status, 200);
    assert!(tool_names(&model.last()).is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &[], b"")
            .await
            .json();
        assert_eq!(v["servers"][0]["healthy"], false);
        if v["servers"][0]["last_error"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "no connection attempt: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the retries, into the reconnect interval, the server comes up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mcp = HttpMcpServer::start(dead.release()).await;
    let v = wait_for_tools(&gw, 4).await;
    assert_eq!(v["servers"][0]["healthy"], true);
    let r = post_chat(gw.addr(), &chat("add", false)).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], "result: 5");
    assert_eq!(mcp.observed.calls.load(Ordering::SeqCst), 1);
    // And down again: its tools leave the requests, the gateway keeps serving.
    drop(mcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_chat(gw.addr(), &chat("add", false)).await;
        assert_eq!(r.status, 200);
        let v = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &[], b"")
            .await
            .json();
        if v["servers"][0]["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "server never marked down: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn list_changed_notification_refreshes_tools() {
    let s = setup(&[("MCP_POLLING_ENABLE", "false")]).await;
    let v = wait_for_tools(&s.gw, 4).await;
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // All pages (two tools a page) were read.
    assert_eq!(
        names,
        ["mcp_add", "mcp_count", "mcp_echo", "mcp_fail", "mcp_sleep"]
    );
    s.mcp.server.reveal_late_tool();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut v = v;
    while !v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "mcp_late")
    {
        assert!(Instant::now() < deadline, "late tool never appeared: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = raw_request(s.gw.addr(), "GET", "/v1/mcp/tools", &[], b"")
            .await
            .json();
    }
    let r = post_chat(s.gw.addr(), &chat("late", false)).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: late result"
    );
}

#[tokio::test]
async fn tools_endpoint_is_forbidden_unless_exposed() {
    let mcp = HttpMcpServer::start(0).await;
    let gw = GatewayProcess::start(
        &[
            ("MCP_ENABLE", "true".into()),
            ("MCP_SERVERS", mcp.url.clone()),
        ],
        None,
    );
    let r = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &[], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "mcp_not_exposed");
    assert_eq!(r.json()["error"]["type"], "permission_error");
}

#[tokio::test]
async fn name_clashes_stdio_servers_and_filters_from_toml() {
    let a = HttpMcpServer::start(0).await;
    let b = HttpMcpServer::start(0).await;
    let stdio = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/mcp_stdio_server");
    assert!(stdio.exists(), "{} (built by cargo test)", stdio.display());
    let model = MockUpstream::start(openai_model).await;
    let toml = format!(
        r#"
[mcp]
enable = true
expose = true
exclude_tools = ["fail"]

[[mcp.servers]]
name = "math"
url = "{}"

[[mcp.servers]]
name = "second"
url = "{}"
headers = {{ "x-tenant" = "t1" }}
include_tools = ["add", "echo"]
bearer_token = "secret-token"

[[mcp.servers]]
name = "local"
command = "{}"
include_tools = ["mcp_echo"]
"#,
        a.url,
        b.url.replace("http://", "http://user:secretpw@"),
        stdio.display()
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", model.url("/v1"))]), Some(&toml));
    let v = wait_for_tools(&gw, 6).await;
    let listed: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["server"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("math", "mcp_add"),
        ("math", "mcp_count"),
        ("math", "mcp_echo"),
        ("math", "mcp_sleep"),
        ("second", "mcp_second__add"),
        ("second", "mcp_second__echo"),
        ("local", "mcp_local__echo"),
    ];
    let expect: Vec<(String, String)> = expect
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(listed, expect, "{v}");
    assert_eq!(v["servers"][2]["transport"], "stdio");
    // The stdio server answers calls.
    let r = post_chat(gw.addr(), &chat("local", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: from stdio"
    );
    // The stdio child never sees the gateway's provider keys (it does get PATH).
    let r = post_chat(gw.addr(), &chat("local-env", false)).await;
    let answer = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(answer.starts_with("result: unset | /"), "{answer}");
    // Secrets never appear in the listing or the log; URLs are shown as their origin.
    assert_eq!(v["servers"][1]["url"], b.url.trim_end_matches("/mcp"));
    for secret in ["secret-token", "secretpw"] {
        assert!(!v.to_string().contains(secret));
        assert!(!gw.log_text().contains(secret));
    }
}

#[tokio::test]
async fn later_round_failures_end_the_stream_with_an_error_event() {
    let s = setup(&[]).await;
    let r = post_chat(s.gw.addr(), &chat("err2", true)).await;
    assert_eq!(r.status, 200);
    let body = r.text();
    let st = accumulate(&body);
    assert_eq!(st.calls[0].0, "mcp_add");
    assert_eq!(st.errors.len(), 1, "{body}");
    assert_eq!(st.errors[0]["error"]["message"], "model exploded");
    assert_eq!(st.done, 1);
    assert!(body.ends_with("data: [DONE]\n\n"));
    // Not streamed: the provider's status and envelope.
    let r = post_chat(s.gw.addr(), &chat("err2", false)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["message"], "model exploded");
}

#[tokio::test]
async fn json_answer_to_a_streamed_round_is_still_a_stream() {
    let s = setup(&[]).await;
    let req = json!({"model": "openai/gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "json-add"}]});
    let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("text/event-stream")
    );
    let st = accumulate(&r.text());
    assert_eq!(st.calls[0].0, "mcp_add");
    assert_eq!(st.content, "result: 5");
    assert_eq!(st.finishes, vec!["stop"]);
    assert_eq!(st.usage.len(), 1);
    assert_eq!(st.usage[0]["total_tokens"], 30);
    assert_eq!(st.done, 1);
}

#[tokio::test]
async fn echoed_gateway_calls_without_results_leave_the_history() {
    let s = setup(&[]).await;
    // What a streaming client accumulates and may send back: its answer with the gateway's
    // progress calls, whose results it never saw.
    let req = json!({"model": "openai/gpt-4o", "messages": [
        {"role": "user", "content": "plain"},
        {"role": "assistant", "content": "result: 5", "tool_calls": [
            {"id": "call_0_0", "type": "function", "function": {"name": "mcp_add", "arguments": "{}"}}]},
        {"role": "user", "content": "thanks"}
    ]});
    let r = post_chat(s.gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200);
    let sent = s.model.last().json();
    assert!(sent["messages"][1].get("tool_calls").is_none(), "{sent}");
    assert_eq!(sent["messages"][1]["content"], "result: 5");
}

#[tokio::test]
async fn metrics_count_rounds_tool_calls_and_servers() {
    let port = free_port();
    let s = setup(&[
        ("TELEMETRY_ENABLE", "true"),
        ("TELEMETRY_METRICS_PORT", &port.to_string()),
    ])
    .await;
    assert_eq!(
        post_chat(s.gw.addr(), &chat("add", false)).await.status,
        200
    );
    assert_eq!(
        post_chat(s.gw.addr(), &chat("fail", true)).await.status,
        200
    );
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        // The access record (and its metrics) is written once the response is complete.
        let t = raw_request(metrics_addr, "GET", "/metrics", &[], b"")
            .await
            .text();
        if t.contains("llm_tool_calls_failure_total") || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let server = s
        .mcp
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp");
    for line in [
        format!("llm_mcp_server_up{{server=\"{server}\"}} 1"),
        format!("llm_mcp_tools{{server=\"{server}\"}} 5"),
        "llm_tool_calls_success_total{model=\"gpt-4o\",provider=\"openai\",tool_name=\"mcp_add\",tool_type=\"mcp\"} 1".to_string(),
        "llm_tool_calls_failure_total{error_type=\"tool_error\",model=\"gpt-4o\",provider=\"openai\",tool_name=\"mcp_fail\",tool_type=\"mcp\"} 1".to_string(),
        "llm_tool_calls_total{model=\"gpt-4o\",provider=\"openai\",tool_name=\"mcp_add\",tool_type=\"mcp\"} 1".to_string(),
        "llm_upstream_attempts_total{provider=\"openai\"} 4".to_string(),
        // Two requests of two rounds of (10, 5).
        "llm_usage_prompt_tokens_total{model=\"gpt-4o\",provider=\"openai\"} 40".to_string(),
        "llm_usage_completion_tokens_total{model=\"gpt-4o\",provider=\"openai\"} 20".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    // The streamed loop observed its gaps between writes.
    let itl = text
        .lines()
        .find(|l| {
            l.starts_with(
                "llm_inter_token_latency_seconds_count{model=\"gpt-4o\",provider=\"openai\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(itl >= 3, "{itl}");
}

#[tokio::test]
async fn loop_rounds_keep_the_request_with_fallbacks_and_a_concurrency_limit() {
    // An alias with a fallback plans every round from a copy of the request; a provider with
    // max_concurrent = 1 must not block the loop on its own previous round.
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(openai_model).await;
    let env = mcp_env("openai", &model, &mcp);
    let toml = "[providers.openai]\nmax_concurrent = 1\nmax_queue = 0\nqueue_timeout = \"100ms\"\n\
                [aliases.smart]\ntarget = \"openai/gpt-4o\"\nfallbacks = [\"openai/gpt-4o-mini\"]\n";
    let gw = GatewayProcess::start(&env, Some(toml));
    wait_for_tools(&gw, 1).await;
    for stream in [false, true] {
        let req = json!({"model": "smart", "stream": stream, "temperature": 0.5,
            "messages": [{"role": "user", "content": "add"}]});
        let before = model.count();
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(model.count(), before + 2);
        let second = model.last().json();
        assert_eq!(second["model"], "gpt-4o");
        assert_eq!(second["temperature"], 0.5);
        assert_eq!(second["stream"], stream);
        assert!(
            tool_names(&model.last()).contains(&"mcp_add".to_string()),
            "{second}"
        );
        assert_eq!(second["messages"].as_array().unwrap().len(), 3);
        if stream {
            assert_eq!(accumulate(&r.text()).content, "result: 5");
        } else {
            assert_eq!(r.json()["choices"][0]["message"]["content"], "result: 5");
        }
    }
}

#[tokio::test]
async fn every_loop_round_is_admitted_against_the_keys_tpm() {
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(openai_model).await;
    let env = mcp_env("openai", &model, &mcp);
    // Round 1 reserves its prompt + 600; round 2 (a longer prompt + 600) no longer fits in
    // 1,000 tokens a minute while round 1 is held.
    let toml = format!(
        "[[keys]]\nname = \"loop\"\nhash = \"{}\"\ntpm = 1000\n",
        key_hash("igw-loop")
    );
    let gw = GatewayProcess::start(&env, Some(&toml));
    let auth = [("authorization", "Bearer igw-loop")];
    // Both rounds in one minute window (at least 10 s left).
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if s % 60 > 50 {
        tokio::time::sleep(Duration::from_secs(61 - s % 60)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &auth, b"").await;
        if r.json()["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "no MCP tools");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = |stream: bool| {
        json!({"model": "openai/gpt-4o", "stream": stream, "max_tokens": 600,
               "messages": [{"role": "user", "content": "add"}]})
        .to_string()
    };
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &auth,
        body(false).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("MCP tool loop stopped before round 2"),
        "{msg}"
    );
    assert_eq!(model.count(), 1);
    // The minute's reservations were released when the request ended.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &auth,
        body(true).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("MCP tool loop stopped before round 2"),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: [DONE]").count(), 1);
    assert_eq!(model.count(), 2);
}

#[tokio::test]
async fn anthropic_thinking_survives_the_loop_and_the_client_round_trip() {
    // The mock refuses (400, as Anthropic does) any tool turn sent back without its signed
    // thinking and redacted thinking blocks, in order.
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(anthropic_model).await;
    let env = mcp_env("anthropic", &model, &mcp);
    let gw = GatewayProcess::start(&env, None);
    wait_for_tools(&gw, 1).await;
    let thinking = json!({"type": "enabled", "budget_tokens": 1024});
    // The MCP loop, streamed and not: round 2 carries round 1's blocks.
    for stream in [false, true] {
        let req = json!({"model": "anthropic/claude-sonnet-4-5", "stream": stream, "max_tokens": 2048,
            "thinking": thinking, "messages": [{"role": "user", "content": "add"}]});
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(!text.contains("Expected `thinking`"), "{text}");
        if stream {
            assert_eq!(accumulate(&text).content, "result: 5", "{text}");
        } else {
            assert_eq!(r.json()["choices"][0]["message"]["content"], "result: 5");
        }
        let second = model.last().json();
        assert_eq!(second["messages"][1]["content"][0]["signature"], "sig_0");
        assert_eq!(
            second["messages"][1]["content"][1]["type"],
            "redacted_thinking"
        );
    }
    // A client's own tool loop through the gateway (bypassing MCP), stream and not: the
    // assistant turn it sends back keeps `thinking_blocks` from the answer.
    for stream in [false, true] {
        let first = json!({"model": "anthropic/claude-sonnet-4-5", "stream": stream, "max_tokens": 2048,
            "thinking": thinking, "messages": [{"role": "user", "content": "client"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        let r = post_bypass(gw.addr(), first.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (blocks, calls) = if stream {
            // Rebuild the message from the deltas, keeping thinking_blocks as they come.
            let mut blocks = Vec::new();
            let mut calls: Vec<Value> = Vec::new();
            for d in sse_data(&r.text()) {
                let Ok(v) = serde_json::from_str::<Value>(&d) else {
                    continue;
                };
                let delta = &v["choices"][0]["delta"];
                if let Some(b) = delta["thinking_blocks"].as_array() {
                    blocks.extend(b.iter().cloned());
                }
                for c in delta["tool_calls"].as_array().into_iter().flatten() {
                    let i = c["index"].as_u64().unwrap() as usize;
                    if calls.len() <= i {
                        calls.push(json!({"id": c["id"], "type": "function",
                            "function": {"name": c["function"]["name"], "arguments": ""}}));
                    }
                    let args = calls[i]["function"]["arguments"]
                        .as_str()
                        .unwrap()
                        .to_string()
                        + c["function"]["arguments"].as_str().unwrap_or("");
                    calls[i]["function"]["arguments"] = json!(args);
                }
            }
            (blocks, calls)
        } else {
            let m = r.json()["choices"][0]["message"].clone();
            (
                m["thinking_blocks"].as_array().unwrap().clone(),
                m["tool_calls"].as_array().unwrap().clone(),
            )
        };
        assert_eq!(
            blocks,
            vec![
                json!({"type": "thinking", "thinking": "thought 0", "signature": "sig_0"}),
                json!({"type": "redacted_thinking", "data": "redacted_0"}),
            ],
            "stream={stream}"
        );
        let mut msgs = first["messages"].as_array().unwrap().clone();
        msgs.push(json!({"role": "assistant", "content": null, "tool_calls": calls, "thinking_blocks": blocks}));
        msgs.push(json!({"role": "tool", "tool_call_id": "toolu_0_0", "content": "sunny"}));
        let mut next = first.clone();
        next["messages"] = json!(msgs);
        let r = post_bypass(gw.addr(), next.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text());
        // A history without the blocks (another provider wrote it): thinking is dropped for
        // that request instead of a 400.
        let mut bare = next.clone();
        bare["messages"][1]
            .as_object_mut()
            .unwrap()
            .remove("thinking_blocks");
        // (An id the gateway never answered, so its vault has nothing for it.)
        bare["messages"][1]["tool_calls"][0]["id"] = json!("call_elsewhere");
        bare["messages"][2]["tool_call_id"] = json!("call_elsewhere");
        let r = post_bypass(gw.addr(), bare.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text());
        assert_eq!(r.headers["x-gateway-dropped-params"], "thinking");
        assert!(model.last().json().get("thinking").is_none());
    }
}

#[tokio::test]
async fn gemini_3_thought_signatures_survive_the_loop_and_the_client_round_trip() {
    // The mock answers 400, as Gemini 3 does, when a function-calling turn comes back without
    // its thought signature.
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(gemini_model).await;
    let env = mcp_env("google", &model, &mcp);
    let gw = GatewayProcess::start(&env, None);
    wait_for_tools(&gw, 1).await;
    for stream in [false, true] {
        let req = json!({"model": "google/gemini-3-pro-preview", "stream": stream,
            "messages": [{"role": "user", "content": "add"}]});
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(!text.contains("missing a thought_signature"), "{text}");
        if stream {
            assert_eq!(accumulate(&text).content, "result: 5", "{text}");
        } else {
            assert_eq!(r.json()["choices"][0]["message"]["content"], "result: 5");
        }
        let second = model.last().json();
        assert_eq!(
            second["contents"][1]["parts"][0]["thoughtSignature"],
            "sig_g0"
        );
    }
    // A client's own loop: the call's `extra_content.google.thought_signature` goes back.
    for stream in [false, true] {
        let first = json!({"model": "google/gemini-3-pro-preview", "stream": stream,
            "messages": [{"role": "user", "content": "client"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        let r = post_bypass(gw.addr(), first.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let call = if stream {
            let mut call = Value::Null;
            for d in sse_data(&r.text()) {
                if let Ok(v) = serde_json::from_str::<Value>(&d) {
                    if let Some(c) = v.pointer("/choices/0/delta/tool_calls/0") {
                        if c.get("id").is_some() {
                            call = c.clone();
                            call.as_object_mut().unwrap().remove("index");
                        }
                    }
                }
            }
            call
        } else {
            r.json()["choices"][0]["message"]["tool_calls"][0].clone()
        };
        assert_eq!(
            call["extra_content"]["google"]["thought_signature"], "sig_g0",
            "stream={stream}: {call}"
        );
        let id = call["id"].as_str().unwrap().to_string();
        assert!(id.len() <= 40 && id.starts_with("call_resp0x"), "{id}");
        let mut next = first.clone();
        next["messages"] = json!([first["messages"][0],
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}]);
        let r = post_bypass(gw.addr(), next.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text());
        // A history without the signature (another provider wrote it): the placeholder.
        next["messages"][1]["tool_calls"][0]
            .as_object_mut()
            .unwrap()
            .remove("extra_content");
        // (An id the gateway never answered, so its vault has nothing for it.)
        next["messages"][1]["tool_calls"][0]["id"] = json!("call_elsewhere");
        next["messages"][2]["tool_call_id"] = json!("call_elsewhere");
        let r = post_bypass(gw.addr(), next.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text());
        assert_eq!(
            model.last().json()["contents"][1]["parts"][0]["thoughtSignature"],
            "skip_thought_signature_validator"
        );
    }
}

/// An assistant message as most SDK stream accumulators rebuild it: `role`, `content` and
/// `tool_calls` (id, type, name, arguments), nothing else.
fn standard_fields_only(r: &RawResponse, stream: bool) -> Value {
    let mut calls: Vec<Value> = Vec::new();
    if stream {
        for d in sse_data(&r.text()) {
            let Ok(v) = serde_json::from_str::<Value>(&d) else {
                continue;
            };
            for c in v
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = c["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.push(json!({"id": c["id"], "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": ""}}));
                }
                let args = calls[i]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string()
                    + c["function"]["arguments"].as_str().unwrap_or("");
                calls[i]["function"]["arguments"] = json!(args);
            }
        }
    } else {
        for c in r.json()["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
        {
            calls.push(json!({"id": c["id"], "type": "function", "function": c["function"]}));
        }
    }
    json!({"role": "assistant", "content": null, "tool_calls": calls})
}

#[tokio::test]
async fn clients_that_echo_only_standard_fields_still_replay_reasoning_state() {
    // Both mocks refuse a tool turn without its reasoning state. The second turn of each
    // conversation is sent as an SDK accumulator rebuilds it; for Gemini it goes to another
    // gateway that shares only Redis with the first.
    let anthropic = MockUpstream::start(anthropic_model).await;
    let gemini = MockUpstream::start(gemini_model).await;
    let redis = RedisServer::start();
    let mut env = provider_env(&[
        ("anthropic", anthropic.url("/v1")),
        ("google", gemini.url("/v1")),
    ]);
    env.push(("REDIS_URL", redis.url()));
    env.push(("REDIS_TIMEOUT", "2s".into()));
    let a = GatewayProcess::start(&env, None);
    let b = GatewayProcess::start(&env, None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    for stream in [false, true] {
        for (model, second) in [
            ("anthropic/claude-sonnet-4-5", &a),
            ("google/gemini-3-pro-preview", &b),
        ] {
            let mut first = json!({"model": model, "stream": stream, "max_tokens": 2048,
                "messages": [{"role": "user", "content": "client"}], "tools": tools});
            if model.starts_with("anthropic") {
                first["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            }
            let r = post_chat(a.addr(), first.to_string().as_bytes()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let assistant = standard_fields_only(&r, stream);
            let id = assistant["tool_calls"][0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            let mut next = first.clone();
            next["messages"] = json!([first["messages"][0], assistant,
                {"role": "tool", "tool_call_id": id, "content": "sunny"}]);
            // The Redis write runs in the background (a real client's next turn comes after
            // its tool ran).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = post_chat(second.addr(), next.to_string().as_bytes()).await;
            assert_eq!(r.status, 200, "{model} stream={stream}: {}", r.text());
            if model.starts_with("anthropic") {
                let sent = anthropic.last().json();
                assert_eq!(sent["messages"][1]["content"][0]["signature"], "sig_0");
                assert!(sent.get("thinking").is_some(), "thinking kept");
            } else {
                let sent = gemini.last().json();
                assert_eq!(
                    sent["contents"][1]["parts"][0]["thoughtSignature"], "sig_g0",
                    "the real signature, from the other gateway's answer"
                );
            }
        }
    }
    drop(redis);
}

#[tokio::test]
async fn kept_reasoning_state_belongs_to_the_key_that_received_it() {
    let gemini = MockUpstream::start(gemini_model).await;
    let toml = format!(
        "[[keys]]\nname = \"one\"\nhash = \"{}\"\n[[keys]]\nname = \"two\"\nhash = \"{}\"\n",
        key_hash("igw-vault-one"),
        key_hash("igw-vault-two")
    );
    let gw = GatewayProcess::start(&provider_env(&[("google", gemini.url("/v1"))]), Some(&toml));
    let call = |key: &'static str, body: Value| {
        let addr = gw.addr();
        async move {
            let auth = format!("Bearer {key}");
            raw_request(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let first = json!({"model": "google/gemini-3-pro-preview",
        "messages": [{"role": "user", "content": "client"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
    let r = call("igw-vault-one", first.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let assistant = standard_fields_only(&r, false);
    let id = assistant["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut next = first.clone();
    next["messages"] = json!([first["messages"][0], assistant,
        {"role": "tool", "tool_call_id": id, "content": "sunny"}]);
    // The other key replays the same ids: it gets the placeholder, never key one's signature.
    assert_eq!(call("igw-vault-two", next.clone()).await.status, 200);
    assert_eq!(
        gemini.last().json()["contents"][1]["parts"][0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );
    assert_eq!(call("igw-vault-one", next).await.status, 200);
    assert_eq!(
        gemini.last().json()["contents"][1]["parts"][0]["thoughtSignature"],
        "sig_g0"
    );
}

#[tokio::test]
async fn vault_state_never_reaches_a_fallback_of_another_dialect() {
    // The Anthropic primary answers the first turn, then fails; the fallback is a strict
    // OpenAI-compatible server that refuses unknown message fields (as Mistral does).
    let anthropic = MockUpstream::start(|req: &Recorded| {
        if req.json()["messages"].as_array().unwrap().len() > 1 {
            return json_response(
                503,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
            );
        }
        anthropic_model(req)
    })
    .await;
    let strict = MockUpstream::start(|req: &Recorded| {
        let body = req.json();
        let extra = body["messages"].as_array().unwrap().iter().any(|m| {
            m.get("thinking_blocks").is_some()
                || m["tool_calls"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c.get("extra_content").is_some()))
        });
        if extra {
            return json_response(
                422,
                r#"{"object":"error","message":"extra_forbidden","type":"invalid_request_error"}"#,
            );
        }
        json_response(200, &chat_completion("fallback", "from the fallback"))
    })
    .await;
    let toml = "[aliases.smart]\ntarget = \"anthropic/claude-sonnet-4-5\"\nfallbacks = [\"openai/gpt-4o\"]\n";
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("anthropic", anthropic.url("/v1")),
            ("openai", strict.url("/v1")),
        ]),
        Some(toml),
    );
    let first = json!({"model": "smart", "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "client"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
    let r = post_chat(gw.addr(), first.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let assistant = standard_fields_only(&r, false);
    let id = assistant["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut next = first.clone();
    next["messages"] = json!([first["messages"][0], assistant,
        {"role": "tool", "tool_call_id": id, "content": "sunny"}]);
    let r = post_chat(gw.addr(), next.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "from the fallback"
    );
    // The primary was sent the restored blocks; the fallback the client's own messages.
    assert_eq!(
        anthropic.last().json()["messages"][1]["content"][0]["type"],
        "thinking"
    );
    assert!(strict.last().json()["messages"][1]
        .get("thinking_blocks")
        .is_none());
}

#[tokio::test]
async fn loop_replies_that_call_client_tools_keep_their_reasoning_state() {
    // With the MCP loop on, a reply calling the client's own tool goes back to the client; a
    // client that echoes only the standard fields still replays a valid turn.
    let mcp = HttpMcpServer::start(0).await;
    let anthropic = MockUpstream::start(anthropic_model).await;
    let gemini = MockUpstream::start(gemini_model).await;
    let mut env = provider_env(&[
        ("anthropic", anthropic.url("/v1")),
        ("google", gemini.url("/v1")),
    ]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    let gw = GatewayProcess::start(&env, None);
    wait_for_tools(&gw, 1).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    for stream in [false, true] {
        for model in ["anthropic/claude-sonnet-4-5", "google/gemini-3-pro-preview"] {
            let mut first = json!({"model": model, "stream": stream, "max_tokens": 2048,
                "messages": [{"role": "user", "content": "client"}], "tools": tools});
            if model.starts_with("anthropic") {
                first["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
            }
            let r = post_chat(gw.addr(), first.to_string().as_bytes()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let assistant = standard_fields_only(&r, stream);
            assert_eq!(
                assistant["tool_calls"][0]["function"]["name"],
                "get_weather"
            );
            let id = assistant["tool_calls"][0]["id"]
                .as_str()
                .unwrap()
                .to_string();
            let mut next = first.clone();
            next["messages"] = json!([first["messages"][0], assistant,
                {"role": "tool", "tool_call_id": id, "content": "sunny"}]);
            let r = post_chat(gw.addr(), next.to_string().as_bytes()).await;
            assert_eq!(r.status, 200, "{model} stream={stream}: {}", r.text());
            if model.starts_with("anthropic") {
                assert_eq!(
                    anthropic.last().json()["messages"][1]["content"][0]["signature"],
                    "sig_0"
                );
            } else {
                assert_eq!(
                    gemini.last().json()["contents"][1]["parts"][0]["thoughtSignature"],
                    "sig_g0"
                );
            }
        }
    }
}

/// The Messages door runs the MCP loop too (on the canonical exchange, whatever the provider),
/// streamed across rounds as Messages events; Anthropic's signed thinking is carried between
/// rounds (its mock refuses round 2 without it).
#[tokio::test]
async fn messages_door_runs_the_loop_on_every_dialect() {
    for (provider, model_name) in [
        ("openai", "openai/gpt-x"),
        ("anthropic", "claude-sonnet-4-5"),
    ] {
        let mcp = HttpMcpServer::start(0).await;
        let model = MockUpstream::start(if provider == "openai" {
            openai_model
        } else {
            anthropic_model
        })
        .await;
        let gw = GatewayProcess::start(&mcp_env(provider, &model, &mcp), None);
        wait_for_tools(&gw, 1).await;
        for stream in [false, true] {
            let mut req = json!({"model": model_name, "max_tokens": 200, "stream": stream,
                "messages": [{"role": "user", "content": "add"}]});
            if provider == "anthropic" {
                req["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
            }
            let before = model.count();
            let r = raw_request(
                gw.addr(),
                "POST",
                "/v1/messages",
                &[("anthropic-version", "2023-06-01")],
                req.to_string().as_bytes(),
            )
            .await;
            assert_eq!(r.status, 200, "{provider} stream={stream}: {}", r.text());
            assert_eq!(model.count(), before + 2, "{provider}: two rounds");
            if stream {
                let text = r.text();
                let events: Vec<Value> = sse_data(&text)
                    .iter()
                    .map(|d| serde_json::from_str(d).unwrap())
                    .collect();
                assert_eq!(events[0]["type"], "message_start", "{text}");
                assert_eq!(events.last().unwrap()["type"], "message_stop", "{text}");
                assert_eq!(
                    events
                        .iter()
                        .filter(|e| e["type"] == "message_start")
                        .count(),
                    1
                );
                let said: String = events
                    .iter()
                    .filter_map(|e| e["delta"]["text"].as_str())
                    .collect();
                assert_eq!(said, "result: 5", "{text}");
                let delta = events
                    .iter()
                    .find(|e| e["type"] == "message_delta")
                    .unwrap();
                assert_eq!(delta["delta"]["stop_reason"], "end_turn");
                assert_eq!(delta["usage"]["output_tokens"], 10, "both rounds: {delta}");
            } else {
                let v = r.json();
                assert_eq!(v["type"], "message", "{v}");
                assert_eq!(
                    v["content"].as_array().unwrap().last().unwrap()["text"],
                    "result: 5"
                );
                assert_eq!(v["stop_reason"], "end_turn");
                assert_eq!(v["usage"]["output_tokens"], 10, "{v}");
                assert_eq!(r.headers.get("x-mcp-rounds").map(String::as_str), Some("2"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway as an MCP server (/mcp)
// ---------------------------------------------------------------------------------------------

fn mcp_keys_toml() -> String {
    format!(
        "[[keys]]\nname = \"full\"\nhash = \"{}\"\n\n[[keys]]\nname = \"limited\"\nhash = \"{}\"\ntools = [\"add\", \"gateway_*\"]\n\n[[keys]]\nname = \"counted\"\nhash = \"{}\"\nrpm = 3\n",
        key_hash("sk-mcp-full"),
        key_hash("sk-mcp-limited"),
        key_hash("sk-mcp-counted"),
    )
}

/// A stateless (2026-07-28) request with its required headers and `_meta`.
async fn mcp_modern(
    addr: std::net::SocketAddr,
    key: &str,
    id: u64,
    method: &str,
    mut params: Value,
) -> RawResponse {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let name = params["name"].as_str().map(str::to_string);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = &name {
        headers.push(("mcp-name", n.as_str()));
    }
    raw_request(addr, "POST", "/mcp", &headers, body.to_string().as_bytes()).await
}

/// `/mcp` with the official MCP Python SDK in both protocol generations (tools of the MCP
/// server and the gateway's own, progress passed through, allowlists), and on the wire: the
/// header and `_meta` rules, sessions, RPM per call, metrics.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_is_an_mcp_server() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import mcp, httpx2"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "the mcp Python SDK (2.x) is missing: run `make test` (it installs it) or `pip install mcp==2.3.0`"
    );
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(|req| {
        if req.method == "GET" {
            return json_response(
                200,
                r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"}]}"#,
            );
        }
        openai_model(req)
    })
    .await;
    let mut env = mcp_env("openai", &model, &mcp);
    let metrics_port = free_port();
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", metrics_port.to_string()));
    let gw = GatewayProcess::start(&env, Some(&mcp_keys_toml()));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = mcp_modern(gw.addr(), "sk-mcp-full", 1, "tools/list", json!({})).await;
        if r.text().contains("\"add\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The official SDK, both generations.
    let path = format!("{}/tests/sdk/mcp_server.py", env!("CARGO_MANIFEST_DIR"));
    let url = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", "sk-mcp-full")
            .env("LIMITED_KEY", "sk-mcp-limited")
            .env("MODEL", "openai/gpt-4o")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all SDK checks passed"),
        "MCP SDK checks failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log_text()
    );

    let a = gw.addr();
    // On the wire: a stateless request without its headers or _meta is a 400 with the
    // protocol's codes; an unknown version names the supported ones; an unknown method 404.
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}});
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let body = body.to_string();
        async move {
            let mut h = vec![("authorization", "Bearer sk-mcp-full")];
            h.extend(headers);
            raw_request(a, "POST", "/mcp", &h, body.as_bytes()).await
        }
    };
    let r = post(vec![("mcp-protocol-version", "2026-07-28")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32020);
    let r = post(vec![
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
    ])
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32602);
    let r = post(vec![
        ("mcp-protocol-version", "2099-01-01"),
        ("mcp-method", "tools/list"),
    ])
    .await;
    assert_eq!(r.json()["error"]["code"], -32022, "{}", r.text());
    assert!(r.json()["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    let r = mcp_modern(a, "sk-mcp-full", 8, "resources/list", json!({})).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32601);
    let r = mcp_modern(a, "sk-mcp-full", 9, "server/discover", json!({})).await;
    let d = r.json();
    assert_eq!(d["result"]["resultType"], "complete", "{d}");
    assert!(d["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-11-25")));
    assert_eq!(d["result"]["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(
        d["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "inference-gateway"
    );
    // The Mcp-Name header must name the tool.
    let r = mcp_modern(
        a,
        "sk-mcp-full",
        10,
        "tools/call",
        json!({"name": "add", "arguments": {"a": 1, "b": 1}}),
    )
    .await;
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "2",
        "{}",
        r.text()
    );
    let call = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "add",
        "arguments": {"a": 1, "b": 1}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let r = raw_request(
        a,
        "POST",
        "/mcp",
        &[
            ("authorization", "Bearer sk-mcp-full"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        call.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32020, "{}", r.text());

    // The handshake protocol: a session from initialize, required afterwards, per caller.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = raw_request(
        a,
        "POST",
        "/mcp",
        &[("authorization", "Bearer sk-mcp-full")],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        r.json()["result"]["protocolVersion"],
        "2025-06-18",
        "{}",
        r.text()
    );
    let sid = r.headers["mcp-session-id"].clone();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let legacy = |key: &'static str, sid: Option<String>| {
        let list = list.clone();
        async move {
            let auth = format!("Bearer {key}");
            let mut h = vec![("authorization", auth.as_str())];
            if let Some(s) = &sid {
                h.push(("mcp-session-id", s.as_str()));
            }
            raw_request(a, "POST", "/mcp", &h, list.as_bytes()).await
        }
    };
    let r = legacy("sk-mcp-full", None).await;
    assert_eq!(r.status, 400, "no session: {}", r.text());
    let r = legacy("sk-mcp-limited", Some(sid.clone())).await;
    assert_eq!(r.status, 404, "another key's session: {}", r.text());
    let r = legacy("sk-mcp-full", Some(sid.clone())).await;
    assert!(r.text().contains("\"gateway_chat\""), "{}", r.text());
    assert!(
        r.json()["result"].get("resultType").is_none(),
        "results of the handshake protocol have no resultType"
    );
    let r = raw_request(
        a,
        "DELETE",
        "/mcp",
        &[
            ("authorization", "Bearer sk-mcp-full"),
            ("mcp-session-id", &sid),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = legacy("sk-mcp-full", Some(sid.clone())).await;
    assert_eq!(r.status, 404, "a deleted session: {}", r.text());

    // Each tools/call counts against the key's RPM; tools/list does not.
    for i in 0..5 {
        let r = mcp_modern(a, "sk-mcp-counted", 100 + i, "tools/list", json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut refused = None;
    for i in 0..4 {
        let r = mcp_modern(
            a,
            "sk-mcp-counted",
            200 + i,
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
        if r.json()["error"]["code"] == -32029 {
            refused = Some(i);
            assert_eq!(r.status, 429, "{}", r.text());
            break;
        }
        assert_eq!(
            r.json()["result"]["content"][0]["text"],
            "3",
            "{}",
            r.text()
        );
    }
    assert_eq!(
        refused,
        Some(3),
        "the fourth call in the minute is refused (rpm 3)"
    );

    // A bad key: 401 (no OIDC here, so no metadata header); metrics by tool_type.
    let r = mcp_modern(a, "not-a-key", 1, "tools/list", json!({})).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.headers.contains_key("www-authenticate"));
    let m = raw_request(
        ([127, 0, 0, 1], metrics_port).into(),
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .await
    .text();
    let has = |tool_type: &str, tool: &str| {
        m.lines().any(|l| {
            l.starts_with("llm_tool_calls_total{")
                && l.contains(&format!("tool_type=\"{tool_type}\""))
                && l.contains(&format!("tool_name=\"{tool}\""))
        })
    };
    assert!(has("gateway", "gateway_chat"), "{m}");
    assert!(has("mcp", "add"), "{m}");
}

/// `/mcp` is refused (403) before auth unless MCP_EXPOSE; with OIDC a 401 names the RFC 9728
/// metadata, which names the issuer and is built from server.public_url (never `Host`).
#[tokio::test(flavor = "multi_thread")]
async fn mcp_endpoint_gating_and_oauth_metadata() {
    let model = MockUpstream::start(openai_model).await;
    let env = provider_env(&[("openai", model.url("/v1"))]);
    let gw = GatewayProcess::start(&env, Some(&mcp_keys_toml()));
    let r = mcp_modern(gw.addr(), "not-a-key", 1, "tools/list", json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "mcp_not_exposed");
    let mut oidc = env.clone();
    oidc.push(("MCP_EXPOSE", "true".into()));
    oidc.push((
        "AUTH_OIDC_ISSUER",
        "https://issuer.example.com/realm".into(),
    ));
    oidc.push(("AUTH_OIDC_CLIENT_ID", "gateway".into()));
    oidc.push(("SERVER_PUBLIC_URL", "https://gw.example.com/".into()));
    let gw = GatewayProcess::start(&oidc, None);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/mcp",
        &[],
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp\""
    );
    let r = raw_request(
        gw.addr(),
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["resource"], "https://gw.example.com/mcp");
    assert_eq!(
        v["authorization_servers"],
        json!(["https://issuer.example.com/realm"])
    );
    // Without OIDC there is no metadata to give.
    let mut open = env.clone();
    open.push(("MCP_EXPOSE", "true".into()));
    let gw2 = GatewayProcess::start(&open, None);
    let r = raw_request(
        gw2.addr(),
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Reads from `s` until `needle` has arrived (or panics after `limit`); everything read so far.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    needle: &str,
    limit: Duration,
) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    while !String::from_utf8_lossy(buf).contains(needle) {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "{needle:?} did not arrive ({other:?}): {}",
                String::from_utf8_lossy(buf)
            ),
        }
    }
}

/// A change of the offered tools reaches `/mcp`'s listeners: a stateless
/// `subscriptions/listen` stream and a handshake session's GET stream.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_listeners_hear_list_changed() {
    use tokio::io::AsyncWriteExt;
    let s = setup(&[]).await;
    let a = s.gw.addr();
    // The stateless protocol: subscriptions/listen.
    let listen =
        json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": true},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string();
    let mut modern = tokio::net::TcpStream::connect(a).await.unwrap();
    modern
        .write_all(
            format!(
                "POST /mcp HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: subscriptions/listen\r\ncontent-length: {}\r\n\r\n{listen}",
                listen.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut modern_buf = Vec::new();
    read_until(
        &mut modern,
        &mut modern_buf,
        "subscriptions/acknowledged",
        Duration::from_secs(5),
    )
    .await;
    assert!(String::from_utf8_lossy(&modern_buf).contains("\"toolsListChanged\":true"));
    // The handshake protocol: a session, then its GET stream.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = raw_request(a, "POST", "/mcp", &[], init.to_string().as_bytes()).await;
    let sid = r.headers["mcp-session-id"].clone();
    let mut legacy = tokio::net::TcpStream::connect(a).await.unwrap();
    legacy
        .write_all(
            format!("GET /mcp HTTP/1.1\r\nhost: gw\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut legacy_buf = Vec::new();
    read_until(
        &mut legacy,
        &mut legacy_buf,
        "text/event-stream",
        Duration::from_secs(5),
    )
    .await;
    // The MCP server shows a new tool and says so; the gateway re-lists and tells both.
    s.mcp.server.reveal_late_tool();
    read_until(
        &mut modern,
        &mut modern_buf,
        "notifications/tools/list_changed",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&modern_buf)
            .contains("\"io.modelcontextprotocol/subscriptionId\":\"sub-1\""),
        "{}",
        String::from_utf8_lossy(&modern_buf)
    );
    read_until(
        &mut legacy,
        &mut legacy_buf,
        "notifications/tools/list_changed",
        Duration::from_secs(10),
    )
    .await;
    let r = mcp_modern(a, "", 5, "tools/list", json!({})).await;
    assert!(r.text().contains("\"late\""), "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// A2A agents as tools
// ---------------------------------------------------------------------------------------------

/// An A2A agent built on the official a2a-sdk (tests/sdk/a2a_agent.py); stopped on drop.
struct Agent(std::process::Child);

impl Agent {
    fn start(port: u16, name: &str, versions: &str) -> Agent {
        let path = format!("{}/tests/sdk/a2a_agent.py", env!("CARGO_MANIFEST_DIR"));
        let child = std::process::Command::new("python3")
            .arg(path)
            .arg(port.to_string())
            .arg(name)
            .arg(versions)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the test agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `/v1/a2a/agents` shows agent `i` healthy; its entry.
async fn wait_for_agent(gw: &GatewayProcess, i: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = raw_request(gw.addr(), "GET", "/v1/a2a/agents", &[], b"")
            .await
            .json();
        if v["data"][i]["healthy"] == true {
            return v["data"][i].clone();
        }
        assert!(
            Instant::now() < deadline,
            "agent {i} never came up: {v}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Agents' skills become tools the loop runs (A2A 1.0 and 0.3, chosen from the card), an
/// agent down at start is picked up when it comes, input-required and timeouts come back as
/// tool results, X-A2A-Bypass leaves the agents out, and /mcp federates them.
#[tokio::test(flavor = "multi_thread")]
async fn a2a_agents_are_tools() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import a2a.server.routes, uvicorn"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "the a2a-sdk Python package is missing: run `make test` (it installs it)"
    );
    let (p1, mut p2) = (free_port(), DeadPort::new());
    let _echo = Agent::start(p1, "Echo Agent", "1.0,0.3");
    let model = MockUpstream::start(openai_model).await;
    let mut env = provider_env(&[("openai", model.url("/v1"))]);
    env.push(("A2A_ENABLE", "true".into()));
    env.push(("A2A_EXPOSE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push((
        "A2A_AGENTS",
        format!("http://127.0.0.1:{p1},http://127.0.0.1:{}", p2.port),
    ));
    env.push(("A2A_CLIENT_TIMEOUT", "2s".into()));
    let gw = GatewayProcess::start(&env, None);
    let a = gw.addr();
    let first = wait_for_agent(&gw, 0).await;
    assert_eq!(first["protocol_version"], "1.0", "{first}");
    let names: Vec<&str> = first["skills"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "a2a_echo_agent_echo",
            "a2a_echo_agent_ask",
            "a2a_echo_agent_slow"
        ]
    );
    let listing = raw_request(a, "GET", "/v1/a2a/agents", &[], b"")
        .await
        .json();
    assert_eq!(listing["data"][1]["healthy"], false, "{listing}");

    // A skill in the loop (A2A 1.0).
    let r = post_chat(a, &chat("agent", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "result: echo: hello agent",
        "{}",
        r.text()
    );
    assert_eq!(r.headers.get("x-mcp-rounds").map(String::as_str), Some("2"));
    let offered = model.requests()[0].json()["tools"].to_string();
    assert!(offered.contains("a2a_echo_agent_ask"), "{offered}");

    // The second agent comes up later and speaks only 0.3: a streamed loop through it.
    let _old = Agent::start(p2.release(), "Old Agent", "0.3");
    let second = wait_for_agent(&gw, 1).await;
    assert_eq!(second["protocol_version"], "0.3", "{second}");
    let r = post_chat(a, &chat("agent-old", true)).await;
    let text = r.text();
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "result: echo: hello old", "{text}");
    assert_eq!(text.matches("data: [DONE]").count(), 1, "{text}");

    // input-required comes back at once, saying so; a slow task times out (A2A_CLIENT_TIMEOUT).
    let r = post_chat(a, &chat("agent-ask", false)).await;
    let answer = r.json()["choices"][0]["message"]["content"].to_string();
    assert!(answer.contains("needs more input: Which city?"), "{answer}");
    let t = Instant::now();
    let r = post_chat(a, &chat("agent-slow", false)).await;
    let answer = r.json()["choices"][0]["message"]["content"].to_string();
    assert!(answer.contains("did not finish within 2000 ms"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // X-A2A-Bypass: no agents offered, the model's call goes back to the client.
    let before = model.count();
    let r = raw_request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("x-a2a-bypass", "1")],
        &chat("agent", false),
    )
    .await;
    assert_eq!(
        r.json()["choices"][0]["finish_reason"],
        "tool_calls",
        "{}",
        r.text()
    );
    assert_eq!(model.count(), before + 1);
    assert!(model.last().json().get("tools").is_none());

    // /mcp federates the skills.
    let r = mcp_modern(a, "", 1, "tools/list", json!({})).await;
    assert!(r.text().contains("\"a2a_old_agent_echo\""), "{}", r.text());
    let r = mcp_modern(
        a,
        "",
        2,
        "tools/call",
        json!({"name": "a2a_old_agent_echo", "arguments": {"message": "via mcp"}}),
    )
    .await;
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "echo: via mcp",
        "{}",
        r.text()
    );
}

/// A key's tool allowlist holds in the server-side loop too: only its tools are offered, and a
/// call to another (a model may name any) is answered "unknown tool" without reaching a server.
#[tokio::test(flavor = "multi_thread")]
async fn tool_allowlists_hold_in_the_loop() {
    let mcp = HttpMcpServer::start(0).await;
    let model = MockUpstream::start(openai_model).await;
    let env = mcp_env("openai", &model, &mcp);
    let toml = format!(
        "[[keys]]\nname = \"echo-only\"\nhash = \"{}\"\ntools = [\"echo\"]\n",
        key_hash("sk-echo-only")
    );
    let gw = GatewayProcess::start(&env, Some(&toml));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !raw_request(
        gw.addr(),
        "GET",
        "/v1/mcp/tools",
        &[("authorization", "Bearer sk-echo-only")],
        b"",
    )
    .await
    .text()
    .contains("mcp_add")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-echo-only")],
        &chat("add", false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let content = r.json()["choices"][0]["message"]["content"].to_string();
    assert!(content.contains("unknown tool"), "{content}");
    let offered: Vec<String> = model.requests()[0].json()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, ["mcp_echo"]);
    assert_eq!(
        mcp.observed.calls.load(Ordering::SeqCst),
        0,
        "no server was called"
    );
}

/// A `/mcp` client that hangs up mid-call cancels the call on the upstream MCP server.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_client_hang_up_cancels_the_upstream_call() {
    use tokio::io::AsyncWriteExt;
    let s = setup(&[]).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 10000},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let mut conn = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
    conn.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: sleep\r\ncontent-length: {}\r\n\r\n{call}",
            call.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.mcp.observed.running.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.mcp.observed.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
