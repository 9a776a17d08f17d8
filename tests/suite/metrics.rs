//! Prometheus metrics and the access log, scraped after real traffic: exact counter values and
//! labels per scenario, the exposition validated by `promtool`, and the Grafana dashboard only
//! querying metrics that exist.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// `name{labels}` -> value, labels sorted, from the text exposition format.
fn parse(scrape: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let mut ls: Vec<&str> = l
                    .trim_end_matches('}')
                    .split("\",")
                    .map(|s| s.trim_end_matches('"'))
                    .collect();
                ls.sort();
                (n, ls.join(","))
            }
            None => (series, String::new()),
        };
        out.insert(format!("{name}{{{labels}}}"), value.parse().unwrap());
    }
    out
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut ls: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}")).collect();
    ls.sort();
    format!("{name}{{{}}}", ls.join(","))
}

fn get(m: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    *m.get(&key(name, labels)).unwrap_or_else(|| {
        let similar: Vec<&String> = m.keys().filter(|k| k.starts_with(name)).collect();
        panic!("no series {}; have {similar:#?}", key(name, labels))
    })
}

async fn scrape(port: u16) -> String {
    let r = raw_request(([127, 0, 0, 1], port).into(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain"));
    r.text()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_every_kind_of_request() {
    let up = MockUpstream::start(|req| {
        if req.method == "GET" {
            return json_response(200, r#"{"object":"list","data":[]}"#);
        }
        let body = req.json();
        match body["model"].as_str().unwrap() {
            "plain" => json_response(200, &chat_completion("plain", "hello")),
            "stream" => sse_steps(chat_stream("stream", &["a", "b", "c"], true).as_bytes(), &[60, 300], Duration::from_millis(5)),
            "limited" => vec![Step::Write(http_response(429, &[("content-type", "application/json")],
                br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#))],
            "tools" => json_response(200, &json!({"id":"t","object":"chat.completion","created":1,"model":"tools",
                "choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,
                "tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]}}],
                "usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}).to_string()),
            // Three 4-byte tokens, then silence: the client leaves before any usage arrives.
            "slow" => {
                let mut steps = vec![Step::Write(sse_head())];
                for _ in 0..3 {
                    steps.push(Step::Write(chunk(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcd\"}}]}\n\n")));
                }
                steps.push(Step::Sleep(Duration::from_secs(30)));
                steps
            }
            _ => json_response(500, "{}"),
        }
    })
    .await;
    let mport = free_port();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", mport.to_string()));
    env.push(("LOG_FORMAT", "json".into()));
    let gw = GatewayProcess::start(&env, None);
    let chat = |model: &str, stream: bool| {
        json!({"model": format!("openai/{model}"), "messages": [{"role":"user","content":"hi"}], "stream": stream}).to_string()
    };

    assert_eq!(
        post_chat(gw.addr(), chat("plain", false).as_bytes())
            .await
            .status,
        200
    );
    let r = post_chat(gw.addr(), chat("stream", true).as_bytes()).await;
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(
        post_chat(gw.addr(), chat("limited", false).as_bytes())
            .await
            .status,
        429
    );
    assert_eq!(
        post_chat(gw.addr(), chat("tools", false).as_bytes())
            .await
            .status,
        200
    );
    // Disconnect after the three tokens.
    let client = reqwest::Client::new();
    let mut resp = client
        .post(gw.url("/v1/chat/completions"))
        .body(chat("slow", true))
        .send()
        .await
        .unwrap();
    let mut got = String::new();
    while got.matches("abcd").count() < 3 {
        got.push_str(&String::from_utf8_lossy(
            &resp.chunk().await.unwrap().unwrap(),
        ));
    }
    drop(resp);
    drop(client);
    assert!(up.wait_all_closed(Duration::from_secs(3)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = scrape(mport).await;
    let m = parse(&text);
    let chat_labels = |status: &'static str| {
        [
            ("provider", "openai"),
            ("request_method", "POST"),
            ("request_path", "/v1/chat/completions"),
            ("status_code", status),
        ]
    };
    assert_eq!(get(&m, "llm_requests_total", &chat_labels("200")), 4.0);
    assert_eq!(get(&m, "llm_requests_total", &chat_labels("429")), 1.0);
    assert_eq!(get(&m, "llm_responses_total", &chat_labels("200")), 4.0);
    assert_eq!(
        get(&m, "llm_request_duration_count", &chat_labels("200")),
        4.0
    );
    for (model, p, c) in [
        ("plain", 9.0, 3.0),
        ("stream", 9.0, 3.0),
        ("tools", 20.0, 5.0),
    ] {
        let l = [("provider", "openai"), ("model", model)];
        assert_eq!(get(&m, "llm_usage_prompt_tokens_total", &l), p, "{model}");
        assert_eq!(
            get(&m, "llm_usage_completion_tokens_total", &l),
            c,
            "{model}"
        );
        assert_eq!(
            get(&m, "llm_usage_total_tokens_total", &l),
            p + c,
            "{model}"
        );
    }
    let slow = [
        ("provider", "openai"),
        ("model", "slow"),
        ("estimated", "true"),
    ];
    assert_eq!(
        get(&m, "llm_usage_completion_tokens_estimated_total", &slow),
        3.0
    );
    assert!(get(&m, "llm_usage_prompt_tokens_estimated_total", &slow) > 0.0);
    assert!(!m.contains_key(&key(
        "llm_usage_completion_tokens_total",
        &[("provider", "openai"), ("model", "slow")]
    )));
    assert_eq!(
        get(
            &m,
            "llm_tool_calls_total",
            &[
                ("provider", "openai"),
                ("model", "tools"),
                ("tool_type", "standard_tool_use"),
                ("tool_name", "get_weather")
            ]
        ),
        1.0
    );
    // A single backend is not retried by default: the 429 was the answer.
    assert_eq!(
        get(&m, "llm_upstream_attempts_total", &[("provider", "openai")]),
        5.0
    );
    assert!(!m
        .keys()
        .any(|k| k.starts_with("llm_upstream_retries_total")));
    assert_eq!(
        get(
            &m,
            "llm_upstream_failures_total",
            &[("provider", "openai"), ("reason", "status_429")]
        ),
        1.0
    );
    assert_eq!(
        get(&m, "llm_active_streams", &[("provider", "openai")]),
        0.0
    );
    assert_eq!(
        get(
            &m,
            "llm_time_to_first_token_seconds_count",
            &[("provider", "openai"), ("model", "stream")]
        ),
        1.0
    );
    assert!(
        get(
            &m,
            "llm_inter_token_latency_seconds_count",
            &[("provider", "openai"), ("model", "stream")]
        ) >= 1.0
    );
    assert_eq!(
        get(
            &m,
            "llm_gateway_overhead_seconds_count",
            &[("request_path", "/v1/chat/completions")]
        ),
        5.0
    );
    assert_eq!(
        get(
            &m,
            "llm_request_body_bytes_count",
            &[("request_path", "/v1/chat/completions")]
        ),
        5.0
    );
    // The seed's buckets, exactly.
    let les: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("llm_request_duration_bucket") && l.contains("status_code=\"429\"")
        })
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(
        les,
        [
            "1", "5", "10", "25", "50", "75", "100", "250", "500", "750", "1000", "2500", "5000",
            "7500", "10000", "+Inf"
        ]
    );

    // promtool accepts the exposition (format and lint).
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: `make test` installs it (Debian package prometheus)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the dashboard queries exists.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut queried = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("llm_"))
            {
                let family = word
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    families.contains(&family),
                    "dashboard queries {word}, which the gateway does not export"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10);

    // The access log: one JSON object per request, with the record's fields and no secrets.
    let log = gw.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "access" && v["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(lines.len(), 5, "{log}");
    let stream = lines
        .iter()
        .find(|l| l["model"] == "openai/stream")
        .unwrap();
    assert_eq!(
        (
            stream["prompt_tokens"].as_u64(),
            stream["completion_tokens"].as_u64()
        ),
        (Some(9), Some(3))
    );
    assert!(stream["ttft_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(stream["upstream_model"], "stream");
    assert_eq!(stream["provider"], "openai");
    let slow = lines.iter().find(|l| l["model"] == "openai/slow").unwrap();
    assert_eq!(slow["usage_estimated"], true);
    assert_eq!(slow["completion_tokens"], 3);
    assert_eq!(slow["client_disconnected"], true);
    let tools = lines.iter().find(|l| l["model"] == "openai/tools").unwrap();
    assert_eq!(tools["tool_calls"], json!(["get_weather"]));
    assert!(
        lines.iter().all(|l| l.get("request_body").is_none()),
        "production never logs bodies"
    );
    assert!(!log.contains("sk-openai-test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_off_by_default_and_development_logs_truncated_bodies() {
    let up = MockUpstream::start(|_| json_response(200, &chat_completion("m", "x"))).await;
    let mport = free_port();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("TELEMETRY_METRICS_PORT", mport.to_string()));
    env.push(("ENVIRONMENT", "development".into()));
    env.push(("LOG_FORMAT", "json".into()));
    let gw = GatewayProcess::start(&env, None);
    let long = "y".repeat(5000);
    let body = json!({"model":"openai/m","messages":[{"role":"user","content": long}]}).to_string();
    assert_eq!(post_chat(gw.addr(), body.as_bytes()).await.status, 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", mport)).is_err(),
        "no metrics listener unless enabled"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = gw.log_text();
    let access: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "access" && v["path"] == "/v1/chat/completions")
        .expect("access line");
    let sample = access["request_body"].as_str().unwrap();
    assert_eq!(sample.len(), 1024);
    assert!(body.starts_with(sample), "the first 1 KiB of the body");
}

#[test]
fn log_settings_are_validated() {
    for (k, v) in [
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("TELEMETRY_ENABLE", "perhaps"),
    ] {
        let out = Command::new(bin())
            .env_clear()
            .env(k, v)
            .arg("-t")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{k}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(k), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_cannot_grow_the_exposition() {
    let up = MockUpstream::start(|_| json_response(200, "{}")).await;
    let metrics_port = free_port();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", metrics_port.to_string()));
    let gw = GatewayProcess::start(&env, None);
    let before = scrape(metrics_port).await.len();
    // 1,000 distinct methods of 200 characters: API paths answer 405, /proxy passes them on.
    let addr = gw.addr();
    for batch in 0..20 {
        let tasks: Vec<_> = (batch * 50..(batch + 1) * 50)
            .map(|i| {
                tokio::spawn(async move {
                    let method = format!("M{i:0199}");
                    let path = if i % 2 == 0 {
                        "/v1/chat/completions"
                    } else {
                        "/proxy/openai/x"
                    };
                    (i, raw_request(addr, &method, path, &[], b"").await.status)
                })
            })
            .collect();
        for t in tasks {
            let (i, status) = t.await.unwrap();
            if i % 2 == 0 {
                assert_eq!(status, 405);
            } else {
                assert_eq!(status, 200);
            }
        }
    }
    let after = scrape(metrics_port).await;
    let m = parse(&after);
    // One `other` series per family, not a thousand: the exposition grows by a few KB (one
    // request_duration histogram and two counters per label set), not by megabytes.
    assert!(
        after.len() < before + 20_000,
        "{} -> {} bytes",
        before,
        after.len()
    );
    assert!(!after.contains("M0000"), "no made-up method is a label");
    assert_eq!(
        get(
            &m,
            "llm_requests_total",
            &[
                ("provider", "openai"),
                ("request_method", "other"),
                ("request_path", "/proxy/{provider}"),
                ("status_code", "200")
            ]
        ),
        500.0
    );
    assert_eq!(
        m["llm_requests_total{provider=,request_method=\"other,request_path=\"/v1/chat/completions,status_code=\"405}"],
        500.0
    );
}
