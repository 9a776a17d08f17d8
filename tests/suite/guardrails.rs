//! Guardrails: input deny patterns (nothing sent upstream), PII redaction (the provider never
//! sees the original), output patterns on whole answers and on streams (a match split across
//! chunks never reaches the client), the webhook (allow, deny, rewrite, timeout with both
//! failure modes), profiles per key, and the metrics.

use std::time::Duration;

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::*;

/// Answers whole or streamed; the streamed answer splits "secret plan" across chunks.
async fn upstream() -> MockUpstream {
    MockUpstream::start(|req| {
        let body = req.json();
        let model = body["model"].as_str().unwrap_or("").to_string();
        let asked = body.to_string();
        let answer = if asked.contains("leak") {
            "Here is the secret plan: attack at dawn"
        } else {
            "All good here"
        };
        if body["stream"] == true {
            let pieces: Vec<String> = answer
                .as_bytes()
                .chunks(5)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let s = chat_stream(&model, &refs, true);
            let mut steps = vec![Step::Write(sse_head())];
            for e in s.split_inclusive("\n\n") {
                steps.push(Step::Write(chunk(e.as_bytes())));
            }
            steps.push(Step::Write(last_chunk()));
            return steps;
        }
        json_response(200, &chat_completion(&model, answer))
    })
    .await
}

fn chat(content: &str, stream: bool) -> Vec<u8> {
    json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": stream})
        .to_string()
        .into_bytes()
}

fn streamed_text(r: &RawResponse) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut chunks = Vec::new();
    for e in r.text().split("\n\n") {
        let Some(d) = e.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        chunks.push(v);
    }
    (text, chunks)
}

#[tokio::test(flavor = "multi_thread")]
async fn input_and_output_guardrails() {
    let up = upstream().await;
    let mport = free_port();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "GUARDRAILS_DENY_PATTERNS",
        r#"["(?i)forbidden topic", "rm -rf /"]"#.into(),
    ));
    env.push(("GUARDRAILS_REDACT_PII", "true".into()));
    env.push(("GUARDRAILS_OUTPUT_DENY_PATTERNS", "(?i)secret plan".into()));
    env.push(("GUARDRAILS_OUTPUT_WINDOW", "16".into()));
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", mport.to_string()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;

    // Input deny: 400 content_blocked, nothing upstream, in each door's envelope.
    let r = post_chat(a, &chat("Tell me about the FORBIDDEN topic", false)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "content_blocked");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let msg = json!({"model": "openai/gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": [{"type": "text", "text": "please rm -rf / now"}]}]});
    let r = raw_request(a, "POST", "/v1/messages", &[], msg.to_string().as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error", "Anthropic's envelope");
    assert_eq!(up.count(), 0, "nothing was sent upstream");

    // Redaction: the provider never sees the originals.
    let r = post_chat(a, &chat("I am jane@example.com, card 4111 1111 1111 1111, call +44 20 7946 0958, key sk-proj-abcdefghijklmnopqrstuv", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = up.last().json()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sent,
        "I am [REDACTED_EMAIL], card [REDACTED_CARD], call [REDACTED_PHONE], key [REDACTED_SECRET]"
    );
    let raw_sent = String::from_utf8_lossy(&up.last().body).into_owned();
    assert!(
        !raw_sent.contains("jane@") && !raw_sent.contains("4111") && !raw_sent.contains("sk-proj"),
        "{raw_sent}"
    );

    // Output, whole: 200, the content removed, finish_reason content_filter.
    let r = post_chat(a, &chat("leak it", false)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "");
    let r = post_chat(a, &chat("fine", false)).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "All good here"
    );

    // Output, streamed: "secret plan" arrives split across 5-byte chunks and is never sent.
    let r = post_chat(a, &chat("leak it", true)).await;
    assert_eq!(r.status, 200);
    let (text, chunks) = streamed_text(&r);
    assert!(!text.to_lowercase().contains("secret"), "{text}");
    // What was released before the match (all but the 16-character window) was sent.
    assert!(
        !text.is_empty() && "Here is the ".starts_with(&text),
        "{text:?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter"
    );
    assert_eq!(r.text().matches("data: [DONE]").count(), 1);
    let r = post_chat(a, &chat("fine", true)).await;
    let (text, chunks) = streamed_text(&r);
    assert_eq!(text, "All good here");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));

    let m = raw_request(([127, 0, 0, 1], mport).into(), "GET", "/metrics", &[], b"")
        .await
        .text();
    for series in [
        "llm_guardrail_actions_total{action=\"block\",guardrail=\"deny_patterns\"} 2",
        "llm_guardrail_actions_total{action=\"redact\",guardrail=\"pii\"} 1",
        "llm_guardrail_actions_total{action=\"block\",guardrail=\"output_patterns\"} 2",
    ] {
        assert!(m.contains(series), "{series} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guardrail_webhook_and_profiles() {
    let up = upstream().await;
    // The webhook: deny "bad", rewrite "rewrite me", hang on "slow", else allow; the output
    // phase rewrites "All good here".
    let hook = MockUpstream::start(|req| {
        let v = req.json();
        let text = v.to_string();
        if v["phase"] == "output" {
            return json_response(200, r#"{"action":"rewrite","output":"All good (checked)"}"#);
        }
        if text.contains("slow") {
            return vec![Step::Sleep(Duration::from_secs(3)), Step::Close];
        }
        if text.contains("bad") {
            return json_response(200, r#"{"action":"deny","reason":"policy 7"}"#);
        }
        if text.contains("rewrite me") {
            return json_response(
                200,
                r#"{"action":"rewrite","messages":[{"role":"user","content":"rewritten"}]}"#,
            );
        }
        json_response(200, r#"{"action":"allow"}"#)
    })
    .await;
    let toml = format!(
        "[guardrails.profiles.checked]\nwebhook_url = \"{}\"\nwebhook_timeout = \"300ms\"\n\n\
         [guardrails.profiles.lenient]\nwebhook_url = \"{}\"\nwebhook_timeout = \"300ms\"\nwebhook_failure_mode = \"fail_open\"\n\n\
         [[keys]]\nname = \"strict\"\nhash = \"{}\"\nguardrails = \"checked\"\n\n\
         [[keys]]\nname = \"easy\"\nhash = \"{}\"\nguardrails = \"lenient\"\n\n\
         [[keys]]\nname = \"plain\"\nhash = \"{}\"\n",
        hook.url("/check"),
        hook.url("/check"),
        key_hash("sk-strict"),
        key_hash("sk-easy"),
        key_hash("sk-plain")
    );
    let gw = InProcessGateway::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    let a = gw.addr;
    let call = |key: &'static str, content: &str| {
        let body = chat(content, false);
        async move {
            let auth = format!("Bearer {key}");
            raw_request(
                a,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &body,
            )
            .await
        }
    };

    // deny: 400 with the webhook's reason; the payload names the phase, model and caller.
    let r = call("sk-strict", "something bad").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("policy 7"));
    let asked = hook.last().json();
    assert_eq!(asked["phase"], "input");
    assert_eq!(asked["principal"], "strict");
    assert_eq!(asked["model"], "openai/gpt-4o-mini");
    assert_eq!(asked["messages"][0]["content"], "something bad");
    assert_eq!(up.count(), 0);
    // rewrite: the provider gets the webhook's messages; the output phase rewrites the answer.
    let r = call("sk-strict", "rewrite me").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.last().json()["messages"],
        json!([{"role": "user", "content": "rewritten"}])
    );
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "All good (checked)"
    );
    // timeout: fail_closed refuses (503), fail_open lets it through.
    let r = call("sk-strict", "slow please").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "guardrail_unavailable");
    let r = call("sk-easy", "slow please").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A key without a profile: the top level, which checks nothing here.
    let before = hook.count();
    let r = call("sk-plain", "something bad").await;
    assert_eq!(r.status, 200);
    assert_eq!(hook.count(), before, "no webhook for it");
}

