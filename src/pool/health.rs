//! Active health checks and the backend-health metric, as one Pingora background service.
//!
//! Every pool with `health_check` gets `GET <backend origin><path>` (provider credentials
//! included, as `/v1/models` needs them) every `interval`; `unhealthy_threshold` consecutive
//! failures (no 2xx within `timeout`) take the backend out, `healthy_threshold` consecutive
//! passes bring it back. Once a second `llm_backend_up` is refreshed for every pool of two or
//! more backends (or with health checks), so ejections show on dashboards.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Pool, Pools};
use crate::metrics::Metrics;
use crate::upstream::{UpstreamClient, UpstreamRequest};

pub struct HealthService {
    pub pools: Arc<Pools>,
    pub client: Arc<UpstreamClient>,
    pub metrics: Option<Arc<Metrics>>,
}

/// Consecutive results of one backend.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Pools the control plane adds later are watched for the gauge (their health checks
        // are the configuration's only).
        let watched = |pools: &Pools| -> Vec<Arc<Pool>> {
            pools
                .all()
                .into_iter()
                .filter(|p| p.slots.len() > 1 || p.health_check.is_some())
                .collect()
        };
        // One task per checked pool: a slow pool never delays another, nor the gauge below.
        let checkers: Vec<_> = watched(&self.pools)
            .iter()
            .filter(|p| p.health_check.is_some())
            .map(|p| tokio::spawn(check_forever(p.clone(), self.client.clone())))
            .collect();
        if self.metrics.is_none() && checkers.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if let Some(m) = &self.metrics {
                for pool in &watched(&self.pools) {
                    for s in &pool.slots {
                        m.backend_up
                            .with_label_values(&[&pool.name, &s.label])
                            .set(i64::from(s.status() == "healthy"));
                    }
                }
            }
        }
        for c in checkers {
            c.abort();
        }
    }
}

async fn check_forever(pool: Arc<Pool>, client: Arc<UpstreamClient>) {
    let hc = pool.health_check.clone().expect("checked pools only");
    let mut streaks = vec![Streak::default(); pool.slots.len()];
    let mut every = tokio::time::interval(hc.interval.get());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        check_pool(&pool, &client, &mut streaks).await;
    }
}

async fn check_pool(pool: &Pool, client: &UpstreamClient, streaks: &mut [Streak]) {
    {
        let hc = pool.health_check.as_ref().expect("checked pools only");
        let checks = pool.slots.iter().map(|s| async {
            let req = UpstreamRequest {
                method: http::Method::GET,
                path: &hc.path,
                headers: &[],
                body: Bytes::new(),
                request_id: "health-check",
                timeouts: None,
            };
            let r = tokio::time::timeout(hc.timeout.get(), async {
                let mut resp = client.send(&s.provider, &req).await.ok()?;
                let ok = (200..300).contains(&resp.status());
                let _ = resp.read_all(64 * 1024).await;
                client.release(resp).await;
                Some(ok)
            })
            .await;
            matches!(r, Ok(Some(true)))
        });
        let results = futures::future::join_all(checks).await;
        for ((slot, streak), ok) in pool.slots.iter().zip(streaks.iter_mut()).zip(results) {
            if ok {
                streak.passes += 1;
                streak.failures = 0;
            } else {
                streak.failures += 1;
                streak.passes = 0;
            }
            let healthy = slot.active_healthy.load(Ordering::Relaxed);
            if healthy && streak.failures >= hc.unhealthy_threshold {
                slot.active_healthy.store(false, Ordering::Relaxed);
                warn!(
                    "provider {}: backend {} failed {} health checks; taken out",
                    pool.name, slot.label, streak.failures
                );
            } else if !healthy && streak.passes >= hc.healthy_threshold {
                slot.active_healthy.store(true, Ordering::Relaxed);
                // A backend that answers its health check may also be probed by traffic.
                slot.success();
                info!(
                    "provider {}: backend {} passed {} health checks; back in",
                    pool.name, slot.label, streak.passes
                );
            }
        }
    }
}
