//! Compatibility with the official `openai` Python SDK (installed from PyPI by `make test`).

use crate::model;

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn tool_call_response() -> String {
    json!({"id":"chatcmpl-t","object":"chat.completion","created":1,"model":"tools",
        "choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}],
        "usage":{"prompt_tokens":20,"completion_tokens":10,"total_tokens":30}})
    .to_string()
}

fn tool_call_stream() -> String {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"tools",
                "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        )
    };
    let mut s = chunk(
        json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}),
        Value::Null,
    );
    for part in ["{\"ci", "ty\": \"Pa", "ris\"}"] {
        s += &chunk(
            json!({"tool_calls":[{"index":0,"function":{"arguments":part}}]}),
            Value::Null,
        );
    }
    s += &chunk(json!({}), json!("tool_calls"));
    s += "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"tools\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":10,\"total_tokens\":30}}\n\n";
    s + "data: [DONE]\n\n"
}

/// Runs `tests/sdk/<script>` against the gateway; it must pass every check.
async fn run_sdk_script(gw: &GatewayProcess, script: &str, env: &[(&str, &str)]) {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("python3");
    cmd.arg(path).env("GATEWAY_URL", gw.url(""));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run python3"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.log_text()
    );
    assert!(stdout.contains("all SDK checks passed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn official_openai_python_sdk() {
    let check = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "the openai Python package is missing: run `make test` (it installs it) or `pip install openai`"
    );
    let up = MockUpstream::start(|req| {
        if req.path == "/v1/models" {
            return json_response(200, r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},{"id":"tools","object":"model","created":1,"owned_by":"openai"}]}"#);
        }
        if req.path == "/v1/embeddings" {
            return json_response(200, r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25,-0.5]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":1,"total_tokens":1}}"#);
        }
        let body = req.json();
        let stream = body["stream"] == true;
        match body["model"].as_str().unwrap_or("") {
            "limited" => vec![Step::Write(http_response(429, &[("content-type", "application/json")],
                br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#))],
            "tools" if stream => sse_steps(tool_call_stream().as_bytes(), &[100, 300], Duration::from_millis(1)),
            "tools" => json_response(200, &tool_call_response()),
            m if stream => sse_steps(chat_stream(m, &["Hello", ", ", "world!"], true).as_bytes(), &[50], Duration::from_millis(1)),
            m => json_response(200, &chat_completion(m, "hello")),
        }
    })
    .await;
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/filters/tests/golden/anthropic/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let (text, stream) = (
        fixture("text.response.json"),
        fixture("tool_use.stream.sse"),
    );
    let anthropic = MockUpstream::start(move |req| {
        if req.method == "GET" {
            return json_response(200, r#"{"data":[],"has_more":false}"#);
        }
        if req.json()["stream"] == true {
            sse_steps(&stream, &[200, 900, 1500], Duration::from_millis(1))
        } else {
            json_response(200, std::str::from_utf8(&text).unwrap())
        }
    })
    .await;
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("openai", up.url("/v1")),
            ("anthropic", anthropic.url("/v1")),
        ]),
        None,
    );
    run_sdk_script(&gw, "openai_compat.py", &[]).await;
    // The caller's key never reached the provider.
    assert!(up
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer sk-openai-test")));
}

