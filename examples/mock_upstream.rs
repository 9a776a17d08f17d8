//! A fast OpenAI-compatible mock upstream for load measurements (`make bench`).
//!
//! `cargo run --release --example mock_upstream -- 9000` answers every request with a fixed ~1 KB
//! chat completion, or, when the body holds `"stream":true`, with a 200-chunk SSE stream.

#[path = "../benches/support/mock.rs"]
mod mock;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    eprintln!("mock upstream on 127.0.0.1:{port}");
    mock::run(l).await;
}
