//! Black-box tests: the gateway binary as a real process, mock providers on real sockets.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn chat_body(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

async fn openai_mock() -> MockUpstream {
    MockUpstream::start(|req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let model = body["model"].as_str().unwrap_or("?").to_string();
        json_response(200, &chat_completion(&model, "hello"))
    })
    .await
}

// ----------------------------------------------------------------------------- routing

#[tokio::test(flavor = "multi_thread")]
async fn routing_matrix() {
    let openai = openai_mock().await;
    let groq = openai_mock().await;
    let mut env = provider_env(&[
        ("openai", openai.url("/v1")),
        ("groq", groq.url("/openai/v1")),
    ]);
    env.push(("DISALLOWED_MODELS", "gpt-3.5-turbo".into()));
    let toml = r#"
[aliases.fast]
target = "groq/llama-3.1-8b-instant"
system_prompt_prefix = "Be brief."
[aliases.fast.defaults]
temperature = 0.2
max_tokens = 64
"#;
    let gw = GatewayProcess::start(&env, Some(toml));
    let post = |path: &str, body: Vec<u8>| {
        let addr = gw.addr();
        let path = path.to_string();
        async move {
            raw_request(
                addr,
                "POST",
                &path,
                &[("content-type", "application/json")],
                &body,
            )
            .await
        }
    };

    // provider/model prefix: the prefix picks the provider and is stripped.
    let r = post("/v1/chat/completions", chat_body("openai/gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(openai.last().path, "/v1/chat/completions");
    assert_eq!(openai.last().json()["model"], "gpt-4o");
    assert_eq!(r.headers["x-gateway-provider"], "openai");

    // Split at the first slash only.
    let r = post("/v1/chat/completions", chat_body("groq/meta-llama/llama-4")).await;
    assert_eq!(r.status, 200);
    assert_eq!(groq.last().path, "/openai/v1/chat/completions");
    assert_eq!(groq.last().json()["model"], "meta-llama/llama-4");

    // ?provider= wins and the model is sent as given.
    let r = post(
        "/v1/chat/completions?provider=groq",
        chat_body("openai/gpt-4o"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(groq.last().json()["model"], "openai/gpt-4o");

    // Alias: target model, defaults only where absent, system prompt prefix.
    let body = json!({"model": "fast", "temperature": 0.9, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]});
    let r = post("/v1/chat/completions", body.to_string().into_bytes()).await;
    assert_eq!(r.status, 200);
    let sent = groq.last().json();
    assert_eq!(sent["model"], "llama-3.1-8b-instant");
    assert_eq!(sent["temperature"], 0.9);
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(
        sent["messages"][0]["content"],
        "Be brief.\n\nYou are terse."
    );
    let r = post("/v1/chat/completions", chat_body("fast")).await;
    assert_eq!(r.status, 200);
    let sent = groq.last().json();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["messages"][1]["role"], "user");

    let before = openai.count() + groq.count();
    // No provider can be determined.
    let r = post("/v1/chat/completions", chat_body("gpt-4o")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Unknown prefix / unknown ?provider=.
    assert_eq!(
        post("/v1/chat/completions", chat_body("nope/gpt-4o"))
            .await
            .status,
        400
    );
    let r = post("/v1/chat/completions?provider=nope", chat_body("gpt-4o")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("unknown_provider"))
    );
    // Denied, with or without prefix, any case.
    let r = post("/v1/chat/completions", chat_body("openai/GPT-3.5-turbo")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["type"], "permission_error");
    // A built-in provider without a key.
    let r = post("/v1/chat/completions", chat_body("mistral/mistral-large")).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("provider_not_configured"))
    );
    // Missing model.
    let r = post("/v1/chat/completions", br#"{"messages":[]}"#.to_vec()).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("model"))
    );
    assert_eq!(
        openai.count() + groq.count(),
        before,
        "refused requests never reach a provider"
    );

    // Unknown path and wrong method, in the envelope.
    let r = raw_request(gw.addr(), "GET", "/v2/whatever", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = raw_request(gw.addr(), "GET", "/v1/chat/completions", &[], b"").await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_list_applies_to_aliases() {
    let openai = openai_mock().await;
    let mut env = provider_env(&[("openai", openai.url("/v1"))]);
    env.push(("ALLOWED_MODELS", "openai/gpt-4o".into()));
    let toml = "[aliases.smart]\ntarget = \"openai/gpt-4o\"\n[aliases.cheap]\ntarget = \"openai/gpt-4o-mini\"\n";
    let gw = GatewayProcess::start(&env, Some(toml));
    let st = |m: &'static str| {
        let addr = gw.addr();
        async move { post_chat(addr, &chat_body(m)).await.status }
    };
    assert_eq!(st("openai/gpt-4o").await, 200);
    assert_eq!(st("gpt-4o").await, 400);
    assert_eq!(st("smart").await, 200);
    assert_eq!(st("cheap").await, 403);
    assert_eq!(st("openai/gpt-4o-mini").await, 403);
}

// ----------------------------------------------------------------------------- relay

#[tokio::test(flavor = "multi_thread")]
async fn non_stream_relay_is_byte_exact_and_strips_caller_credentials() {
    // Odd spacing and key order: must come back untouched.
    let upstream_body = "{ \"id\":\"x\",  \"object\":\"chat.completion\",\"created\":1,\"model\":\"gpt-4o-2024\",\n\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"h\u{e9}llo \u{1f600}\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3},\"system_fingerprint\":\"fp\"}";
    let up = MockUpstream::start(move |_| json_response(200, upstream_body)).await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer caller-secret-token"),
            ("x-api-key", "caller-x-api-key"),
            ("x-request-id", "req-from-client-1"),
        ],
        &chat_body("openai/gpt-4o"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), upstream_body);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-request-id"], "req-from-client-1");
    let got = up.last();
    assert_eq!(got.header("authorization"), Some("Bearer sk-openai-test"));
    assert_eq!(got.header("x-api-key"), None);
    assert_eq!(got.header("x-request-id"), Some("req-from-client-1"));
    assert_eq!(got.header("host"), Some(up.addr.to_string().as_str()));
    let all_headers = format!("{:?}", got.headers);
    assert!(
        !all_headers.contains("caller-secret-token") && !all_headers.contains("caller-x-api-key")
    );
    // The gateway's log never holds a secret either.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.log_text();
    assert!(log.contains("prompt_tokens=1 completion_tokens=2"), "{log}");
    for secret in ["sk-openai-test", "caller-secret-token", "caller-x-api-key"] {
        assert!(!log.contains(secret), "{secret} in log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_relay_is_byte_exact_apart_from_injected_usage() {
    let with_usage = chat_stream("gpt-4o", &["Hel", "lo ", "w\u{f6}rld \u{1f600}"], true);
    let upstream = with_usage.clone();
    let up = MockUpstream::start(move |_| {
        sse_steps(upstream.as_bytes(), &[40, 200], Duration::from_millis(2))
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);

    // Client asked for usage itself: byte-exact, usage chunk included, request untouched.
    let body = json!({"model":"openai/gpt-4o","messages":[],"stream":true,"stream_options":{"include_usage":true}});
    let r = post_chat(gw.addr(), body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.text(), with_usage);
    assert_eq!(
        up.last().json()["stream_options"],
        json!({"include_usage": true})
    );

    // Client did not ask: the gateway injects include_usage upstream and removes the usage-only
    // chunk from what the client sees; everything else is byte-identical.
    let body = json!({"model":"openai/gpt-4o","messages":[],"stream":true});
    let r = post_chat(gw.addr(), body.to_string().as_bytes()).await;
    assert_eq!(
        up.last().json()["stream_options"],
        json!({"include_usage": true})
    );
    let usage_event = with_usage
        .split("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .unwrap()
        .to_string()
        + "\n\n";
    assert_eq!(r.text(), with_usage.replace(&usage_event, ""));
    assert_eq!(r.text().matches("data: [DONE]").count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gw.log_text()
            .contains("prompt_tokens=9 completion_tokens=3"),
        "usage recorded from the stripped chunk"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_split_at_every_byte_boundary() {
    // Multi-byte UTF-8 (2, 3 and 4 bytes) and CRLF line endings inside the stream.
    let body =
        chat_stream("m", &["\u{e9}\u{20ac}\u{1f600}", "x"], true).replacen("\n\n", "\r\n\r\n", 1);
    let expected = body.clone();
    let split = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = split.clone();
    let up = MockUpstream::start(move |_| {
        let at = s2.load(std::sync::atomic::Ordering::SeqCst);
        sse_steps(body.as_bytes(), &[at], Duration::from_millis(1))
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let req = json!({"model":"openai/m","messages":[],"stream":true,"stream_options":{"include_usage":true}}).to_string();
    for at in 0..=expected.len() {
        split.store(at, std::sync::atomic::Ordering::SeqCst);
        let r = post_chat(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.text(), expected, "split at byte {at}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_byte_by_byte_utf8() {
    let body = chat_stream("m", &["\u{1f600}\u{1f600}", "\u{4e2d}\u{6587}"], false);
    let splits: Vec<usize> = (1..body.len()).collect();
    let b2 = body.clone();
    let up = MockUpstream::start(move |_| sse_steps(b2.as_bytes(), &splits, Duration::ZERO)).await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let req = json!({"model":"openai/m","messages":[],"stream":true,"stream_options":{"include_usage":false}}).to_string();
    let r = post_chat(gw.addr(), req.as_bytes()).await;
    assert_eq!(r.text(), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_without_done_or_with_two_gets_exactly_one() {
    let no_done = chat_stream("m", &["a"], false).replace("data: [DONE]\n\n", "");
    let two_done = chat_stream("m", &["a"], false) + "data: [DONE]\n\n";
    let bodies = [no_done.clone(), two_done];
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let up = MockUpstream::start(move |_| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        sse_steps(bodies[i % 2].as_bytes(), &[], Duration::ZERO)
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let req = json!({"model":"openai/m","messages":[],"stream":true}).to_string();
    for _ in 0..2 {
        let r = post_chat(gw.addr(), req.as_bytes()).await;
        assert_eq!(r.text(), format!("{no_done}data: [DONE]\n\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_closing_mid_stream_ends_with_error_event_and_done() {
    let full = chat_stream("m", &["one", "two"], false);
    let cut = full.find("two").unwrap();
    let partial = full[..cut].to_string();
    let up = MockUpstream::start(move |_| {
        vec![
            Step::Write(sse_head()),
            Step::Write(chunk(partial.as_bytes())),
            Step::Sleep(Duration::from_millis(20)),
            Step::Close,
        ]
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let req = json!({"model":"openai/m","messages":[],"stream":true}).to_string();
    let r = post_chat(gw.addr(), req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    // The complete events before the cut arrive intact; the fragment is dropped.
    assert!(
        text.starts_with(&full[..full[..cut].rfind("\n\n").unwrap() + 2]),
        "{text}"
    );
    let err: Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");
    assert_eq!(events[events.len() - 1], "data: [DONE]");
    assert_eq!(text.matches("[DONE]").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_closes_the_upstream_connection() {
    // An endless, slow stream.
    let up = MockUpstream::start(|_| {
        let mut steps = vec![Step::Write(sse_head())];
        for i in 0..600 {
            steps.push(Step::Write(chunk(
                format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n"
                )
                .as_bytes(),
            )));
            steps.push(Step::Sleep(Duration::from_millis(100)));
        }
        steps
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let client = reqwest::Client::new();
    let mut resp = client
        .post(gw.url("/v1/chat/completions"))
        .body(json!({"model":"openai/m","messages":[],"stream":true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data: "));
    assert_eq!(
        up.open_connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(resp);
    drop(client);
    assert!(
        up.wait_all_closed(Duration::from_secs(3)).await,
        "upstream connection still open after the client left"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gw.log_text().contains("client_disconnected=true"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_while_waiting_for_first_byte_closes_upstream() {
    let up = MockUpstream::start(|_| vec![Step::Sleep(Duration::from_secs(30)), Step::Close]).await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let addr = gw.addr();
    let task = tokio::spawn(async move { post_chat(addr, &chat_body("openai/m")).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while up.count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.count(), 1);
    task.abort();
    let _ = task.await;
    assert!(up.wait_all_closed(Duration::from_secs(3)).await);
}

// ----------------------------------------------------------------------------- errors

#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_pass_through_in_the_envelope() {
    let up = MockUpstream::start(|req| {
        if req.json()["model"] == "limited" {
            vec![Step::Write(http_response(
                429,
                &[("content-type", "application/json"), ("retry-after", "7"), ("x-ratelimit-remaining-requests", "0")],
                br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
            ))]
        } else {
            vec![Step::Write(http_response(500, &[("content-type", "text/html")], b"<html>Internal Server Error</html>"))]
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let stream_req = |m: &str| {
        json!({"model": format!("openai/{m}"), "messages": [], "stream": true}).to_string()
    };

    let r = post_chat(gw.addr(), stream_req("limited").as_bytes()).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.headers["content-type"], "application/json",
        "errors are JSON even for stream requests"
    );
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");

    let r = post_chat(gw.addr(), &chat_body("openai/broken")).await;
    assert_eq!(r.status, 500);
    let e = r.json();
    assert_eq!(e["error"]["type"], "api_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Internal Server Error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_is_502_and_slow_first_byte_is_504() {
    let dead = DeadPort::new();
    let dead = dead.port;
    let slow =
        MockUpstream::start(|_| vec![Step::Sleep(Duration::from_secs(5)), Step::Close]).await;
    let mut env = provider_env(&[
        ("openai", format!("http://127.0.0.1:{dead}/v1")),
        ("groq", slow.url("/v1")),
    ]);
    env.push(("CLIENT_TIMEOUT", "300ms".into()));
    let gw = GatewayProcess::start(&env, None);
    let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_connect_error");
    let t = std::time::Instant::now();
    let r = post_chat(gw.addr(), &chat_body("groq/m")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_idle_timeout_ends_stream_but_long_healthy_streams_survive() {
    // 30 chunks 100 ms apart = 3 s of streaming, far beyond the 500 ms idle limit.
    let up = MockUpstream::start(|req| {
        let mut steps = vec![Step::Write(sse_head())];
        let stalls = req.json()["model"] == "stall";
        for i in 0..30 {
            steps.push(Step::Write(chunk(
                format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i}\"}}}}]}}\n\n"
                )
                .as_bytes(),
            )));
            steps.push(Step::Sleep(Duration::from_millis(if stalls && i == 2 {
                3000
            } else {
                100
            })));
        }
        steps.push(Step::Write(chunk(b"data: [DONE]\n\n")));
        steps.push(Step::Write(last_chunk()));
        steps
    })
    .await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("CLIENT_STREAM_IDLE_TIMEOUT", "500ms".into()));
    env.push(("SERVER_WRITE_TIMEOUT", "1s".into()));
    let gw = GatewayProcess::start(&env, None);
    let req = |m: &str| {
        json!({"model": format!("openai/{m}"), "messages": [], "stream": true}).to_string()
    };
    let r = post_chat(gw.addr(), req("healthy").as_bytes()).await;
    let text = r.text();
    assert_eq!(text.matches("\"content\"").count(), 30, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("error"));
    let r = post_chat(gw.addr(), req("stall").as_bytes()).await;
    let text = r.text();
    assert_eq!(text.matches("\"content\"").count(), 3);
    assert!(text.contains("upstream_idle_timeout"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_requests() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for bad in [
        &b"{\"model\": \"openai/x\", "[..],
        b"[1,2]",
        b"",
        b"{\"model\": 5}",
        b"{\"model\":\"openai/x\",\"stream\":\"yes\"}",
    ] {
        let r = post_chat(gw.addr(), bad).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    // 11 MiB with Content-Length: refused before reading it.
    let big = vec![b' '; 11 * 1024 * 1024];
    let r = post_chat(gw.addr(), &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    // 11 MiB chunked: refused once the limit is crossed.
    let client = reqwest::Client::new();
    let stream = futures_stream(vec![vec![b' '; 1024 * 1024]; 11]);
    let r = client
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => panic!("expected a 413 answer, got {e}"),
    }
    assert_eq!(up.count(), 0);
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures::stream::iter(chunks.into_iter().map(Ok))
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_reach_the_upstream_intact() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for size in [1024 * 1024, 9 * 1024 * 1024] {
        let filler: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let body =
            json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": filler}]})
                .to_string();
        let r = post_chat(gw.addr(), body.as_bytes()).await;
        assert_eq!(r.status, 200, "{size}");
        let got = up.last();
        assert_eq!(got.body.len(), body.len() - "openai/".len(), "{size}");
        assert_eq!(
            got.json()["messages"][0]["content"].as_str().unwrap().len(),
            size
        );
        assert_eq!(
            got.json()["messages"][0]["content"].as_str().unwrap(),
            filler
        );
    }
    // And chunked (no Content-Length) too.
    let filler = "z".repeat(3 * 1024 * 1024);
    let body = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": filler}]})
        .to_string()
        .into_bytes();
    let parts: Vec<Vec<u8>> = body.chunks(256 * 1024).map(|c| c.to_vec()).collect();
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(futures_stream(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().json()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .len(),
        filler.len()
    );
}

// ----------------------------------------------------------------------------- other endpoints

#[tokio::test(flavor = "multi_thread")]
async fn models_fan_out_skips_failing_provider() {
    let openai = MockUpstream::start(|_| json_response(200, r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"}]}"#)).await;
    let groq = MockUpstream::start(|_| json_response(500, r#"{"error":"down"}"#)).await;
    let slow = MockUpstream::start(|_| vec![Step::Sleep(Duration::from_secs(10))]).await;
    let mut env = provider_env(&[
        ("openai", openai.url("/v1")),
        ("groq", groq.url("/v1")),
        ("mistral", slow.url("/v1")),
    ]);
    env.push(("CLIENT_MODELS_TIMEOUT", "500ms".into()));
    let gw = GatewayProcess::start(&env, Some("[aliases.smart]\ntarget = \"openai/gpt-4o\"\n"));
    let t = std::time::Instant::now();
    let r = raw_request(gw.addr(), "GET", "/v1/models", &[], b"").await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "slow provider bounded by the timeout"
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["openai/gpt-4o", "smart"]);
    assert_eq!(v["data"][0]["served_by"], "openai");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(openai.last().path, "/v1/models");
    assert_eq!(
        openai.last().header("authorization"),
        Some("Bearer sk-openai-test")
    );
    assert_eq!(groq.count(), 1);
    // ?provider= lists one provider; a failing one gives an empty list, not null.
    let r = raw_request(gw.addr(), "GET", "/v1/models?provider=groq", &[], b"").await;
    assert_eq!(r.json()["data"], json!([]));
    let r = raw_request(gw.addr(), "GET", "/v1/models?provider=nope", &[], b"").await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_and_completions_are_routed() {
    let up = MockUpstream::start(|req| {
        if req.path.ends_with("/embeddings") {
            json_response(200, r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#)
        } else {
            json_response(200, r#"{"id":"c","object":"text_completion","choices":[{"text":"x","index":0,"finish_reason":"stop"}]}"#)
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/embeddings",
        &[],
        br#"{"model":"openai/text-embedding-3-small","input":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/v1/embeddings");
    assert_eq!(up.last().json()["model"], "text-embedding-3-small");
    assert_eq!(r.json()["data"][0]["embedding"][0], 0.1);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/completions",
        &[],
        br#"{"model":"openai/gpt-3.5-turbo-instruct","prompt":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/v1/completions");
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_provider_with_header_auth_and_query() {
    let up = openai_mock().await;
    let toml = format!(
        "[providers.azure]\nurl = \"{}\"\nauth = \"api-key\"\napi_key = \"azure-key\"\nquery = {{ api-version = \"2024-10-21\" }}\nheaders = {{ x-extra = \"1\" }}\n\
         [providers.local]\nurl = \"{}\"\nauth = \"none\"\n",
        up.url("/openai/deployments/gpt-4o"),
        up.url("/v1")
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let r = post_chat(gw.addr(), &chat_body("azure/gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(
        got.path,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(got.header("api-key"), Some("azure-key"));
    assert_eq!(got.header("x-extra"), Some("1"));
    assert_eq!(got.header("authorization"), None);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer caller")],
        &chat_body("local/llama"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_proxy_pass_through() {
    let up = MockUpstream::start(|req| {
        let echo =
            json!({"method": req.method, "path": req.path, "len": req.body.len()}).to_string();
        json_response(201, &echo)
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let body = vec![b'q'; 2 * 1024 * 1024]; // larger than any retry buffer
    let r = raw_request(
        gw.addr(),
        "POST",
        "/proxy/openai/files/upload?purpose=batch&x=1",
        &[
            ("authorization", "Bearer caller-token"),
            ("x-custom", "kept"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.json(),
        json!({"method": "POST", "path": "/v1/files/upload?purpose=batch&x=1", "len": body.len()})
    );
    let got = up.last();
    assert_eq!(got.header("authorization"), Some("Bearer sk-openai-test"));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert!(r.headers.contains_key("x-request-id"));
    let r = raw_request(gw.addr(), "GET", "/proxy/nope/x", &[], b"").await;
    assert_eq!(r.status, 404);
    // Upstream down: JSON 502.
    drop(gw);
    let dead = DeadPort::new();
    let dead = dead.port;
    let gw = GatewayProcess::start(
        &provider_env(&[("openai", format!("http://127.0.0.1:{dead}/v1"))]),
        None,
    );
    let r = raw_request(gw.addr(), "GET", "/proxy/openai/models", &[], b"").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_connect_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for _ in 0..20 {
        let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 20);
    assert!(
        up.accepted.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "connections: {}",
        up.accepted.load(std::sync::atomic::Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_pooled_connection_is_retried_transparently() {
    // The mock closes every connection right after answering (no keep-alive honoured).
    let up = MockUpstream::start(|_| {
        let mut s = json_response(200, &chat_completion("m", "x"));
        s.push(Step::Close);
        s
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for _ in 0..5 {
        let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.count(), 5);
}

// ----------------------------------------------------------------------------- TLS upstreams

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_gets_sni_and_its_certificate_is_verified() {
    let pki = test_pki("localhost");
    let up = TlsMock::start(
        &pki,
        r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}"#,
    )
    .await;
    let url = format!("https://localhost:{}/v1", up.addr.port());
    let dir = temp_dir("ca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    // Trusted CA: the call succeeds and the upstream saw the host name as SNI.
    let mut env = provider_env(&[("openai", url.clone())]);
    env.push(("CLIENT_CA_FILE", ca.display().to_string()));
    let gw = GatewayProcess::start(&env, None);
    let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log_text());
    assert_eq!(
        up.sni.lock().unwrap().first().cloned(),
        Some(Some("localhost".to_string()))
    );
    assert_eq!(
        up.requests.lock().unwrap()[0].header("host"),
        Some(format!("localhost:{}", up.addr.port()).as_str())
    );
    drop(gw);

    // System store only: the test CA is unknown, so verification must fail (no request sent).
    let before = up.requests.lock().unwrap().len();
    let gw = GatewayProcess::start(&provider_env(&[("openai", url)]), None);
    let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_connect_error");
    assert_eq!(
        up.requests.lock().unwrap().len(),
        before,
        "nothing sent to an unverified upstream"
    );
    std::fs::remove_dir_all(&dir).ok();
}

// ----------------------------------------------------------------------------- review fixes

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_keys_are_refused_so_checks_see_what_upstreams_run() {
    let up = openai_mock().await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("DISALLOWED_MODELS", "gpt-4.5-preview".into()));
    let gw = GatewayProcess::start(&env, None);
    let body = br#"{"model":"openai/gpt-4o-mini","messages":[],"model":"openai/gpt-4.5-preview"}"#;
    let r = post_chat(gw.addr(), body).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("duplicate key"));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn interim_1xx_responses_are_skipped() {
    let up = MockUpstream::start(|_| {
        let mut steps = vec![Step::Write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n".to_vec(),
        )];
        steps.extend(json_response(200, &chat_completion("m", "after 1xx")));
        steps
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let r = post_chat(gw.addr(), &chat_body("openai/m")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "after 1xx");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_paths_cannot_climb_out_of_the_base_path() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for path in [
        "/proxy/openai/../admin",
        "/proxy/openai/a/./b",
        "/proxy/openai/%2E%2E/x",
        "/proxy/openai/x/%2e%2e",
    ] {
        let r = raw_request(gw.addr(), "GET", path, &[], b"").await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["error"]["code"], "invalid_path");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_body_is_408_and_bad_stream_options_is_400() {
    let up = openai_mock().await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("SERVER_READ_TIMEOUT", "300ms".into()));
    let gw = GatewayProcess::start(&env, None);
    let r = post_chat(
        gw.addr(),
        br#"{"model":"openai/m","messages":[],"stream":true,"stream_options":true}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("stream_options"))
    );
    // Promise 100 bytes, send 10, then stall.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let r = parse_response(&out);
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert_eq!(up.count(), 0);
}

// ----------------------------------------------------------------------------- hardening

/// A body of `n` distinct top-level keys plus `model`; with `dup`, the first key repeats last.
fn wide_body(n: usize, dup: bool) -> Vec<u8> {
    let mut s = String::from("{\"model\":\"openai/m\",\"messages\":[]");
    for i in 0..n {
        s.push_str(&format!(",\"k{i:07}\":0"));
    }
    if dup {
        s.push_str(",\"k0000000\":1");
    }
    s.push('}');
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn wide_json_bodies_are_capped_and_checked_in_linear_time() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    // 100k keys (1.4 MB): refused at the default cap of 1,024 fields.
    let body = wide_body(100_000, false);
    let t = Instant::now();
    let r = post_chat(gw.addr(), &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_fields");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // With the cap lifted, the duplicate check over 100k keys is linear: the quadratic one
    // took minutes for this body.
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("SERVER_MAX_JSON_FIELDS", "200000".into()));
    let wide = GatewayProcess::start(&env, None);
    let t = Instant::now();
    let r = post_chat(wide.addr(), &wide_body(100_000, true)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("duplicate key \"k0000000\""));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The gateway is still answering.
    assert_eq!(
        post_chat(wide.addr(), &chat_body("openai/m")).await.status,
        200
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_traversal_is_refused_in_every_spelling() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for path in [
        "/proxy/openai/..%2f..%2fadmin",
        "/proxy/openai/..%2F",
        "/proxy/openai/%2e%2e/x",
        "/proxy/openai/%252e%252e/x",
        "/proxy/openai/%252e%252e%252fx",
        "/proxy/openai/..;/x",
        "/proxy/openai/a/..;jsessionid=1/b",
        "/proxy/openai/..\\..\\admin",
        "/proxy/openai/..%5cadmin",
        "/proxy/openai/x/%00",
    ] {
        let r = raw_request(gw.addr(), "GET", path, &[], b"").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_path", "{path}");
    }
    assert_eq!(up.count(), 0);
    // Ordinary paths still pass.
    let r = raw_request(gw.addr(), "GET", "/proxy/openai/models", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/v1/models");
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_methods_are_405_except_on_proxy() {
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    for path in ["/v1/chat/completions", "/health", "/nope"] {
        let r = raw_request(gw.addr(), "FROBNICATE", path, &[], b"").await;
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
    // `/proxy` passes any method through to the provider.
    let r = raw_request(gw.addr(), "PROPFIND", "/proxy/openai/x", &[], b"").await;
    assert_ne!(r.status, 405);
    assert_eq!(up.last().method, "PROPFIND");
    // Text access lines name the method `other`, never the client's token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log_text();
    assert!(!log.contains("FROBNICATE"), "{log}");
    assert!(log.contains("method=other"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_access_lines_escape_control_characters() {
    let gw = GatewayProcess::start(&[], None);
    let body = json!({"model": "x\n[2026-01-01T00:00:00Z INFO access] request_id=forged key=admin", "messages": []});
    let r = post_chat(gw.addr(), body.to_string().as_bytes()).await;
    assert_eq!(r.status, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log_text();
    assert!(!log.contains("\n[2026-01-01T00:00:00Z"), "{log}");
    assert!(
        log.contains("model=x\\u{a}[2026-01-01T00:00:00Z_INFO_access]_request_id=forged"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unconfigured_builtin_providers_are_not_reachable() {
    // A listener where `ollama` would be: it must never be called.
    let up = openai_mock().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let r = post_chat(gw.addr(), &chat_body("ollama/llama3")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "provider_not_configured");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("OLLAMA_API_URL"));
    let r = raw_request(gw.addr(), "GET", "/proxy/ollama/api/tags", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "unknown_provider");
    // OLLAMA_ENABLE=true (or OLLAMA_API_URL) configures it.
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("OLLAMA_API_URL", up.url("/v1")));
    let gw = GatewayProcess::start(&env, None);
    assert_eq!(
        post_chat(gw.addr(), &chat_body("ollama/llama3"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_have_a_total_deadline() {
    let up = openai_mock().await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("SERVER_BODY_TIMEOUT", "1s".into()));
    let gw = GatewayProcess::start(&env, None);
    // One byte every 200 ms never trips the 30 s read timeout, but the whole body must arrive
    // within 1 s.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < Duration::from_secs(8) {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if find_bytes(&out, b"}") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let r = parse_response(&out);
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_flight_are_capped() {
    // Slow enough that all four are in flight together even on a loaded machine.
    let up = MockUpstream::start(|_| {
        let mut steps = vec![Step::Sleep(Duration::from_millis(2500))];
        steps.extend(json_response(200, &chat_completion("m", "slow")));
        steps
    })
    .await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("SERVER_MAX_CONNECTIONS", "2".into()));
    let gw = GatewayProcess::start(&env, None);
    let addr = gw.addr();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let r = post_chat(addr, &chat_body("openai/m")).await;
                let code = r.json()["error"]["code"].as_str().map(str::to_string);
                (r.status, code, r.headers.get("retry-after").cloned())
            })
        })
        .collect();
    let mut busy = 0;
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _, _) => ok += 1,
            (503, Some(c), Some(ra)) if c == "server_busy" && ra == "1" => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, busy), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn pools_whose_backends_replace_the_url_never_resolve_the_default_host() {
    let up = openai_mock().await;
    // A default host that never resolves (RFC 6761), so the old behaviour logs a warning
    // wherever the tests run.
    let toml = format!(
        "[providers.vllm]\nurl = \"http://unused-default.invalid/v1\"\napi_key = \"sk-test\"\nbackends = [{{ url = \"{}\" }}]\n",
        up.url("/v1")
    );
    let env = [("CLIENT_DNS_REFRESH_INTERVAL", "100ms".to_string())];
    let gw = GatewayProcess::start(&env, Some(&toml));
    assert_eq!(post_chat(gw.addr(), &chat_body("vllm/m")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let log = gw.log_text();
    assert!(!log.contains("unused-default.invalid"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mistral_never_gets_stream_options() {
    // Mistral's schema forbids extra fields: `stream_options` is a 422 there.
    let up = MockUpstream::start(|req: &Recorded| {
        if req.json().get("stream_options").is_some() {
            return json_response(
                422,
                r#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","stream_options","include_usage"],"msg":"Extra inputs are not permitted","input":true}]},"type":"invalid_request_error","param":null,"code":null}"#,
            );
        }
        sse_steps(chat_stream("m", &["a", "b"], true).as_bytes(), &[], Duration::ZERO)
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("mistral", up.url("/v1"))]), None);
    for body in [
        json!({"model": "mistral/mistral-large-latest", "stream": true, "messages": []}),
        json!({"model": "mistral/mistral-large-latest", "stream": true,
            "stream_options": {"include_usage": true}, "messages": []}),
    ] {
        let r = post_chat(gw.addr(), body.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().ends_with("data: [DONE]\n\n"));
        assert!(up.last().json().get("stream_options").is_none());
        if body.get("stream_options").is_some() {
            assert_eq!(r.headers["x-gateway-dropped-params"], "stream_options");
        }
    }
}