/// The server-side MCP loop's answers are checked too: the final answer whole (content removed)
/// and streamed (ended with content_filter and one `[DONE]`), the window kept across rounds; an
/// answer that does not match streams in full.
#[tokio::test(flavor = "multi_thread")]
async fn output_guardrails_check_the_mcp_loop() {
    let mcp = crate::mcp_support::HttpMcpServer::start(0).await;
    let model = MockUpstream::start(crate::model::openai_model).await;
    let mut env = provider_env(&[("openai", model.url("/v1"))]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    // The loop's answer to "add" is "result: 5"; to "multi", "result: 13".
    env.push(("GUARDRAILS_OUTPUT_DENY_PATTERNS", "result: 5".into()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;
    wait_for_any_mcp_tool(a).await;
    let ask = |prompt: &str, stream: bool| {
        json!({"model": "openai/gpt-4o", "stream": stream,
            "messages": [{"role": "user", "content": prompt}]})
        .to_string()
        .into_bytes()
    };
    let r = post_chat(a, &ask("add", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mcp-rounds"), Some("2"));
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "");

    let r = post_chat(a, &ask("add", true)).await;
    assert_eq!(r.status, 200);
    let (text, chunks) = streamed_text(&r);
    assert!(!text.contains("result: 5"), "{text}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter",
        "{}",
        r.text()
    );
    assert_eq!(r.text().matches("data: [DONE]").count(), 1);

    let r = post_chat(a, &ask("multi", true)).await;
    let (text, _) = streamed_text(&r);
    assert_eq!(text, "result: 13");
    assert_eq!(r.text().matches("data: [DONE]").count(), 1);
    assert!(
        r.text().contains("\"finish_reason\":\"stop\""),
        "{}",
        r.text()
    );
}
