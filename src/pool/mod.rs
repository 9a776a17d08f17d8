//! Backend pools: every provider is served by a pool of one or more backends (each a full
//! [`Provider`] with its own URL, key, address cache and health), chosen per request.
//!
//! - Selection: weighted round robin with pingora-load-balancing's `Weighted<RoundRobin>`, or
//!   least outstanding requests; backends that are ejected (circuit open) or failed their active
//!   health check are skipped.
//! - Health: [`breaker`] (passive: consecutive failures eject for a doubling cool-down, then one
//!   half-open probe) and [`health`] (active: periodic `GET` of a path).
//! - Load shedding: [`Shed`] bounds the requests in flight per provider, with a short queue.

pub mod breaker;
pub mod health;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::lb::selection::algorithms::RoundRobin;
use pingora::lb::selection::weighted::Weighted;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::resilience::{Balance, RetryConfig, TimeoutsConfig};
use crate::config::{Config, ConfigError, ProviderConfig};
use crate::providers::{Provider, Providers};

use breaker::Breaker;

/// One backend of a pool.
pub struct Slot {
    /// The backend as a provider: URL, key, headers, dialect, address cache.
    pub provider: Arc<Provider>,
    /// `scheme://host:port` (a label for metrics and `/health?verbose`; never a key).
    pub label: String,
    pub weight: u32,
    /// Built from `backends` (not the provider's own entry): refreshed by DNS separately.
    own_provider: bool,
    /// `None` when ejection is off: then no lock is taken per request.
    breaker: Option<Mutex<Breaker>>,
    /// Result of the active health check (true until a check says otherwise).
    pub(crate) active_healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// Time to the backend's response headers, a moving average in microseconds (0: none yet),
    /// for `/admin/v1/health` and the UI.
    latency_us: AtomicU64,
    /// Answered 429 with `Retry-After`: avoided until then (milliseconds since [`BASE`]) while
    /// another backend can take the request.
    busy_until_ms: AtomicU64,
}

/// Time origin of `busy_until_ms`.
static BASE: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

fn ms(t: Instant) -> u64 {
    t.saturating_duration_since(*BASE).as_millis() as u64
}

impl Slot {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Moving average of the time to response headers (milliseconds), once one was seen.
    pub fn latency_ms(&self) -> Option<f64> {
        let us = self.latency_us.load(Ordering::Relaxed);
        (us > 0).then(|| (us as f64 / 10.0).round() / 100.0)
    }

    /// Adds one answer's time to the average (weight 1/8; racing updates may lose one sample,
    /// which an average does not mind).
    fn record_latency(&self, took: Duration) {
        let x = (took.as_micros() as u64).max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    fn usable(&self, now: Instant) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && self.breaker().is_none_or(|b| b.available(now))
    }

    fn busy(&self, now: Instant) -> bool {
        ms(now) < self.busy_until_ms.load(Ordering::Relaxed)
    }

    /// The backend answered (any response other than 5xx/408, which are failures).
    pub fn success(&self) {
        if let Some(mut b) = self.breaker() {
            b.success();
        }
    }

    /// Connect error, first-byte timeout, 5xx or 408.
    pub fn failure(&self) {
        if let Some(mut b) = self.breaker() {
            b.failure(Instant::now());
        }
    }

    /// A poisoned lock only means a panic elsewhere; the breaker's state is still sound.
    fn breaker(&self) -> Option<std::sync::MutexGuard<'_, Breaker>> {
        self.breaker
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `healthy`, `ejected` (circuit open or probing) or `unhealthy` (active check).
    pub fn status(&self) -> &'static str {
        if !self.active_healthy.load(Ordering::Relaxed) {
            return "unhealthy";
        }
        match self
            .breaker()
            .map_or(breaker::State::Closed { failures: 0 }, |b| b.state())
        {
            breaker::State::Closed { .. } => "healthy",
            breaker::State::Open { .. } => "ejected",
            breaker::State::HalfOpen { .. } => "half_open",
        }
    }
}

/// A request on a slot: counted in flight (least-outstanding selection) until dropped, and the
/// holder of the slot's half-open probe if it claimed it. A probe that is never resolved
/// (request cancelled, shed, ...) is released on drop, so a backend can never stay stuck.
pub struct InFlight {
    pool: Arc<Pool>,
    slot: usize,
    probe: bool,
    started: Instant,
}

impl InFlight {
    pub fn slot(&self) -> &Slot {
        &self.pool.slots[self.slot]
    }

    pub fn success(&mut self) {
        self.slot().success();
        self.slot().record_latency(self.started.elapsed());
        self.probe = false;
    }

    pub fn failure(&mut self) {
        self.slot().failure();
        self.probe = false;
    }

