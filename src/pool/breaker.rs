//! The passive half of backend health: a circuit breaker per backend.
//!
//! Closed: requests flow; `failures` consecutive failures (connect errors, 5xx, timeouts) open
//! it. Open: the backend is skipped until the cool-down ends. Half-open: one probe request is
//! let through; success closes the circuit (and resets the cool-down), failure opens it again
//! for twice as long (up to `max_cooldown`).

use std::time::{Duration, Instant};

use crate::config::resilience::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base_cooldown: Duration,
    max_cooldown: Duration,
    cooldown: Duration,
    state: State,
    /// Times this backend was ejected.
    pub ejections: u64,
}

impl Breaker {
    /// `None`: never ejects.
    pub fn new(cfg: Option<&BreakerConfig>) -> Breaker {
        let (threshold, base, max) = match cfg {
            Some(c) if c.failures > 0 => (c.failures, c.cooldown.get(), c.max_cooldown.get()),
            _ => (0, Duration::ZERO, Duration::ZERO),
        };
        Breaker {
            threshold,
            base_cooldown: base,
            max_cooldown: max,
            cooldown: base,
            state: State::Closed { failures: 0 },
            ejections: 0,
        }
    }

    /// Whether a request may go to this backend now: `None` no, `Some(false)` yes, `Some(true)`
    /// yes as the half-open probe (only one at a time; the caller must resolve it).
    pub fn try_acquire(&mut self, now: Instant) -> Option<bool> {
        match self.state {
            State::Closed { .. } => Some(false),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: true };
                Some(true)
            }
            State::Open { .. } => None,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Some(true)
            }
            State::HalfOpen { probing: true } => None,
        }
    }

    /// Would [`try_acquire`](Self::try_acquire) let a request through (without claiming)?
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } | State::HalfOpen { probing: false } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probing: true } => false,
        }
    }

    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
        self.cooldown = self.base_cooldown;
    }

    pub fn failure(&mut self, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        match self.state {
            State::Closed { failures } if failures + 1 >= self.threshold => self.open(now),
            State::Closed { failures } => {
                self.state = State::Closed {
                    failures: failures + 1,
                }
            }
            State::HalfOpen { .. } => {
                self.cooldown = self.cooldown.saturating_mul(2).min(self.max_cooldown);
                self.open(now);
            }
            State::Open { .. } => {}
        }
    }

    /// The claimed probe was never answered (request cancelled): let another one through.
    pub fn release_probe(&mut self) {
        if self.state == (State::HalfOpen { probing: true }) {
            self.state = State::HalfOpen { probing: false };
        }
    }

    fn open(&mut self, now: Instant) {
        self.ejections += 1;
        self.state = State::Open {
            until: now.checked_add(self.cooldown).unwrap_or(now),
        };
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Time until an open circuit half-opens.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.state {
            State::Open { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn breaker() -> Breaker {
        Breaker::new(Some(&BreakerConfig {
            failures: 3,
            cooldown: HumanDuration(Duration::from_secs(10)),
            max_cooldown: HumanDuration(Duration::from_secs(25)),
        }))
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.try_acquire(t0), Some(false), "a success reset the count");
        b.failure(t0);
        assert_eq!(b.try_acquire(t0), None);
        assert_eq!(b.ejections, 1);
        assert_eq!(b.retry_in(t0), Some(Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.available(t1));
        assert_eq!(b.try_acquire(t1), Some(true), "the probe");
        assert_eq!(b.try_acquire(t1), None, "one probe at a time");
        // Probe fails: open twice as long.
        b.failure(t1);
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(19)), None);
        assert_eq!(b.try_acquire(t1 + Duration::from_secs(20)), Some(true));
        // Fails again: capped at max_cooldown.
        let t2 = t1 + Duration::from_secs(20);
        b.failure(t2);
        assert_eq!(b.retry_in(t2), Some(Duration::from_secs(25)));
        // Probe succeeds: closed, cool-down back to 10 s.
        assert_eq!(b.try_acquire(t2 + Duration::from_secs(25)), Some(true));
        b.success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        for _ in 0..3 {
            b.failure(t2);
        }
        assert_eq!(b.retry_in(t2), Some(Duration::from_secs(10)));
    }

    #[test]
    fn disabled_never_opens_and_cancelled_probe_is_released() {
        let t0 = Instant::now();
        let mut off = Breaker::new(None);
        for _ in 0..100 {
            off.failure(t0);
        }
        assert_eq!(off.try_acquire(t0), Some(false));
        let mut b = breaker();
        for _ in 0..3 {
            b.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.try_acquire(t1), Some(true));
        b.release_probe();
        assert_eq!(b.try_acquire(t1), Some(true));
    }
}
