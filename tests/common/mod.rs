//! Test harness: the gateway as a real process, and mock upstreams written on raw TCP so a test
//! controls every byte and every TCP write of a provider's answer.
#![allow(dead_code)]

pub mod webdriver;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

pub struct GatewayProcess {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
}

/// Never the same port twice in this process (see `inference_gateway::testing::free_port`,
/// which shares the list: in-process gateways and processes both take ports here).
pub fn free_port() -> u16 {
    inference_gateway::testing::free_port()
}

/// A port where connections are refused, held until dropped or released: the socket is bound
/// but never listens. A port from [`free_port`] alone may be handed by the kernel to a
/// concurrent test's mock (bound to port 0), which then receives this test's retries and
/// probes (an A2A agent "down at start" is polled for its card, for instance).
pub struct DeadPort {
    socket: Option<tokio::net::TcpSocket>,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> Self {
        // No SO_REUSEADDR: every other bind to this port conflicts while we hold it.
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().unwrap().port();
        DeadPort {
            socket: Some(socket),
            port,
        }
    }

    /// Frees the port for a server the test starts on it.
    pub fn release(&mut self) -> u16 {
        self.socket = None;
        self.port
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("igw-{tag}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_inference-gateway")
}

impl GatewayProcess {
    /// Starts the gateway with a clean environment (nothing leaks in from the developer's shell)
    /// plus `env`, and `toml` as its config file if given; waits until `/health` answers.
    pub fn start(env: &[(&str, String)], toml: Option<&str>) -> GatewayProcess {
        let mut g = Self::spawn(env, toml);
        g.wait_ready();
        g
    }

    /// As [`start`](Self::start) for a TLS listener (ready once it accepts TCP).
    pub fn start_tls(env: &[(&str, String)]) -> GatewayProcess {
        let mut g = Self::spawn(env, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while StdStream::connect(("127.0.0.1", g.port)).is_err() {
            if let Some(s) = g.child.try_wait().unwrap() {
                panic!("gateway exited ({s}): {}", g.log_text());
            }
            assert!(Instant::now() < deadline, "TLS gateway not listening");
            std::thread::sleep(Duration::from_millis(25));
        }
        g
    }

    /// Starts the binary with a clean environment plus `env`, on a free port, in its own dir.
    fn spawn(env: &[(&str, String)], toml: Option<&str>) -> GatewayProcess {
        let dir = temp_dir("gw");
        let port = free_port();
        let log = dir.join("gateway.log");
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "text")
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("SERVER_THREADS", "2")
            .env("SERVER_UPGRADE_SOCK", dir.join("upgrade.sock"))
            .env("SERVER_PID_FILE", dir.join("gateway.pid"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(t) = toml {
            let p = dir.join("gateway.toml");
            std::fs::write(&p, t).unwrap();
            cmd.arg("-c").arg(&p);
        }
        let child = cmd.spawn().expect("start gateway");
        GatewayProcess {
            child,
            port,
            dir,
            log,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("gateway exited early ({status}): {}", self.log_text());
            }
            if let Ok(mut s) = StdStream::connect(("127.0.0.1", self.port)) {
                let _ =
                    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway not ready: {}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream got no JSON ({e}): {} {} {:?} body {:?}",
                self.method,
                self.path,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One step of a scripted response.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes (one TCP write; NODELAY is set).
    Write(Vec<u8>),
    Sleep(Duration),
    /// Close the connection (abruptly, whatever was promised).
    Close,
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Vec<Step> + Send + Sync>;

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub open_connections: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
}

impl MockUpstream {
    pub async fn start(
        handler: impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static,
    ) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(handler);
        let (r, o, a) = (requests.clone(), open.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                sock.set_nodelay(true).unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (h, r, o) = (handler.clone(), r.clone(), o.clone());
                tokio::spawn(async move {
                    serve_conn(sock, h, r).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        MockUpstream {
            addr,
            requests,
            open_connections: open,
            accepted,
        }
    }

    pub fn url(&self, base_path: &str) -> String {
        format!("http://{}{base_path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("upstream got a request")
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits until no connection to this mock is open.
    pub async fn wait_all_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.open_connections.load(Ordering::SeqCst) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn serve_conn(mut sock: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Recorded>>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await else {
            return;
        };
        log.lock().unwrap().push(req.clone());
        for step in handler(&req) {
            match step {
                Step::Write(b) => {
                    if sock.write_all(&b).await.is_err() {
                        return;
                    }
                    let _ = sock.flush().await;
                }
                Step::Sleep(d) => {
                    // Notice a peer that closes while we wait.
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        r = sock.peek(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return },
                    }
                }
                Step::Close => return,
            }
        }
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    sock: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Recorded> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let mut tmp = [0u8; 65536];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        while buf.len() < n {
            let mut tmp = vec![0u8; 1 << 20];
            let r = sock.read(&mut tmp).await.ok()?;
            if r == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..r]);
        }
        buf.drain(..n).collect()
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let mut tmp = [0u8; 65536];
                let r = sock.read(&mut tmp).await.ok()?;
                if r == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..r]);
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let mut tmp = vec![0u8; 1 << 20];
                let r = sock.read(&mut tmp).await.ok()?;
                if r == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..r]);
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
        body
    } else {
        Vec::new()
    };
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// ---------------------------------------------------------------------------------------------
// Wire-format helpers for mock answers
// ---------------------------------------------------------------------------------------------

pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn json_response(status: u16, body: &str) -> Vec<Step> {
    vec![Step::Write(http_response(
        status,
        &[("content-type", "application/json")],
        body.as_bytes(),
    ))]
}

/// Response head for a stream (chunked, as real providers send it).
pub fn sse_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec()
}

/// One HTTP chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub fn last_chunk() -> Vec<u8> {
    b"0\r\n\r\n".to_vec()
}

/// A whole SSE stream written as chunks at the given split points, with a pause between
/// writes so each becomes its own TCP segment.
pub fn sse_steps(body: &[u8], splits: &[usize], pause: Duration) -> Vec<Step> {
    let mut steps = vec![Step::Write(sse_head())];
    let mut start = 0;
    for &s in splits.iter().chain(std::iter::once(&body.len())) {
        if s > start {
            steps.push(Step::Write(chunk(&body[start..s])));
            steps.push(Step::Sleep(pause));
            start = s;
        }
    }
    steps.push(Step::Write(last_chunk()));
    steps
}

pub fn chat_completion(model: &str, content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    })
    .to_string()
}

