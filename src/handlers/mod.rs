//! Handlers for the endpoints the gateway answers itself.

pub mod dispatch;
pub mod door;
pub mod llm;
pub mod models;
pub mod tool_loop;
