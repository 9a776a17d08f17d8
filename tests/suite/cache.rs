//! The response cache: hit, miss and bypass for whole and streamed requests with the upstream's
//! call count asserted, an entry serving the other form (a stream folded into a whole answer
//! and a whole answer replayed as a stream), the Messages and Responses doors, embeddings,
//! Cache-Control, errors never kept, RPM and scope per key, TTL, metrics, and one cache shared
//! by two gateways through Redis.

use std::time::{Duration, Instant};

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::*;

/// Counts what reaches the provider; answers chat whole or streamed, embeddings, and 500 for
/// "fail".
async fn upstream() -> MockUpstream {
    MockUpstream::start(|req| {
        if req.path.ends_with("/embeddings") {
            return json_response(
                200,
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#,
            );
        }
        let body = req.json();
        let model = body["model"].as_str().unwrap_or("").to_string();
        if body.to_string().contains("fail") {
            return json_response(500, r#"{"error":{"message":"boom","type":"server_error"}}"#);
        }
        if body["stream"] == true {
            let s = chat_stream(&model, &["Hello", " from", " the", " mock."], true);
            return vec![Step::Write(sse_head()), Step::Write(chunk(s.as_bytes())), Step::Write(last_chunk())];
        }
        json_response(200, &chat_completion(&model, "hello"))
    })
    .await
}

fn chat(content: &str, stream: bool) -> Vec<u8> {
    let mut v =
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": content}]});
    if stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    v.to_string().into_bytes()
}

async fn post(
    a: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    raw_request(a, "POST", path, headers, body).await
}

fn cache_header(r: &RawResponse) -> &str {
    r.header("x-gateway-cache").unwrap_or("(none)")
}

/// The `data:` payloads of an SSE body.
fn events(r: &RawResponse) -> Vec<String> {
    r.text()
        .split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn response_cache_hits_misses_and_bypasses() {
    let up = upstream().await;
    let mport = free_port();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("CACHE_ENABLE", "true".into()));
    // The Responses door translated to chat (a Responses-native provider is relayed, and
    // relays are not kept).
    env.push(("OPENAI_RESPONSES_API", "chat".into()));
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", mport.to_string()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;

    // Whole: a miss reaches the provider, the same request again does not.
    let r = post(a, "/v1/chat/completions", &[], &chat("one", false)).await;
    assert_eq!((r.status, cache_header(&r)), (200, "miss"), "{}", r.text());
    assert_eq!(up.count(), 1);
    let first = r.json();
    let r = post(a, "/v1/chat/completions", &[], &chat("one", false)).await;
    assert_eq!((r.status, cache_header(&r)), (200, "hit"));
    assert_eq!(up.count(), 1, "a hit does not reach the provider");
    assert_eq!(r.json()["choices"], first["choices"]);
    assert_eq!(r.json()["usage"], first["usage"]);
    // Field order and `user` do not split entries.
    let reordered = br#"{"messages":[{"content":"one","role":"user"}],"user":"someone","model":"openai/gpt-4o-mini"}"#;
    let r = post(a, "/v1/chat/completions", &[], reordered).await;
    assert_eq!(cache_header(&r), "hit");

    // The whole entry replayed as a stream: chunk shapes, usage when asked, one [DONE].
    let r = post(a, "/v1/chat/completions", &[], &chat("one", true)).await;
    assert_eq!((r.status, cache_header(&r)), (200, "hit"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let ev = events(&r);
    assert_eq!(ev.iter().filter(|e| *e == "[DONE]").count(), 1, "{ev:?}");
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hello");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 12);
    let no_usage = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "one"}], "stream": true});
    let r = post(
        a,
        "/v1/chat/completions",
        &[],
        no_usage.to_string().as_bytes(),
    )
    .await;
    assert_eq!(cache_header(&r), "hit");
    assert!(
        events(&r).iter().all(|e| !e.contains("\"usage\":{")),
        "no usage chunk unless asked"
    );
    assert_eq!(up.count(), 1);

    // A streamed miss is kept once it completes, and serves a whole request.
    let r = post(a, "/v1/chat/completions", &[], &chat("two", true)).await;
    assert_eq!(cache_header(&r), "miss");
    assert_eq!(up.count(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = post(a, "/v1/chat/completions", &[], &chat("two", false)).await;
        if cache_header(&r) == "hit" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cache_header(&r), "hit", "the stream was kept");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the mock."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let r = post(a, "/v1/chat/completions", &[], &chat("two", true)).await;
    assert_eq!(cache_header(&r), "hit");
    let text: String = events(&r)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from the mock.");
    let upstream_calls = up.count();

    // Cache-Control: no-cache skips the lookup (and stores), no-store never stores.
    let r = post(
        a,
        "/v1/chat/completions",
        &[("cache-control", "no-cache")],
        &chat("one", false),
    )
    .await;
    assert_eq!(cache_header(&r), "bypass");
    assert_eq!(up.count(), upstream_calls + 1);
    for _ in 0..2 {
        let r = post(
            a,
            "/v1/chat/completions",
            &[("cache-control", "no-store")],
            &chat("three", false),
        )
        .await;
        assert_eq!(cache_header(&r), "miss");
    }
    assert_eq!(up.count(), upstream_calls + 3);

    // Errors are never kept.
    for _ in 0..2 {
        let r = post(a, "/v1/chat/completions", &[], &chat("fail", false)).await;
        assert_eq!((r.status, cache_header(&r)), (500, "miss"));
    }
    assert_eq!(up.count(), upstream_calls + 5);
    // Bad input: the header says bypass on the error too.
    let r = post(a, "/v1/chat/completions", &[], b"{").await;
    assert_eq!((r.status, cache_header(&r)), (400, "bypass"));

    // Messages: its own format from the cache, whole and streamed.
    let msg = json!({"model": "openai/gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "four"}]});
    let r = post(a, "/v1/messages", &[], msg.to_string().as_bytes()).await;
    assert_eq!((r.status, cache_header(&r)), (200, "miss"), "{}", r.text());
    let calls = up.count();
    let r = post(a, "/v1/messages", &[], msg.to_string().as_bytes()).await;
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.json()["content"][0]["text"], "hello");
    let mut streamed = msg.clone();
    streamed["stream"] = json!(true);
    let r = post(a, "/v1/messages", &[], streamed.to_string().as_bytes()).await;
    assert_eq!(cache_header(&r), "hit");
    let t = r.text();
    assert!(
        t.contains("event: message_start")
            && t.contains("\"text\":\"hello\"")
            && t.contains("event: message_stop"),
        "{t}"
    );
    assert_eq!(up.count(), calls);

    // Responses: a hit gets its own response id.
    let resp = json!({"model": "openai/gpt-4o-mini", "input": "five", "store": false});
    let r1 = post(a, "/v1/responses", &[], resp.to_string().as_bytes()).await;
    assert_eq!(
        (r1.status, cache_header(&r1)),
        (200, "miss"),
        "{}",
        r1.text()
    );
    let r2 = post(a, "/v1/responses", &[], resp.to_string().as_bytes()).await;
    assert_eq!(cache_header(&r2), "hit");
    assert_eq!(r2.json()["output"][0]["content"][0]["text"], "hello");
    assert_ne!(r1.json()["id"], r2.json()["id"], "a new response id");
    assert_eq!(up.count(), calls + 1);

    // Embeddings are cached too.
    let emb = br#"{"model":"openai/text-embedding-3-small","input":"hi"}"#;
    let r = post(a, "/v1/embeddings", &[], emb).await;
    assert_eq!(cache_header(&r), "miss");
    let r = post(a, "/v1/embeddings", &[], emb).await;
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(r.json()["data"][0]["embedding"][0], 0.5);
    assert_eq!(up.count(), calls + 2);

    // Metrics: lookups by result, bytes kept, tokens saved.
    let m = raw_request(([127, 0, 0, 1], mport).into(), "GET", "/metrics", &[], b"")
        .await
        .text();
    let value = |series: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert!(value("llm_cache_lookups_total{result=\"hit\"}") >= 9.0);
    assert!(value("llm_cache_lookups_total{result=\"miss\"}") >= 6.0);
    assert!(value("llm_cache_stored_bytes_total") > 100.0);
    assert!(value("llm_cache_tokens_saved_total{type=\"completion\"}") >= 9.0);
    assert!(
        value("llm_cache_saved_usd_total") > 0.0,
        "gpt-4o-mini has a price"
    );
}

/// Keys: each key its own entries, a hit counts against RPM; TTL expiry.
#[tokio::test(flavor = "multi_thread")]
async fn cache_scope_rpm_and_ttl() {
    let up = upstream().await;
    let toml = format!(
        "[[keys]]\nname = \"k1\"\nhash = \"{}\"\nrpm = 2\n\n[[keys]]\nname = \"k2\"\nhash = \"{}\"\n",
        key_hash("sk-one"),
        key_hash("sk-two")
    );
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("CACHE_ENABLE", "true".into()));
    env.push(("CACHE_TTL", "1s".into()));
    let gw = InProcessGateway::start(&env, Some(&toml));
    let a = gw.addr;
    let k1 = [("authorization", "Bearer sk-one")];
    let k2 = [("authorization", "Bearer sk-two")];
    let r = post(a, "/v1/chat/completions", &k1, &chat("mine", false)).await;
    assert_eq!(cache_header(&r), "miss");
    let r = post(a, "/v1/chat/completions", &k2, &chat("mine", false)).await;
    assert_eq!(
        cache_header(&r),
        "miss",
        "another key never sees k1's entry"
    );
    let r = post(a, "/v1/chat/completions", &k1, &chat("mine", false)).await;
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(up.count(), 2);
    // k1's RPM of 2: the miss and the hit; the third is refused, hit or not.
    let r = post(a, "/v1/chat/completions", &k1, &chat("mine", false)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    // A hit charges no tokens.
    let tokens = |u: Value| u["tokens_this_minute"].as_u64().unwrap();
    let before = tokens(raw_request(a, "GET", "/v1/usage", &k2, b"").await.json());
    assert!(before > 0);
    let r = post(a, "/v1/chat/completions", &k2, &chat("mine", false)).await;
    assert_eq!(cache_header(&r), "hit");
    let after = tokens(raw_request(a, "GET", "/v1/usage", &k2, b"").await.json());
    assert_eq!(before, after, "a hit costs no tokens");
    // TTL: gone after a second.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = post(a, "/v1/chat/completions", &k2, &chat("mine", false)).await;
    assert_eq!(cache_header(&r), "miss", "expired");
    assert_eq!(up.count(), 3);
}

/// Two gateways on one Redis share entries.
#[tokio::test(flavor = "multi_thread")]
async fn cache_shared_through_redis() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("CACHE_ENABLE", "true".into()));
    env.push(("CACHE_REDIS_URL", redis.url()));
    let one = InProcessGateway::start(&env, None);
    let two = InProcessGateway::start(&env, None);
    let r = post(
        one.addr,
        "/v1/chat/completions",
        &[],
        &chat("shared", false),
    )
    .await;
    assert_eq!(cache_header(&r), "miss");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post(
            two.addr,
            "/v1/chat/completions",
            &[("cache-control", "no-store")],
            &chat("shared", false),
        )
        .await;
        if cache_header(&r) == "hit" {
            assert_eq!(r.json()["choices"][0]["message"]["content"], "hello");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second gateway never saw the entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = up.count();
    let r = post(
        two.addr,
        "/v1/chat/completions",
        &[],
        &chat("shared", false),
    )
    .await;
    assert_eq!(cache_header(&r), "hit");
    assert_eq!(up.count(), before);
}