/// A provider's `GET /v1/models` answer listing `gpt-4o-mini` (for mocks that also answer
/// the gateway's model listing).
pub fn models_list() -> Vec<Step> {
    json_response(
        200,
        r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"openai"}]}"#,
    )
}

/// An OpenAI stream: role chunk, one chunk per piece of content, finish chunk, optional usage
/// chunk, `[DONE]`.
pub fn chat_stream(model: &str, pieces: &[&str], usage: bool) -> String {
    let mut s = String::new();
    let usage_field = if usage { ",\"usage\":null" } else { "" };
    let mut push = |delta: serde_json::Value, finish: Option<&str>| {
        let c = serde_json::json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":model,
            "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
        let mut t = c.to_string();
        t.pop();
        s.push_str(&format!("data: {t}{usage_field}}}\n\n"));
    };
    push(serde_json::json!({"role":"assistant","content":""}), None);
    for p in pieces {
        push(serde_json::json!({"content": p}), None);
    }
    push(serde_json::json!({}), Some("stop"));
    if usage {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            pieces.len(),
            9 + pieces.len()
        ));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client (for byte-exact assertions)
// ---------------------------------------------------------------------------------------------

pub struct RawResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (names are kept lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Like [`raw_request`], but a refused or reset connection is an `Err` instead of a panic.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<RawResponse, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.write_all(body).await.map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if find(&out, b"\r\n\r\n").is_none() {
        return Err(format!(
            "incomplete response: {:?}",
            String::from_utf8_lossy(&out)
        ));
    }
    Ok(parse_response(&out))
}

/// `POST /v1/chat/completions` with `body`, no extra headers (the most common test request).
/// Waits (up to 15 s) until `GET /v1/mcp/tools` lists a tool (`MCP_EXPOSE` must be on).
pub async fn wait_for_any_mcp_tool(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = raw_request(addr, "GET", "/v1/mcp/tools", &[], b"")
            .await
            .json();
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "no MCP tools: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn post_chat(addr: SocketAddr, body: &[u8]) -> RawResponse {
    raw_request(addr, "POST", "/v1/chat/completions", &[], body).await
}

/// Sends one request with `Connection: close` and reads the whole (de-chunked) response.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) and stop reading before the body is sent: keep what it said.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    parse_response(&out)
}

