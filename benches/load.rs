//! End-to-end load bench: `cargo bench --bench load`.
//!
//! Self-contained. The bench binary runs itself three times in different roles:
//! - `mock`: a fast OpenAI-compatible upstream (benches/support/mock.rs);
//! - `bare`: a bare Pingora pass-through proxy (a `ProxyHttp` that only picks the peer: the
//!   physical limit of our architecture);
//! - the driver (default): starts the mock, the bare proxy and the gateway (the release binary
//!   Cargo built for this bench), then drives each with the same keep-alive HTTP/1.1 load
//!   generator at a fixed concurrency for a fixed time, and prints RPS, p50, p99 and each
//!   process's peak RSS. Ratios against the bare proxy and the mock are printed, and the results
//!   are written as JSON to `target/bench/` for comparison across commits.
//!
//! Settings: BENCH_CONCURRENCY (32), BENCH_SECONDS (5), BENCH_GATEWAY_THREADS (1),
//! BENCH_SCENARIOS (comma-separated parts of scenario names, e.g. `responses`; default all).
//!
//! Other modes (`BENCH_MODE`):
//! - `auth`: the cost of keys and limits (open, key, key + limits in memory, in Redis; with a
//!   store: a file key against the same key from the admin API, and the request log), each
//!   cell BENCH_REPEATS (3) times round robin, medians;
//! - `features`: the response cache (every request a hit), guardrails (input patterns, PII
//!   redaction, output patterns) and tracing (every request, and 1%, exported to a sink)
//!   against the plain gateway, non-stream 1 KB and 200-chunk
//!   streams, BENCH_REPEATS (3) rounds, medians;
//! - `soak`: non-stream 1 KB load on the gateway for BENCH_SOAK_SECONDS (60) or until
//!   BENCH_SOAK_REQUESTS (1,000,000), RSS sampled every second: start, peak, end (memory must
//!   plateau);
//! - `targets`: issue 22's targets with PASS/FAIL on medians of BENCH_REPEATS (3) rounds: the
//!   plain gateway against bare Pingora (throughput, TTFT p99 added, latency added at
//!   concurrency 1, BENCH_IDLE_STREAMS (1,000) idle streams' memory) and the "features on"
//!   gateways (keys + memory limits, keys + Redis limits, all on) against the plain one;
//! - `peers`: the gateway beside LiteLLM and Portkey on the same mock (`make bench-peers`
//!   installs them and sets PEERS_DIR);
//! - `scale`: BENCH_STREAMS (5,000) concurrent streams held open, each trickling one chunk per
//!   second for BENCH_STREAM_SECONDS (10); reports the gateway's peak RSS and CPU time.

#[path = "support/mock.rs"]
mod mock;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("mock") => run_mock(),
        Ok("bare") => run_bare(),
        _ => match std::env::var("BENCH_MODE").as_deref() {
            Ok("soak") => soak(),
            Ok("auth") => auth(),
            Ok("features") => features(),
            Ok("scale") => scale(),
            Ok("targets") => targets(),
            Ok("peers") => peers(),
            _ => drive(),
        },
    }
}

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------- roles

