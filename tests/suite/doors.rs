//! The front doors' request path, in process (`InProcessGateway`): routing of bare names,
//! authentication headers, errors in each door's shape and status, count_tokens, what is
//! dropped, and that a relay changes nothing but the model.

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::*;

fn messages_req(model: &str) -> Vec<u8> {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

async fn post_messages(
    gw: &InProcessGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    raw_request(gw.addr, "POST", path, headers, body).await
}

fn assert_anthropic_error(r: &RawResponse, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(r.headers.contains_key("request-id"), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_on_the_messages_door_are_anthropic_shaped_with_anthropic_statuses() {
    let up = MockUpstream::start(|req| match req.json()["model"].as_str().unwrap_or("") {
        "busy" => json_response(503, r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#),
        "gone" => json_response(404, r#"{"error":{"message":"The model `gone` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#),
        m => json_response(200, &chat_completion(m, "hello")),
    })
    .await;
    let key = "sk-door-key";
    let toml = format!(
        "[server]\nmax_request_body_size = 4096\n[[keys]]\nname = \"door\"\nhash = \"{}\"\nmodels = [\"openai/*\"]\n",
        key_hash(key)
    );
    let gw = InProcessGateway::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    let auth = [("x-api-key", key), ("anthropic-version", "2023-06-01")];

    // No credentials, wrong credentials: 401 authentication_error.
    let r = post_messages(&gw, "/v1/messages", &[], &messages_req("openai/gpt-x")).await;
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = post_messages(
        &gw,
        "/v1/messages",
        &[("x-api-key", "nope")],
        &messages_req("openai/gpt-x"),
    )
    .await;
    assert_anthropic_error(&r, 401, "authentication_error");
    // Bearer works as well as x-api-key.
    let bearer = format!("Bearer {key}");
    let r = post_messages(
        &gw,
        "/v1/messages?beta=true",
        &[("authorization", &bearer)],
        &messages_req("openai/gpt-x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "hello");
    // A model the key may not use: 403 permission_error (bare names go to anthropic).
    let r = post_messages(
        &gw,
        "/v1/messages",
        &auth,
        &messages_req("claude-sonnet-4-5"),
    )
    .await;
    assert_anthropic_error(&r, 403, "permission_error");
    // Bad request bodies: 400 invalid_request_error, with the field named.
    let r = post_messages(
        &gw,
        "/v1/messages",
        &auth,
        br#"{"model":"openai/gpt-x","messages":[]}"#,
    )
    .await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let r = post_messages(&gw, "/v1/messages", &auth, b"{not json").await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
    // Too large: 413 request_too_large.
    let big = json!({"model": "openai/gpt-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = post_messages(&gw, "/v1/messages", &auth, big.to_string().as_bytes()).await;
    assert_anthropic_error(&r, 413, "request_too_large");
    // The provider's 404 and 503: not_found_error, and overloaded_error as 529.
    let r = post_messages(&gw, "/v1/messages", &auth, &messages_req("openai/gone")).await;
    assert_anthropic_error(&r, 404, "not_found_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gone"));
    let r = post_messages(&gw, "/v1/messages", &auth, &messages_req("openai/busy")).await;
    assert_anthropic_error(&r, 529, "overloaded_error");
    // A method the route does not take: 405, still Anthropic's shape.
    let r = raw_request(gw.addr, "GET", "/v1/messages", &auth, b"").await;
    assert_anthropic_error(&r, 405, "invalid_request_error");
    // The chat door keeps OpenAI's shape on the same gateway.
    let r = post_chat(gw.addr, br#"{"model":"openai/gpt-x"}"#).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["type"].is_string());
    assert!(r.json().get("type").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn bare_names_route_to_the_default_provider_and_relays_change_only_the_model() {
    let anthropic = MockUpstream::start(|req| {
        if req.path.ends_with("/count_tokens") {
            return json_response(200, r#"{"input_tokens":7}"#);
        }
        json_response(
            200,
            &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": req.json()["model"],
                "content": [{"type": "text", "text": "hi", "citations": null}], "stop_reason": "end_turn",
                "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}, "container": null})
            .to_string(),
        )
    })
    .await;
    let openai = MockUpstream::start(|req| {
        json_response(
            200,
            &chat_completion(req.json()["model"].as_str().unwrap(), "from openai"),
        )
    })
    .await;
    let toml = "[aliases.fast]\ntarget = \"openai/gpt-4o-mini\"\n";
    let mut env = provider_env(&[
        ("anthropic", anthropic.url("/v1")),
        ("openai", openai.url("/v1")),
    ]);
    let gw = InProcessGateway::start(&env, Some(toml));

    // A request with fields the gateway has never heard of, cache_control and a beta header.
    let body = json!({"model": "claude-opus-4-1", "max_tokens": 10, "some_future_field": {"x": 1},
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post_messages(
        &gw,
        "/v1/messages",
        &[
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "context-1m-2025-08-07"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers.get("x-gateway-provider").map(String::as_str),
        Some("anthropic")
    );
    // The provider's body reaches the client unchanged (null fields included).
    assert_eq!(r.json()["container"], Value::Null);
    assert!(r.text().contains("\"container\":null"));
    let sent = anthropic.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("anthropic-beta"), Some("context-1m-2025-08-07"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("x-api-key"), Some("sk-anthropic-test"));
    let mut expect = body.clone();
    expect["model"] = json!("claude-opus-4-1");
    assert_eq!(sent.json(), expect, "only the model may change");

    // An alias and a provider prefix win over the default provider.
    let r = post_messages(&gw, "/v1/messages", &[], &messages_req("fast")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "from openai");
    assert_eq!(openai.last().json()["model"], "gpt-4o-mini");
    let r = post_messages(&gw, "/v1/messages", &[], &messages_req("openai/gpt-4.1")).await;
    assert_eq!(r.json()["model"], "gpt-4.1");

    // count_tokens: the provider's count for Anthropic, the estimate elsewhere.
    let r = post_messages(
        &gw,
        "/v1/messages/count_tokens",
        &[],
        br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": 7}));
    assert_eq!(anthropic.last().path, "/v1/messages/count_tokens");
    let text = "a".repeat(400);
    let r = post_messages(
        &gw,
        "/v1/messages/count_tokens",
        &[],
        json!({"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": text}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input_tokens"], 100);
    assert_eq!(
        r.headers.get("x-gateway-estimate").map(String::as_str),
        Some("true")
    );
    // A count_tokens body without a model, or not JSON: 400 in Anthropic's shape.
    for bad in [&br#"{"messages":[]}"#[..], b"[1,2"] {
        let r = post_messages(&gw, "/v1/messages/count_tokens", &[], bad).await;
        assert_anthropic_error(&r, 400, "invalid_request_error");
    }

    // What the target cannot take is named.
    let body = json!({"model": "openai/gpt-4.1", "max_tokens": 10, "top_k": 5,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post_messages(&gw, "/v1/messages", &[], body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers
            .get("x-gateway-dropped-params")
            .map(String::as_str),
        Some("tools.web_search_20250305,top_k")
    );
    let sent = openai.last().json();
    assert!(
        sent.get("top_k").is_none() && sent.get("tools").is_none(),
        "{sent}"
    );

    // Another default provider.
    env.push(("DOORS_MESSAGES_DEFAULT_PROVIDER", "openai".into()));
    let gw2 = InProcessGateway::start(&env, None);
    let r = post_messages(&gw2, "/v1/messages", &[], &messages_req("gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "from openai");
}

/// An alias used on the Messages door to an Anthropic provider: its defaults and system prefix
/// arrive in Messages terms, and the client's own values win.
#[tokio::test(flavor = "multi_thread")]
async fn aliases_apply_in_messages_terms_on_a_relay() {
    let anthropic = MockUpstream::start(|req| {
        json_response(
            200,
            &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": req.json()["model"],
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}})
            .to_string(),
        )
    })
    .await;
    let toml = "[aliases.kind]\ntarget = \"anthropic/claude-sonnet-4-5\"\nsystem_prompt_prefix = \"Be kind.\"\n\
                [aliases.kind.defaults]\ntemperature = 0.2\nstop = \"END\"\nmax_completion_tokens = 99\nfrequency_penalty = 0.5\n";
    let gw = InProcessGateway::start(
        &provider_env(&[("anthropic", anthropic.url("/v1"))]),
        Some(toml),
    );
    let body = json!({"model": "kind", "max_tokens": 10, "system": "sys",
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post_messages(&gw, "/v1/messages", &[], body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = anthropic.last().json();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "Be kind.\n\nsys");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    // The client's max_tokens wins over the alias's; a chat-only default is left out.
    assert_eq!(sent["max_tokens"], 10);
    assert!(
        sent.get("frequency_penalty").is_none() && sent.get("stop").is_none(),
        "{sent}"
    );
}
