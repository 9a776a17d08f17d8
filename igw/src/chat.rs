//! `igw chat`: one streamed answer (a prompt or piped input), or an interactive session on a
//! terminal with history, `/model`, `/system`, `/clear`, `/exit`, and Ctrl-C that stops the
//! current answer without leaving.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use filters::sse::SseDecoder;
use serde_json::{json, Value};

use crate::client::{gateway_error, transport, Auth, Failure, Gateway};
use crate::ChatArgs;

/// Largest SSE event accepted from the gateway.
const MAX_EVENT: usize = 16 << 20;

/// What a streamed answer came to.
#[derive(Default)]
pub struct Answer {
    pub text: String,
    pub ttft: Option<Duration>,
    pub elapsed: Duration,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub model: Option<String>,
    pub finish_reason: Option<String>,
}

/// Streams one chat completion, handing each piece of content to `on_text` as it arrives
/// (`lean`: a load test's call, which keeps no text).
pub async fn stream_chat(
    gw: &Gateway,
    http: &reqwest::Client,
    model: &str,
    messages: &[Value],
    max_tokens: Option<u32>,
    lean: bool,
    mut on_text: impl FnMut(&str),
) -> Result<Answer, Failure> {
    let mut body = json!({"model": model, "messages": messages, "stream": true,
        "stream_options": {"include_usage": true}});
    if let Some(m) = max_tokens {
        body["max_tokens"] = json!(m);
    }
    let started = Instant::now();
    let mut req = http
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_string());
    if let Some(k) = &gw.api_key {
        req = req.bearer_auth(k);
    }
    let mut resp = req.send().await.map_err(|e| transport(&e, &gw.base))?;
    let status = resp.status().as_u16();
    if status >= 400 {
        let bytes = resp.bytes().await.map_err(|e| transport(&e, &gw.base))?;
        return Err(gateway_error(status, &bytes));
    }
    let mut answer = Answer::default();
    let mut decoder = SseDecoder::with_limit(MAX_EVENT);
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            if answer.text.is_empty() {
                transport(&e, &gw.base)
            } else {
                Failure::Transport(format!("the stream broke off mid-answer ({e})"))
            }
        })?;
        let Some(chunk) = chunk else { break };
        decoder
            .push(&chunk)
            .map_err(|_| Failure::Transport("the gateway sent an oversized event".into()))?;
        while let Some(ev) = decoder.next_event() {
            if ev.is_done() {
                answer.elapsed = started.elapsed();
                return Ok(answer);
            }
            let Some(data) = ev.data else { continue };
            // A load test keeps no text: once the first token is timed, only usage, errors and
            // the end matter, and parsing every chunk would make the client the bottleneck.
            if lean
                && answer.ttft.is_some()
                && memchr::memmem::find(&data, b"\"usage\":{").is_none()
                && memchr::memmem::find(&data, b"\"error\"").is_none()
            {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                let message = e["message"]
                    .as_str()
                    .unwrap_or("the stream failed")
                    .to_string();
                return Err(if answer.text.is_empty() {
                    // An error event before any text: an answer the gateway would have given
                    // with an error status had the stream not started (an upstream failure).
                    Failure::Gateway {
                        status: e["status"].as_u64().map_or(502, |s| s as u16),
                        message,
                    }
                } else {
                    Failure::Transport(format!("the stream broke off mid-answer: {message}"))
                });
            }
            if answer.model.is_none() {
                answer.model = v["model"].as_str().map(str::to_string);
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                answer.prompt_tokens = u["prompt_tokens"].as_u64();
                answer.completion_tokens = u["completion_tokens"].as_u64();
            }
            let choice = &v["choices"][0];
            if let Some(text) = choice["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                if answer.ttft.is_none() {
                    answer.ttft = Some(started.elapsed());
                }
                answer.text.push_str(text);
                on_text(text);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                answer.finish_reason = Some(f.to_string());
            }
        }
    }
    Err(Failure::Transport(if answer.text.is_empty() {
        "the stream ended without an answer".into()
    } else {
        "the stream broke off mid-answer (no [DONE])".into()
    }))
}