fn run_mock() {
    let port: u16 = env_num("BENCH_PORT", 0) as u16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        mock::run(l).await;
    });
}

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn run_bare() {
    let port = env_num("BENCH_PORT", 0);
    let upstream: SocketAddr = std::env::var("BENCH_UPSTREAM").unwrap().parse().unwrap();
    let conf = pingora::server::configuration::ServerConf {
        threads: env_num("BENCH_GATEWAY_THREADS", 1) as usize,
        pid_file: format!("/tmp/igw-bench-bare-{port}.pid"),
        upgrade_sock: format!("/tmp/igw-bench-bare-{port}.sock"),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    svc.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(svc);
    server.run_forever();
}

// ---------------------------------------------------------------------------------- driver

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Proc {
    fn peak_rss_kb(&self) -> u64 {
        self.status_kb("VmHWM:")
    }

    fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    fn status_kb(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(str::to_string))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }

    /// User + system CPU time so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime (fields 14 and 15 of /proc/pid/stat), counted after the comm field.
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_role(name: &'static str, role: &str, env: &[(&str, String)]) -> Proc {
    let port = free_port();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("BENCH_ROLE", role)
        .env("BENCH_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_listening(port);
    Proc { name, child, port }
}

fn spawn_gateway(upstream: u16, threads: u64, telemetry: bool) -> Proc {
    spawn_gateway_with(upstream, threads, telemetry, &[], None)
}

fn spawn_gateway_with(
    upstream: u16,
    threads: u64,
    telemetry: bool,
    env: &[(&str, String)],
    toml: Option<&str>,
) -> Proc {
    let port = free_port();
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inference-gateway"));
    cmd.env_clear()
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", port.to_string())
        .env("SERVER_THREADS", threads.to_string())
        .env("SERVER_PID_FILE", dir.join(format!("igw-bench-{port}.pid")))
        .env(
            "SERVER_UPGRADE_SOCK",
            dir.join(format!("igw-bench-{port}.sock")),
        )
        .env("LOG_LEVEL", "warn")
        .env("TELEMETRY_ENABLE", telemetry.to_string())
        .env("TELEMETRY_METRICS_PORT", free_port().to_string())
        .env("OPENAI_API_URL", format!("http://127.0.0.1:{upstream}/v1"))
        .env("OPENAI_API_KEY", "sk-bench")
        // The Responses rows measure the translating door (the mock speaks chat completions).
        .env("OPENAI_RESPONSES_API", "chat")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(t) = toml {
        let p = dir.join(format!("igw-bench-{port}.toml"));
        std::fs::write(&p, t).unwrap();
        cmd.arg("-c").arg(p);
    }
    let child = cmd.spawn().unwrap();
    wait_listening(port);
    Proc {
        name: if telemetry {
            "gateway+metrics"
        } else {
            "gateway"
        },
        child,
        port,
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    body_bytes: usize,
    stream: bool,
    /// The door: `/v1/chat/completions`, or `/v1/messages` / `/v1/responses` (translated to
    /// the OpenAI mock's chat completions). The mock and bare Pingora answer them as chat.
    door: Door,
}

#[derive(Clone, Copy, PartialEq)]
enum Door {
    Chat,
    Messages,
    Responses,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "non-stream 1 KB",
        body_bytes: 1024,
        stream: false,
        door: Door::Chat,
    },
    Scenario {
        name: "non-stream 100 KB",
        body_bytes: 100 * 1024,
        stream: false,
        door: Door::Chat,
    },
    Scenario {
        name: "stream 200 chunks",
        body_bytes: 1024,
        stream: true,
        door: Door::Chat,
    },
    Scenario {
        name: "messages 1 KB",
        body_bytes: 1024,
        stream: false,
        door: Door::Messages,
    },
    Scenario {
        name: "messages stream 200",
        body_bytes: 1024,
        stream: true,
        door: Door::Messages,
    },
    Scenario {
        name: "responses 1 KB",
        body_bytes: 1024,
        stream: false,
        door: Door::Responses,
    },
    Scenario {
        name: "responses stream 200",
        body_bytes: 1024,
        stream: true,
        door: Door::Responses,
    },
];

fn request_bytes(s: Scenario) -> Vec<u8> {
    let overhead = 90;
    let filler = "w".repeat(s.body_bytes.saturating_sub(overhead));
    let (path, body) = match s.door {
        Door::Chat => (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"openai/gpt-4o","messages":[{{"role":"user","content":"{filler}"}}],"stream":{}}}"#,
                s.stream
            ),
        ),
        Door::Messages => (
            "/v1/messages",
            format!(
                r#"{{"model":"openai/gpt-4o","max_tokens":256,"messages":[{{"role":"user","content":"{filler}"}}],"stream":{}}}"#,
                s.stream
            ),
        ),
        // `store` left at its default (true): every answer is kept, as for a real client.
        Door::Responses => (
            "/v1/responses",
            format!(
                r#"{{"model":"openai/gpt-4o","input":"{filler}","stream":{}}}"#,
                s.stream
            ),
        ),
    };
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    ttft_us: Vec<u64>,
    errors: u64,
}

/// Reads one HTTP/1.1 response (Content-Length or chunked). Returns the time the first body
/// byte arrived.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Instant> {
    buf.clear();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    let mut first_body = (buf.len() > head_end).then(Instant::now);
    if let Some(cl) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let total = head_end + cl.trim().parse::<usize>().unwrap();
        while buf.len() < total {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            first_body.get_or_insert_with(Instant::now);
            buf.extend_from_slice(&tmp[..n]);
        }
    } else {
        // Chunked: done at the terminating zero-size chunk.
        while !buf.ends_with(b"\r\n0\r\n\r\n") && !buf[head_end..].starts_with(b"0\r\n\r\n") {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            first_body.get_or_insert_with(Instant::now);
            buf.extend_from_slice(&tmp[..n]);
        }
    }
    Ok(first_body.unwrap_or_else(Instant::now))
}

async fn load(port: u16, scenario: Scenario, concurrency: u64, seconds: u64) -> (Stats, f64) {
    load_with(port, scenario, concurrency, seconds, "").await
}

