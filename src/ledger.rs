//! Booking spend in the store's ledger, never on the request path: a finished request's usage
//! and cost go into a bounded channel (a full channel drops the booking and counts it), a
//! background service adds them up per hour, principal and model, and writes the totals every
//! second in one transaction. While the store is down the totals are kept (bounded) and written
//! when it returns; at shutdown (drain, upgrade) what is left is written before the process
//! exits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::control::ControlPlane;
use crate::store::ledger::LedgerRow;

/// Bookings waiting for the writer.
const CHANNEL: usize = 65_536;
/// Hour x principal x model totals kept while the store is unreachable.
const MAX_PENDING: usize = 100_000;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One finished request's usage and cost.
#[derive(Debug, Clone)]
pub struct Booking {
    pub principal: String,
    pub team: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spend_micro: i64,
    pub at_secs: u64,
}

pub struct Ledger {
    tx: mpsc::Sender<Booking>,
    rx: Mutex<Option<mpsc::Receiver<Booking>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Bookings dropped (channel full, or the store down for too long).
    pub dropped: AtomicU64,
    /// Ledger rows written.
    pub written: AtomicU64,
}

impl Ledger {
    pub fn new(metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Ledger {
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// Queues a booking (never waits).
    pub fn book(&self, b: Booking) {
        if self.tx.try_send(b).is_err() {
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!("ledger: bookings are being dropped (the queue is full or the store has been down too long)");
        }
        if let Some(m) = &self.metrics {
            m.ledger.with_label_values(&["dropped"]).inc();
        }
    }

    fn wrote(&self, rows: u64) {
        self.written.fetch_add(rows, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.ledger.with_label_values(&["written"]).inc_by(rows);
        }
    }
}

type Totals = HashMap<(i64, String, String), LedgerRow>;

fn add(totals: &mut Totals, b: Booking) -> bool {
    let hour = (b.at_secs / 3600) as i64;
    let key = (hour, b.principal, b.model);
    if !totals.contains_key(&key) && totals.len() >= MAX_PENDING {
        return false;
    }
    let (hour, principal, model) = key.clone();
    let row = totals.entry(key).or_insert_with(|| LedgerRow {
        hour,
        principal,
        model,
        ..Default::default()
    });
    row.team = b.team;
    row.requests += 1;
    row.prompt_tokens += b.prompt_tokens.min(i64::MAX as u64) as i64;
    row.completion_tokens += b.completion_tokens.min(i64::MAX as u64) as i64;
    row.spend_micro = row.spend_micro.saturating_add(b.spend_micro.max(0));
    true
}

/// Writes the ledger (a background service).
pub struct LedgerService(pub Arc<ControlPlane>);

impl LedgerService {
    async fn flush(&self, totals: &mut Totals) {
        if totals.is_empty() {
            return;
        }
        let rows: Vec<LedgerRow> = totals.values().cloned().collect();
        let cp = &self.0;
        match tokio::time::timeout(Duration::from_secs(5), cp.store.add_to_ledger(&rows)).await {
            Ok(Ok(())) => {
                totals.clear();
                cp.ledger.wrote(rows.len() as u64);
            }
            // Kept for the next tick: written when the store is back.
            Ok(Err(e)) => log::warn!("ledger: write failed, kept for later: {e}"),
            Err(_) => log::warn!("ledger: write timed out, kept for later"),
        }
    }

    fn take(&self, totals: &mut Totals, b: Booking) {
        if !add(totals, b) {
            self.0.ledger.drop_one();
        }
    }
}

#[async_trait]
impl BackgroundService for LedgerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self
            .0
            .ledger
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut totals = Totals::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                b = rx.recv() => match b {
                    Some(b) => self.take(&mut totals, b),
                    None => break,
                },
                _ = tick.tick() => self.flush(&mut totals).await,
            }
        }
        // Shutting down (drain or upgrade): what is queued and added up is written now.
        while let Ok(b) = rx.try_recv() {
            self.take(&mut totals, b);
        }
        self.flush(&mut totals).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking(principal: &str, model: &str, at: u64, micro: i64) -> Booking {
        Booking {
            principal: principal.into(),
            team: String::new(),
            model: model.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            spend_micro: micro,
            at_secs: at,
        }
    }

    #[test]
    fn totals_per_hour_principal_and_model_bounded() {
        let mut t = Totals::new();
        assert!(add(&mut t, booking("key:a", "openai/x", 3600, 100)));
        assert!(add(&mut t, booking("key:a", "openai/x", 7199, 50)));
        assert!(add(&mut t, booking("key:a", "openai/x", 7200, 1)));
        assert!(add(&mut t, booking("key:b", "openai/x", 3600, -5)));
        let r = &t[&(1, "key:a".to_string(), "openai/x".to_string())];
        assert_eq!((r.requests, r.prompt_tokens, r.spend_micro), (2, 20, 150));
        assert_eq!(
            t[&(1, "key:b".to_string(), "openai/x".to_string())].spend_micro,
            0
        );
        assert_eq!(t.len(), 3);
        for i in 0..MAX_PENDING {
            add(&mut t, booking(&format!("key:{i}"), "m", 0, 1));
        }
        assert_eq!(t.len(), MAX_PENDING);
        assert!(!add(&mut t, booking("key:new", "m", 0, 1)), "bounded");
        assert!(
            add(&mut t, booking("key:a", "openai/x", 3600, 1)),
            "existing rows still add up"
        );
    }
}
