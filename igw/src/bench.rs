//! `igw bench`: a closed-loop load test of a deployment. `concurrency` workers each send one
//! chat completion after another until the time is up; then RPS, latency percentiles, time to
//! first token (streams) and errors. A progress bar while it runs; `--json` for CI.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::chat::stream_chat;
use crate::client::{gateway_error, transport, Failure, Gateway};
use crate::BenchArgs;

/// One request's outcome.
enum Outcome {
    Ok {
        latency: Duration,
        ttft: Option<Duration>,
        completion_tokens: u64,
    },
    /// An HTTP status from the gateway, or `transport` (0).
    Failed { status: u16, message: String },
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ttfts: Vec<Duration>,
    completion_tokens: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    transport_errors: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i].as_secs_f64() * 1000.0)
}

async fn one(gw: &Gateway, http: &reqwest::Client, args: &BenchArgs, model: &str) -> Outcome {
    let started = Instant::now();
    let messages = [json!({"role": "user", "content": args.prompt})];
    if args.stream {
        return match stream_chat(
            gw,
            http,
            model,
            &messages,
            Some(args.max_tokens),
            true,
            |_| {},
        )
        .await
        {
            Ok(a) => Outcome::Ok {
                latency: started.elapsed(),
                ttft: a.ttft,
                completion_tokens: a.completion_tokens.unwrap_or(0),
            },
            Err(Failure::Gateway { status, message }) => Outcome::Failed { status, message },
            Err(f) => Outcome::Failed {
                status: 0,
                message: f.to_string(),
            },
        };
    }
    let body = json!({"model": model, "messages": messages, "max_tokens": args.max_tokens});
    let mut req = http
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = &gw.api_key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                status: 0,
                message: transport(&e, &gw.base).to_string(),
            }
        }
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) if status < 400 => {
            let tokens = serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["usage"]["completion_tokens"].as_u64())
                .unwrap_or(0);
            Outcome::Ok {
                latency: started.elapsed(),
                ttft: None,
                completion_tokens: tokens,
            }
        }
        Ok(b) => Outcome::Failed {
            status,
            message: gateway_error(status, &b).to_string(),
        },
        Err(e) => Outcome::Failed {
            status: 0,
            message: transport(&e, &gw.base).to_string(),
        },
    }
}

pub async fn run(gw: &Gateway, args: BenchArgs) -> Result<(), Failure> {
    let model = gw.model_or_first(args.model.clone()).await?;
    let c = args.concurrency as usize;
    // Its own client: one idle connection per worker, so the test measures the gateway and
    // not connection set-up.
    let http = Gateway::client(Duration::from_secs(60), c)?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(args.duration.as_millis() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    };
    let started = Instant::now();
    let deadline = started + args.duration;
    let shared = Arc::new((args, model.clone()));
    let mut workers = Vec::with_capacity(c);
    for _ in 0..c {
        let (http, shared, done, failed) =
            (http.clone(), shared.clone(), done.clone(), failed.clone());
        let gw = Gateway {
            base: gw.base.clone(),
            http: http.clone(),
            api_key: gw.api_key.clone(),
            admin_key: None,
        };
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                match one(&gw, &http, &shared.0, &shared.1).await {
                    Outcome::Ok {
                        latency,
                        ttft,
                        completion_tokens,
                    } => {
                        tally.latencies.push(latency);
                        tally.ttfts.extend(ttft);
                        tally.completion_tokens += completion_tokens;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Failed { status, message } => {
                        let label = if status == 0 {
                            "transport".to_string()
                        } else {
                            status.to_string()
                        };
                        *tally.errors.entry(label).or_default() += 1;
                        if status == 0 {
                            tally.transport_errors += 1;
                            // The gateway is down: do not spin on refused connections.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        tally.first_error.get_or_insert(message);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            tally
        }));
    }
    // The progress bar, until the time is up.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let ok = done.load(Ordering::Relaxed);
        bar.set_position(started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64);
        bar.set_message(format!(
            "{ok} ok, {} errors, {:.0} req/s",
            failed.load(Ordering::Relaxed),
            ok as f64 / secs
        ));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w
            .await
            .map_err(|e| Failure::Other(format!("a worker failed: {e}")))?;
        all.latencies.extend(t.latencies);
        all.ttfts.extend(t.ttfts);
        all.completion_tokens += t.completion_tokens;
        all.transport_errors += t.transport_errors;
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies.sort_unstable();
    all.ttfts.sort_unstable();
    let ok = all.latencies.len() as u64;
    let errors: u64 = all.errors.values().sum();
    let (args, model) = &*shared;
    let report = json!({
        "model": model,
        "url": gw.base,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "duration_seconds": (elapsed * 1000.0).round() / 1000.0,
        "requests": ok + errors,
        "succeeded": ok,
        "errors": errors,
        "errors_by_status": all.errors,
        "first_error": all.first_error,
        "requests_per_second": ok as f64 / elapsed,
        "completion_tokens_per_second": all.completion_tokens as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&all.latencies, 0.5),
            "p90": percentile(&all.latencies, 0.9),
            "p99": percentile(&all.latencies, 0.99),
            "max": all.latencies.last().map(|d| d.as_secs_f64() * 1000.0),
        },
        "ttft_ms": if args.stream { json!({
            "p50": percentile(&all.ttfts, 0.5),
            "p90": percentile(&all.ttfts, 0.9),
            "p99": percentile(&all.ttfts, 0.99),
        }) } else { Value::Null },
    });
    if args.json {
        crate::table::json(&report);
    } else {
        let ms = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2} ms"));
        println!(
            "{model} at {}: {} requests in {:.1} s, concurrency {}{}",
            gw.base,
            ok + errors,
            elapsed,
            args.concurrency,
            if args.stream { ", streamed" } else { "" }
        );
        println!("  requests/s    {:.1}", ok as f64 / elapsed);
        println!(
            "  tokens/s      {:.1} (completion)",
            all.completion_tokens as f64 / elapsed
        );
        let l = &report["latency_ms"];
        println!(
            "  latency       p50 {}  p90 {}  p99 {}  max {}",
            ms(&l["p50"]),
            ms(&l["p90"]),
            ms(&l["p99"]),
            ms(&l["max"])
        );
        if args.stream {
            let t = &report["ttft_ms"];
            println!(
                "  TTFT          p50 {}  p90 {}  p99 {}",
                ms(&t["p50"]),
                ms(&t["p90"]),
                ms(&t["p99"])
            );
        }
        let by: Vec<String> = all
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "  errors        {errors}{}",
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        );
        if let Some(e) = &all.first_error {
            println!("  first error   {e}");
        }
    }
    // Nothing succeeded: the run says nothing about the gateway's speed.
    if ok == 0 {
        return Err(if all.transport_errors == errors && errors > 0 {
            Failure::Transport(format!(
                "no request reached the gateway at {}: {}",
                gw.base,
                all.first_error.as_deref().unwrap_or("")
            ))
        } else {
            Failure::Other(format!(
                "no request succeeded: {}",
                all.first_error.as_deref().unwrap_or("no request was sent")
            ))
        });
    }
    Ok(())
}
