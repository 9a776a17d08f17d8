//! This replica's recent activity as a time series (`GET /admin/v1/stats`, for the UI and the
//! CLI): every 10 s a point with requests/s, tokens/s, error rate, latency and TTFT
//! percentiles, spend, and requests per provider; the last 15 minutes are kept. Kept only when
//! the admin API exists (an admin key is configured): otherwise nothing is recorded.
//!
//! Per request: one uncontended lock and a few additions. Latencies are sampled (at most
//! `SAMPLES` per interval, later ones overwrite in turn), so memory does not grow with load.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

/// Streams being answered by this process (the UI's "active streams").
static ACTIVE_STREAMS: AtomicUsize = AtomicUsize::new(0);

pub fn stream_started() {
    ACTIVE_STREAMS.fetch_add(1, Ordering::Relaxed);
}

pub fn stream_ended() {
    ACTIVE_STREAMS.fetch_sub(1, Ordering::Relaxed);
}

pub const INTERVAL: Duration = Duration::from_secs(10);
/// 15 minutes of points.
const POINTS: usize = 90;
const SAMPLES: usize = 2048;

#[derive(Default)]
struct Bucket {
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    spend_micro: i64,
    latencies_us: Vec<u32>,
    ttfts_us: Vec<u32>,
    seen_latency: usize,
    seen_ttft: usize,
    by_provider: BTreeMap<String, u64>,
}

fn sample(v: &mut Vec<u32>, seen: &mut usize, x: u32) {
    if v.len() < SAMPLES {
        v.push(x);
    } else {
        v[*seen % SAMPLES] = x;
    }
    *seen += 1;
}

fn pct(v: &mut [u32], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    Some(f64::from(v[i]) / 1000.0)
}

/// One finished request, as the stats see it.
pub struct Record<'a> {
    pub status: u16,
    pub provider: Option<&'a str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub spend_micro: i64,
    pub duration: Duration,
    pub ttft: Option<Duration>,
}

pub struct Stats {
    current: Mutex<(Instant, Bucket)>,
    series: Mutex<VecDeque<Value>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            current: Mutex::new((Instant::now(), Bucket::default())),
            series: Mutex::new(VecDeque::with_capacity(POINTS)),
        }
    }
}

impl Stats {
    pub fn record(&self, r: Record<'_>) {
        let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut g.1;
        b.requests += 1;
        if r.status >= 500 || r.status == 0 {
            b.errors += 1;
        }
        b.prompt_tokens += r.prompt_tokens;
        b.completion_tokens += r.completion_tokens;
        b.spend_micro = b.spend_micro.saturating_add(r.spend_micro.max(0));
        let us = |d: Duration| d.as_micros().min(u128::from(u32::MAX)) as u32;
        let (lat, seen) = (&mut b.latencies_us, &mut b.seen_latency);
        sample(lat, seen, us(r.duration));
        if let Some(t) = r.ttft {
            sample(&mut b.ttfts_us, &mut b.seen_ttft, us(t));
        }
        if let Some(p) = r.provider {
            // Providers are configured names: a bounded set.
            match b.by_provider.get_mut(p) {
                Some(n) => *n += 1,
                None => {
                    b.by_provider.insert(p.to_string(), 1);
                }
            }
        }
    }

    /// A point of the interval so far (`tick`: and start the next one).
    fn point(&self, tick: bool) -> Value {
        let (started, mut b) = {
            let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if tick {
                let taken = std::mem::take(&mut g.1);
                let started = std::mem::replace(&mut g.0, Instant::now());
                (started, taken)
            } else {
                let b = &g.1;
                (
                    g.0,
                    Bucket {
                        requests: b.requests,
                        errors: b.errors,
                        prompt_tokens: b.prompt_tokens,
                        completion_tokens: b.completion_tokens,
                        spend_micro: b.spend_micro,
                        latencies_us: b.latencies_us.clone(),
                        ttfts_us: b.ttfts_us.clone(),
                        by_provider: b.by_provider.clone(),
                        ..Default::default()
                    },
                )
            }
        };
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let at = crate::store::now_ms() / 1000;
        json!({
            "at": at,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "requests": b.requests,
            "requests_per_second": b.requests as f64 / secs,
            "tokens_per_second": (b.prompt_tokens + b.completion_tokens) as f64 / secs,
            "error_rate": if b.requests == 0 { 0.0 } else { b.errors as f64 / b.requests as f64 },
            "latency_p50_ms": pct(&mut b.latencies_us, 0.5),
            "latency_p99_ms": pct(&mut b.latencies_us, 0.99),
            "ttft_p50_ms": pct(&mut b.ttfts_us, 0.5),
            "ttft_p99_ms": pct(&mut b.ttfts_us, 0.99),
            "spend_usd": b.spend_micro as f64 / 1e6,
            "requests_by_provider": b.by_provider,
        })
    }

    /// `GET /admin/v1/stats`.
    pub fn listing(&self) -> Value {
        let series: Vec<Value> = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        json!({
            "object": "stats",
            "scope": "this replica",
            "interval_seconds": INTERVAL.as_secs(),
            "in_flight": crate::drain::in_flight(),
            "active_streams": ACTIVE_STREAMS.load(Ordering::Relaxed),
            "data": series,
            "current": self.point(false),
        })
    }
}

/// Closes an interval every `INTERVAL` (a background service).
pub struct StatsService(pub Arc<Stats>);

#[async_trait]
impl BackgroundService for StatsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let p = self.0.point(true);
            let mut s = self.0.series.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() == POINTS {
                s.pop_front();
            }
            s.push_back(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_and_bounded_samples() {
        let s = Stats::default();
        for i in 0..5000u64 {
            s.record(Record {
                status: if i % 10 == 0 { 502 } else { 200 },
                provider: Some("openai"),
                prompt_tokens: 10,
                completion_tokens: 5,
                spend_micro: 1,
                duration: Duration::from_millis(i % 100),
                ttft: Some(Duration::from_millis(5)),
            });
        }
        assert_eq!(s.current.lock().unwrap().1.latencies_us.len(), SAMPLES);
        let p = s.point(true);
        assert_eq!(p["requests"], 5000);
        assert_eq!(p["error_rate"], 0.1);
        assert_eq!(p["requests_by_provider"]["openai"], 5000);
        assert_eq!(p["ttft_p50_ms"], 5.0);
        assert!(p["latency_p99_ms"].as_f64().unwrap() >= 90.0, "{p}");
        assert_eq!(s.point(false)["requests"], 0, "a new interval");
    }
}