    /// A 429: alive (not a failure), but avoided for its `Retry-After` (at most a minute) while
    /// other backends can serve.
    pub fn rate_limited(&mut self, retry_after: Option<Duration>) {
        self.success();
        if let Some(ra) = retry_after {
            let until = ms(Instant::now()) + ra.min(Duration::from_secs(60)).as_millis() as u64;
            self.slot()
                .busy_until_ms
                .fetch_max(until, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let slot = &self.pool.slots[self.slot];
        if self.probe {
            if let Some(mut b) = slot.breaker() {
                b.release_probe();
            }
        }
        slot.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bounds concurrent upstream requests of a provider; a few may wait briefly.
pub struct Shed {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// Why a request was shed.
#[derive(Debug)]
pub struct Overloaded;

impl Shed {
    /// A permit for one upstream request, held until the response is finished.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded);
        }
        let got =
            tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Overloaded),
        }
    }

    /// Suggested `Retry-After` for shed requests.
    pub fn retry_after(&self) -> Duration {
        self.queue_timeout.max(Duration::from_secs(1))
    }
}

pub struct Pool {
    pub name: String,
    pub slots: Vec<Slot>,
    balance: Balance,
    selector: Arc<Weighted<RoundRobin>>,
    /// Start of the least-outstanding scan (ties rotate).
    rotation: AtomicUsize,
    pub shed: Option<Shed>,
    pub retry: RetryConfig,
    /// Provider-level timeout overrides.
    pub timeouts: TimeoutsConfig,
    pub health_check: Option<crate::config::resilience::HealthCheckConfig>,
}

impl Pool {
    pub(crate) fn from_config(
        name: &str,
        p: &ProviderConfig,
        provider: &Arc<Provider>,
        global_retry: Option<&RetryConfig>,
    ) -> Result<Pool, ConfigError> {
        let mut slots = Vec::new();
        let breaker_cfg = match (&p.circuit_breaker, p.backends.len()) {
            (Some(c), _) => Some(c.clone()),
            (None, n) if n >= 2 => Some(Default::default()),
            _ => None,
        };
        if p.backends.is_empty() {
            slots.push(Slot::new(provider.clone(), 1, breaker_cfg.as_ref(), false));
        } else {
            for b in &p.backends {
                let mut one = p.clone();
                one.url = Some(b.url.trim_end_matches('/').to_string());
                if let Some(k) = &b.api_key {
                    one.api_key = Some(k.clone());
                }
                one.backends.clear();
                let backend = Arc::new(Provider::from_config(name, &one)?);
                slots.push(Slot::new(backend, b.weight, breaker_cfg.as_ref(), true));
            }
        }
        // Backends are identified to the selector by their position (an address would not do:
        // several backends may share one, and DNS changes it).
        let set: BTreeSet<Backend> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut b = Backend::new(&format!("0.0.0.0:{}", i + 1)).expect("valid address");
                b.weight = s.weight as usize;
                b
            })
            .collect();
        let slots_len = slots.len();
        let shed = (p.max_concurrent > 0).then(|| Shed {
            permits: Arc::new(Semaphore::new(p.max_concurrent)),
            waiting: AtomicUsize::new(0),
            max_queue: p.max_queue.unwrap_or(16),
            queue_timeout: p.queue_timeout.map_or(Duration::from_secs(1), |d| d.get()),
        });
        Ok(Pool {
            name: name.to_string(),
            slots,
            balance: p.balance,
            selector: Arc::new(Weighted::<RoundRobin>::build(&set)),
            rotation: AtomicUsize::new(0),
            shed,
            // A single backend is retried only when its provider asks (`retry = {...}`): its
            // failures mostly repeat, and clients (SDKs) retry too. `[retry]` is for pools.
            retry: match (&p.retry, slots_len) {
                (Some(r), _) => r.clone(),
                (None, 1) => RetryConfig {
                    attempts: 1,
                    ..global_retry.cloned().unwrap_or_default()
                },
                (None, _) => global_retry.cloned().unwrap_or_default(),
            },
            timeouts: p.timeouts,
            health_check: p.health_check.clone(),
        })
    }

    /// Picks a usable backend, preferring ones not in `tried`; claims a half-open probe if it
    /// picks an ejected backend whose cool-down is over. `None`: every backend is out.
    pub fn select(self: &Arc<Self>, tried: &[usize]) -> Option<(usize, InFlight)> {
        let now = Instant::now();
        // Backends that asked to be left alone (429 + Retry-After) only when nothing else can.
        let pick = match self.balance {
            Balance::RoundRobin => self
                .pick_round_robin(tried, now, true)
                .or_else(|| self.pick_round_robin(tried, now, false)),
            Balance::LeastOutstanding => self
                .pick_least_outstanding(tried, now, true)
                .or_else(|| self.pick_least_outstanding(tried, now, false)),
        }?;
        let claimed = match self.slots[pick].breaker() {
            Some(mut b) => b.try_acquire(now),
            None => Some(false),
        };
        let Some(probe) = claimed else {
            // Lost a race for the half-open probe: try once more without it.
            let mut more = tried.to_vec();
            more.push(pick);
            return (more.len() < self.slots.len() * 2)
                .then(|| self.select(&more))
                .flatten();
        };
        self.slots[pick].outstanding.fetch_add(1, Ordering::Relaxed);
        Some((
            pick,
            InFlight {
                pool: self.clone(),
                slot: pick,
                probe,
                started: now,
            },
        ))
    }

    fn pick_round_robin(&self, tried: &[usize], now: Instant, avoid_busy: bool) -> Option<usize> {
        let n = self.slots.len();
        let ok = |i: usize| self.slots[i].usable(now) && !(avoid_busy && self.slots[i].busy(now));
        let mut iter = self.selector.iter(b"");
        let mut fallback = None;
        // The first pick is weighted; the rest walk the backends once around.
        for _ in 0..=n {
            let Some(b) = iter.next() else { break };
            let i = b.addr.as_inet().map_or(0, |a| a.port() as usize - 1);
            if !ok(i) {
                continue;
            }
            if !tried.contains(&i) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        // Concurrent requests move the shared counter, so the walk may have missed one.
        (0..n)
            .find(|&i| !tried.contains(&i) && ok(i))
            // Every usable backend was tried: retry one (a pool of one retries itself).
            .or(fallback)
            .or_else(|| (0..n).find(|&i| ok(i)))
    }

    fn pick_least_outstanding(
        &self,
        tried: &[usize],
        now: Instant,
        avoid_busy: bool,
    ) -> Option<usize> {
        // Ties go round: start the scan at a rotating position (`min_by_key` keeps the first).
        let n = self.slots.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let usable = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| self.slots[i].usable(now) && !(avoid_busy && self.slots[i].busy(now)));
        let fresh = usable
            .clone()
            .filter(|i| !tried.contains(i))
            .min_by_key(|&i| self.slots[i].outstanding());
        fresh.or_else(|| usable.min_by_key(|&i| self.slots[i].outstanding()))
    }

    /// Whether a backend is the provider's own `url` (not only `backends` of their own).
    pub fn uses_provider_url(&self) -> bool {
        self.slots.iter().any(|s| !s.own_provider)
    }

    /// True when no backend has the key the provider needs.
    pub fn missing_key(&self) -> bool {
        self.slots.iter().all(|s| s.provider.missing_key())
    }

    /// Whether a usable backend remains that is not in `tried`.
    pub fn has_untried(&self, tried: &[usize]) -> bool {
        let now = Instant::now();
        (0..self.slots.len()).any(|i| !tried.contains(&i) && self.slots[i].usable(now))
    }

    /// Time until the first ejected backend may be probed (for `Retry-After`).
    pub fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter_map(|s| s.breaker().and_then(|b| b.retry_in(now)))
            .min()
    }

    /// `GET /health?verbose` entry.
    pub fn describe(&self) -> Value {
        let backends: Vec<Value> = self
            .slots
            .iter()
            .map(|s| {
                json!({
                    "backend": s.label,
                    "weight": s.weight,
                    "status": s.status(),
                    "outstanding": s.outstanding(),
                    "ejections": s.breaker().map_or(0, |b| b.ejections),
                    "latency_ms": s.latency_ms(),
                })
            })
            .collect();
        json!({
            "balance": match self.balance { Balance::RoundRobin => "round_robin", Balance::LeastOutstanding => "least_outstanding" },
            "backends": backends,
        })
    }
}