pub fn parse_response(out: &[u8]) -> RawResponse {
    let head_end = find(out, b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&out[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &out[head_end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        dechunk(raw)
    } else {
        raw.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(i) = find(raw, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..i]).trim(), 16)
            .expect("chunk size");
        raw = &raw[i + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    body
}

/// `[[keys]]` hash of `key`, from the gateway's own `hash-key --stdin`.
pub fn key_hash(key: &str) -> String {
    let mut child = Command::new(bin())
        .args(["hash-key", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("hash: "))
        .expect("hash line")
        .to_string()
}

/// Environment that points the named built-in providers at mock URLs with test keys.
pub fn provider_env(pairs: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    for (name, url) in pairs {
        let up = name.to_ascii_uppercase();
        env.push((leak(format!("{up}_API_URL")), url.clone()));
        env.push((leak(format!("{up}_API_KEY")), format!("sk-{name}-test")));
    }
    env
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

// ---------------------------------------------------------------------------------------------
// TLS mock upstream
// ---------------------------------------------------------------------------------------------

/// A test CA and a leaf certificate for `host` signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub key_pem: String,
    pub leaf_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn test_pki(host: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        leaf_der: leaf.der().to_vec(),
        key_der: leaf_key.serialize_der(),
    }
}

pub struct TlsMock {
    pub addr: SocketAddr,
    /// SNI names clients sent, one per handshake.
    pub sni: Arc<Mutex<Vec<Option<String>>>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl TlsMock {
    /// Answers every request with `body` (200, JSON).
    pub async fn start(pki: &TestPki, body: &'static str) -> TlsMock {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(pki.leaf_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sni = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s2, r2) = (sni.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, s2, r2) = (acceptor.clone(), s2.clone(), r2.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    s2.lock()
                        .unwrap()
                        .push(tls.get_ref().1.server_name().map(str::to_string));
                    let mut buf = Vec::new();
                    while let Some(req) = read_request(&mut tls, &mut buf).await {
                        r2.lock().unwrap().push(req);
                        let resp = http_response(
                            200,
                            &[("content-type", "application/json")],
                            body.as_bytes(),
                        );
                        if tls.write_all(&resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TlsMock {
            addr,
            sni,
            requests,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A real `redis-server` on a free port (installed by scripts/deps.sh test), killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/deps.sh test)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// One real PostgreSQL cluster for the whole test run (installed by scripts/deps.sh test),
/// started on a free port as the `postgres` user (PostgreSQL refuses to run as root), in a
/// temporary directory, stopped when the test process exits (a watchdog shell waits on a pipe
/// the process holds). Each test makes its own database.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    _watchdog: Mutex<Child>,
}

static POSTGRES: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();

pub fn postgres() -> &'static Postgres {
    POSTGRES.get_or_init(|| Postgres::start(false))
}

impl Postgres {
    /// A cluster of the caller's own, to kill and restart (the shared one is everyone's). Its
    /// commits survive a kill (`synchronous_commit` on, as in production): what the gateway was
    /// told is written must still be there when the server comes back.
    pub fn private() -> Postgres {
        Postgres::start(true)
    }

    /// `durable`: commits are flushed before they are acknowledged (a kill loses none). The
    /// shared cluster trades that for speed (the server is never killed).
    fn server_options(port: u16, dir: &std::path::Path, durable: bool) -> String {
        format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit={} -c full_page_writes=off -c max_connections=200",
            dir.display(),
            if durable { "on" } else { "off" }
        )
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut, as in a crash).
    pub fn kill(&self) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server again on the same port and data (waits until it accepts connections).
    pub fn restart(&self) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log-restarted"))
            .args([
                "-o",
                &Postgres::server_options(self.port, &self.dir, true),
                "-w",
                "start",
            ])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(durable: bool) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server (scripts/deps.sh test installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin");
        let dir = temp_dir("pg");
        let status = Command::new("chown")
            .args(["postgres:postgres", &dir.to_string_lossy()])
            .status()
            .unwrap();
        assert!(status.success(), "chown the PostgreSQL directory");
        let data = dir.join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let script = format!(
            "runuser -u postgres -- {pg} -D {data} {options} \
             >{dir}/log 2>&1 & read _; runuser -u postgres -- {ctl} -D {data} stop -m immediate >/dev/null 2>&1",
            options = Postgres::server_options(port, &dir, durable),
            pg = bin.join("postgres").display(),
            ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Postgres {
            port,
            bin,
            dir,
            _watchdog: Mutex::new(watchdog),
        }
    }

    /// A new empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}
