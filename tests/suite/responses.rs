//! The Responses door in process: Codex-style stateless turns with sealed reasoning and a
//! `custom` tool on providers that enforce their reasoning rules, stored responses that belong
//! to their key and move between gateways through Redis, hosted tools, ids only the upstream
//! knows, and the MCP loop.

use std::time::Duration;

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::*;
use crate::model;

async fn post(gw: &InProcessGateway, key: &str, body: &Value) -> RawResponse {
    let auth = format!("Bearer {key}");
    raw_request(
        gw.addr,
        "POST",
        "/v1/responses",
        &[("authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await
}

async fn get(gw: &InProcessGateway, key: &str, path: &str, method: &str) -> RawResponse {
    let auth = format!("Bearer {key}");
    raw_request(gw.addr, method, path, &[("authorization", &auth)], b"").await
}

fn keys_toml(names: &[(&str, &str)]) -> String {
    names
        .iter()
        .map(|(n, k)| format!("[[keys]]\nname = \"{n}\"\nhash = \"{}\"\n", key_hash(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The final `response` object of a Responses event stream.
fn completed(stream: &str) -> Value {
    let data = stream
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|v| v["type"] == "response.completed")
        .unwrap_or_else(|| panic!("no response.completed in {stream}"));
    data["response"].clone()
}

fn assert_openai_error(r: &RawResponse, status: u16, code: &str, param: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["param"], param, "{v}");
}

const KEY: &str = "sk-responses-a";

/// Codex's way: `store: false`, the whole conversation replayed each turn with the reasoning
/// items it got (`include: ["reasoning.encrypted_content"]`), a `custom` tool (`apply_patch`).
/// Anthropic refuses a tool turn without its signed thinking and Gemini one without its
/// signature; with the vault off, only the sealed items can carry them.
#[tokio::test(flavor = "multi_thread")]
async fn codex_style_stateless_turns_carry_sealed_reasoning_and_custom_tools() {
    let anthropic = MockUpstream::start(model::anthropic_model).await;
    let gemini = MockUpstream::start(model::gemini_model).await;
    let mut env = provider_env(&[
        ("anthropic", anthropic.url("/v1")),
        ("google", gemini.url("/v1beta")),
    ]);
    env.push(("REASONING_VAULT_MAX_BYTES", "0".into()));
    let gw = InProcessGateway::start(
        &env,
        Some(&keys_toml(&[("codex", KEY), ("b", "sk-responses-b")])),
    );
    for (model, stream) in [
        ("anthropic/claude-sonnet-4-5", false),
        ("anthropic/claude-sonnet-4-5", true),
        ("google/gemini-3-pro-preview", false),
        ("google/gemini-3-pro-preview", true),
    ] {
        let what = format!("{model} stream={stream}");
        let tools = json!([{"type": "custom", "name": "apply_patch", "description": "Edit files"}]);
        let mut input = vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "patch"}]})];
        let turn = |input: &Vec<Value>| {
            json!({"model": model, "input": input, "tools": tools, "store": false, "stream": stream,
                "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "high"}})
        };
        let r = post(&gw, KEY, &turn(&input)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let first = if stream {
            completed(&r.text())
        } else {
            r.json()
        };
        let output = first["output"].as_array().unwrap().clone();
        let reasoning: Vec<&Value> = output.iter().filter(|o| o["type"] == "reasoning").collect();
        assert!(!reasoning.is_empty(), "{what}: {output:?}");
        assert!(
            reasoning.iter().any(|r| r["encrypted_content"]
                .as_str()
                .is_some_and(|e| e.starts_with("igw1:"))),
            "{what}: {output:?}"
        );
        let call = output
            .iter()
            .find(|o| o["type"] == "custom_tool_call")
            .unwrap_or_else(|| panic!("{what}: {output:?}"));
        assert_eq!(call["name"], "apply_patch");
        assert!(
            call["input"]
                .as_str()
                .unwrap()
                .starts_with("*** Begin Patch"),
            "{call}"
        );
        // store: false kept nothing.
        let id = first["id"].as_str().unwrap();
        let g = get(&gw, KEY, &format!("/v1/responses/{id}"), "GET").await;
        assert_openai_error(&g, 404, "response_not_found", "response_id");

        input.extend(output.iter().cloned());
        input.push(json!({"type": "custom_tool_call_output", "call_id": call["call_id"], "output": "patched"}));
        let r = post(&gw, KEY, &turn(&input)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let second = if stream {
            completed(&r.text())
        } else {
            r.json()
        };
        let text = second["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["type"] == "message")
            .map(|m| m["content"][0]["text"].clone());
        assert_eq!(text, Some(json!("result: patched")), "{what}: {second}");
        if model.starts_with("anthropic") {
            // With thinking on, the tool turn went back starting with its signed thinking.
            let sent = anthropic.last().json();
            assert_eq!(sent["thinking"]["type"], "enabled", "{sent}");
            let turn = &sent["messages"][1]["content"];
            assert_eq!(turn[0]["type"], "thinking", "{sent}");
            assert_eq!(turn[0]["signature"], "sig_0", "{sent}");
        }

        // A tampered item is refused before anything is sent upstream.
        let before = anthropic.count() + gemini.count();
        let mut tampered = input.clone();
        let i = tampered
            .iter()
            .position(|o| o["type"] == "reasoning" && o.get("encrypted_content").is_some())
            .unwrap();
        let sealed = tampered[i]["encrypted_content"]
            .as_str()
            .unwrap()
            .to_string();
        let mut chars: Vec<char> = sealed.chars().collect();
        let k = chars.len() - 3;
        chars[k] = if chars[k] == 'A' { 'B' } else { 'A' };
        tampered[i]["encrypted_content"] = json!(chars.into_iter().collect::<String>());
        let r = post(&gw, KEY, &turn(&tampered)).await;
        assert_openai_error(&r, 400, "invalid_encrypted_content", "input");
        assert_eq!(anthropic.count() + gemini.count(), before, "{what}");
        // Another key cannot use this key's sealed state either.
        let r = post(&gw, "sk-responses-b", &turn(&input)).await;
        assert_openai_error(&r, 400, "invalid_encrypted_content", "input");
        assert_eq!(anthropic.count() + gemini.count(), before, "{what}");
        assert!(sealed.starts_with("igw1:"));
    }
    // Gemini got its own signature back (not the placeholder).
    let last = gemini.last().json();
    let sig = last["contents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["parts"][0].get("thoughtSignature"))
        .next()
        .cloned();
    assert_eq!(sig, Some(json!("sig_g0")), "{last}");
    // Without the reasoning items (and no vault), the tool turn cannot carry thinking: the
    // dialect turns thinking off for it rather than send a turn Anthropic refuses.
    let input = json!([
        {"type": "message", "role": "user", "content": "patch"},
        {"type": "custom_tool_call", "call_id": "toolu_0_0", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "toolu_0_0", "output": "patched"}
    ]);
    let r = post(
        &gw,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "input": input, "store": false,
            "tools": [{"type": "custom", "name": "apply_patch"}], "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = anthropic.last().json();
    assert_ne!(sent["thinking"]["type"], "enabled", "{sent}");
}

/// Stored responses: per key (another key's id is a 404 like an unknown one), shared by two
/// gateways through Redis, listed page by page.
#[tokio::test(flavor = "multi_thread")]
async fn stored_responses_belong_to_their_key_and_are_shared_through_redis() {
    let redis = RedisServer::start();
    let up = MockUpstream::start(model::anthropic_model).await;
    let mut env = provider_env(&[("anthropic", up.url("/v1"))]);
    env.push(("REDIS_URL", redis.url()));
    // Only the store can carry the thinking the tool turn needs back; the two gateways have
    // different (random) sealing keys.
    env.push(("REASONING_VAULT_MAX_BYTES", "0".into()));
    let toml = keys_toml(&[("a", KEY), ("b", "sk-responses-b")]);
    let gw1 = InProcessGateway::start(&env, Some(&toml));
    let gw2 = InProcessGateway::start(&env, Some(&toml));
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let r = post(
        &gw1,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "input": "client", "tools": tools,
            "instructions": "Be brief.", "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_gw_"), "{id}");
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap()
        .clone();
    // The next turn on the other gateway, naming only the previous response.
    let r = post(
        &gw2,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": id, "tools": tools,
            "reasoning": {"effort": "high"},
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json();
    assert_eq!(second["output"][0]["content"][0]["text"], "result: sunny");
    assert_eq!(second["previous_response_id"], json!(id));
    // The upstream got the whole conversation, the tool turn with its signed thinking (kept
    // by gateway 1, sealed again by gateway 2); instructions are not inherited (as OpenAI's).
    let sent = up.last().json();
    assert!(sent.get("system").is_none(), "{sent}");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    assert_eq!(sent["thinking"]["type"], "enabled", "{sent}");
    assert_eq!(
        sent["messages"][1]["content"][0]["signature"], "sig_0",
        "{sent}"
    );
    // What a client is shown never carries the store's opened state.
    let r = get(&gw2, KEY, &format!("/v1/responses/{id}"), "GET").await;
    assert!(!r.text().contains("gateway_state"), "{}", r.text());
    let r = get(
        &gw2,
        KEY,
        &format!("/v1/responses/{id}?include[]=reasoning.encrypted_content"),
        "GET",
    )
    .await;
    assert!(r.text().contains("igw1:"), "{}", r.text());
    // The other key: every route answers 404 as for an unknown id.
    let other = "sk-responses-b";
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("GET", format!("/v1/responses/{id}/input_items")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        let r = get(&gw2, other, &path, method).await;
        assert_openai_error(&r, 404, "response_not_found", "response_id");
    }
    let r = post(
        &gw1,
        other,
        &json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": id, "input": "hi"}),
    )
    .await;
    assert_openai_error(&r, 404, "response_not_found", "previous_response_id");
    // The owner sees it from either gateway; input items page by page.
    let r = get(&gw2, KEY, &format!("/v1/responses/{id}"), "GET").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let strip = |v: &Value| {
        let mut v = v["output"].clone();
        for i in v.as_array_mut().unwrap() {
            i.as_object_mut().unwrap().remove("encrypted_content");
        }
        v
    };
    assert_eq!(strip(&r.json()), strip(&first));
    let sid = second["id"].as_str().unwrap();
    let three = json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": sid,
        "input": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                  {"role": "user", "content": "three"}]});
    let r = post(&gw1, KEY, &three).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tid = r.json()["id"].as_str().unwrap().to_string();
    let page = |q: &str| format!("/v1/responses/{tid}/input_items{q}");
    let r = get(&gw2, KEY, &page("?limit=2&order=asc"), "GET").await;
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    let texts = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["content"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(texts(&v), ["one", "two"]);
    assert_eq!(v["has_more"], true);
    let after = v["last_id"].as_str().unwrap();
    let r = get(
        &gw2,
        KEY,
        &page(&format!("?limit=2&order=asc&after={after}")),
        "GET",
    )
    .await;
    assert_eq!(texts(&r.json()), ["three"]);
    assert_eq!(r.json()["has_more"], false);
    let r = get(&gw2, KEY, &page(""), "GET").await;
    assert_eq!(
        texts(&r.json()),
        ["three", "two", "one"],
        "newest first by default"
    );
    let r = get(&gw2, KEY, &page("?limit=0"), "GET").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Deleted on one gateway: gone on the other, the one that wrote it included.
    let r = get(&gw2, KEY, &format!("/v1/responses/{id}"), "DELETE").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted"], true);
    let r = get(&gw1, KEY, &format!("/v1/responses/{id}"), "GET").await;
    assert_openai_error(&r, 404, "response_not_found", "response_id");
}

/// Hosted tools run only on an OpenAI Responses upstream: elsewhere a 400 naming the tool,
/// nothing sent. Ids only that upstream knows are its to answer.
#[tokio::test(flavor = "multi_thread")]
async fn hosted_tools_and_upstream_ids_go_only_to_a_responses_upstream() {
    let openai = MockUpstream::start(model::openai_responses_model).await;
    let anthropic = MockUpstream::start(model::anthropic_model).await;
    let gw = InProcessGateway::start(
        &provider_env(&[
            ("openai", openai.url("/v1")),
            ("anthropic", anthropic.url("/v1")),
        ]),
        Some(&format!(
            "{}\n[[keys]]\nname = \"c\"\nhash = \"{}\"\nmodels = [\"anthropic/*\"]\n",
            keys_toml(&[("a", KEY), ("b", "sk-responses-b")]),
            key_hash("sk-responses-c")
        )),
    );
    let hosted = |model: &str| {
        json!({"model": model, "input": "plain",
            "tools": [{"type": "web_search_preview"}, {"type": "function", "name": "f", "parameters": {}}]})
    };
    let r = post(&gw, KEY, &hosted("anthropic/claude-sonnet-4-5")).await;
    assert_openai_error(&r, 400, "unsupported_tool", "tools");
    // Malformed requests: OpenAI's envelope, naming the field, nothing sent.
    for (body, param) in [
        (
            json!({"model": "anthropic/claude-sonnet-4-5", "input": 5}),
            "input",
        ),
        (
            json!({"model": "anthropic/claude-sonnet-4-5", "input": "x", "previous_response_id": 7}),
            "previous_response_id",
        ),
        (json!({"input": "x"}), "model"),
    ] {
        let r = post(&gw, KEY, &body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            r.json()["error"]["type"],
            "invalid_request_error",
            "{}",
            r.text()
        );
        assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
    }
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("web_search_preview"));
    assert_eq!(anthropic.count(), 0);
    let r = post(&gw, KEY, &hosted("openai/gpt-test")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = openai.last();
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(sent.json()["tools"][0]["type"], "web_search_preview");
    assert_eq!(sent.json()["model"], "gpt-test");
    // An id the gateway never issued: the upstream's to answer...
    let r = get(&gw, KEY, "/v1/responses/resp_upstream_known", "GET").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "resp_upstream_known");
    // ... for a key that may use that provider at all.
    let before = openai.count();
    let r = get(
        &gw,
        "sk-responses-c",
        "/v1/responses/resp_upstream_known",
        "GET",
    )
    .await;
    assert_openai_error(&r, 404, "response_not_found", "response_id");
    assert_eq!(openai.count(), before);
    let r = post(
        &gw,
        KEY,
        &json!({"model": "openai/gpt-test", "previous_response_id": "resp_upstream_known", "input": "go on"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        openai.last().json()["previous_response_id"],
        "resp_upstream_known"
    );
    // ... and not something another provider can continue.
    let r = post(
        &gw,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": "resp_upstream_known", "input": "go on"}),
    )
    .await;
    assert_openai_error(&r, 404, "response_not_found", "previous_response_id");
    // An OpenAI-served response continues on Anthropic from the gateway's mirror.
    let r = post(
        &gw,
        KEY,
        &json!({"model": "openai/gpt-test", "input": "plain"}),
    )
    .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_upstream_"), "{id}");
    let r = post(
        &gw,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": id, "input": "thanks"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = anthropic.last().json();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{sent}");
    // That mirror is key a's: key b is never forwarded to the upstream for it.
    let before = openai.count();
    for (method, path) in [
        ("GET", format!("/v1/responses/{id}")),
        ("DELETE", format!("/v1/responses/{id}")),
    ] {
        let r = get(&gw, "sk-responses-b", &path, method).await;
        assert_openai_error(&r, 404, "response_not_found", "response_id");
    }
    let r = post(
        &gw,
        "sk-responses-b",
        &json!({"model": "openai/gpt-test", "previous_response_id": id, "input": "mine now"}),
    )
    .await;
    assert_openai_error(&r, 404, "response_not_found", "previous_response_id");
    assert_eq!(openai.count(), before);
    // Ids are `[A-Za-z0-9_-]`: anything else is unknown (and never forwarded).
    let r = get(&gw, KEY, "/v1/responses/a%7Cb", "GET").await;
    assert_openai_error(&r, 404, "response_not_found", "response_id");
    assert_eq!(openai.count(), before);
    // A file id is read only by the Responses upstream: relayed there, refused elsewhere.
    let file = |model: &str| {
        json!({"model": model, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "plain"}, {"type": "input_image", "file_id": "file-abc"}]}]})
    };
    let r = post(&gw, KEY, &file("openai/gpt-test")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&gw, KEY, &file("anthropic/claude-sonnet-4-5")).await;
    assert_openai_error(&r, 400, "invalid_request", "input");
}

/// The MCP loop serves Responses requests, its rounds streamed as Responses events.
#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_loop_runs_on_the_responses_door() {
    let mcp = crate::mcp_support::HttpMcpServer::start(0).await;
    let up = MockUpstream::start(model::openai_model).await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_EXPOSE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    let gw = InProcessGateway::start(&env, Some(&keys_toml(&[("a", KEY)])));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&gw, KEY, "/v1/mcp/tools", "GET").await;
        if r.text().contains("add") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for stream in [false, true] {
        let r = post(
            &gw,
            KEY,
            &json!({"model": "openai/gpt-test", "input": "add", "stream": stream}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = if stream {
            let text = r.text();
            assert!(text.contains("event: response.output_text.delta"), "{text}");
            completed(&text)
        } else {
            r.json()
        };
        let text = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["type"] == "message")
            .map(|m| m["content"][0]["text"].clone());
        assert_eq!(text, Some(json!("result: 5")), "{v}");
        // The loop went through chat completions (it works on the canonical exchange).
        assert_eq!(up.last().path, "/v1/chat/completions");
        // Stored like any answer.
        let id = v["id"].as_str().unwrap();
        let g = get(&gw, KEY, &format!("/v1/responses/{id}"), "GET").await;
        assert_eq!(g.status, 200, "{}", g.text());
    }
}

/// `GET /v1/models?include=...` with the field names and units of the Go gateway's SDK
/// (`inference_gateway/models.py`: `context_window.tokens`, `pricing.input_per_token` as a
/// decimal string per token, `modalities.input` / `output` of text|image|audio|video).
#[tokio::test(flavor = "multi_thread")]
async fn models_include_context_window_pricing_and_modalities() {
    let up = MockUpstream::start(|_| {
        json_response(
            200,
            r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"openai"},{"id":"unlisted-x","object":"model","created":1,"owned_by":"openai"}]}"#,
        )
    })
    .await;
    let gw = InProcessGateway::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let r = raw_request(gw.addr, "GET", "/v1/models", &[], b"").await;
    let plain = r.json();
    assert!(
        plain["data"][0].get("pricing").is_none(),
        "only when asked: {plain}"
    );
    let r = raw_request(
        gw.addr,
        "GET",
        "/v1/models?include=context_window,pricing,modalities",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let model = |id: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {v}"))
    };
    let m = model("openai/gpt-4o");
    assert_eq!(
        m["context_window"],
        json!({"tokens": 128000, "source": "provider"})
    );
    let p = &m["pricing"];
    assert_eq!(p["currency"], "USD");
    assert_eq!(p["input_per_token"], "0.0000025");
    assert_eq!(p["output_per_token"], "0.00001");
    assert_eq!(p["cache_read_per_token"], "0.00000125");
    assert_eq!(p["source"], "provider");
    assert!(p["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(p["subscription"], false);
    assert_eq!(
        m["modalities"],
        json!({"input": ["text", "image"], "output": ["text"]})
    );
    // A model the table does not know: the fields are there, null.
    let u = model("openai/unlisted-x");
    assert!(u["pricing"].is_null() && u["context_window"].is_null() && u["modalities"].is_null());
    // One at a time, and an unknown value is a 400 naming the parameter.
    let r = raw_request(gw.addr, "GET", "/v1/models?include=pricing", &[], b"").await;
    assert!(r.json()["data"][0].get("modalities").is_none());
    let r = raw_request(gw.addr, "GET", "/v1/models?include=price", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "include");
}

/// With a store (`DATABASE_URL`) stored responses live in it: a conversation continues on
/// another gateway and after a restart, still only for its key, and a delete holds for all.
#[tokio::test(flavor = "multi_thread")]
async fn stored_responses_live_in_the_store() {
    let up = MockUpstream::start(model::anthropic_model).await;
    let dir = temp_dir("responses-store");
    let mut env = provider_env(&[("anthropic", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    // Only the store can carry the thinking the tool turn needs back.
    env.push(("REASONING_VAULT_MAX_BYTES", "0".into()));
    let toml = keys_toml(&[("a", KEY), ("b", "sk-responses-b")]);
    let gw1 = InProcessGateway::start(&env, Some(&toml));
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let r = post(
        &gw1,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "input": "client", "tools": tools,
            "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let id = first["id"].as_str().unwrap().to_string();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap()
        .clone();
    // A second gateway on the same store (its memory holds nothing) continues it.
    let gw2 = InProcessGateway::start(&env, Some(&toml));
    let r = post(
        &gw2,
        KEY,
        &json!({"model": "anthropic/claude-sonnet-4-5", "previous_response_id": id, "tools": tools,
            "reasoning": {"effort": "high"},
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json()["id"].as_str().unwrap().to_string();
    let sent = up.last().json();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    assert_eq!(
        sent["messages"][1]["content"][0]["signature"], "sig_0",
        "{sent}"
    );
    // Only its key sees it.
    let r = get(
        &gw2,
        "sk-responses-b",
        &format!("/v1/responses/{id}"),
        "GET",
    )
    .await;
    assert_openai_error(&r, 404, "response_not_found", "response_id");
    // A gateway started afterwards (a restart) has both turns.
    let gw3 = InProcessGateway::start(&env, Some(&toml));
    for rid in [&id, &second] {
        let r = get(&gw3, KEY, &format!("/v1/responses/{rid}"), "GET").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.text().contains("gateway_state"), "{}", r.text());
    }
    // Deleted on one: gone on the one that wrote it (its memory still had it).
    let r = get(&gw3, KEY, &format!("/v1/responses/{id}"), "DELETE").await;
    assert_eq!(r.json()["deleted"], true, "{}", r.text());
    let r = get(&gw1, KEY, &format!("/v1/responses/{id}"), "GET").await;
    assert_openai_error(&r, 404, "response_not_found", "response_id");
}
