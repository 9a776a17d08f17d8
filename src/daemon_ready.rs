//! Works around a race in Pingora 0.9's `daemon_wait_for_ready`: the parent installs its SIGUSR1
//! listener only after forking, so a daemon that finishes bootstrap quickly can signal first,
//! and SIGUSR1's default action kills the parent (the start or reload then reports failure
//! although the daemon serves). This service holds the bootstrap back until the parent catches
//! SIGUSR1 (its `SigCgt` mask in /proc), or is gone, or 5 s have passed.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

pub struct ParentListening {
    /// PID of the process that started the daemon (recorded before forking).
    pub parent: u32,
}

/// Whether `pid` catches `signal` (None if the process is gone).
fn catches(pid: u32, signal: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())?;
    Some(mask & (1 << (signal - 1)) != 0)
}

#[async_trait]
impl BackgroundService for ParentListening {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match catches(self.parent, 10 /* SIGUSR1 */) {
                Some(false) => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => break,
            }
        }
        ready.notify_ready();
    }
}
