//! Native dialects end to end: the gateway translates OpenAI requests for mock upstreams that
//! speak Anthropic Messages, Gemini and Cohere v2 exactly, and translates their answers back.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/filters/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Splits a native stream into uneven TCP writes (7, 13, 29... bytes).
fn native_stream(body: Vec<u8>) -> Vec<Step> {
    let mut splits = vec![];
    let mut at = 0;
    let mut step = 7;
    while at + step < body.len() {
        at += step;
        splits.push(at);
        step = step * 2 % 61 + 3;
    }
    sse_steps(&body, &splits, Duration::from_millis(1))
}

fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn joined_content(evs: &[Value]) -> String {
    evs.iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_native() {
    let up = MockUpstream::start(|req| {
        let body = req.json();
        if body["model"] == "broken" {
            return vec![Step::Write(http_response(400, &[("content-type", "application/json")],
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#))];
        }
        if body["stream"] == true {
            native_stream(fixture("anthropic/tool_use.stream.sse"))
        } else {
            json_response(200, std::str::from_utf8(&fixture("anthropic/text.response.json")).unwrap())
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), None);

    let req = json!({"model": "anthropic/claude-sonnet-4-20250514", "logit_bias": {"1": 1},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer caller")],
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello! How can I help?"
    );
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2000);
    assert_eq!(r.headers["x-gateway-dropped-params"], "logit_bias");
    let got = up.last();
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("sk-anthropic-test"));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("authorization"), None);
    let sent = got.json();
    assert_eq!(sent["system"], "Be brief.");
    // No max_tokens from the client: the model's output limit (model table), not 4,096.
    assert_eq!(sent["max_tokens"], 64000);
    assert_eq!(sent["model"], "claude-sonnet-4-20250514");
    assert!(sent.get("logit_bias").is_none());

    // Streamed thinking + parallel tool calls with arguments split across deltas.
    let req = json!({"model": "anthropic/claude-sonnet-4-20250514", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Weather?"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let text = r.text();
    assert_eq!(
        text,
        String::from_utf8(fixture("anthropic/tool_use.stream.openai.sse"))
            .unwrap()
            .replace("requested-model", "claude-sonnet-4-20250514")
            .replace("1700000000", &events(&text)[0]["created"].to_string())
    );
    let evs = events(&text);
    let args: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}{\"tz\":\"Europe/Paris\"}");
    assert_eq!(evs.last().unwrap()["usage"]["completion_tokens"], 89);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gw.log_text()
            .contains("prompt_tokens=472 completion_tokens=89"),
        "{}",
        gw.log_text()
    );

    // Provider errors keep their status, in OpenAI's envelope.
    let req = json!({"model": "anthropic/broken", "messages": [{"role": "user", "content": "x"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["message"],
        "messages: roles must alternate"
    );
    assert_eq!(r.json()["error"]["code"], "invalid_request_error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_can_use_its_openai_compatible_endpoint() {
    let up = MockUpstream::start(|_| json_response(200, &chat_completion("claude", "hi"))).await;
    let mut env = provider_env(&[("anthropic", up.url("/v1"))]);
    env.push(("ANTHROPIC_DIALECT", "openai".into()));
    let gw = GatewayProcess::start(&env, None);
    let r = post_chat(
        gw.addr(),
        json!({"model":"anthropic/claude","messages":[{"role":"user","content":"x"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/v1/chat/completions");
    assert_eq!(up.last().header("x-api-key"), Some("sk-anthropic-test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_native() {
    let up = MockUpstream::start(|req| {
        if req.path.contains(":streamGenerateContent") {
            native_stream(fixture("google/text.stream.sse"))
        } else if req.path.contains("bad-model") {
            vec![Step::Write(http_response(404, &[("content-type", "application/json")],
                br#"{"error":{"code":404,"message":"models/bad-model is not found for API version v1beta","status":"NOT_FOUND"}}"#))]
        } else {
            json_response(200, std::str::from_utf8(&fixture("google/function_call.response.json")).unwrap())
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("google", up.url("/v1beta"))]), None);
    let req = json!({"model": "google/gemini-2.0-flash", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let got = up.last();
    assert_eq!(got.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(got.header("x-goog-api-key"), Some("sk-google-test"));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.json()["contents"][0]["parts"][0]["text"], "Weather?");

    let req = json!({"model": "google/gemini-2.0-flash", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(
        up.last().path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
    let text = r.text();
    let evs = events(&text);
    assert_eq!(joined_content(&evs), "Hello w\u{f6}rld \u{1f600}!");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(
        !text.contains("\"choices\":[]"),
        "no usage chunk unless asked"
    );
    assert_eq!(text.matches("[DONE]").count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(gw
        .log_text()
        .contains("prompt_tokens=8 completion_tokens=5"));

    let req = json!({"model": "google/bad-model", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn cohere_native() {
    let up = MockUpstream::start(|req| {
        if req.path == "/compatibility/v1/embeddings" {
            return json_response(200, r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1.0]}],"model":"embed"}"#);
        }
        if req.json()["stream"] == true {
            native_stream(fixture("cohere/tool_call.stream.sse"))
        } else {
            json_response(200, std::str::from_utf8(&fixture("cohere/text.response.json")).unwrap())
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("cohere", up.url(""))]), None);
    let r = post_chat(gw.addr(), json!({"model":"cohere/command-a-03-2025","messages":[{"role":"user","content":"What is an LLM?"}]}).to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "LLMs are neural networks trained on text."
    );
    // Usage (and so cost and limits) follows Cohere's bill; its token count is kept beside.
    assert_eq!(r.json()["usage"]["prompt_tokens"], 5);
    assert_eq!(r.json()["usage"]["tokens"]["input_tokens"], 71);
    assert_eq!(up.last().path, "/v2/chat");
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer sk-cohere-test")
    );

    let r = post_chat(gw.addr(), json!({"model":"cohere/command-a-03-2025","stream":true,"messages":[{"role":"user","content":"Weather?"}]}).to_string().as_bytes()).await;
    let evs = events(&r.text());
    let calls: Vec<&Value> = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert_eq!(
        evs.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Embeddings go to Cohere's OpenAI-compatible endpoint with the OpenAI body.
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/embeddings",
        &[],
        br#"{"model":"cohere/embed-v4.0","input":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/compatibility/v1/embeddings");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_stream_cut_mid_way_ends_with_error_and_done() {
    let full = fixture("anthropic/text.stream.sse");
    let cut = full.len() / 2;
    let up = MockUpstream::start(move |_| {
        vec![
            Step::Write(sse_head()),
            Step::Write(chunk(&full[..cut])),
            Step::Sleep(Duration::from_millis(20)),
            Step::Close,
        ]
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), None);
    let r = post_chat(
        gw.addr(),
        json!({"model":"anthropic/c","stream":true,"messages":[{"role":"user","content":"x"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    let text = r.text();
    assert!(text.contains("\"error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("[DONE]").count(), 1);
    // message_start's output_tokens (1) is a placeholder: a cut stream is estimated, not undercounted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gw.log_text().contains("usage_estimated=true"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untranslatable_request_is_a_clear_400() {
    let up = MockUpstream::start(|_| json_response(200, "{}")).await;
    let gw = GatewayProcess::start(&provider_env(&[("google", up.url("/v1beta"))]), None);
    let req = json!({"model": "google/gemini-2.0-flash", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");
    // The model is part of Gemini's URL path: nothing but a model name may go there.
    for model in [
        "gemini-2.0-flash:countTokens?x=",
        "models/gemini-2.0-flash",
        "../x",
        "a b",
    ] {
        let req = json!({"model": format!("google/{model}"), "messages": [{"role": "user", "content": "x"}]});
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (400, json!("invalid_model")),
            "{model}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn models_from_native_lists() {
    let anthropic = MockUpstream::start(|_| json_response(200, r#"{"data":[{"type":"model","id":"claude-sonnet-4-20250514","display_name":"Claude Sonnet 4","created_at":"2025-05-22T00:00:00Z"}],"has_more":false,"first_id":"claude-sonnet-4-20250514","last_id":"claude-sonnet-4-20250514"}"#)).await;
    let google = MockUpstream::start(|_| json_response(200, r#"{"models":[{"name":"models/gemini-2.0-flash","version":"2.0","displayName":"Gemini 2.0 Flash","supportedGenerationMethods":["generateContent"]}]}"#)).await;
    let cohere = MockUpstream::start(|_| json_response(200, r#"{"models":[{"name":"command-a-03-2025","endpoints":["chat"],"context_length":256000}]}"#)).await;
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("anthropic", anthropic.url("/v1")),
            ("google", google.url("/v1beta")),
            ("cohere", cohere.url("")),
        ]),
        None,
    );
    let r = raw_request(gw.addr(), "GET", "/v1/models", &[], b"").await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec![
            "anthropic/claude-sonnet-4-20250514",
            "cohere/command-a-03-2025",
            "google/gemini-2.0-flash"
        ]
    );
    assert_eq!(r.json()["data"][0]["created"], 1_747_872_000);
    assert_eq!(anthropic.last().path, "/v1/models");
    assert_eq!(
        anthropic.last().header("anthropic-version"),
        Some("2023-06-01")
    );
    assert_eq!(google.last().path, "/v1beta/models");
    assert_eq!(
        google.last().header("x-goog-api-key"),
        Some("sk-google-test")
    );
    assert_eq!(cohere.last().path, "/v1/models");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_request_that_is_not_a_chat_request_is_400() {
    let up = MockUpstream::start(|_| json_response(200, "{}")).await;
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), None);
    let r = post_chat(
        gw.addr(),
        br#"{"model":"anthropic/claude","messages":"hi"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_response_format_is_a_forced_tool_whose_input_is_the_answer() {
    // A Claude model without structured outputs: the gateway forces a `json_response` tool
    // and gives its input back as the content (never drops `response_format`).
    let up = MockUpstream::start(|req: &Recorded| {
        let body = req.json();
        if body["tool_choice"] != json!({"type": "tool", "name": "json_response"}) {
            return json_response(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"expected the forced tool"}}"#,
            );
        }
        if body["stream"] == true {
            native_stream(fixture("anthropic/json_tool.stream.sse"))
        } else {
            json_response(
                200,
                std::str::from_utf8(&fixture("anthropic/json_tool.response.json")).unwrap(),
            )
        }
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), None);
    let req = json!({"model": "anthropic/claude-3-7-sonnet-latest",
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        "messages": [{"role": "user", "content": "Capital of France?"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "Paris"}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    let mut stream = req.clone();
    stream["stream"] = json!(true);
    let r = post_chat(gw.addr(), stream.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r.text());
    let content: Value = serde_json::from_str(&joined_content(&evs)).unwrap();
    assert_eq!(content, json!({"city": "Paris"}));
    assert!(evs
        .iter()
        .all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()));
    assert!(evs
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "stop"));
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_max_tokens_default_comes_from_the_model_table() {
    let up = MockUpstream::start(|_| {
        json_response(
            200,
            std::str::from_utf8(&fixture("anthropic/text.response.json")).unwrap(),
        )
    })
    .await;
    let toml = "[models.\"anthropic/house-claude*\"]\nmax_output_tokens = 1234\n";
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), Some(toml));
    for (model, want) in [
        ("claude-sonnet-4-5-20250929", 64000),
        ("claude-3-5-haiku-20241022", 8192),
        ("house-claude-v2", 1234),
        ("unknown-model", 4096),
    ] {
        let req = json!({"model": format!("anthropic/{model}"), "messages": [{"role": "user", "content": "Hi"}]});
        let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(up.last().json()["max_tokens"], want, "{model}");
    }
    // The client's own limit always wins.
    let req = json!({"model": "anthropic/claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]});
    post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(up.last().json()["max_tokens"], 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_the_target_refuses_are_mapped_never_forwarded_into_a_400() {
    // Claude 4.1+ refuses temperature with top_p, and any temperature above 1; Cohere refuses
    // p outside 0.01-0.99 and penalties outside 0-1 (each as its API answers).
    let anthropic = MockUpstream::start(|req: &Recorded| {
        let b = req.json();
        if b.get("temperature").is_some() && b.get("top_p").is_some() {
            return json_response(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"`temperature` and `top_p` cannot both be specified for this model. Please use only one."}}"#);
        }
        if b["temperature"].as_f64().is_some_and(|t| t > 1.0) {
            return json_response(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"temperature: range: 0..1"}}"#);
        }
        json_response(
            200,
            std::str::from_utf8(&fixture("anthropic/text.response.json")).unwrap(),
        )
    })
    .await;
    let cohere = MockUpstream::start(|req: &Recorded| {
        let b = req.json();
        let p = b["p"].as_f64().unwrap_or(0.75);
        let pen = |k: &str| b[k].as_f64().unwrap_or(0.0);
        if !(0.01..=0.99).contains(&p)
            || !(0.0..=1.0).contains(&pen("frequency_penalty"))
            || !(0.0..=1.0).contains(&pen("presence_penalty"))
        {
            return json_response(
                400,
                r#"{"message":"invalid request: p must be between 0.01 and 0.99"}"#,
            );
        }
        json_response(
            200,
            std::str::from_utf8(&fixture("cohere/text.response.json")).unwrap(),
        )
    })
    .await;
    let gw = GatewayProcess::start(
        &provider_env(&[
            ("anthropic", anthropic.url("/v1")),
            ("cohere", cohere.url("")),
        ]),
        None,
    );
    let req = json!({"model": "anthropic/claude-opus-4-1-20250805", "temperature": 1.3, "top_p": 0.9,
        "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-gateway-dropped-params"], "temperature,top_p");
    assert_eq!(anthropic.last().json()["temperature"], 1.0);
    let req = json!({"model": "cohere/command-a-03-2025", "top_p": 1, "frequency_penalty": -0.5,
        "presence_penalty": 1.5, "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers["x-gateway-dropped-params"],
        "frequency_penalty,presence_penalty,top_p"
    );
    assert_eq!(cohere.last().json()["p"], 0.99);
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_effort_budgets_stay_within_the_models_limits() {
    let up = MockUpstream::start(|req: &Recorded| {
        let b = req.json();
        // Anthropic's rules: max_tokens within the model's limit, above the thinking budget.
        let (max, budget) = (b["max_tokens"].as_u64().unwrap(), b["thinking"]["budget_tokens"].as_u64().unwrap_or(0));
        if max > 64000 || (budget > 0 && budget >= max) {
            return json_response(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens"}}"#);
        }
        json_response(
            200,
            std::str::from_utf8(&fixture("anthropic/text.response.json")).unwrap(),
        )
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("anthropic", up.url("/v1"))]), None);
    let req = json!({"model": "anthropic/claude-sonnet-4-5", "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "Hi"}]});
    let r = post_chat(gw.addr(), req.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = up.last().json();
    assert_eq!(sent["max_tokens"], 64000);
    assert_eq!(sent["thinking"]["budget_tokens"], 24576);
    // With the client's own limit, the budget comes on top of it.
    let req = json!({"model": "anthropic/claude-sonnet-4-5", "reasoning_effort": "low", "max_tokens": 500,
        "messages": [{"role": "user", "content": "Hi"}]});
    assert_eq!(
        post_chat(gw.addr(), req.to_string().as_bytes())
            .await
            .status,
        200
    );
    assert_eq!(up.last().json()["max_tokens"], 2548);
}