impl Slot {
    fn new(
        provider: Arc<Provider>,
        weight: u32,
        breaker: Option<&crate::config::resilience::BreakerConfig>,
        own_provider: bool,
    ) -> Slot {
        let scheme = if provider.tls { "https" } else { "http" };
        Slot {
            // Origin and base path: backends on one host are told apart, keys never shown.
            label: format!("{scheme}://{}{}", provider.authority, provider.base_path),
            provider,
            weight,
            own_provider,
            breaker: breaker
                .filter(|c| c.failures > 0)
                .map(|c| Mutex::new(Breaker::new(Some(c)))),
            active_healthy: AtomicBool::new(true),
            outstanding: AtomicUsize::new(0),
            latency_us: AtomicU64::new(0),
            busy_until_ms: AtomicU64::new(0),
        }
    }
}

/// The pools of every provider, by provider name: the configuration's, and those the control
/// plane adds at run time (swapped whole, read without a lock).
pub struct Pools {
    by_name: BTreeMap<String, Arc<Pool>>,
    runtime: arc_swap::ArcSwap<BTreeMap<String, Arc<Pool>>>,
}

impl Pools {
    pub fn from_config(cfg: &Config, providers: &Providers) -> Result<Pools, ConfigError> {
        let mut by_name = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let Some(provider) = providers.get(name) else {
                continue;
            };
            by_name.insert(
                name.clone(),
                Arc::new(Pool::from_config(name, p, provider, cfg.retry.as_ref())?),
            );
        }
        Ok(Pools {
            by_name,
            runtime: Default::default(),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        match self.by_name.get(name) {
            Some(p) => Some(p.clone()),
            None => self.runtime.load().get(name).cloned(),
        }
    }

    /// Every pool, the configuration's first.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let runtime = self.runtime.load();
        self.by_name
            .values()
            .chain(runtime.values())
            .cloned()
            .collect()
    }

