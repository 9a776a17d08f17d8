//! Pure, I/O-free transforms for LLM wire formats.
//!
//! Nothing in this crate performs I/O or depends on an async runtime: every type is fed bytes and
//! returns bytes or values, so the same code runs in the proxy, in tests and in benchmarks.

pub mod cache;
pub mod dialects;
pub mod doors;
pub mod genai;
pub mod guard;
pub mod json_object;
pub mod openai;
pub mod reasoning;
pub mod sse;
pub mod stream_relay;
pub mod tool_loop;
pub mod usage;

pub use json_object::RawObject;
pub use sse::{SseDecoder, SseEvent};
pub use stream_relay::OpenAiStreamRelay;
pub use usage::Usage;
