//! inference-gateway: one OpenAI-compatible front door to every LLM provider, on Pingora.

mod access_log;
mod auth;
mod config;
mod daemon_ready;
mod drain;
mod errors;
mod handlers;
mod limits;
mod mcp;
mod metrics;
mod pool;
mod providers;
mod proxy;
mod request_id;
mod resolver;
mod routing;
mod upstream;
mod vault;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{info, warn};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::Config;
use crate::providers::Providers;
use crate::proxy::Gateway;

/// Command line. Everything else is configuration (TOML file, then environment).
#[derive(Parser, Debug)]
#[command(name = "inference-gateway", version, about)]
struct Cli {
    /// Configuration file (TOML). Default: conf/gateway.toml when it exists, else built-in defaults.
    #[arg(short = 'c', long = "conf")]
    conf: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (daemon).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Make a new virtual API key and print the `[[keys]]` entry; with `--stdin`, hash a key
    /// read from standard input instead (never from the command line, where `ps` and shell
    /// history would keep it).
    HashKey {
        /// Read the key to hash from standard input (one line).
        #[arg(long)]
        stdin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashKey { stdin }) = &cli.command {
        let key = if *stdin {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("inference-gateway: hash-key: cannot read standard input: {e}");
                return ExitCode::from(2);
            }
            let key = line.trim_end_matches(['\r', '\n']).to_string();
            if key.is_empty() {
                eprintln!("inference-gateway: hash-key --stdin: no key on standard input");
                return ExitCode::from(2);
            }
            key
        } else {
            let key = auth::new_key();
            println!("key:  {key}    (give it to the client; it is not stored anywhere)");
            key
        };
        println!("hash: {}", auth::hash_key(&key));
        println!();
        println!(
            "[[keys]]\nname = \"...\"\nhash = \"{}\"",
            auth::hash_key(&key)
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::load(cli.conf.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = access_log::init_logging(&cfg) {
        eprintln!("inference-gateway: {e}");
        return ExitCode::from(2);
    }
    let providers = match Providers::from_config(&cfg) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let pools = match pool::Pools::from_config(&cfg, &providers) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.test {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    run(cli, cfg, providers, pools)
}

fn run(cli: Cli, cfg: Config, providers: Arc<Providers>, pools: Arc<pool::Pools>) -> ExitCode {
    drain::mark_start();
    let cfg = Arc::new(cfg);
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let threads = match cfg.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let s = &cfg.server;
    let conf = ServerConf {
        threads,
        daemon: cli.daemon,
        pid_file: s.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: s.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(s.grace_period.get().as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.get().as_secs()),
        // A daemon's parent returns only once the new process serves: a broken binary or
        // config fails `systemctl reload` instead of leaving nothing listening.
        daemon_wait_for_ready: true,
        upstream_keepalive_pool_size: cfg.client.max_idle_conns.max(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Bootstrap (which receives the listening sockets during an upgrade) runs as a service so it
    // happens after daemonizing; the daemon then tells its parent it is ready (see
    // `daemon_wait_for_ready`). Listening services start once it is done.
    let bootstrap = server.bootstrap_as_a_service();
    if cli.daemon {
        let gate = server.add_service(background_service(
            "parent-ready",
            daemon_ready::ParentListening {
                parent: std::process::id(),
            },
        ));
        bootstrap.add_dependency(&gate);
    }

    let metrics = cfg.telemetry.enable.then(metrics::Metrics::new);
    if let Some(m) = &metrics {
        let host = cfg
            .telemetry
            .metrics_host
            .as_deref()
            .unwrap_or(&cfg.server.host);
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{}", cfg.telemetry.metrics_port)
        } else {
            format!("{host}:{}", cfg.telemetry.metrics_port)
        };
        let mut svc = pingora::services::listening::Service::new(
            "metrics".to_string(),
            pingora::apps::http_app::HttpServer::new_app(metrics::MetricsApp(m.clone())),
        );
        svc.add_tcp(&addr);
        server.add_service(svc).add_dependency(&bootstrap);
        info!("metrics on http://{addr}/metrics");
    }
    // The MCP client (reqwest) is built without its own crypto provider: use ring, as Pingora.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mcp = (!cfg.mcp.servers.is_empty()).then(|| mcp::McpHub::new(&cfg.mcp, metrics.clone()));
    if let Some(hub) = &mcp {
        server
            .add_service(background_service(
                "mcp",
                mcp::connection::McpService { hub: hub.clone() },
            ))
            .add_dependency(&bootstrap);
        info!(
            "MCP: {} servers, tool loop {}",
            hub.servers.len(),
            if cfg.mcp.enable {
                "enabled"
            } else {
                "disabled (MCP_ENABLE)"
            }
        );
    }
    server.add_service(background_service(
        "backend-health",
        pool::health::HealthService {
            pools: pools.clone(),
            client: Arc::new(upstream::UpstreamClient::new(&cfg.client)),
            metrics: metrics.clone(),
        },
    ));
    let gateway = Gateway::new(cfg.clone(), providers.clone(), metrics, mcp, pools.clone());
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "gateway");
    let addr = cfg.listen_addr();
    match (&cfg.server.tls_cert_path, &cfg.server.tls_key_path) {
        (Some(cert), Some(key)) => {
            // Certificates are read when the process starts, so an upgrade (`-u`) picks up
            // renewed files.
            let mut tls = match pingora::listeners::tls::TlsSettings::intermediate(
                &cert.to_string_lossy(),
                &key.to_string_lossy(),
            ) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("inference-gateway: TLS setup failed: {e}");
                    return ExitCode::from(2);
                }
            };
            tls.enable_h2();
            proxy.add_tls_with_settings(&addr, None, tls);
        }
        _ => proxy.add_tcp(&addr),
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server.add_service(background_service("drain", drain::DrainService));
    server.add_service(background_service(
        "dns",
        resolver::DnsRefresher {
            providers: providers.clone(),
            pools: pools.clone(),
            interval: cfg.client.dns_refresh_interval.get(),
            lookup_timeout: cfg.client.connect_timeout.get(),
        },
    ));

    let configured: Vec<&str> = providers
        .iter()
        .filter(|p| p.configured)
        .map(|p| p.name.as_str())
        .collect();
    info!(
        "inference-gateway {} listening on {addr}{} with {threads} threads; configured providers: [{}]",
        env!("CARGO_PKG_VERSION"),
        if cfg.server.tls_cert_path.is_some() { " (TLS)" } else { "" },
        configured.join(", ")
    );
    if cfg.auth.oidc_issuer.is_some() && cfg.auth.tiers.is_empty() {
        warn!("OIDC without auth.tiers: every token the issuer signs for this audience has no limits (raw /proxy stays refused to them)");
    }
    let open = cfg.keys.is_empty() && !cfg.auth.enable && cfg.auth.oidc_issuer.is_none();
    if open && !matches!(cfg.server.host.as_str(), "127.0.0.1" | "::1" | "localhost") {
        warn!("listening on {} without client authentication: anyone who can reach this port can use the configured provider keys", cfg.server.host);
    }
    server.run_forever()
}
