//! The request log's writer: every API request's record (`/admin/v1/requests`) goes to the
//! store in batches, off the request path, like the spend ledger. A request only queues its row
//! (no I/O, never waits); a background service writes the queue once a second and at shutdown,
//! and prunes rows older than `store.request_log_retention`. While the store is down rows wait in
//! a bounded buffer (`MAX_PENDING_BYTES`); beyond it they are dropped and counted
//! (`llm_request_log_rows_total{outcome="dropped"}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::control::ControlPlane;
use crate::store::requests::RequestRow;

/// Rows queued between a request and the writer.
const CHANNEL: usize = 16_384;
/// Memory the writer may hold while the store is unreachable (bodies included).
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most of a body kept when `store.log_bodies` is on.
pub const MAX_BODY: usize = 64 * 1024;

pub struct RequestLog {
    tx: mpsc::Sender<RequestRow>,
    rx: Mutex<Option<mpsc::Receiver<RequestRow>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    retention: Duration,
    /// Request and response bodies are kept (`store.log_bodies`).
    pub bodies: bool,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// A body as the log keeps it: UTF-8 (lossy), at most `MAX_BODY` bytes.
pub fn body_text(b: &[u8]) -> String {
    let end = b.len().min(MAX_BODY);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl RequestLog {
    /// `None` when the retention is zero (no request log).
    pub fn new(
        cfg: &crate::config::StoreConfig,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Option<RequestLog> {
        let retention = cfg.request_log_retention.get();
        if retention.is_zero() {
            return None;
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        Some(RequestLog {
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            retention,
            bodies: cfg.log_bodies,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a request's row (never waits).
    pub fn record(&self, row: RequestRow) {
        if self.tx.try_send(row).is_err() {
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!("request log: rows are being dropped (the queue is full or the store has been down too long)");
        }
        if let Some(m) = &self.metrics {
            m.request_log.with_label_values(&["dropped"]).inc();
        }
    }

    fn wrote(&self, rows: u64) {
        self.written.fetch_add(rows, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.request_log.with_label_values(&["written"]).inc_by(rows);
        }
    }
}

/// Rows waiting for the store, bounded by their size.
#[derive(Default)]
struct Pending {
    rows: Vec<RequestRow>,
    bytes: usize,
}

/// Writes the request log (a background service; only with a store and a retention).
pub struct RequestLogService(pub Arc<ControlPlane>);

impl RequestLogService {
    fn log(&self) -> &RequestLog {
        self.0
            .requests
            .as_ref()
            .expect("started only with a request log")
    }

    fn take(&self, p: &mut Pending, row: RequestRow) {
        let w = row.weight();
        if p.bytes + w > MAX_PENDING_BYTES {
            self.log().drop_one();
            return;
        }
        p.bytes += w;
        p.rows.push(row);
    }

    async fn flush(&self, p: &mut Pending) {
        if p.rows.is_empty() {
            return;
        }
        let store = &self.0.store;
        match tokio::time::timeout(Duration::from_secs(10), store.add_requests(&p.rows)).await {
            Ok(Ok(())) => {
                self.log().wrote(p.rows.len() as u64);
                *p = Pending::default();
            }
            Ok(Err(e)) => log::debug!("request log: write failed, kept for later: {e}"),
            Err(_) => log::debug!("request log: write timed out, kept for later"),
        }
    }

    async fn prune(&self) {
        let before = crate::store::now_ms() - self.log().retention.as_millis() as i64;
        match tokio::time::timeout(Duration::from_secs(30), self.0.store.prune_requests(before))
            .await
        {
            Ok(Ok(n)) if n > 0 => log::info!("request log: pruned {n} rows past the retention"),
            Ok(Err(e)) => log::debug!("request log: prune failed: {e}"),
            _ => {}
        }
    }
}

#[async_trait]
impl BackgroundService for RequestLogService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self
            .log()
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut pending = Pending::default();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                r = rx.recv() => match r {
                    Some(row) => self.take(&mut pending, row),
                    None => break,
                },
                _ = flush.tick() => self.flush(&mut pending).await,
                _ = prune.tick() => self.prune().await,
            }
        }
        // Drain and flush once more: nothing accepted is lost across a graceful restart.
        while let Ok(row) = rx.try_recv() {
            self.take(&mut pending, row);
        }
        self.flush(&mut pending).await;
    }
}