/// As [`load`], with extra request header lines (`name: value\r\n`).
async fn load_with(
    port: u16,
    scenario: Scenario,
    concurrency: u64,
    seconds: u64,
    headers: &str,
) -> (Stats, f64) {
    let mut bytes = request_bytes(scenario);
    if !headers.is_empty() {
        let at = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("request line")
            + 2;
        bytes.splice(at..at, headers.bytes());
    }
    let req: Arc<Vec<u8>> = Arc::new(bytes);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (req, stop) = (req.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(c) => {
                            c.set_nodelay(true).unwrap();
                            conn = Some(c);
                        }
                        Err(_) => {
                            st.errors += 1;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let t = Instant::now();
                let ok = match c.write_all(&req).await {
                    Ok(()) => read_response(c, &mut buf).await,
                    Err(e) => Err(e),
                };
                match ok {
                    Ok(first) => {
                        st.latencies_us.push(t.elapsed().as_micros() as u64);
                        st.ttft_us.push((first - t).as_micros() as u64);
                    }
                    Err(_) => {
                        st.errors += 1;
                        conn = None;
                    }
                }
            }
            st
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Stats::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.latencies_us.extend(s.latencies_us);
        all.ttft_us.extend(s.ttft_us);
        all.errors += s.errors;
    }
    (all, start.elapsed().as_secs_f64())
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn drive() {
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let seconds = env_num("BENCH_SECONDS", 5);
    let threads = env_num("BENCH_GATEWAY_THREADS", 1);
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let upstream = format!("127.0.0.1:{}", mock.port);
    let bare = spawn_role(
        "bare pingora",
        "bare",
        &[
            ("BENCH_UPSTREAM", upstream),
            ("BENCH_GATEWAY_THREADS", threads.to_string()),
        ],
    );
    let gateway = spawn_gateway(mock.port, threads, false);
    let gateway_metrics = spawn_gateway(mock.port, threads, true);
    let targets = [&mock, &bare, &gateway, &gateway_metrics];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("concurrency {concurrency}, {seconds} s per cell, proxies with {threads} worker thread(s), one load-generator thread\n");
    println!(
        "{:<20} {:<18} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9}",
        "scenario", "target", "RPS", "p50 us", "p99 us", "TTFT p50", "TTFT p99", "errors", "RSS MB"
    );
    let mut results = Vec::new();
    // BENCH_SCENARIOS: comma-separated parts of scenario names to run (default: all).
    let only = std::env::var("BENCH_SCENARIOS").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|p| name.contains(p.trim()));
    for scenario in SCENARIOS.into_iter().filter(|s| wanted(s.name)) {
        let mut rps_of = std::collections::HashMap::new();
        for t in targets {
            let (mut st, secs) = rt.block_on(load(t.port, scenario, concurrency, seconds));
            let rps = st.latencies_us.len() as f64 / secs;
            let (p50, p99) = (
                pct(&mut st.latencies_us, 0.5),
                pct(&mut st.latencies_us, 0.99),
            );
            let (t50, t99) = (pct(&mut st.ttft_us, 0.5), pct(&mut st.ttft_us, 0.99));
            let rss = t.peak_rss_kb() as f64 / 1024.0;
            println!(
                "{:<20} {:<18} {:>10.0} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9.1}",
                scenario.name, t.name, rps, p50, p99, t50, t99, st.errors, rss
            );
            rps_of.insert(t.name, rps);
            results.push(serde_json::json!({"scenario": scenario.name, "target": t.name, "rps": rps, "p50_us": p50, "p99_us": p99,
                "ttft_p50_us": t50, "ttft_p99_us": t99, "errors": st.errors, "peak_rss_mb": rss}));
        }
        let g = rps_of["gateway"];
        println!(
            "{:<20} gateway/bare = {:.2}, gateway/mock = {:.2}, gateway+metrics/gateway = {:.2}\n",
            "",
            g / rps_of["bare pingora"],
            g / rps_of["mock (direct)"],
            rps_of["gateway+metrics"] / g
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = dir.join(format!("load-{stamp}.json"));
    let doc = serde_json::json!({"concurrency": concurrency, "seconds": seconds, "threads": threads, "results": results});
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("results written to {}", path.display());
}

// ------------------------------------------------------------------------------ features

/// The cost of the response cache and of guardrails: the same loads on a plain gateway, one
/// with the cache on (every request after the first is a hit: the bench sends one request
/// body) and one with guardrails (input deny patterns, PII redaction, output patterns with the
/// stream window), each cell `BENCH_REPEATS` (3) times round robin, medians, ratios to plain.
/// One round of a cell: RPS, p50, p99, TTFT p50 (µs), errors.
type Round = (f64, u64, u64, u64, u64);

fn features() {
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let seconds = env_num("BENCH_SECONDS", 5);
    let threads = env_num("BENCH_GATEWAY_THREADS", 1);
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let guard_env = [
        (
            "GUARDRAILS_DENY_PATTERNS",
            r#"["(?i)forbidden topic","(?i)rm -rf /"]"#.to_string(),
        ),
        ("GUARDRAILS_REDACT_PII", "true".to_string()),
        (
            "GUARDRAILS_OUTPUT_DENY_PATTERNS",
            "(?i)secret plan".to_string(),
        ),
    ];
    // Where traced gateways export (another mock: it answers any POST with 200).
    let sink = spawn_role("OTLP sink", "mock", &[]);
    let otlp = |sampler: &[(&'static str, &str)]| {
        let mut env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", sink.port),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "1000".to_string()),
        ];
        env.extend(sampler.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let cells: Vec<(&str, Proc)> = vec![
        ("plain", spawn_gateway(mock.port, threads, false)),
        (
            "tracing 100%",
            spawn_gateway_with(mock.port, threads, false, &otlp(&[]), None),
        ),
        (
            "tracing 1%",
            spawn_gateway_with(
                mock.port,
                threads,
                false,
                &otlp(&[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ]),
                None,
            ),
        ),
        (
            "cache (hits)",
            spawn_gateway_with(
                mock.port,
                threads,
                false,
                &[("CACHE_ENABLE", "true".to_string())],
                None,
            ),
        ),
        (
            "guardrails",
            spawn_gateway_with(mock.port, threads, false, &guard_env, None),
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let repeats = env_num("BENCH_REPEATS", 3).max(1) as usize;
    println!("features: concurrency {concurrency}, {seconds} s per cell, median of {repeats} rounds, {threads} gateway thread(s)\n");
    println!(
        "{:<20} {:<14} {:>10} {:>9} {:>9} {:>10} {:>7} {:>9}",
        "scenario", "gateway", "RPS", "p50 us", "p99 us", "TTFT p50", "errors", "vs plain"
    );
    for scenario in [SCENARIOS[0], SCENARIOS[2]] {
        let mut runs: Vec<Vec<Round>> = vec![Vec::new(); cells.len()];
        for _ in 0..repeats {
            for (i, (_, p)) in cells.iter().enumerate() {
                let (mut st, secs) = rt.block_on(load(p.port, scenario, concurrency, seconds));
                let rps = st.latencies_us.len() as f64 / secs;
                let (p50, p99) = (
                    pct(&mut st.latencies_us, 0.5),
                    pct(&mut st.latencies_us, 0.99),
                );
                let t50 = pct(&mut st.ttft_us, 0.5);
                runs[i].push((rps, p50, p99, t50, st.errors));
            }
        }
        let median = |v: &[Round]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v[v.len() / 2]
        };
        let plain = median(&runs[0]).0;
        for ((name, _), r) in cells.iter().zip(&runs) {
            let (rps, p50, p99, t50, errors) = median(r);
            println!(
                "{:<20} {name:<14} {rps:>10.0} {p50:>9} {p99:>9} {t50:>10} {errors:>7} {:>9.2}",
                scenario.name,
                rps / plain
            );
        }
        println!();
    }
}

/// The SHA-256 hash `inference-gateway hash-key` prints for `key` (given on standard input,
/// never on a command line).
fn key_hash(key: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(["hash-key", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("hash: "))
        .unwrap()
        .to_string()
}

/// A throwaway `redis-server` on a free port (no persistence), when one is installed.
fn spawn_redis() -> (Option<Child>, u16) {
    let port = free_port();
    let redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    if redis.is_some() {
        wait_listening(port);
    }
    (redis, port)
}

// ---------------------------------------------------------------------------------- auth

/// Cost of authentication and limits: the same non-stream 1 KB load on an open gateway, with
/// a key and no limits, with a key with RPM/TPM/concurrency/budget in memory, and the same in
/// Redis (when `redis-server` is installed; started on a free port).
fn auth() {
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let seconds = env_num("BENCH_SECONDS", 5);
    let threads = env_num("BENCH_GATEWAY_THREADS", 1);
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let plain_key = format!(
        "[[keys]]\nname = \"k\"\nhash = \"{}\"\n",
        key_hash("igw-bench")
    );
    // Limits far above what the bench reaches, so every request passes every check.
    let limited_key = format!(
        "{plain_key}rpm = 100000000\ntpm = 100000000000\nmax_concurrent = 100000\nbudget_usd = 1000000000.0\n"
    );
    let (redis, redis_port) = spawn_redis();
    let bearer = "authorization: Bearer igw-bench\r\n".to_string();
    let mut cells: Vec<(&str, Proc, String)> = vec![
        (
            "open",
            spawn_gateway(mock.port, threads, false),
            String::new(),
        ),
        (
            "key, no limits",
            spawn_gateway_with(mock.port, threads, false, &[], Some(&plain_key)),
            bearer.clone(),
        ),
        (
            "key + limits (memory)",
            spawn_gateway_with(mock.port, threads, false, &[], Some(&limited_key)),
            bearer.clone(),
        ),
    ];
    // With a store (SQLite) and the admin API: the same limited key from the file and issued
    // through the admin API, on gateways that are otherwise the same (both book spend in the
    // ledger and keep admin stats), so their ratio is the cost of where the key comes from.
    let store_dir = std::env::temp_dir().join(format!("igw-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir).unwrap();
    let admin_key = "bench-admin-key-0123456789";
    let store_env = |db: &str, request_log: bool| {
        vec![
            (
                "DATABASE_URL",
                format!("sqlite://{}", store_dir.join(db).display()),
            ),
            ("ADMIN_API_KEY", admin_key.to_string()),
            (
                "STORE_REQUEST_LOG_RETENTION",
                if request_log { "7d" } else { "0s" }.to_string(),
            ),
        ]
    };
    cells.push((
        "store: file key + limits",
        spawn_gateway_with(
            mock.port,
            threads,
            false,
            &store_env("a.db", false),
            Some(&limited_key),
        ),
        bearer.clone(),
    ));
    let limited_body = r#"{"name":"k2","rpm":100000000,"tpm":100000000000,"max_concurrent":100000,"budget_usd":1000000000.0}"#;
    for (name, db, request_log) in [
        ("store: store key + limits", "b.db", false),
        ("  + request log", "c.db", true),
    ] {
        let p = spawn_gateway_with(mock.port, threads, false, &store_env(db, request_log), None);
        let key = create_key(p.port, admin_key, limited_body);
        cells.push((name, p, format!("authorization: Bearer {key}\r\n")));
    }
    if redis.is_some() {
        cells.push((
            "key + limits (Redis)",
            spawn_gateway_with(
                mock.port,
                threads,
                false,
                &[("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/"))],
                Some(&limited_key),
            ),
            bearer.clone(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Every cell is run `repeats` times, round robin (the box's drift hits every cell alike);
    // the median is reported.
    let repeats = env_num("BENCH_REPEATS", 3).max(1) as usize;
    println!("auth cost: non-stream 1 KB, concurrency {concurrency}, {seconds} s per cell, median of {repeats} rounds, {threads} gateway thread(s)\n");
    println!(
        "{:<26} {:>10} {:>9} {:>9} {:>7} {:>8}",
        "gateway", "RPS", "p50 us", "p99 us", "errors", "vs open"
    );
    // Per cell, per round: (RPS, p50, p99, errors).
    let mut runs: Vec<Vec<(f64, u64, u64, u64)>> = vec![Vec::new(); cells.len()];
    for _ in 0..repeats {
        for (i, (_, p, headers)) in cells.iter().enumerate() {
            let (mut st, secs) = rt.block_on(load_with(
                p.port,
                SCENARIOS[0],
                concurrency,
                seconds,
                headers,
            ));
            let rps = st.latencies_us.len() as f64 / secs;
            let (p50, p99) = (
                pct(&mut st.latencies_us, 0.5),
                pct(&mut st.latencies_us, 0.99),
            );
            runs[i].push((rps, p50, p99, st.errors));
        }
    }
    let median = |v: &[(f64, u64, u64, u64)]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let open_rps = median(&runs[0]).0;
    let mut rows = Vec::new();
    for ((name, _, _), r) in cells.iter().zip(&runs) {
        let (rps, p50, p99, errors) = median(r);
        let spread = r.iter().map(|x| x.0).fold(f64::MAX, f64::min)
            ..=r.iter().map(|x| x.0).fold(0.0, f64::max);
        println!(
            "{name:<26} {rps:>10.0} {p50:>9} {p99:>9} {errors:>7} {:>8.2}   (RPS {:.0}-{:.0})",
            rps / open_rps,
            spread.start(),
            spread.end()
        );
        rows.push((*name, rps));
    }
    let rps_of = |n: &str| rows.iter().find(|r| r.0 == n).map_or(0.0, |r| r.1);
    println!(
        "\nkeys from the store vs keys from the file (same gateway otherwise): {:.2}\nthe store's own cost (ledger, stats) on a file key: {:.2}",
        rps_of("store: store key + limits") / rps_of("store: file key + limits"),
        rps_of("store: file key + limits") / rps_of("key + limits (memory)")
    );
    drop(cells);
    let _ = std::fs::remove_dir_all(&store_dir);
    if let Some(mut r) = redis {
        let _ = r.kill();
        let _ = r.wait();
    }
}

/// Issues a key through the admin API; the plaintext key.
fn create_key(port: u16, admin: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /admin/v1/keys HTTP/1.1\r\nhost: bench\r\nx-admin-key: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let json = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("admin API answered {out:?}: {e}"));
    v["key"].as_str().expect("a key").to_string()
}

// ---------------------------------------------------------------------------------- soak

fn soak() {
    let seconds = env_num("BENCH_SOAK_SECONDS", 60);
    let max_requests = env_num("BENCH_SOAK_REQUESTS", 1_000_000);
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let gateway = spawn_gateway(mock.port, env_num("BENCH_GATEWAY_THREADS", 1), true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start_rss = gateway.rss_kb();
    let started = Instant::now();
    let mut samples = vec![start_rss];
    let mut total = 0u64;
    let mut errors = 0u64;
    println!("soak: gateway (metrics on), non-stream 1 KB, concurrency {concurrency}, up to {seconds} s or {max_requests} requests");
    while started.elapsed() < Duration::from_secs(seconds) && total < max_requests {
        let (st, _) = rt.block_on(load(gateway.port, SCENARIOS[0], concurrency, 1));
        total += st.latencies_us.len() as u64;
        errors += st.errors;
        samples.push(gateway.rss_kb());
    }
    let peak = samples.iter().max().copied().unwrap_or(0);
    let end = *samples.last().unwrap();
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "requests {total}, errors {errors}, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "RSS start {:.1} MB, peak {:.1} MB, end {:.1} MB",
        mb(start_rss),
        mb(peak),
        mb(end)
    );
    let curve: Vec<String> = samples
        .iter()
        .step_by(10)
        .map(|kb| format!("{:.1}", mb(*kb)))
        .collect();
    println!("RSS every 10 s (MB): {}", curve.join(" "));
    // Plateau: compare the last third of the run with its own start.
    let third = &samples[samples.len() * 2 / 3..];
    let growth = (*third.last().unwrap() as f64 / third[0].max(1) as f64 - 1.0) * 100.0;
    println!("RSS change over the last third of the run: {growth:+.1}%");
}

// ---------------------------------------------------------------------------------- scale

fn scale() {
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let threads = env_num("BENCH_GATEWAY_THREADS", 1);
    // The bare proxy first: what Pingora itself costs per stream.
    let bare = spawn_role(
        "bare pingora",
        "bare",
        &[
            ("BENCH_UPSTREAM", format!("127.0.0.1:{}", mock.port)),
            ("BENCH_GATEWAY_THREADS", threads.to_string()),
        ],
    );
    scale_one(&bare);
    drop(bare);
    let gateway = spawn_gateway(mock.port, threads, false);
    scale_one(&gateway);
}

fn scale_one(gateway: &Proc) {
    let streams = env_num("BENCH_STREAMS", 5000);
    let chunks = env_num("BENCH_STREAM_SECONDS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let idle_rss = gateway.rss_kb();
    let cpu_before = gateway.cpu_seconds();
    println!(
        "scale: {streams} concurrent streams through {}, one chunk per second for {chunks} s",
        gateway.name
    );
    let body = format!(
        r#"{{"model":"openai/gpt-4o","messages":[{{"role":"user","content":"hi"}}],"stream":true,"trickle":{chunks}}}"#
    );
    let req = Arc::new(
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
            .into_bytes(),
    );
    let port = gateway.port;
    let started = Instant::now();
    let (ok, failed, peak) = rt.block_on(async {
        let mut tasks = Vec::with_capacity(streams as usize);
        for _ in 0..streams {
            let req = req.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                s.write_all(&req).await.ok()?;
                let mut buf = Vec::with_capacity(4096);
                let mut tmp = [0u8; 4096];
                // Read until the chunked body's terminator.
                loop {
                    let n = s.read(&mut tmp).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if buf.ends_with(b"0\r\n\r\n") {
                        return Some(String::from_utf8_lossy(&buf).contains("[DONE]"));
                    }
                }
            }));
        }
        let mut peak = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            peak = peak.max(gateway.rss_kb());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Some(true) => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed, peak)
    });
    let cpu = gateway.cpu_seconds() - cpu_before;
    let secs = started.elapsed().as_secs_f64();
    println!("streams completed {ok}, failed {failed}, in {secs:.1} s");
    println!(
        "{} RSS idle {:.1} MB, peak {:.1} MB; CPU {cpu:.2} s ({:.1}% of one core)",
        gateway.name,
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        cpu / secs * 100.0
    );
}

// ------------------------------------------------------------------------------- targets

/// One round of a cell: RPS, p50, p99, TTFT p99 (µs).
type Cell = (f64, u64, u64, u64);

fn median_of(v: &[Cell]) -> Cell {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v[v.len() / 2]
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The RPS spread of a cell's rounds, for the printout.
fn spread(v: &[Cell]) -> String {
    let lo = v.iter().map(|c| c.0).fold(f64::MAX, f64::min);
    let hi = v.iter().map(|c| c.0).fold(0.0, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

/// Kilobytes of RSS each of `n` concurrent idle streams costs a proxy (streams trickling one
/// chunk a second for `seconds`; RSS sampled at the peak, against before).
fn idle_stream_kb(p: &Proc, n: u64, seconds: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let before = p.rss_kb();
    let body = format!(
        r#"{{"model":"openai/gpt-4o","messages":[{{"role":"user","content":"hi"}}],"stream":true,"trickle":{seconds}}}"#
    );
    let req = Arc::new(
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
            .into_bytes(),
    );
    let port = p.port;
    let peak = rt.block_on(async {
        let mut tasks = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let req = req.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                s.write_all(&req).await.ok()?;
                // Until the chunked body's terminator (the connection stays open).
                let mut tail = Vec::with_capacity(8);
                let mut tmp = [0u8; 4096];
                loop {
                    let n = s.read(&mut tmp).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    tail.extend_from_slice(&tmp[..n]);
                    if tail.ends_with(b"0\r\n\r\n") {
                        return Some(());
                    }
                    let keep = tail.len().saturating_sub(5);
                    tail.drain(..keep);
                }
            }));
        }
        let mut peak = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            peak = peak.max(p.rss_kb());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    });
    peak.saturating_sub(before) as f64 / n as f64
}

/// Issue 22's targets: the plain gateway against bare Pingora (1 KB and 100 KB non-stream,
/// 200-chunk streams at concurrency 32, TTFT p99 added, latency added at concurrency 1, memory
/// per idle stream) and the "features on" gateways against the plain one (keys + memory
/// limits, keys + Redis limits, all on); every cell `BENCH_REPEATS` (3) rounds round robin,
/// medians, each target printed with PASS or FAIL on the median.
fn targets() {
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let seconds = env_num("BENCH_SECONDS", 5);
    let threads = env_num("BENCH_GATEWAY_THREADS", 1);
    let repeats = env_num("BENCH_REPEATS", 3).max(1) as usize;
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let bare = spawn_role(
        "bare pingora",
        "bare",
        &[
            ("BENCH_UPSTREAM", format!("127.0.0.1:{}", mock.port)),
            ("BENCH_GATEWAY_THREADS", threads.to_string()),
        ],
    );
    let gateway = spawn_gateway(mock.port, threads, false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let round = |p: &Proc, scenario: Scenario, c: u64, headers: &str| -> Cell {
        let (mut st, secs) = rt.block_on(load_with(p.port, scenario, c, seconds, headers));
        let rps = st.latencies_us.len() as f64 / secs;
        (
            rps,
            pct(&mut st.latencies_us, 0.5),
            pct(&mut st.latencies_us, 0.99),
            pct(&mut st.ttft_us, 0.99),
        )
    };
    println!("targets: concurrency {concurrency}, {seconds} s per cell, median of {repeats} rounds, {threads} gateway thread(s)\n");
    let mut verdicts: Vec<(String, String, String, bool)> = Vec::new();
    let mut verdict = |name: String, value: String, target: String, pass: bool| {
        println!(
            "  -> {name}: {value} (target {target}) {}",
            if pass { "PASS" } else { "FAIL" }
        );
        verdicts.push((name, value, target, pass));
    };

    // Throughput and TTFT against bare Pingora.
    for (scenario, target) in [
        (SCENARIOS[0], 0.95),
        (SCENARIOS[1], 0.95),
        (SCENARIOS[2], 0.90),
    ] {
        let (mut b, mut g) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            b.push(round(&bare, scenario, concurrency, ""));
            g.push(round(&gateway, scenario, concurrency, ""));
        }
        let (bm, gm) = (median_of(&b), median_of(&g));
        println!(
            "{:<20} bare {:>8.0} RPS ({}), p99 {} us | gateway {:>8.0} RPS ({}), p99 {} us",
            scenario.name,
            bm.0,
            spread(&b),
            bm.2,
            gm.0,
            spread(&g),
            gm.2
        );
        verdict(
            format!("{} gateway/bare", scenario.name),
            format!("{:.2}", gm.0 / bm.0),
            format!(">= {target:.2}"),
            gm.0 / bm.0 >= target,
        );
        if scenario.stream {
            let added = median_u64(
                b.iter()
                    .zip(&g)
                    .map(|(b, g)| g.3.saturating_sub(b.3))
                    .collect(),
            );
            verdict(
                format!("stream TTFT p99 added at concurrency {concurrency}"),
                format!("{added} us"),
                "<= 1000 us".into(),
                added <= 1000,
            );
        }
    }
    // Latency added at concurrency 1.
    let (mut b, mut g) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        b.push(round(&bare, SCENARIOS[0], 1, ""));
        g.push(round(&gateway, SCENARIOS[0], 1, ""));
    }
    let added = median_u64(
        b.iter()
            .zip(&g)
            .map(|(b, g)| g.1.saturating_sub(b.1))
            .collect(),
    );
    println!(
        "concurrency 1        bare p50 {} us | gateway p50 {} us",
        median_of(&b).1,
        median_of(&g).1
    );
    verdict(
        "latency added at concurrency 1 (p50)".into(),
        format!("{added} us"),
        "<= 60 us".into(),
        added <= 60,
    );
    // Memory per idle stream.
    let n = env_num("BENCH_IDLE_STREAMS", 1000);
    let (bk, gk) = (idle_stream_kb(&bare, n, 5), idle_stream_kb(&gateway, n, 5));
    println!("idle streams ({n})    bare {bk:.1} KB each | gateway {gk:.1} KB each");
    verdict(
        "memory per idle stream over bare".into(),
        format!("{:.1} KB", gk - bk),
        "<= 4 KB".into(),
        gk - bk <= 4.0,
    );

    // Features on, against the plain gateway.
    let hash = key_hash("igw-bench");
    let key = format!(
        "[[keys]]\nname = \"k\"\nhash = \"{hash}\"\nrpm = 100000000\ntpm = 100000000000\nmax_concurrent = 100000\nbudget_usd = 1000000000.0\n"
    );
    let bearer = "authorization: Bearer igw-bench\r\n";
    let (redis, redis_port) = spawn_redis();
    let sink = spawn_role("OTLP sink", "mock", &[]);
    let store_dir = std::env::temp_dir().join(format!("igw-bench-targets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    std::fs::create_dir_all(&store_dir).unwrap();
    let all_on = [
        ("LOG_LEVEL", "info".to_string()),
        ("LOG_FORMAT", "json".to_string()),
        ("TELEMETRY_ENABLE", "true".to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", store_dir.join("all.db").display()),
        ),
        ("ADMIN_API_KEY", "bench-admin-key-0123456789".to_string()),
        ("STORE_REQUEST_LOG_RETENTION", "7d".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", sink.port),
        ),
        ("OTEL_TRACES_SAMPLER", "traceidratio".to_string()),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01".to_string()),
    ];
    let mut cells: Vec<(&str, Proc, f64)> = vec![(
        "keys + memory limits",
        spawn_gateway_with(mock.port, threads, false, &[], Some(&key)),
        0.95,
    )];
    if redis.is_some() {
        cells.push((
            "keys + Redis limits",
            spawn_gateway_with(
                mock.port,
                threads,
                false,
                &[("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/"))],
                Some(&key),
            ),
            0.75,
        ));
    } else {
        println!("redis-server not installed: no Redis row");
    }
    cells.push((
        "all on",
        spawn_gateway_with(mock.port, threads, false, &all_on, Some(&key)),
        0.85,
    ));
    let mut plain = Vec::new();
    let mut runs: Vec<Vec<Cell>> = vec![Vec::new(); cells.len()];
    for _ in 0..repeats {
        plain.push(round(&gateway, SCENARIOS[0], concurrency, ""));
        for (i, (_, p, _)) in cells.iter().enumerate() {
            runs[i].push(round(p, SCENARIOS[0], concurrency, bearer));
        }
    }
    let pm = median_of(&plain);
    println!(
        "\nfeatures on, non-stream 1 KB: plain gateway {:.0} RPS ({})",
        pm.0,
        spread(&plain)
    );
    for ((name, _, target), r) in cells.iter().zip(&runs) {
        let m = median_of(r);
        println!(
            "{name:<22} {:>8.0} RPS ({}), p99 {} us",
            m.0,
            spread(r),
            m.2
        );
        verdict(
            format!("{name} / plain"),
            format!("{:.2}", m.0 / pm.0),
            format!(">= {target:.2}"),
            m.0 / pm.0 >= *target,
        );
    }
    drop(cells);
    let _ = std::fs::remove_dir_all(&store_dir);
    if let Some(mut r) = redis {
        let _ = r.kill();
        let _ = r.wait();
    }
    println!("\n| target | measured | goal | |\n|---|---|---|---|");
    for (name, value, target, pass) in &verdicts {
        println!(
            "| {name} | {value} | {target} | {} |",
            if *pass { "pass" } else { "FAIL" }
        );
    }
}

// --------------------------------------------------------------------------------- peers

/// Waits up to `secs` for `port` to listen (Python peers take seconds to start).
fn wait_listening_for(port: u16, secs: u64, child: &mut Child, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited ({status}) before listening");
        }
        assert!(Instant::now() < deadline, "{name} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
}

fn spawn_peer(name: &'static str, mut cmd: Command, port: u16) -> Proc {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e} (run `make bench-peers`)"));
    wait_listening_for(port, 120, &mut child, name);
    Proc { name, child, port }
}

/// The gateway beside the peers users would pick instead, all against the same in-tree mock:
/// LiteLLM's proxy (PyPI) and the Portkey gateway (npm), installed by `make bench-peers` into
/// PEERS_DIR. Each with one worker (the gateway one thread, LiteLLM `--num_workers 1`, Portkey
/// one Node process); RPS at concurrency 32 (median of BENCH_REPEATS rounds, 3), p50/p99,
/// stream TTFT, latency added to the mock's at concurrency 1, peak RSS.
fn peers() {
    let dir = std::path::PathBuf::from(
        std::env::var("PEERS_DIR").expect("PEERS_DIR is not set: run `make bench-peers`"),
    );
    let concurrency = env_num("BENCH_CONCURRENCY", 32);
    let seconds = env_num("BENCH_SECONDS", 5);
    let repeats = env_num("BENCH_REPEATS", 3).max(1) as usize;
    let litellm_version = std::env::var("PEERS_LITELLM_VERSION").unwrap_or_default();
    let portkey_version = std::env::var("PEERS_PORTKEY_VERSION").unwrap_or_default();
    let mock = spawn_role("mock (direct)", "mock", &[]);
    let gateway = spawn_gateway(mock.port, 1, false);
    let master = "sk-bench-master-0123456789abcdef";
    let litellm = {
        let port = free_port();
        let cfg = dir.join("litellm.yaml");
        std::fs::write(
            &cfg,
            format!(
                "model_list:\n  - model_name: openai/gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{}/v1\n      api_key: sk-bench\nlitellm_settings:\n  telemetry: false\n",
                mock.port
            ),
        )
        .unwrap();
        let mut cmd = Command::new(dir.join("venv/bin/litellm"));
        cmd.args(["--config", cfg.to_str().unwrap(), "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--num_workers", "1"])
            .env("LITELLM_MASTER_KEY", master)
            // Nothing fetched at start (the model price map is the bundled one).
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True");
        spawn_peer("LiteLLM", cmd, port)
    };
    let portkey = {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("portkey/node_modules/@portkey-ai/gateway/build/start-server.js"))
            .arg(format!("--port={port}"))
            .arg("--headless");
        spawn_peer("Portkey", cmd, port)
    };
    let litellm_headers = format!("authorization: Bearer {master}\r\n");
    let portkey_headers = format!(
        "x-portkey-provider: openai\r\nx-portkey-custom-host: http://127.0.0.1:{}/v1\r\nauthorization: Bearer sk-bench\r\n",
        mock.port
    );
    let litellm_name = format!("LiteLLM {litellm_version}");
    let portkey_name = format!("Portkey {portkey_version}");
    let targets: [(&str, &Proc, &str); 4] = [
        ("mock (direct)", &mock, ""),
        ("inference-gateway", &gateway, ""),
        (&litellm_name, &litellm, &litellm_headers),
        (&portkey_name, &portkey, &portkey_headers),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let round = |p: &Proc, scenario: Scenario, c: u64, headers: &str| -> (Cell, u64, u64) {
        let (mut st, secs) = rt.block_on(load_with(p.port, scenario, c, seconds, headers));
        let rps = st.latencies_us.len() as f64 / secs;
        (
            (
                rps,
                pct(&mut st.latencies_us, 0.5),
                pct(&mut st.latencies_us, 0.99),
                pct(&mut st.ttft_us, 0.5),
            ),
            st.errors,
            st.latencies_us.len() as u64,
        )
    };
    println!("peers: concurrency {concurrency}, {seconds} s per cell, median of {repeats} rounds, one worker each\n");
    // Per target: non-stream cell, stream cell, p50 at concurrency 1, errors.
    let mut results: Vec<(Cell, Cell, u64, u64)> = Vec::new();
    for (name, p, headers) in targets.iter() {
        let (mut plain, mut stream, mut single, mut errors) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..repeats {
            let (c, e, _) = round(p, SCENARIOS[0], concurrency, headers);
            plain.push(c);
            errors += e;
            let (c, e, n) = round(p, SCENARIOS[2], concurrency, headers);
            if n > 0 {
                stream.push(c);
            }
            errors += e;
            let (c, e, _) = round(p, SCENARIOS[0], 1, headers);
            single.push(c.1);
            errors += e;
        }
        let s = if stream.is_empty() {
            (0.0, 0, 0, 0)
        } else {
            median_of(&stream)
        };
        let r = (median_of(&plain), s, median_u64(single), errors);
        println!(
            "{name:<24} 1 KB {:>8.0} RPS (p50 {} us, p99 {} us) | stream {:>7.0} RPS (TTFT p50 {} us) | c=1 p50 {} us | errors {} | peak RSS {:.0} MB",
            r.0 .0, r.0 .1, r.0 .2, r.1 .0, r.1 .3, r.2, r.3, p.peak_rss_kb() as f64 / 1024.0
        );
        results.push(r);
    }
    let mock_single = results[0].2;
    println!("\n| | RPS 1 KB (c=32) | p50 / p99 | RPS stream 200 chunks | stream TTFT p50 | added latency (c=1, p50) | peak RSS | errors |\n|---|---|---|---|---|---|---|---|");
    for ((name, p, _), (plain, stream, single, errors)) in targets.iter().zip(&results) {
        let added = if *name == "mock (direct)" {
            "-".to_string()
        } else {
            format!("{} us", single.saturating_sub(mock_single))
        };
        println!(
            "| {name} | {:.0} | {:.1} / {:.1} ms | {:.0} | {:.1} ms | {added} | {:.0} MB | {errors} |",
            plain.0,
            plain.1 as f64 / 1000.0,
            plain.2 as f64 / 1000.0,
            stream.0,
            stream.3 as f64 / 1000.0,
            p.peak_rss_kb() as f64 / 1024.0
        );
    }
}
