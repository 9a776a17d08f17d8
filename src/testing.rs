//! The gateway in the test's own process, as Pingora's own tests run their servers: built from
//! the same configuration path as the binary (TOML text, then an explicit environment), on a
//! free port, served by a thread of its own. Fast request-path tests use it; upgrades, signals,
//! daemon mode and TLS files stay process-level tests of the binary.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::config::Config;

/// A running in-process gateway. It serves until the test process exits (Pingora's server
/// cannot be stopped without its process-wide shutdown path).
pub struct InProcessGateway {
    pub addr: SocketAddr,
}

impl InProcessGateway {
    /// Starts a gateway with `env` as its whole environment and `toml` as its configuration
    /// file; panics (failing the test) if the configuration is refused or nothing listens
    /// within 10 s.
    pub fn start(env: &[(&str, String)], toml: Option<&str>) -> InProcessGateway {
        let port = free_port();
        let mut vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        vars.push(("SERVER_PORT".into(), port.to_string()));
        vars.push(("SERVER_HOST".into(), "127.0.0.1".into()));
        if !vars.iter().any(|(k, _)| k == "SERVER_THREADS") {
            vars.push(("SERVER_THREADS".into(), "1".into()));
        }
        let getenv = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let path = toml.map(|t| {
            let p =
                std::env::temp_dir().join(format!("igw-inproc-{}-{port}.toml", std::process::id()));
            std::fs::write(&p, t).expect("write test config");
            p
        });
        let cfg = Config::load_with_env(path.as_deref(), &getenv)
            .unwrap_or_else(|e| panic!("configuration refused: {e}"));
        // No logger: the test runner's output stays the tests' (process tests read logs).
        let (server, _) = crate::build_server(cfg, crate::Launch::default())
            .unwrap_or_else(|e| panic!("gateway did not build: {e}"));
        std::thread::Builder::new()
            .name(format!("gateway-{port}"))
            .spawn(move || {
                server.run(pingora::server::RunArgs {
                    shutdown_signal: Box::new(NeverShutdown),
                })
            })
            .expect("spawn gateway thread");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "in-process gateway never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        InProcessGateway { addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A port nothing listens on right now, never the same twice in one process: Pingora binds
/// with SO_REUSEPORT, so two gateways given one port would both bind it and share its
/// connections (a test would reach another test's gateway).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The test runner's signals stay the test runner's: the in-process server never takes them.
struct NeverShutdown;

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for NeverShutdown {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        std::future::pending().await
    }
}
