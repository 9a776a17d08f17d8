//! Every integration test in one binary: each test binary links the whole gateway, which takes
//! minutes on a 2-core machine, so one binary instead of nine saves most of the test build.
//!
//! Most tests drive the real binary as a process (`common::GatewayProcess`); request-path tests
//! may run it in process (`inference_gateway::testing::InProcessGateway`).

#[path = "../common/mod.rs"]
mod common;
#[path = "../mcp_support/mod.rs"]
mod mcp_support;
#[path = "../mcp_support/model.rs"]
mod model;

mod admin;
mod auth;
mod cache;
mod cli;
mod dialects;
mod doors;
mod gateway;
mod guardrails;
mod igw;
mod mcp;
mod metrics;
mod operations;
mod otel;
mod resilience;
mod responses;
mod sdk;
mod ui;
