//! MCP tool-loop overhead: `cargo bench --bench mcp_loop`.
//!
//! The release gateway, a real rmcp MCP server (streamable HTTP), a real A2A agent (the tests'
//! agent on the official a2a-sdk, A2A 1.0) and the tests' scripted model (round 1 calls
//! `mcp_add` or the agent's `echo` skill, round 2 answers). For each request the gateway's access log gives
//! the total time, the time waiting for the model (`upstream_ms`) and for tools (`tool_ms`):
//! what is left is the gateway's own work, reported per loop round (p50 / p99 / mean), next to
//! the same figure for a plain request (`X-MCP-Bypass`) as the baseline.
//!
//! Settings: BENCH_REQUESTS (300 per scenario).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/mcp_support/mod.rs"]
mod mcp_support;
#[path = "../tests/mcp_support/model.rs"]
mod model;

use std::time::Duration;

use common::{post_chat, provider_env, raw_request, GatewayProcess, MockUpstream};
use serde_json::{json, Value};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn body(prompt: &str, stream: bool) -> Vec<u8> {
    json!({"model": "openai/gpt-4o", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
        .to_string()
        .into_bytes()
}

async fn run() {
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mcp = mcp_support::HttpMcpServer::start(0).await;
    let agent_port = common::free_port();
    let mut agent = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/a2a_agent.py"
        ))
        .args([&agent_port.to_string(), "Echo Agent", "1.0,0.3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 and the a2a-sdk (scripts/deps.sh test)");
    let upstream = MockUpstream::start(model::openai_model).await;
    let mut env = provider_env(&[("openai", upstream.url("/v1"))]);
    env.extend([
        ("MCP_ENABLE", "true".to_string()),
        ("MCP_EXPOSE", "true".to_string()),
        ("MCP_SERVERS", mcp.url.clone()),
        ("LOG_FORMAT", "json".to_string()),
        ("SERVER_THREADS", "1".to_string()),
        ("A2A_ENABLE", "true".to_string()),
        ("A2A_AGENTS", format!("http://127.0.0.1:{agent_port}")),
    ]);
    let gw = GatewayProcess::start(&env, None);
    for _ in 0..200 {
        let v = raw_request(gw.addr(), "GET", "/v1/mcp/tools", &[], b"")
            .await
            .json();
        let agents = raw_request(gw.addr(), "GET", "/v1/a2a/agents", &[], b"")
            .await
            .json();
        let agent_up = agents["data"][0]["healthy"] == true;
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) && agent_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Warm-up (connection pools, label sets, allocator).
    for _ in 0..20 {
        post_chat(gw.addr(), &body("add", false)).await;
    }
    // The mock streams in 41-byte TCP writes, so a streamed round costs ~25 relayed writes
    // either way: compare loop rounds with a plain stream of the same shape.
    for _ in 0..5 {
        post_chat(gw.addr(), &body("agent", false)).await;
    }
    let scenarios: [(&str, &str, bool, bool); 5] = [
        ("loop, non-stream (2 rounds)", "add", false, false),
        ("loop, A2A tool (2 rounds)", "agent", false, false),
        ("plain, non-stream (bypass)", "plain", false, true),
        ("loop, stream (2 rounds)", "add", true, false),
        ("plain, stream (bypass)", "plain", true, true),
    ];
    println!(
        "{:<32} {:>8} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "scenario (per round)",
        "requests",
        "p50 us",
        "p99 us",
        "mean us",
        "wall p50 ms",
        "tool p50 ms"
    );
    for (name, prompt, stream, bypass) in scenarios {
        let before = access_lines(&gw).len();
        let mut walls = Vec::with_capacity(n);
        for _ in 0..n {
            let started = std::time::Instant::now();
            let headers: &[(&str, &str)] = if bypass {
                &[("x-mcp-bypass", "1")]
            } else {
                &[]
            };
            let r = raw_request(
                gw.addr(),
                "POST",
                "/v1/chat/completions",
                headers,
                &body(prompt, stream),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            walls.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = access_lines(&gw);
        let mut per_round: Vec<f64> = lines[before..]
            .iter()
            .filter(|l| l["path"] == "/v1/chat/completions")
            .map(|l| {
                let total = l["duration_ms"].as_f64().unwrap();
                let upstream = l["upstream_ms"].as_f64().unwrap();
                let tool = l["tool_ms"].as_f64().unwrap_or(0.0);
                let rounds = l["mcp_rounds"].as_f64().unwrap_or(1.0);
                (total - upstream - tool) * 1000.0 / rounds
            })
            .collect();
        let mut tools: Vec<f64> = lines[before..]
            .iter()
            .filter(|l| l["path"] == "/v1/chat/completions")
            .map(|l| l["tool_ms"].as_f64().unwrap_or(0.0))
            .collect();
        tools.sort_by(f64::total_cmp);
        per_round.sort_by(f64::total_cmp);
        walls.sort_by(f64::total_cmp);
        let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        let mean = per_round.iter().sum::<f64>() / per_round.len() as f64;
        println!(
            "{:<32} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>12.2} {:>12.2}",
            name,
            per_round.len(),
            pct(&per_round, 0.5),
            pct(&per_round, 0.99),
            mean,
            pct(&walls, 0.5),
            pct(&tools, 0.5)
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
}

fn access_lines(gw: &GatewayProcess) -> Vec<Value> {
    gw.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "access")
        .collect()
}