/// Messages relayed untouched to an Anthropic provider are kept in canonical form, whole and
/// streamed: the same request again is a hit in Messages form, and the chat door finds the same
/// entry. A request with fields the canonical form cannot carry is not cached.
#[tokio::test(flavor = "multi_thread")]
async fn messages_relayed_to_anthropic_are_cached() {
    let up = MockUpstream::start(crate::model::anthropic_model).await;
    let mut env = provider_env(&[("anthropic", up.url("/v1"))]);
    env.push(("CACHE_ENABLE", "true".into()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;
    for stream in [false, true] {
        // A different max_tokens per form: two entries.
        let max_tokens = if stream { 60 } else { 50 };
        let msg = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": max_tokens,
            "stream": stream, "messages": [{"role": "user", "content": "plain"}]});
        let r = post(a, "/v1/messages", &[], msg.to_string().as_bytes()).await;
        assert_eq!((r.status, cache_header(&r)), (200, "miss"), "{}", r.text());
        // Relayed: the provider got the Messages request itself.
        assert!(up.last().path.ends_with("/messages"));
        let calls = up.count();
        let r = post(a, "/v1/messages", &[], msg.to_string().as_bytes()).await;
        assert_eq!(cache_header(&r), "hit", "stream={stream}");
        if stream {
            let t = r.text();
            assert!(
                t.contains("event: message_start") && t.contains("no tools needed"),
                "{t}"
            );
        } else {
            assert_eq!(r.json()["type"], "message");
            assert_eq!(r.json()["content"][0]["text"], "no tools needed");
        }
        let chat = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "plain"}]});
        let r = post(a, "/v1/chat/completions", &[], chat.to_string().as_bytes()).await;
        assert_eq!(cache_header(&r), "hit", "{}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "no tools needed"
        );
        assert_eq!(up.count(), calls, "hits reach no provider");
    }
    // `top_k` has no Chat Completions field: relayed, and not cached.
    let native = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 70, "top_k": 5,
        "messages": [{"role": "user", "content": "plain"}]});
    for _ in 0..2 {
        let r = post(a, "/v1/messages", &[], native.to_string().as_bytes()).await;
        assert_eq!(
            (r.status, cache_header(&r)),
            (200, "bypass"),
            "{}",
            r.text()
        );
    }
}
