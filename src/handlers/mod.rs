//! Handlers for the endpoints the gateway answers itself.

pub mod llm;
pub mod models;
pub mod tool_loop;
