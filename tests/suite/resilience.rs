//! Pools, health, retries, fallbacks, timeouts and load shedding, black-box: the gateway binary
//! in front of fault-injecting mock backends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn ok_backend(tag: &'static str) -> impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static {
    move |req: &Recorded| {
        if req.path.ends_with("/health") {
            return json_response(200, "{}");
        }
        if req.json()["stream"] == true {
            let body = chat_stream(tag, &["a", "b"], true);
            return sse_steps(body.as_bytes(), &[], Duration::ZERO);
        }
        json_response(200, &chat_completion(tag, tag))
    }
}

fn pool_toml(backends: &[(String, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(u, w)| format!("{{ url = \"{u}\", weight = {w} }}"))
        .collect();
    format!(
        "[providers.pool]\nauth = \"none\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

fn chat(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

async fn verbose(gw: &GatewayProcess) -> Value {
    raw_request(gw.addr(), "GET", "/health?verbose", &[], b"")
        .await
        .json()
}

fn status_of(v: &Value, provider: &str, i: usize) -> String {
    v["providers"][provider]["backends"][i]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn one_of_two_backends_down_every_request_succeeds() {
    let a = MockUpstream::start(ok_backend("a")).await;
    let dead_port = DeadPort::new();
    let dead = format!("http://127.0.0.1:{}/v1", dead_port.port);
    let toml = pool_toml(&[(a.url("/v1"), 1), (dead, 1)], "");
    let gw = GatewayProcess::start(&[], Some(&toml));
    for i in 0..20 {
        let r = post_chat(gw.addr(), &chat("pool/m", i % 2 == 0)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(a.count(), 20);
    // Five consecutive connect failures ejected the dead one.
    let v = verbose(&gw).await;
    assert_eq!(status_of(&v, "pool", 1), "ejected", "{v}");
    assert_eq!(status_of(&v, "pool", 0), "healthy");
    assert!(v["providers"]["pool"]["backends"][1]["ejections"].as_u64() >= Some(1));
}

#[tokio::test]
async fn failing_backend_is_ejected_and_returns_after_recovery() {
    let a = MockUpstream::start(ok_backend("a")).await;
    let broken = Arc::new(AtomicBool::new(true));
    let b_broken = broken.clone();
    let b = MockUpstream::start(move |req: &Recorded| {
        if b_broken.load(Ordering::SeqCst) {
            json_response(
                500,
                r#"{"error":{"message":"down","type":"server_error","param":null,"code":null}}"#,
            )
        } else {
            ok_backend("b")(req)
        }
    })
    .await;
    let metrics_port = free_port();
    let toml = pool_toml(
        &[(a.url("/v1"), 1), (b.url("/v1"), 1)],
        "[providers.pool.circuit_breaker]\nfailures = 2\ncooldown = \"300ms\"\nmax_cooldown = \"1s\"\n",
    );
    let gw = GatewayProcess::start(
        &[
            ("TELEMETRY_ENABLE", "true".into()),
            ("TELEMETRY_METRICS_PORT", metrics_port.to_string()),
        ],
        Some(&toml),
    );
    for _ in 0..10 {
        let r = post_chat(gw.addr(), &chat("pool/m", false)).await;
        assert_eq!(r.status, 200, "500s are retried on the other backend");
    }
    let v = verbose(&gw).await;
    assert_eq!(status_of(&v, "pool", 1), "ejected", "{v}");
    // Observed through the metric too (refreshed every 250 ms).
    let maddr: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let line = format!(
        "llm_backend_up{{backend=\"http://{}/v1\",provider=\"pool\"}} 0",
        b.addr
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let m = raw_request(maddr, "GET", "/metrics", &[], b"").await.text();
        if m.lines().any(|l| l == line) {
            break;
        }
        assert!(Instant::now() < deadline, "missing {line}\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = b.count();
    broken.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        assert_eq!(
            post_chat(gw.addr(), &chat("pool/m", false)).await.status,
            200
        );
    }
    // The half-open probe succeeded: b takes traffic again.
    assert!(
        b.count() >= before + 4,
        "b got {} after recovery",
        b.count() - before
    );
    assert_eq!(status_of(&verbose(&gw).await, "pool", 1), "healthy");
}

#[tokio::test]
async fn rate_limited_backend_with_retry_after_hands_over_to_the_next() {
    let limited = MockUpstream::start(|_: &Recorded| {
        vec![Step::Write(http_response(
            429,
            &[("content-type", "application/json"), ("retry-after", "30")],
            br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#,
        ))]
    })
    .await;
    let b = MockUpstream::start(ok_backend("b")).await;
    let toml = pool_toml(&[(limited.url("/v1"), 1), (b.url("/v1"), 1)], "");
    let gw = GatewayProcess::start(&[], Some(&toml));
    let started = Instant::now();
    for _ in 0..4 {
        let r = post_chat(gw.addr(), &chat("pool/m", false)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["model"], "b");
    }
    // Asked once; then left alone for its Retry-After.
    assert_eq!(limited.count(), 1);
    assert_eq!(b.count(), 4);
    // Nobody waited the 30 s.
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An Anthropic Messages answer (the fallback speaks its native dialect).
fn anthropic_backend(req: &Recorded) -> Vec<Step> {
    let body = req.json();
    if body["stream"] == true {
        let mut sse = String::new();
        for (ev, data) in [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-fallback-1","content":[],"stop_reason":null,"usage":{"input_tokens":7,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"from the fallback"}}),
            ),
            (
                "content_block_stop",
                json!({"type":"content_block_stop","index":0}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
        ] {
            sse.push_str(&format!("event: {ev}\ndata: {data}\n\n"));
        }
        return sse_steps(sse.as_bytes(), &[], Duration::ZERO);
    }
    json_response(
        200,
        &json!({"id":"msg_1","type":"message","role":"assistant","model":"claude-fallback-1",
            "content":[{"type":"text","text":"from the fallback"}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":7,"output_tokens":3}})
        .to_string(),
    )
}

#[tokio::test]
async fn whole_pool_down_falls_back_along_the_chain() {
    let down = |_: &Recorded| {
        json_response(
            503,
            r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#,
        )
    };
    let a = MockUpstream::start(down).await;
    let b = MockUpstream::start(down).await;
    let claude = MockUpstream::start(anthropic_backend).await;
    let toml = format!(
        "{}\n[aliases.smart]\ntarget = \"pool/big-model\"\nfallbacks = [\"openai/gpt-4o\", \"anthropic/claude-fallback-1\"]\n",
        pool_toml(&[(a.url("/v1"), 1), (b.url("/v1"), 1)], "retry = { attempts = 2, backoff = \"10ms\", max_backoff = \"20ms\" }")
    );
    // openai is configured at a dead address: the chain goes past it too.
    let mut env = provider_env(&[("anthropic", claude.url("/v1"))]);
    let dead = DeadPort::new();
    env.push((
        "OPENAI_API_URL",
        format!("http://127.0.0.1:{}/v1", dead.port),
    ));
    env.push(("OPENAI_API_KEY", "sk-test".into()));
    let gw = GatewayProcess::start(&env, Some(&toml));
    let r = post_chat(gw.addr(), &chat("smart", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-gateway-provider"], "anthropic");
    assert_eq!(r.headers["x-gateway-model"], "claude-fallback-1");
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "from the fallback");
    assert_eq!(v["model"], "claude-fallback-1");
    // Both pool backends were tried, once each.
    assert_eq!(a.count() + b.count(), 2);
    assert_eq!(claude.last().path, "/v1/messages");

    let r = post_chat(gw.addr(), &chat("smart", true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-gateway-provider"], "anthropic");
    let body = r.text();
    assert!(body.contains("from the fallback"), "{body}");
    assert_eq!(body.matches("data: [DONE]").count(), 1);

    // No fallback left: the last provider error is the answer.
    let r = post_chat(gw.addr(), &chat("pool/x", false)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["message"], "overloaded");
}

#[tokio::test]
async fn failure_after_the_first_streamed_byte_is_never_retried() {
    let broken = |_: &Recorded| {
        let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"},\"finish_reason\":null}]}\n\n";
        vec![
            Step::Write(sse_head()),
            Step::Write(chunk(first.as_bytes())),
            Step::Sleep(Duration::from_millis(30)),
            Step::Close,
        ]
    };
    let a = MockUpstream::start(broken).await;
    let b = MockUpstream::start(broken).await;
    let toml = pool_toml(&[(a.url("/v1"), 1), (b.url("/v1"), 1)], "");
    let gw = GatewayProcess::start(&[], Some(&toml));
    let r = post_chat(gw.addr(), &chat("pool/m", true)).await;
    assert_eq!(r.status, 200);
    let body = r.text();
    assert!(body.contains("partial"));
    assert!(body.contains("\"error\""), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(body.matches("data: [DONE]").count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        a.count() + b.count(),
        1,
        "no second attempt after bytes were sent"
    );
}

#[tokio::test]
async fn first_byte_timeout_moves_to_the_next_backend() {
    let slow = |_: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_secs(3))];
        s.extend(json_response(200, &chat_completion("slow", "late")));
        s
    };
    let a = MockUpstream::start(slow).await;
    let b = MockUpstream::start(ok_backend("b")).await;
    let toml = pool_toml(
        &[(a.url("/v1"), 1), (b.url("/v1"), 1)],
        "timeouts = { first_byte = \"300ms\" }",
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let started = Instant::now();
    for _ in 0..4 {
        let r = post_chat(gw.addr(), &chat("pool/m", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], "b");
    }
    assert!(a.count() >= 1);
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn trickle(gap: Duration, pieces: usize) -> impl Fn(&Recorded) -> Vec<Step> + Send + Sync {
    move |_: &Recorded| {
        let mut steps = vec![Step::Write(sse_head())];
        for i in 0..pieces {
            let ev = format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i} \"}},\"finish_reason\":null}}]}}\n\n");
            steps.push(Step::Write(chunk(ev.as_bytes())));
            steps.push(Step::Sleep(gap));
        }
        steps.push(Step::Write(chunk(b"data: [DONE]\n\n")));
        steps.push(Step::Write(last_chunk()));
        steps
    }
}

#[tokio::test]
async fn idle_gap_ends_a_stream_but_a_steady_trickle_is_never_cut() {
    let stalled = MockUpstream::start(trickle(Duration::from_secs(3), 2)).await;
    let steady = MockUpstream::start(trickle(Duration::from_millis(100), 30)).await;
    let toml = format!(
        "[providers.stalled]\nurl = \"{}\"\nauth = \"none\"\ntimeouts = {{ stream_idle = \"1s\" }}\n\
         [providers.steady]\nurl = \"{}\"\nauth = \"none\"\ntimeouts = {{ stream_idle = \"1s\" }}\n",
        stalled.url("/v1"),
        steady.url("/v1")
    );
    // Every other clock is short too: the client connection's read and write timeouts and the
    // first-byte timeout are 1 s, a third of the stream's length.
    let gw = GatewayProcess::start(
        &[
            ("SERVER_READ_TIMEOUT", "1s".into()),
            ("SERVER_WRITE_TIMEOUT", "1s".into()),
            ("CLIENT_TIMEOUT", "1s".into()),
        ],
        Some(&toml),
    );
    let r = post_chat(gw.addr(), &chat("stalled/m", true)).await;
    let body = r.text();
    assert!(body.contains("\"0 \""), "{body}");
    assert!(body.contains("upstream_idle_timeout"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    // 3 s of trickle at 100 ms gaps: three times the idle timeout, never cut.
    let started = Instant::now();
    let r = post_chat(gw.addr(), &chat("steady/m", true)).await;
    let body = r.text();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(body.contains("\"29 \""), "{body}");
    assert!(!body.contains("\"error\""), "{body}");
    assert_eq!(body.matches("data: [DONE]").count(), 1);
}

#[tokio::test]
async fn weights_are_respected_over_1000_requests() {
    let a = MockUpstream::start(ok_backend("a")).await;
    let b = MockUpstream::start(ok_backend("b")).await;
    let toml = pool_toml(&[(a.url("/v1"), 3), (b.url("/v1"), 1)], "");
    let gw = GatewayProcess::start(&[], Some(&toml));
    for _ in 0..1000 {
        assert_eq!(
            post_chat(gw.addr(), &chat("pool/m", false)).await.status,
            200
        );
    }
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 1000);
    // 3:1 within 5 percentage points.
    assert!((700..=800).contains(&na), "a={na} b={nb}");
}

#[tokio::test]
async fn over_the_concurrency_limit_requests_get_503_with_retry_after() {
    let slow = |_: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_millis(800))];
        s.extend(json_response(200, &chat_completion("m", "ok")));
        s
    };
    let up = MockUpstream::start(slow).await;
    let toml = format!(
        "[providers.slow]\nurl = \"{}\"\nauth = \"none\"\nmax_concurrent = 2\nmax_queue = 1\nqueue_timeout = \"200ms\"\n",
        up.url("/v1")
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let addr = gw.addr();
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { post_chat(addr, &chat("slow/m", false)).await }))
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(r.json()["error"]["code"], "overloaded");
                assert!(r.headers.contains_key("retry-after"));
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!((ok, shed), (2, 4));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_total_timeout_answers_504() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = MockUpstream::start(move |req: &Recorded| {
        c.fetch_add(1, Ordering::SeqCst);
        if req.json()["model"] == "bad" {
            return json_response(400, r#"{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}"#);
        }
        let mut s = vec![Step::Sleep(Duration::from_secs(3))];
        s.extend(json_response(200, &chat_completion("m", "late")));
        s
    })
    .await;
    let toml = format!(
        "[providers.p]\nurl = \"{}\"\nauth = \"none\"\nretry = {{ attempts = 3, backoff = \"10ms\", max_backoff = \"20ms\" }}\n\
         [aliases.quick]\ntarget = \"p/slow\"\ntimeouts = {{ total = \"500ms\" }}\n",
        up.url("/v1")
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let r = post_chat(gw.addr(), &chat("p/bad", false)).await;
    assert_eq!(r.status, 400);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let started = Instant::now();
    let r = post_chat(gw.addr(), &chat("quick", false)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[tokio::test]
async fn active_health_checks_take_a_backend_out_before_traffic_does() {
    let a = MockUpstream::start(ok_backend("a")).await;
    let b = MockUpstream::start(|req: &Recorded| {
        if req.path == "/health" {
            return json_response(500, "{}");
        }
        ok_backend("b")(req)
    })
    .await;
    let toml = pool_toml(
        &[(a.url("/v1"), 1), (b.url("/v1"), 1)],
        "[providers.pool.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n",
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&verbose(&gw).await, "pool", 1) != "unhealthy" {
        assert!(Instant::now() < deadline, "{}", verbose(&gw).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chats_before = b.requests().iter().filter(|r| r.path != "/health").count();
    for _ in 0..10 {
        assert_eq!(
            post_chat(gw.addr(), &chat("pool/m", false)).await.status,
            200
        );
    }
    let chats_after = b.requests().iter().filter(|r| r.path != "/health").count();
    assert_eq!(
        chats_after, chats_before,
        "an unhealthy backend gets no traffic"
    );
    assert_eq!(status_of(&verbose(&gw).await, "pool", 0), "healthy");
}

#[tokio::test]
async fn total_deadline_stops_the_fallback_chain() {
    let slow = |_: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_secs(3))];
        s.extend(json_response(200, &chat_completion("m", "late")));
        s
    };
    let primary = MockUpstream::start(slow).await;
    let fallback = MockUpstream::start(ok_backend("fb")).await;
    let toml = format!(
        "[providers.p]\nurl = \"{}\"\nauth = \"none\"\ntimeouts = {{ first_byte = \"10s\" }}\n\
         [providers.f]\nurl = \"{}\"\nauth = \"none\"\n\
         [aliases.quick]\ntarget = \"p/m\"\nfallbacks = [\"f/m\"]\ntimeouts = {{ total = \"400ms\" }}\n",
        primary.url("/v1"),
        fallback.url("/v1")
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let started = Instant::now();
    let r = post_chat(gw.addr(), &chat("quick", false)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(fallback.count(), 0, "no request after the deadline");
    // Without the deadline the same chain falls back after the first-byte timeout.
    let toml = toml.replace(
        "timeouts = { total = \"400ms\" }",
        "timeouts = { first_byte = \"300ms\" }",
    );
    let gw = GatewayProcess::start(&[], Some(&toml));
    let r = post_chat(gw.addr(), &chat("quick", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-gateway-provider"], "f");
    assert_eq!(fallback.count(), 1);
}
