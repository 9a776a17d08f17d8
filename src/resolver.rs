//! DNS off the request path.
//!
//! `HttpPeer::new` with a host name resolves synchronously (blocking a runtime thread) and panics
//! on failure, so peers are always built from a `SocketAddr`. Addresses are cached per provider and
//! refreshed by a background service; only a provider's first request waits for an (async) lookup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::providers::{Provider, Providers};

/// Address of a provider: the cached one, or a fresh async lookup bounded by `limit`.
pub async fn resolve(provider: &Provider, limit: Duration) -> Result<SocketAddr, String> {
    if let Some(a) = provider.cached_addr() {
        return Ok(a);
    }
    lookup(provider, limit).await
}

async fn lookup(provider: &Provider, limit: Duration) -> Result<SocketAddr, String> {
    let target = (provider.host.as_str(), provider.port);
    let found = tokio::time::timeout(limit, tokio::net::lookup_host(target))
        .await
        .map_err(|_| format!("DNS lookup of {} timed out", provider.host))?
        .map_err(|e| format!("DNS lookup of {} failed: {e}", provider.host))?;
    let mut first = None;
    for a in found {
        // Prefer IPv4: many container networks have no IPv6 route.
        if a.is_ipv4() {
            first = Some(a);
            break;
        }
        first.get_or_insert(a);
    }
    let addr =
        first.ok_or_else(|| format!("DNS lookup of {} returned no address", provider.host))?;
    provider.set_addr(addr);
    Ok(addr)
}

/// Re-resolves the host names of providers in use (or configured) every `interval`.
pub struct DnsRefresher {
    pub providers: Arc<Providers>,
    /// Backends of pools are providers of their own, with their own address.
    pub pools: Arc<crate::pool::Pools>,
    pub interval: Duration,
    pub lookup_timeout: Duration,
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            // A provider whose `backends` replace its `url` never calls its default host
            // (`api.openai.com` for a pool of vLLM servers): not resolved unless something
            // (`/proxy`) already did.
            let replaced = |p: &Provider| {
                p.cached_addr().is_none()
                    && self
                        .pools
                        .get(&p.name)
                        .is_some_and(|pool| !pool.uses_provider_url())
            };
            let providers = self.providers.iter().filter(|p| !replaced(p));
            let backends = self.pools.backend_providers();
            for p in providers.chain(backends.iter()) {
                if p.is_ip_literal() || !(p.configured || p.cached_addr().is_some()) {
                    continue;
                }
                match lookup(p, self.lookup_timeout).await {
                    Ok(a) => debug!("resolved {} -> {a}", p.host),
                    Err(e) => warn!("provider {}: {e} (keeping the last address)", p.name),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
