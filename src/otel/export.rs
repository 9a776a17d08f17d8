//! The batch exporter: a background service that sends queued spans to the OTLP endpoint every
//! `bsp_schedule_delay`, or as soon as a batch is full, off the request path. A failed export is
//! retried once (connection errors, 429, 502-504); then its spans are dropped and counted, so a
//! collector that is down costs memory up to the queue's bound and nothing else.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;

use super::proto;
use super::Tracer;
use crate::config::otel::{OtelConfig, OtlpProtocol};

pub struct ExportService(pub Arc<Tracer>);

fn resource(cfg: &OtelConfig) -> proto::Resource {
    let s = |key: &str, v: String| proto::KeyValue {
        key: key.to_string(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(v)),
        }),
    };
    // Later entries win: the defaults, then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME.
    let mut pairs: Vec<(String, String)> = vec![
        ("service.name".into(), "inference-gateway".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("telemetry.sdk.name".into(), "inference-gateway".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
    ];
    let extra = cfg.resource_attributes.as_deref().map(OtelConfig::pairs);
    let name = cfg
        .service_name
        .clone()
        .map(|n| ("service.name".to_string(), n));
    for (k, v) in extra.into_iter().flatten().chain(name) {
        match pairs.iter_mut().find(|(key, _)| *key == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    proto::Resource {
        attributes: pairs.into_iter().map(|(k, v)| s(&k, v)).collect(),
    }
}

struct Exporter {
    client: reqwest13::Client,
    url: String,
    protocol: OtlpProtocol,
    headers: reqwest13::header::HeaderMap,
    resource: proto::Resource,
    /// The last export failed (logged once per outage, not per batch).
    failing: bool,
}

impl Exporter {
    fn new(tracer: &Tracer) -> Result<Exporter, String> {
        let cfg = &tracer.cfg;
        let mut headers = reqwest13::header::HeaderMap::new();
        if let Some(h) = &cfg.exporter_otlp_headers {
            for (k, v) in OtelConfig::pairs(h.expose()) {
                let name = reqwest13::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad header name {k:?}"))?;
                let value = reqwest13::header::HeaderValue::from_str(&v)
                    .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {k}"))?;
                headers.insert(name, value);
            }
        }
        let client = reqwest13::Client::builder()
            .timeout(cfg.exporter_otlp_timeout.get())
            .build()
            .map_err(|e| format!("OTLP client: {e}"))?;
        Ok(Exporter {
            client,
            url: tracer.url.clone(),
            protocol: cfg.exporter_otlp_protocol,
            headers,
            resource: resource(cfg),
            failing: false,
        })
    }

    fn body(&self, spans: Vec<proto::Span>) -> (Vec<u8>, &'static str) {
        let req = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "inference-gateway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match self.protocol {
            OtlpProtocol::HttpProtobuf => (req.encode_to_vec(), "application/x-protobuf"),
            OtlpProtocol::HttpJson => (req.to_json().to_string().into_bytes(), "application/json"),
        }
    }

    /// Sends one batch; `true` when the receiver took it.
    async fn send(&mut self, tracer: &Tracer, spans: Vec<proto::Span>) -> bool {
        let n = spans.len() as u64;
        let (body, content_type) = self.body(spans);
        let body = bytes::Bytes::from(body);
        let mut outcome = Err(String::new());
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let sent = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .header(reqwest13::header::CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await;
            outcome = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let e = Err(format!("the receiver answered {status}"));
                    if !matches!(status, 429 | 502 | 503 | 504) {
                        break;
                    }
                    e
                }
                // The URL is not logged: it may carry credentials.
                Err(e) if e.is_timeout() => Err("the receiver timed out".into()),
                Err(_) => Err("the receiver could not be reached".into()),
            };
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                if self.failing {
                    log::info!("OTLP export: recovered");
                    self.failing = false;
                }
                tracer.exported.fetch_add(n, Ordering::Relaxed);
                if let Some(m) = &tracer.metrics {
                    m.trace_spans.with_label_values(&["exported"]).inc_by(n);
                }
                true
            }
            Err(e) => {
                if !self.failing {
                    log::warn!("OTLP export failed ({e}); spans are dropped until it recovers");
                    self.failing = true;
                }
                tracer.count_dropped(n);
                false
            }
        }
    }

    /// Exports everything queued, batch by batch.
    async fn drain(&mut self, tracer: &Tracer) {
        loop {
            let batch = tracer.take_batch();
            if batch.is_empty() {
                return;
            }
            let full = batch.len() >= tracer.batch;
            self.send(tracer, batch).await;
            if !full {
                return;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tracer = &self.0;
        let mut exporter = match Exporter::new(tracer) {
            Ok(e) => e,
            Err(e) => {
                log::error!("tracing disabled: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(
            tracer
                .cfg
                .bsp_schedule_delay
                .get()
                .max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
                _ = tracer.woken() => {}
            }
            exporter.drain(tracer).await;
        }
        // Requests still running (streams draining before an upgrade or exit) finish their spans
        // after the signal: keep exporting while they do, for as long as the process lives.
        while crate::drain::in_flight() > 0 {
            exporter.drain(tracer).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        exporter.drain(tracer).await;
    }
}
