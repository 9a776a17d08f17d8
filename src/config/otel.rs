//! `[otel]`: OpenTelemetry traces (see README "Tracing"). The keys are the standard `OTEL_*`
//! variables without their prefix, so `OTEL_EXPORTER_OTLP_ENDPOINT` is `[otel]
//! exporter_otlp_endpoint` and every OpenTelemetry deployment recipe works unchanged.

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// Base URL of the OTLP receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`); traces go to
    /// `<endpoint>/v1/traces`. Unset (and no traces endpoint): tracing is off.
    pub exporter_otlp_endpoint: Option<String>,
    /// Full URL for traces (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), used as is.
    pub exporter_otlp_traces_endpoint: Option<String>,
    /// `http/protobuf` or `http/json` (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub exporter_otlp_protocol: OtlpProtocol,
    /// Headers sent with every export, `key=value,key2=value2` (`OTEL_EXPORTER_OTLP_HEADERS`):
    /// a collector's credentials, so kept out of logs.
    pub exporter_otlp_headers: Option<Secret>,
    /// Time allowed for one export (`OTEL_EXPORTER_OTLP_TIMEOUT`; a bare number is
    /// milliseconds, as the specification writes it).
    pub exporter_otlp_timeout: HumanDuration,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`); else the one in the resource
    /// attributes; else `inference-gateway`.
    pub service_name: Option<String>,
    /// More resource attributes, `key=value,...` (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off`, `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`).
    pub traces_sampler: String,
    /// The ratio of the `traceidratio` samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`).
    pub traces_sampler_arg: Option<f64>,
    /// Record prompts and completions on spans
    /// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`): off by default, they may hold
    /// anything users type.
    pub instrumentation_genai_capture_message_content: bool,
    /// Longest wait before queued spans are exported (`OTEL_BSP_SCHEDULE_DELAY`).
    pub bsp_schedule_delay: HumanDuration,
    /// Spans waiting for export; past it new spans are dropped and counted
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub bsp_max_queue_size: usize,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub bsp_max_export_batch_size: usize,
    /// Tracing off whatever else is set (`OTEL_SDK_DISABLED`).
    pub sdk_disabled: bool,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            exporter_otlp_endpoint: None,
            exporter_otlp_traces_endpoint: None,
            exporter_otlp_protocol: OtlpProtocol::HttpProtobuf,
            exporter_otlp_headers: None,
            exporter_otlp_timeout: HumanDuration::secs(10),
            service_name: None,
            resource_attributes: None,
            traces_sampler: "parentbased_always_on".into(),
            traces_sampler_arg: None,
            instrumentation_genai_capture_message_content: false,
            bsp_schedule_delay: HumanDuration(std::time::Duration::from_secs(5)),
            bsp_max_queue_size: 2048,
            bsp_max_export_batch_size: 512,
            sdk_disabled: false,
        }
    }
}

/// The samplers of the specification.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl OtelConfig {
    /// Where spans are sent, when tracing is on.
    pub fn traces_url(&self) -> Option<String> {
        if self.sdk_disabled {
            return None;
        }
        if let Some(u) = &self.exporter_otlp_traces_endpoint {
            return Some(u.clone());
        }
        let base = self.exporter_otlp_endpoint.as_ref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// `key=value` pairs of `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_RESOURCE_ATTRIBUTES` (values
    /// percent-decoded, as the specification says).
    pub fn pairs(s: &str) -> Vec<(String, String)> {
        s.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
                (k.trim().to_string(), v.into_owned())
            })
            .filter(|(k, _)| !k.is_empty())
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !SAMPLERS.contains(&self.traces_sampler.as_str()) {
            return Err(ConfigError(format!(
                "otel.traces_sampler (OTEL_TRACES_SAMPLER) = {:?}: expected one of {}",
                self.traces_sampler,
                SAMPLERS.join(", ")
            )));
        }
        if let Some(r) = self.traces_sampler_arg {
            if !(0.0..=1.0).contains(&r) {
                return Err(ConfigError(format!(
                    "otel.traces_sampler_arg (OTEL_TRACES_SAMPLER_ARG) = {r}: expected 0 to 1"
                )));
            }
        }
        if let Some(url) = self.traces_url() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "otel.exporter_otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) = {url:?}: expected an http:// or https:// URL"
                )));
            }
        }
        if let Some(h) = &self.exporter_otlp_headers {
            for (k, v) in Self::pairs(h.expose()) {
                // The value is not echoed: it is usually a credential.
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&v).is_err()
                {
                    return Err(ConfigError(format!(
                        "otel.exporter_otlp_headers (OTEL_EXPORTER_OTLP_HEADERS): {k:?} is not a valid header"
                    )));
                }
            }
        }
        if self.bsp_max_queue_size == 0 || self.bsp_max_export_batch_size == 0 {
            return Err(ConfigError(
                "otel.bsp_max_queue_size and otel.bsp_max_export_batch_size must be more than 0"
                    .into(),
            ));
        }
        Ok(())
    }
}
