use super::*;

#[test]
fn wrong_shapes_are_errors_not_empty_answers() {
    let openai_body =
        br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[]}"#;
    for d in [Dialect::Anthropic, Dialect::Google, Dialect::Cohere] {
        assert!(translate_response(d, openai_body, "m", 1).is_err(), "{d:?}");
        assert!(translate_response(d, b"<html>", "m", 1).is_err(), "{d:?}");
    }
}

#[test]
fn errors_map_to_the_envelope() {
    let e: Value = serde_json::from_slice(&translate_error(
        Dialect::Anthropic,
        529,
        "anthropic",
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ))
    .unwrap();
    assert_eq!(e["error"]["message"], "Overloaded");
    assert_eq!(e["error"]["code"], "overloaded_error");
    assert_eq!(e["error"]["type"], "api_error");
    let e: Value = serde_json::from_slice(&translate_error(
        Dialect::Cohere,
        429,
        "cohere",
        br#"{"id":"x","message":"too many requests"}"#,
    ))
    .unwrap();
    assert_eq!(
        (e["error"]["message"].as_str(), e["error"]["type"].as_str()),
        (Some("too many requests"), Some("rate_limit_error"))
    );
    let e: Value = serde_json::from_slice(&translate_error(
        Dialect::Google,
        502,
        "google",
        b"<html>bad gateway</html>",
    ))
    .unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad gateway"));
}

#[test]
fn helpers() {
    assert_eq!(
        parse_data_url("data:image/png;base64,AAA"),
        Some(("image/png", "AAA"))
    );
    assert_eq!(parse_data_url("https://x/y.png"), None);
    assert_eq!(
        arguments_object(Some("{\"a\":1}")),
        serde_json::json!({"a": 1})
    );
    assert_eq!(
        arguments_object(Some("not json")),
        serde_json::json!({"_raw": "not json"})
    );
    assert_eq!(arguments_object(None), serde_json::json!({}));
    assert_eq!(Dialect::parse("Gemini"), Some(Dialect::Google));
}

#[test]
fn tool_call_ids_are_portable() {
    use super::portable_call_id;
    assert_eq!(portable_call_id(Some("toolu_01A"), "r", 0), "toolu_01A");
    // Too long or odd characters: a stable hash, valid everywhere.
    let long = "get_weather_5d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6:0";
    let a = portable_call_id(Some(long), "r", 0);
    assert_eq!(a, portable_call_id(Some(long), "other", 3));
    assert!(crate::reasoning::valid_id(&a), "{a}");
    // Missing: unique per response and position.
    assert_eq!(portable_call_id(None, "resp-1x", 2), "call_resp1x_2");
    assert_ne!(
        portable_call_id(None, "resp-1", 0),
        portable_call_id(None, "resp-2", 0)
    );
}