    /// A pool added at run time (the catalog reuses unchanged ones, keeping their health).
    pub fn runtime_pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.runtime.load().get(name).cloned()
    }

    /// Replaces the pools added at run time.
    pub fn set_runtime(&self, pools: BTreeMap<String, Arc<Pool>>) {
        self.runtime.store(Arc::new(pools));
    }

    /// Every backend with an address of its own to refresh: those built from `backends` (the
    /// provider's own entry is refreshed with the providers) and every run-time backend.
    pub fn backend_providers(&self) -> Vec<Arc<Provider>> {
        let own = self
            .by_name
            .values()
            .flat_map(|p| p.slots.iter())
            .filter(|s| s.own_provider);
        let runtime = self.runtime.load();
        own.chain(runtime.values().flat_map(|p| p.slots.iter()))
            .map(|s| s.provider.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(toml: &str) -> Arc<Pool> {
        let mut cfg = Config::from_toml(toml).unwrap();
        crate::config::providers_for_tests(&mut cfg);
        let providers = Providers::from_config(&cfg).unwrap();
        let pools = Pools::from_config(&cfg, &providers).unwrap();
        pools.get("p").unwrap().clone()
    }

    const TWO: &str = r#"
[providers.p]
backends = [{ url = "http://10.0.0.1:8000/v1", weight = 3 }, { url = "http://10.0.0.2:8000/v1" }]
[providers.p.circuit_breaker]
failures = 1
cooldown = "1h"
"#;

    #[test]
    fn weighted_round_robin_follows_weights_and_skips_ejected() {
        let p = pool(TWO);
        let mut counts = [0usize; 2];
        for _ in 0..400 {
            let (i, _g) = p.select(&[]).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [300, 100]);
        p.slots[0].failure();
        for _ in 0..10 {
            assert_eq!(p.select(&[]).unwrap().0, 1);
        }
        assert_eq!(p.slots[0].status(), "ejected");
        p.slots[1].failure();
        assert!(p.select(&[]).is_none());
        assert!(p.retry_in().unwrap() > Duration::from_secs(3500));
    }

    #[test]
    fn retries_prefer_untried_backends_and_least_outstanding_balances() {
        let p = pool(TWO);
        let (first, _a) = p.select(&[]).unwrap();
        let (second, _b) = p.select(&[first]).unwrap();
        assert_ne!(first, second);
        // Both tried: one of them again rather than nothing.
        assert!(p.select(&[0, 1]).is_some());
        let p = pool(&TWO.replace(
            "[providers.p]",
            "[providers.p]\nbalance = \"least_outstanding\"",
        ));
        let (a, ga) = p.select(&[]).unwrap();
        let (b, _gb) = p.select(&[]).unwrap();
        assert_ne!(a, b, "the busy one is avoided");
        drop(ga);
        assert_eq!(p.select(&[]).unwrap().0, a);
    }

    #[test]
    fn a_rate_limited_backend_is_avoided_while_another_can_serve() {
        let p = pool(TWO);
        let (i, mut g) = p.select(&[]).unwrap();
        g.rate_limited(Some(Duration::from_secs(30)));
        drop(g);
        for _ in 0..10 {
            assert_ne!(p.select(&[]).unwrap().0, i);
        }
        // Alone, it is still used (its own 429 is better than no answer).
        let one = pool("[providers.p]\nurl = \"http://10.0.0.1/v1\"\n");
        let (_, mut g) = one.select(&[]).unwrap();
        g.rate_limited(Some(Duration::from_secs(30)));
        drop(g);
        assert!(one.select(&[]).is_some());
    }

    #[test]
    fn single_backend_pool_never_ejects_by_default() {
        let p = pool("[providers.p]\nurl = \"http://10.0.0.1/v1\"\n");
        for _ in 0..20 {
            p.slots[0].failure();
        }
        assert!(p.select(&[]).is_some());
        assert_eq!(p.slots[0].label, "http://10.0.0.1/v1");
    }
}
