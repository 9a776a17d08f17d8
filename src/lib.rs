//! inference-gateway: one gateway for every LLM provider and every client API, on Pingora.
//!
//! The binary (`src/main.rs`) is the command line; everything else is this library, so tests
//! and benchmarks can build a gateway in their own process ([`testing::InProcessGateway`]).

pub mod a2a;
pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod control;
pub mod daemon_ready;
pub mod door;
pub mod drain;
pub mod errors;
pub mod exchange;
pub mod guardrails;
pub mod kv;
pub mod ledger;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod model_list;
pub mod otel;
pub mod pool;
pub mod providers;
pub mod proxy;
pub mod request_id;
pub mod request_log;
pub mod resolver;
pub mod responses;
pub mod routing;
pub mod seal;
pub mod stats;
pub mod store;
pub mod testing;
pub mod ui;
pub mod upstream;
pub mod vault;

use std::sync::Arc;

use log::{info, warn};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::Config;
use crate::providers::Providers;
use crate::proxy::Gateway;

/// How the process was started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Launch {
    /// Take over the listening sockets of a running instance (`-u`).
    pub upgrade: bool,
    /// Run in the background (`-d`).
    pub daemon: bool,
    /// Exit once drained after a shutdown signal (the drain service). Off in the test harness,
    /// whose process is the test runner.
    pub exit_when_drained: bool,
}

/// The runtime parts a configuration makes: providers and backend pools. Errors are the
/// configuration's.
pub fn prepare(cfg: &Config) -> Result<(Arc<Providers>, Arc<pool::Pools>), String> {
    let providers = Arc::new(Providers::from_config(cfg).map_err(|e| e.to_string())?);
    let pools = Arc::new(pool::Pools::from_config(cfg, &providers).map_err(|e| e.to_string())?);
    Ok((providers, pools))
}

/// Builds the Pingora server with every service of the gateway; returns it and the listening
/// address.
pub fn build_server(cfg: Config, launch: Launch) -> Result<(Server, String), String> {
    let (providers, pools) = prepare(&cfg)?;
    drain::mark_start();
    let cfg = Arc::new(cfg);
    let opt = Opt {
        upgrade: launch.upgrade,
        daemon: launch.daemon,
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
        daemon: launch.daemon,
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
    if launch.daemon {
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
    let a2a = (!cfg.a2a.agents.is_empty()).then(|| a2a::A2aHub::new(&cfg.a2a));
    if let Some(hub) = &a2a {
        server
            .add_service(background_service(
                "a2a",
                a2a::DiscoveryService { hub: hub.clone() },
            ))
            .add_dependency(&bootstrap);
        info!(
            "A2A: {} agents, tools {}",
            hub.agents.len(),
            if cfg.a2a.enable {
                "offered to models"
            } else {
                "not offered (A2A_ENABLE)"
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
    // The control plane's store: migrated and read before serving (a short-lived runtime does
    // the start-up work; serving connections are made by the runtimes that use them).
    let control = match cfg.store.database_url.as_ref() {
        Some(url) => {
            // On a thread of its own: the caller may be inside a runtime (tests start gateways
            // in process from async code).
            let start = std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(control::Start::open(url.expose(), &cfg.keys))
                })
                .join()
                .map_err(|_| "store start-up failed".to_string())?
            })?;
            info!(
                "store: {} ({} stored keys)",
                store::redacted(url.expose()),
                start.keys.len()
            );
            Some(start)
        }
        None => None,
    };
    let gateway = Gateway::new(
        cfg.clone(),
        providers.clone(),
        metrics,
        mcp,
        a2a,
        pools.clone(),
        control,
    );
    if let Some(t) = &gateway.tracer {
        server.add_service(background_service(
            "otel-export",
            otel::export::ExportService(t.clone()),
        ));
        info!(
            "tracing: OTLP {:?} to {} (sampler {}{})",
            cfg.otel.exporter_otlp_protocol,
            store::redacted(&t.url()),
            cfg.otel.traces_sampler,
            cfg.otel
                .traces_sampler_arg
                .map_or(String::new(), |r| format!(", ratio {r}"))
        );
    }
    if let Some(s) = &gateway.stats {
        server.add_service(background_service(
            "admin-stats",
            stats::StatsService(s.clone()),
        ));
    }
    if let Some(cp) = &gateway.control {
        server.add_service(background_service(
            "control-sync",
            control::SyncService(cp.clone()),
        ));
        server.add_service(background_service(
            "ledger",
            ledger::LedgerService(cp.clone()),
        ));
        if cp.requests.is_some() {
            server.add_service(background_service(
                "request-log",
                request_log::RequestLogService(cp.clone()),
            ));
        }
    }
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
                Err(e) => return Err(format!("TLS setup failed: {e}")),
            };
            tls.enable_h2();
            proxy.add_tls_with_settings(&addr, None, tls);
        }
        _ => proxy.add_tcp(&addr),
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    if launch.exit_when_drained {
        server.add_service(background_service("drain", drain::DrainService));
    }
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
    if cfg.limits.redis_url.is_some() && cfg.responses.encryption_key.is_none() {
        warn!("REDIS_URL without responses.encryption_key (RESPONSES_ENCRYPTION_KEY): reasoning items sealed by this replica for store:false clients cannot be opened by another replica or after a restart (stored responses are not affected)");
    }
    let open = cfg.keys.is_empty() && !cfg.auth.enable && cfg.auth.oidc_issuer.is_none();
    if open && !matches!(cfg.server.host.as_str(), "127.0.0.1" | "::1" | "localhost") {
        warn!("listening on {} without client authentication: anyone who can reach this port can use the configured provider keys{}", cfg.server.host,
            if cfg.mcp.expose { " and every tool on /mcp (MCP_EXPOSE)" } else { "" });
    }
    if cfg.mcp.expose && cfg.auth.oidc_issuer.is_some() && cfg.server.public_url.is_none() {
        warn!("MCP_EXPOSE with OIDC but no server.public_url (SERVER_PUBLIC_URL): /mcp cannot point MCP clients at its OAuth metadata");
    }
    Ok((server, addr))
}
