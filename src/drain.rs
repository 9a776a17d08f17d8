//! Graceful drain: count in-flight requests, and once Pingora starts shutting down (SIGTERM, or
//! SIGQUIT during an upgrade) exit as soon as the last one has finished.
//!
//! Pingora alone would sleep out the whole grace period even with nothing in flight (and a
//! grace period long enough for streams is long), or cut streams when it ends. Here the grace
//! period is only the upper bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use log::info;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Held by every request from its start to its access log line.
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests admitted under `server.max_connections`, counted apart from `IN_FLIGHT`: a request
/// is counted there from its start, before it is admitted, so concurrent arrivals would see
/// each other and refuse more than the cap requires.
static ADMITTED: AtomicUsize = AtomicUsize::new(0);

/// One admitted request (given back when dropped).
#[derive(Debug)]
pub struct Admitted(());

impl Admitted {
    /// Admits a request while fewer than `cap` are admitted (one atomic step: exactly `cap`
    /// requests run at once, whatever the interleaving).
    pub fn try_new(cap: usize) -> Option<Admitted> {
        ADMITTED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        ADMITTED.fetch_sub(1, Ordering::AcqRel);
    }
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the process start (for `uptime`); called once from `main`.
pub fn mark_start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// Time since the process started serving.
pub fn uptime() -> Duration {
    STARTED.get_or_init(std::time::Instant::now).elapsed()
}

pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// True once shutdown has begun: `/health` answers 503 and connections are not kept alive.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Watches for shutdown, then exits the process when nothing is in flight.
pub struct DrainService;

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        DRAINING.store(true, Ordering::SeqCst);
        info!("draining: {} request(s) in flight", in_flight());
        loop {
            if in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the last responses leave the socket buffers.
        tokio::time::sleep(Duration::from_millis(100)).await;
        info!("drained: exiting");
        std::process::exit(0);
    }
}

#[cfg(test)]
mod admission_tests {
    use super::Admitted;

    #[test]
    fn exactly_the_cap_is_admitted_by_concurrent_arrivals() {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    Admitted::try_new(3)
                })
            })
            .collect();
        let held: Vec<Option<Admitted>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(held.iter().filter(|a| a.is_some()).count(), 3);
        drop(held);
        // Given back when dropped.
        let again: Vec<_> = (0..3).filter_map(|_| Admitted::try_new(3)).collect();
        assert_eq!(again.len(), 3);
    }
}
