//! The OTLP trace messages the gateway sends (opentelemetry-proto `trace/v1`, `common/v1`,
//! `resource/v1`, `collector/trace/v1`), with the field numbers of the published `.proto`
//! files, and their OTLP/JSON form (ids in hex, 64-bit integers as strings, enums as numbers).
//! Only the fields the gateway fills are declared; protobuf readers skip nothing they need.

use serde_json::{json, Value};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 1 internal, 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    /// W3C trace flags (bits 0-7), and whether the parent is remote (bits 8 and 9).
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(message, tag = "5")]
        ArrayValue(super::ArrayValue),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn any_json(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => json!({"stringValue": s}),
        Some(V::BoolValue(b)) => json!({"boolValue": b}),
        Some(V::IntValue(i)) => json!({"intValue": i.to_string()}),
        Some(V::DoubleValue(d)) => json!({"doubleValue": d}),
        Some(V::ArrayValue(a)) => {
            json!({"arrayValue": {"values": a.values.iter().map(any_json).collect::<Vec<_>>()}})
        }
        None => json!({}),
    }
}

fn attributes_json(attrs: &[KeyValue]) -> Value {
    attrs
        .iter()
        .map(|kv| json!({"key": kv.key, "value": kv.value.as_ref().map(any_json)}))
        .collect::<Vec<_>>()
        .into()
}

impl ExportTraceServiceRequest {
    /// The OTLP/JSON encoding (`http/json`).
    pub fn to_json(&self) -> Value {
        let resource_spans: Vec<Value> = self
            .resource_spans
            .iter()
            .map(|rs| {
                let scope_spans: Vec<Value> = rs
                    .scope_spans
                    .iter()
                    .map(|ss| {
                        let spans: Vec<Value> = ss
                            .spans
                            .iter()
                            .map(|s| {
                                let mut v = json!({
                                    "traceId": hex(&s.trace_id),
                                    "spanId": hex(&s.span_id),
                                    "name": s.name,
                                    "kind": s.kind,
                                    "startTimeUnixNano": s.start_time_unix_nano.to_string(),
                                    "endTimeUnixNano": s.end_time_unix_nano.to_string(),
                                    "attributes": attributes_json(&s.attributes),
                                    "flags": s.flags,
                                });
                                if !s.parent_span_id.is_empty() {
                                    v["parentSpanId"] = hex(&s.parent_span_id).into();
                                }
                                if !s.trace_state.is_empty() {
                                    v["traceState"] = s.trace_state.clone().into();
                                }
                                if let Some(st) = &s.status {
                                    v["status"] = json!({"code": st.code, "message": st.message});
                                }
                                v
                            })
                            .collect();
                        json!({
                            "scope": ss.scope.as_ref().map(|s| json!({"name": s.name, "version": s.version})),
                            "spans": spans,
                        })
                    })
                    .collect();
                json!({
                    "resource": {"attributes": rs.resource.as_ref().map_or(json!([]), |r| attributes_json(&r.attributes))},
                    "scopeSpans": scope_spans,
                })
            })
            .collect();
        json!({ "resourceSpans": resource_spans })
    }
}
