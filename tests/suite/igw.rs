//! `igw`, the command line (its own workspace crate), against gateways started here: status,
//! models, chat (one-shot, piped, verbose, errors, a stream cut mid-answer), keys, usage,
//! bench, config check, and the interactive session in a real terminal (tmux): a streamed
//! answer, Ctrl-C mid-answer, `/model`, `/exit`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const ADMIN: &str = "admin-key-for-igw-tests-0123456789";

/// The igw binary, built beside the gateway by `cargo test --workspace` (`make test`).
fn igw_bin() -> PathBuf {
    let p = PathBuf::from(bin()).with_file_name("igw");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo test --workspace, as make test does)",
        p.display()
    );
    p
}

fn igw(env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(igw_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("igw runs");
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A mock that streams slowly when asked to ("slow" in the last message), cuts the stream
/// mid-answer on "cut", and otherwise answers at once (streamed or not).
async fn upstream() -> MockUpstream {
    MockUpstream::start(|req| {
        if req.body.is_empty() {
            return models_list();
        }
        let body = req.json();
        let model = body["model"].as_str().unwrap_or("").to_string();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        if body["stream"] != true {
            return json_response(200, &chat_completion(&model, "hello"));
        }
        let mut steps = vec![Step::Write(sse_head())];
        if last.contains("slow") {
            let pieces: Vec<String> = (0..200).map(|i| format!("tick{i} ")).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            for event in chat_stream(&model, &refs, true).split_inclusive("\n\n") {
                steps.push(Step::Write(chunk(event.as_bytes())));
                steps.push(Step::Sleep(Duration::from_millis(100)));
            }
            steps.push(Step::Write(last_chunk()));
        } else if last.contains("cut") {
            let s = chat_stream(&model, &["partial ", "answer"], false);
            let events: Vec<&str> = s.split_inclusive("\n\n").collect();
            for e in &events[..3] {
                steps.push(Step::Write(chunk(e.as_bytes())));
            }
            steps.push(Step::Sleep(Duration::from_millis(50)));
            steps.push(Step::Close);
        } else {
            let s = chat_stream(&model, &["Hello", " from", " the", " mock."], true);
            steps.push(Step::Write(chunk(s.as_bytes())));
            steps.push(Step::Write(last_chunk()));
        }
        steps
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn igw_commands_against_a_gateway() {
    let up = upstream().await;
    let dir = temp_dir("igw-store");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    env.push(("AUTH_ENABLE", "true".into()));
    let gw = GatewayProcess::start(&env, None);
    let url = gw.url("");
    let url = url.trim_end_matches('/');
    let admin = [("IGW_URL", url), ("IGW_ADMIN_KEY", ADMIN)];

    // status: the admin view, as text and JSON.
    let o = igw(&admin, &["status"], None);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains("inference-gateway 0.1.0") && text.contains(": ok, up "),
        "{text}"
    );
    assert!(
        text.contains("openai") && text.contains("healthy"),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://{}/v1", up.addr)),
        "the backend: {text}"
    );
    assert!(text.contains("store: sqlite"), "{text}");
    let o = igw(&admin, &["status", "--json"], None);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["status"], "ok");

    // keys: create (the key alone on stdout), list, use, revoke by name.
    let o = igw(
        &admin,
        &[
            "keys",
            "create",
            "bob",
            "--rpm",
            "100",
            "--budget",
            "5",
            "--budget-period",
            "monthly",
            "--models",
            "openai/*,fast",
            "--expires",
            "1h",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    let key = out(&o).trim().to_string();
    assert!(key.starts_with("igw-") && !key.contains(' '), "{key}");
    assert!(err(&o).contains("created key bob"), "{}", err(&o));
    let o = igw(&admin, &["keys", "list"], None);
    let text = out(&o);
    assert!(
        text.starts_with("NAME")
            && text.contains("bob")
            && text.contains("100")
            && text.contains("$5 monthly"),
        "{text}"
    );
    assert!(!text.contains(&key), "never the secret");
    let o = igw(&admin, &["keys", "list", "--json"], None);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let bob = v
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(bob["models"], json!(["openai/*", "fast"]));
    assert!(!bob["expires_at"].is_null());
    let o = igw(&admin, &["keys", "create", "bob"], None);
    assert_eq!(code(&o), 1, "a duplicate is the gateway's error");
    assert!(err(&o).contains("409"), "{}", err(&o));

    let api = [("IGW_URL", url), ("IGW_API_KEY", key.as_str())];
    // models
    let o = igw(&api, &["models"], None);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("openai/gpt-4o-mini"), "{}", out(&o));
    let o = igw(&api, &["models", "--provider", "openai", "--json"], None);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["id"].as_str().unwrap().starts_with("openai/")));

    // chat: a prompt, piped input, -v, a system prompt; the default model is the first listed.
    let o = igw(
        &api,
        &["chat", "-m", "openai/gpt-4o-mini", "-v", "Say", "hello"],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "Hello from the mock.\n");
    let e = err(&o);
    assert!(
        e.contains("TTFT") && e.contains("9 prompt + 4 completion tokens"),
        "{e}"
    );
    let sent = up.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["messages"][0]["content"], "Say hello");
    let o = igw(
        &api,
        &["chat", "-m", "openai/gpt-4o-mini", "-s", "Be brief."],
        Some("from a pipe\n"),
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert_eq!(out(&o), "Hello from the mock.\n");
    let sent = up.last().json();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["messages"][1]["content"], "from a pipe");
    let o = igw(&api, &["chat", "hi"], None);
    assert_eq!(code(&o), 0, "the first listed model: {}", err(&o));
    // The gateway's errors: exit 1 with its message.
    let o = igw(&api, &["chat", "-m", "nosuch/model", "hi"], None);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("the gateway answered 4"), "{}", err(&o));
    let o = igw(
        &[("IGW_URL", url), ("IGW_API_KEY", "igw-wrong")],
        &["chat", "-m", "openai/gpt-4o-mini", "hi"],
        None,
    );
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("401"), "{}", err(&o));
    // A stream cut mid-answer: what came is printed, exit 3.
    let o = igw(
        &api,
        &["chat", "-m", "openai/gpt-4o-mini", "cut please"],
        None,
    );
    assert_eq!(code(&o), 3, "{} / {}", out(&o), err(&o));
    assert!(out(&o).starts_with("partial "), "{}", out(&o));
    assert!(err(&o).contains("mid-answer"), "{}", err(&o));

    // usage: the caller's with the API key, the report with the admin key.
    let o = igw(&api, &["usage"], None);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("budget_usd"), "{}", out(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = igw(&admin, &["usage", "--json"], None);
        let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
        if v["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|g| g["key"] == "bob"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob's spend never reached the ledger: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = igw(&admin, &["usage", "--group-by", "model"], None);
    assert!(
        out(&o).contains("MODEL") && out(&o).contains("TOTAL"),
        "{}",
        out(&o)
    );

    // bench: bob's RPM (100) shows as 429s, counted by status.
    let o = igw(
        &api,
        &[
            "bench",
            "-m",
            "openai/gpt-4o-mini",
            "-c",
            "4",
            "-d",
            "1s",
            "--json",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v["succeeded"].as_u64().unwrap() <= 100, "{v}");
    assert!(v["errors_by_status"]["429"].as_u64().unwrap() > 0, "{v}");
    assert!(v["first_error"].as_str().unwrap().contains("429"), "{v}");
    // A key without limits: a short run, JSON for CI, stream and not.
    let o = igw(&admin, &["keys", "create", "bench"], None);
    let bench_key = out(&o).trim().to_string();
    let bench = [("IGW_URL", url), ("IGW_API_KEY", bench_key.as_str())];
    let o = igw(
        &bench,
        &[
            "bench",
            "-m",
            "openai/gpt-4o-mini",
            "-c",
            "4",
            "-d",
            "1s",
            "--json",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v["succeeded"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["requests_per_second"].as_f64().unwrap() > 10.0, "{v}");
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() >= v["latency_ms"]["p50"].as_f64().unwrap());
    let o = igw(
        &bench,
        &[
            "bench",
            "-m",
            "openai/gpt-4o-mini",
            "-c",
            "2",
            "-d",
            "1s",
            "--stream",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains("requests/s") && text.contains("TTFT") && text.contains("errors        0"),
        "{text}"
    );
    // Every request refused: exit 1, the gateway's reason named.
    let o = igw(
        &[("IGW_URL", url)],
        &[
            "bench",
            "-m",
            "openai/gpt-4o-mini",
            "-c",
            "1",
            "-d",
            "300ms",
            "--json",
        ],
        None,
    );
    assert_eq!(code(&o), 1, "{}", out(&o));
    assert!(err(&o).contains("no request succeeded"), "{}", err(&o));

    // revoke by name: the key stops working at once.
    let o = igw(&admin, &["keys", "revoke", "bob"], None);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("revoked key bob"));
    let o = igw(&api, &["models"], None);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("401"), "{}", err(&o));
    let o = igw(&admin, &["keys", "revoke", "bob"], None);
    assert_eq!(code(&o), 1, "no live key of that name");

    // status without the admin key: /health?verbose with the API key.
    let o = igw(&admin, &["keys", "create", "carol"], None);
    let carol = out(&o).trim().to_string();
    let o = igw(
        &[("IGW_URL", url), ("IGW_API_KEY", &carol)],
        &["status"],
        None,
    );
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("openai"), "{}", out(&o));

    // config check: the gateway binary beside igw runs -t.
    let good = dir.join("good.toml");
    std::fs::write(&good, "[server]\nport = 8080\n").unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nprot = 8080\n").unwrap();
    let o = igw(&[], &["config", "check", good.to_str().unwrap()], None);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = igw(&[], &["config", "check", bad.to_str().unwrap()], None);
    assert_eq!(code(&o), 1);
    assert!(
        err(&o).contains("prot"),
        "the gateway names the bad key: {}",
        err(&o)
    );
}

/// tmux on a private socket, for a real terminal.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (scripts/deps.sh installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-J", "-S", "-200", "-t", "igw"])
                .stdout,
        )
        .into_owned()
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "igw"]).status.success()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "igw"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    async fn wait(&self, what: impl Fn(&str) -> bool, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if what(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "the terminal shows:\n{s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn igw_chat_in_a_terminal() {
    let up = upstream().await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let url = gw.url("");
    let tmux = Tmux {
        socket: format!("igw-test-{}", free_port()),
    };
    let bin = igw_bin();
    let o = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "igw",
        "-x",
        "160",
        "-y",
        "50",
        "-e",
        &format!("IGW_URL={}", url.trim_end_matches('/')),
        "-e",
        "IGW_MODEL=openai/gpt-4o-mini",
        &format!("{} chat -v; sleep 30", bin.display()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tmux.wait(|s| s.contains("you> "), Duration::from_secs(10))
        .await;

    // A prompt and its streamed answer, then (-v) its numbers: the stats line is drawn after
    // the answer, so the screen is read once both are there (reading it as soon as the answer
    // showed raced with it). A missing line fails the wait with the screen.
    tmux.keys(&["Say hello", "Enter"]);
    let s = tmux
        .wait(
            |s| s.contains("Hello from the mock.") && s.contains("TTFT"),
            Duration::from_secs(10),
        )
        .await;
    assert!(s.contains("TTFT"), "-v prints the numbers: {s}");
    tmux.wait(|s| s.matches("you> ").count() >= 2, Duration::from_secs(5))
        .await;

    // Ctrl-C mid-answer stops it and keeps the session.
    tmux.keys(&["be slow", "Enter"]);
    tmux.wait(|s| s.contains("tick3 "), Duration::from_secs(10))
        .await;
    tmux.keys(&["C-c"]);
    let s = tmux
        .wait(|s| s.contains("[stopped]"), Duration::from_secs(5))
        .await;
    assert!(!s.contains("tick199"), "stopped before the end: {s}");
    tmux.wait(|s| s.matches("you> ").count() >= 3, Duration::from_secs(5))
        .await;

    // Commands: /model shows and lists, /clear, then a normal answer again.
    tmux.keys(&["/model", "Enter"]);
    tmux.wait(
        |s| s.contains("model: openai/gpt-4o-mini") && s.contains("available: "),
        Duration::from_secs(10),
    )
    .await;
    tmux.keys(&["/clear", "Enter"]);
    tmux.wait(
        |s| s.contains("(conversation cleared)"),
        Duration::from_secs(5),
    )
    .await;
    tmux.keys(&["again", "Enter"]);
    tmux.wait(
        |s| s.matches("Hello from the mock.").count() >= 2,
        Duration::from_secs(10),
    )
    .await;
    // History: the previous line comes back with the up arrow.
    tmux.wait(|s| s.matches("you> ").count() >= 6, Duration::from_secs(5))
        .await;
    tmux.keys(&["Up"]);
    tmux.wait(
        |s| s.trim_end().ends_with("you> again"),
        Duration::from_secs(5),
    )
    .await;
    tmux.keys(&["C-u"]);

    // /exit leaves: igw ends (the shell then sleeps), so its prompt does not come back.
    tmux.keys(&["/exit", "Enter"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = String::from_utf8_lossy(
        &tmux
            .run(&[
                "display-message",
                "-p",
                "-t",
                "igw",
                "#{pane_current_command}",
            ])
            .stdout,
    )
    .trim()
    .to_string();
    assert_eq!(pid, "sleep", "igw exited on /exit");
    assert!(tmux.alive());
}
