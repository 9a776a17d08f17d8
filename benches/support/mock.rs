//! A fast OpenAI-compatible mock upstream, shared by `examples/mock_upstream.rs` and the load
//! bench: fixed answers, no parsing beyond what HTTP framing needs, so it is never the
//! bottleneck.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A ~1 KB non-streaming chat completion, as a full HTTP response.
pub fn completion() -> Vec<u8> {
    let content = "lorem ipsum dolor sit amet ".repeat(30);
    let body = format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":250,"completion_tokens":180,"total_tokens":430}}}}"#
    );
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// A 200-chunk SSE stream with a usage chunk and `[DONE]`, as a full HTTP response.
pub fn stream() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..200 {
        body.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    body.push_str("data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":250,\"completion_tokens\":200,\"total_tokens\":450}}\n\ndata: [DONE]\n\n");
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Serves one keep-alive connection: each request is answered with `sse` if its body holds
/// `"stream":true`, else with `plain`.
pub async fn serve(mut s: TcpStream, plain: &'static [u8], sse: &'static [u8]) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Read one request: headers, then Content-Length bytes.
        let (head_end, len) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, len);
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        while buf.len() < head_end + len {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body = &buf[head_end..head_end + len];
        let wants_stream = body.windows(13).any(|w| w == b"\"stream\":true");
        // `"trickle":N`: a slow stream of N chunks, one per second (idle-connection scale tests).
        if let Some(n) = trickle_chunks(body) {
            buf.drain(..head_end + len);
            if trickle(&mut s, n).await.is_err() {
                return;
            }
            continue;
        }
        if s.write_all(if wants_stream { sse } else { plain })
            .await
            .is_err()
        {
            return;
        }
        buf.drain(..head_end + len);
    }
}

/// Accepts connections on `listener` forever.
pub async fn run(listener: TcpListener) {
    let plain: &'static [u8] = Box::leak(completion().into_boxed_slice());
    let sse: &'static [u8] = Box::leak(stream().into_boxed_slice());
    loop {
        if let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, plain, sse));
        }
    }
}

fn trickle_chunks(body: &[u8]) -> Option<u32> {
    let key = b"\"trickle\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn trickle(s: &mut TcpStream, n: u32) -> std::io::Result<()> {
    s.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    for i in 0..n {
        let event = format!("data: {{\"id\":\"t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tick{i} \"}},\"finish_reason\":null}}]}}\n\n");
        s.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
            .await?;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let done = "data: [DONE]\n\n";
    s.write_all(format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()).as_bytes())
        .await
}