fn stats_line(model: &str, a: &Answer) -> String {
    let ttft = a
        .ttft
        .map_or("–".into(), |t| format!("{} ms", t.as_millis()));
    let tokens = match (a.prompt_tokens, a.completion_tokens) {
        (Some(p), Some(c)) => format!("{p} prompt + {c} completion tokens"),
        _ => "tokens not reported".into(),
    };
    format!(
        "model {} · TTFT {ttft} · {tokens} · {:.2} s",
        a.model.as_deref().unwrap_or(model),
        a.elapsed.as_secs_f64()
    )
}

fn print_now(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub async fn run(gw: &Gateway, args: ChatArgs) -> Result<(), Failure> {
    let prompt = if !args.prompt.is_empty() {
        Some(args.prompt.join(" "))
    } else if !std::io::stdin().is_terminal() {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut s)
            .await
            .map_err(|e| Failure::Other(format!("cannot read standard input: {e}")))?;
        Some(s)
    } else {
        None
    };
    let model = gw.model_or_first(args.model).await?;
    match prompt {
        Some(p) => {
            let p = p.trim();
            if p.is_empty() {
                return Err(Failure::Usage("the prompt is empty".into()));
            }
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": p}));
            let a = stream_chat(gw, &gw.http, &model, &messages, None, false, print_now).await;
            println!();
            let a = a?;
            if args.verbose {
                eprintln!("{}", stats_line(&model, &a));
            }
            Ok(())
        }
        None => interactive(gw, model, args.system, args.verbose).await,
    }
}

const HELP: &str = "/model [NAME]  show or change the model\n/system [TEXT] set (or, empty, clear) the system prompt\n/clear         forget the conversation\n/exit          leave (also Ctrl-D)\nCtrl-C stops the answer being written.";

async fn interactive(
    gw: &Gateway,
    mut model: String,
    mut system: Option<String>,
    verbose: bool,
) -> Result<(), Failure> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Failure::Other(format!("cannot open the terminal: {e}")))?;
    // Ctrl-C while an answer streams (the line editor reads it as a key at the prompt).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::Other(format!("cannot watch Ctrl-C: {e}")))?;
    println!(
        "igw chat: {model} at {}. Type a message; /help for commands, /exit to leave.",
        gw.base
    );
    let mut history: Vec<Value> = Vec::new();
    loop {
        let line = tokio::task::block_in_place(|| editor.readline("you> "));
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                println!("(Ctrl-C: /exit or Ctrl-D leaves)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Failure::Other(format!("cannot read the terminal: {e}"))),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
            let arg = arg.trim();
            match name {
                "exit" | "quit" => break,
                "help" => println!("{HELP}"),
                "clear" => {
                    history.clear();
                    println!("(conversation cleared)");
                }
                "model" if arg.is_empty() => match gw.get("/v1/models", Auth::Api).await {
                    Ok(list) => {
                        println!("model: {model}");
                        let ids: Vec<&str> = list["data"]
                            .as_array()
                            .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
                            .unwrap_or_default();
                        println!("available: {}", ids.join(", "));
                    }
                    Err(f) => eprintln!("igw: {f}"),
                },
                "model" => {
                    model = arg.to_string();
                    println!("model: {model}");
                }
                "system" if arg.is_empty() => {
                    system = None;
                    println!("(system prompt cleared)");
                }
                "system" => {
                    system = Some(arg.to_string());
                    println!("(system prompt set)");
                }
                _ => println!("unknown command /{name}\n{HELP}"),
            }
            continue;
        }
        history.push(json!({"role": "user", "content": line}));
        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(s) = &system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.extend(history.iter().cloned());
        let answer = stream_chat(gw, &gw.http, &model, &messages, None, false, print_now);
        tokio::select! {
            r = answer => {
                println!();
                match r {
                    Ok(a) => {
                        if verbose {
                            eprintln!("{}", stats_line(&model, &a));
                        }
                        history.push(json!({"role": "assistant", "content": a.text}));
                    }
                    Err(f) => {
                        history.pop();
                        eprintln!("igw: {f}");
                    }
                }
            }
            _ = interrupt.recv() => {
                // The request is dropped: the gateway sees the hang-up and stops the upstream.
                history.pop();
                println!("\n[stopped]");
            }
        }
    }
    Ok(())
}