#[tokio::test(flavor = "multi_thread")]
async fn official_openai_python_sdk_with_keys_and_mcp() {
    let mcp = crate::mcp_support::HttpMcpServer::start(0).await;
    let model = MockUpstream::start(model::openai_model).await;
    let key = "igw-sdk-test-key";
    let hash = key_hash(key);
    let mut env = provider_env(&[("openai", model.url("/v1"))]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    let toml = format!("[[keys]]\nname = \"sdk\"\nhash = \"{hash}\"\nrpm = 3\n");
    let gw = GatewayProcess::start(&env, Some(&toml));
    // Tools are discovered in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = raw_request(
            gw.addr(),
            "GET",
            "/v1/mcp/tools",
            &[("authorization", "Bearer igw-sdk-test-key")],
            b"",
        )
        .await;
        if r.json()["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no MCP tools");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stay within one minute window (rpm counts per minute).
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if s % 60 > 45 {
        tokio::time::sleep(Duration::from_secs(61 - s % 60)).await;
    }
    run_sdk_script(&gw, "openai_keys_mcp.py", &[("GATEWAY_KEY", key)]).await;
    assert!(model
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer sk-openai-test")));
}

/// The Messages door through every dialect, with the official `anthropic` Python SDK: create,
/// stream, tool_use round trips (stream and not), count_tokens, and its typed errors.
#[tokio::test(flavor = "multi_thread")]
async fn official_anthropic_python_sdk_on_every_dialect() {
    let check = Command::new("python3")
        .args(["-c", "import anthropic"])
        .output()
        .expect("python3 is needed");
    assert!(
        check.status.success(),
        "the anthropic Python package is missing: run `make test` (it installs it) or `pip install anthropic`"
    );
    let openai = MockUpstream::start(|req| {
        match req.json()["model"].as_str().unwrap_or("") {
            m if m.starts_with("limited") => vec![Step::Write(http_response(429, &[("content-type", "application/json")],
                br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#))],
            m if m.starts_with("busy") => json_response(503, r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#),
            _ => model::openai_model(req),
        }
    })
    .await;
    let anthropic = MockUpstream::start(|req| {
        // Anthropic refuses a request without its version header.
        if req.header("anthropic-version").is_none() || req.header("x-api-key") != Some("sk-anthropic-test") {
            return json_response(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"anthropic-version: header is required"}}"#);
        }
        if req.path.ends_with("/messages/count_tokens") {
            return json_response(200, r#"{"input_tokens":42}"#);
        }
        model::anthropic_model(req)
    })
    .await;
    let gemini = MockUpstream::start(model::gemini_model).await;
    let cohere = MockUpstream::start(model::cohere_model).await;
    let key = "sk-gw-anthropic-sdk";
    let toml = format!("[[keys]]\nname = \"sdk\"\nhash = \"{}\"\n", key_hash(key));
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("openai", openai.url("/v1")),
            ("anthropic", anthropic.url("/v1")),
            ("google", gemini.url("/v1beta")),
            ("cohere", cohere.url("")),
        ]),
        Some(&toml),
    );
    let models = json!({
        "openai": "openai/gpt-test",
        "anthropic": "claude-sonnet-4-5",
        "gemini": "google/gemini-3-pro-preview",
        "cohere": "cohere/command-a-03-2025",
    })
    .to_string();
    run_sdk_script(
        &gw,
        "anthropic_messages.py",
        &[("MODELS", &models), ("GATEWAY_KEY", key)],
    )
    .await;
    // The relay forwarded the SDK's own version header and sent the model unchanged.
    let relayed = anthropic
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages")
        .expect("the anthropic mock was called");
    assert!(relayed.header("anthropic-version").is_some());
    assert_eq!(relayed.json()["model"], "claude-sonnet-4-5");
    // The caller's key never reaches a provider.
    for up in [&openai, &anthropic, &gemini, &cohere] {
        for r in up.requests() {
            assert!(!format!("{:?}", r.headers).contains(key));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn official_openai_python_sdk_responses_on_every_dialect() {
    let responses = MockUpstream::start(model::openai_responses_model).await;
    let compat = MockUpstream::start(model::openai_model).await;
    let anthropic = MockUpstream::start(|req| {
        if req.header("anthropic-version").is_none() {
            return json_response(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"anthropic-version: header is required"}}"#);
        }
        model::anthropic_model(req)
    })
    .await;
    let gemini = MockUpstream::start(model::gemini_model).await;
    let cohere = MockUpstream::start(model::cohere_model).await;
    let key = "sk-gw-responses-sdk";
    let toml = format!(
        "[[keys]]\nname = \"sdk\"\nhash = \"{}\"\n\n[providers.vllm]\nurl = \"{}\"\nauth = \"none\"\n",
        key_hash(key),
        compat.url("/v1")
    );
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("openai", responses.url("/v1")),
            ("anthropic", anthropic.url("/v1")),
            ("google", gemini.url("/v1beta")),
            ("cohere", cohere.url("")),
        ]),
        Some(&toml),
    );
    let models = json!({
        "openai (Responses API)": "openai/gpt-test",
        "OpenAI-compatible chat": "vllm/llama",
        "anthropic": "anthropic/claude-sonnet-4-5",
        "gemini": "google/gemini-3-pro-preview",
        "cohere": "cohere/command-a-03-2025",
    })
    .to_string();
    run_sdk_script(
        &gw,
        "openai_responses.py",
        &[("MODELS", &models), ("GATEWAY_KEY", key)],
    )
    .await;
    // OpenAI got the Responses API itself (model rewritten), never chat completions.
    let native = responses.requests();
    assert!(!native.is_empty());
    assert!(native
        .iter()
        .filter(|r| r.method == "POST")
        .all(|r| r.path == "/v1/responses" && r.json()["model"] == "gpt-test"));
    // The chat server got chat completions.
    assert!(compat
        .requests()
        .iter()
        .all(|r| r.path == "/v1/chat/completions"));
    // The caller's key never reaches a provider.
    for up in [&responses, &compat, &anthropic, &gemini, &cohere] {
        for r in up.requests() {
            assert!(!format!("{:?}", r.headers).contains(key));
        }
    }
}
