//! Operations: zero-downtime upgrades (`-d`, `-u`, `-t`), SIGTERM drain, TLS with HTTP/2, and
//! the deployment files (systemd unit, Dockerfile, compose, Kubernetes manifests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie (exited, not reaped) counts as gone.
    let ok = unsafe_kill(pid, 0);
    ok && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn unsafe_kill(pid: i32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Daemon {
    dir: PathBuf,
    port: u16,
    pid_file: PathBuf,
}

impl Daemon {
    fn config(&self, upstream: &str, alias_model: &str) -> String {
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {}\npid_file = {:?}\nupgrade_sock = {:?}\ngrace_period = \"120s\"\n\
             [log]\nfile = {:?}\nformat = \"text\"\n\
             [providers.openai]\nurl = \"{upstream}\"\napi_key = \"sk-test\"\n\
             [aliases.current]\ntarget = \"openai/{alias_model}\"\n",
            self.port,
            self.pid_file.display().to_string(),
            self.dir.join("upgrade.sock").display().to_string(),
            self.dir.join("gateway.log").display().to_string(),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Runs the binary; stdio goes to files, not pipes: a daemon keeps its inherited stdio, and
    /// waiting for a pipe's end would wait for the daemon's exit.
    fn run(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let err = self.dir.join("stderr.txt");
        let status = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (status, std::fs::read_to_string(&err).unwrap_or_default())
    }

    /// The documented reload: check the new config, SIGQUIT the running process, start the new
    /// one with `-u -d` (returns once it serves). Returns false if the check failed.
    fn reload(&self, conf: &Path) -> bool {
        let conf = conf.to_str().unwrap();
        if !self.run(&["-t", "-c", conf]).0.success() {
            return false;
        }
        let old = read_pid(&self.pid_file);
        assert!(unsafe_kill(old, 3), "SIGQUIT");
        let (status, stderr) = self.run(&["-u", "-d", "-c", conf]);
        assert!(status.success(), "upgrade failed: {stderr}");
        true
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }
}

/// Waits until only the new process answers: after a reload both processes accept for about
/// five seconds (Pingora's hand-over window), then the old one stops. 30 answers in a row from
/// the new configuration cannot happen by chance while both accept.
async fn wait_for_model(addr: std::net::SocketAddr, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut streak = 0;
    while streak < 30 {
        streak = if model_served(addr).await == model {
            streak + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "new configuration never served alone"
        );
        if streak == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A connection Pingora closed before reading its request: at a process's shutdown it drops
/// connections whose first request bytes it has not read yet (pingora-proxy
/// `handle_new_request`), so a client that connected to the old process in the instant its
/// listener stopped sees a reset or an empty answer. Nothing was processed.
fn unanswered(e: &str) -> bool {
    e.starts_with("incomplete response: \"\"") || e.starts_with("read:") || e.starts_with("write:")
}

async fn model_served(addr: std::net::SocketAddr) -> String {
    let body = json!({"model":"current","messages":[{"role":"user","content":"x"}]}).to_string();
    // This poll runs back to back, so it is the client most likely to connect to the old
    // process in the instant its listener stops: Pingora then closes connections whose first
    // request bytes it has not read yet, without an answer (nothing was processed, so one
    // retry is safe; the steady-load workers below stay strict).
    for _ in 0..2 {
        match try_request(addr, "POST", "/v1/chat/completions", body.as_bytes()).await {
            Ok(r) => {
                assert_eq!(r.status, 200, "{}", r.text());
                return r.json()["model"].as_str().unwrap().to_string();
            }
            Err(e) if unanswered(&e) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("two connections in a row closed without an answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_downtime_upgrades_and_sigterm_drain() {
    // The model name decides the answer: "slow" streams 40 chunks over ~8 s.
    let up = MockUpstream::start(|req| {
        let body = req.json();
        let model = body["model"].as_str().unwrap().to_string();
        if model == "slow" {
            let mut steps = vec![Step::Write(sse_head())];
            for i in 0..40 {
                steps.push(Step::Write(chunk(format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{i} \"}}}}]}}\n\n").as_bytes())));
                steps.push(Step::Sleep(Duration::from_millis(200)));
            }
            steps.push(Step::Write(chunk(b"data: [DONE]\n\n")));
            steps.push(Step::Write(last_chunk()));
            steps
        } else {
            json_response(200, &chat_completion(&model, "ok"))
        }
    })
    .await;
    let dir = temp_dir("ops");
    let d = Daemon {
        port: free_port(),
        pid_file: dir.join("gateway.pid"),
        dir,
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], d.port).into();
    let upstream = up.url("/v1");

    let conf_a = d.write("a.toml", &d.config(&upstream, "model-a"));
    let (status, stderr) = d.run(&["-d", "-c", conf_a.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    let p1 = read_pid(&d.pid_file);
    // A cold start signals readiness when bootstrap is done, a moment before the new listener is
    // bound (upgrades inherit a listening socket, so they have no such gap).
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_request(addr, "GET", "/health", b"").await.is_err() {
        assert!(Instant::now() < deadline, "daemon never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(model_served(addr).await, "model-a");

    // Steady load: 4 workers, a fresh connection per request, every failure counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let retried = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, errors, retried) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            retried.clone(),
        );
        workers.push(tokio::spawn(async move {
            let body = json!({"model":"openai/steady","messages":[{"role":"user","content":"x"}]})
                .to_string();
            while !stop.load(Ordering::SeqCst) {
                let mut result =
                    try_request(addr, "POST", "/v1/chat/completions", body.as_bytes()).await;
                if result.as_ref().is_err_and(|e| unanswered(e)) {
                    // Connected to the old process in the instant its listener stopped (see
                    // `unanswered`): nothing was processed, so a client may retry. Counted.
                    retried.fetch_add(1, Ordering::SeqCst);
                    result =
                        try_request(addr, "POST", "/v1/chat/completions", body.as_bytes()).await;
                }
                match result {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    Ok(r) => {
                        errors.lock().unwrap().push(format!("status {}", r.status));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // A long stream that starts on the first process and must survive both upgrades.
    let stream = tokio::spawn(async move {
        let body = json!({"model":"openai/slow","messages":[],"stream":true}).to_string();
        post_chat(addr, body.as_bytes()).await.text()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Upgrade 1: new config.
    let conf_b = d.write("b.toml", &d.config(&upstream, "model-b"));
    assert!(d.reload(&conf_b));
    let p2 = read_pid(&d.pid_file);
    assert_ne!(p2, p1);
    wait_for_model(addr, "model-b").await;
    assert!(alive(p1), "the old process keeps serving its stream");

    // A broken config is refused before anything is signalled: the running process serves on.
    let broken = d.write(
        "broken.toml",
        &(d.config(&upstream, "model-x") + "[server]\nbogus = 1\n"),
    );
    assert!(!d.reload(&broken));
    assert_eq!(read_pid(&d.pid_file), p2);
    assert_eq!(model_served(addr).await, "model-b");

    // Upgrade 2.
    let conf_c = d.write("c.toml", &d.config(&upstream, "model-c"));
    assert!(d.reload(&conf_c));
    let p3 = read_pid(&d.pid_file);
    wait_for_model(addr, "model-c").await;

    // The stream that began before both upgrades completes intact.
    let text = stream.await.unwrap();
    for i in 0..40 {
        assert!(
            text.contains(&format!("\"{i} \"")),
            "chunk {i} missing: {text}"
        );
    }
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("[DONE]").count(), 1);
    // Old processes exit once their work is done, long before the 120 s grace period.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (alive(p1) || alive(p2)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(p1) && !alive(p2), "old processes still running");
    assert!(alive(p3));

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let retried = retried.load(Ordering::SeqCst);
    println!(
        "across two upgrades: {ok} requests ok, {failed} failed, {retried} retried after an unanswered connect, 1 stream of 40 chunks completed"
    );
    assert_eq!(failed, 0, "failed requests: {:?}", errors.lock().unwrap());
    // The hand-over race can only hit a connection at each of the two shutdowns.
    assert!(retried <= 4, "{retried} connections went unanswered");
    assert!(ok > 100, "load too small to mean anything: {ok}");

    // SIGTERM drains: the in-flight stream finishes, /health reports draining, then exit.
    let stream = tokio::spawn(async move {
        let body = json!({"model":"openai/slow","messages":[],"stream":true}).to_string();
        post_chat(addr, body.as_bytes()).await.text()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(unsafe_kill(p3, 15));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(p3), "SIGTERM waits for the stream");
    let text = stream.await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n") && text.contains("\"39 \""),
        "stream cut by SIGTERM: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(p3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(p3), "drained process did not exit");
    let log = d.log();
    assert!(log.contains("draining: 1 request(s) in flight"), "{log}");
    assert!(log.contains("drained: exiting"));
    std::fs::remove_dir_all(&d.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_new_connections_at_once_and_finishes_in_flight_ones() {
    let up = MockUpstream::start(|_| {
        let mut steps = vec![Step::Write(sse_head())];
        for _ in 0..10 {
            steps.push(Step::Write(chunk(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
            )));
            steps.push(Step::Sleep(Duration::from_millis(200)));
        }
        steps.push(Step::Write(chunk(b"data: [DONE]\n\n")));
        steps.push(Step::Write(last_chunk()));
        steps
    })
    .await;
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), None);
    let addr = gw.addr();
    // An idle keep-alive connection is closed by the drain, so clients reconnect elsewhere.
    let mut keep = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    keep.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = keep.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("\"ok\""));
    let stream = tokio::spawn(async move {
        post_chat(
            addr,
            json!({"model":"openai/m","messages":[],"stream":true})
                .to_string()
                .as_bytes(),
        )
        .await
        .text()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = gw_pid(&gw);
    let t = Instant::now();
    assert!(unsafe_kill(pid, 15));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    assert_eq!(
        keep.read(&mut buf).await.unwrap_or(0),
        0,
        "idle keep-alive connection closed"
    );
    let text = stream.await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n") && text.matches("\"x\"").count() == 10,
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exited after the stream, not after the grace period"
    );
}

fn gw_pid(gw: &GatewayProcess) -> i32 {
    // The harness's child: find it by its port in /proc (the process is ours, not a daemon).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ss -ltnp 'sport = :{}' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2",
            gw.port
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("gateway pid")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_http2_and_http1() {
    let up = MockUpstream::start(|_| json_response(200, &chat_completion("m", "over tls"))).await;
    let pki = test_pki("localhost");
    let dir = temp_dir("tls");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &pki.leaf_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("SERVER_TLS_CERT_PATH", cert.display().to_string()));
    env.push(("SERVER_TLS_KEY_PATH", key.display().to_string()));
    let gw = GatewayProcess::start_tls(&env);
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{}/v1/chat/completions", gw.port);
    let body = json!({"model":"openai/m","messages":[{"role":"user","content":"x"}]}).to_string();
    for http2 in [true, false] {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .tls_built_in_root_certs(false);
        b = if http2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        let client = b.build().unwrap();
        let r = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(
            r.version(),
            if http2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "over tls");
    }
    // ALPN negotiates h2 for a client that offers both.
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{}/health", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // A bad certificate fails `-t` with a message naming the keys.
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = Command::new(bin())
        .env_clear()
        .env("SERVER_TLS_CERT_PATH", &cert)
        .env("SERVER_TLS_KEY_PATH", &key)
        .arg("-t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert_path"));
    std::fs::remove_dir_all(&dir).ok();
}

// ----------------------------------------------------------------------------- deployment files

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn systemd_unit_verifies_and_matches_the_binary() {
    let unit = std::fs::read_to_string(repo("conf/inference-gateway.service")).unwrap();
    for needle in [
        "Type=forking",
        "PIDFile=",
        "ExecReload=/bin/kill -QUIT $MAINPID",
        "-u -d -c",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "LimitNOFILE=",
        // The store lives in the unit's state directory.
        "StateDirectory=inference-gateway",
        "Environment=DATABASE_URL=sqlite:///var/lib/inference-gateway/",
    ] {
        assert!(unit.contains(needle), "{needle}");
    }
    // The config check comes before the SIGQUIT, so a broken config never stops the old process.
    assert!(
        unit.find("ExecReload=/usr/local/bin/inference-gateway -t")
            .unwrap()
            < unit.find("ExecReload=/bin/kill -QUIT").unwrap()
    );
    // systemd-analyze checks the unit for real, with the paths pointed at this build.
    let dir = temp_dir("unit");
    let conf = dir.join("gateway.toml");
    std::fs::write(&conf, "").unwrap();
    let local = unit
        .replace("/usr/local/bin/inference-gateway", bin())
        .replace(
            "/etc/inference-gateway/gateway.toml",
            conf.to_str().unwrap(),
        );
    let path = dir.join("inference-gateway.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze is needed: `make test` installs systemd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("inference-gateway.service"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze: {stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kubernetes_manifests_parse_and_agree() {
    let dir = repo("deploy/kubernetes");
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut kinds = Vec::new();
    let mut docs = Vec::new();
    for r in kustomization["resources"].as_sequence().unwrap() {
        let text = std::fs::read_to_string(dir.join(r.as_str().unwrap())).unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{r:?}: {e}"));
        kinds.push(v["kind"].as_str().unwrap().to_string());
        docs.push(v);
    }
    for k in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "StatefulSet",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing");
    }
    // The store: PostgreSQL (the replicas share it), its password from the same Secret.
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert!(secret["stringData"]["DATABASE_URL"]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
    let pg = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let pg_env = &pg["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(pg_env
        .as_sequence()
        .unwrap()
        .iter()
        .any(|e| e["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_PASSWORD"));
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap();
    let dep = find("Deployment");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    // The container's arguments are flags the binary accepts, and the config it names is valid.
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "-c");
    let cm = find("ConfigMap");
    let toml_text = cm["data"]["gateway.toml"].as_str().unwrap();
    let tmp = temp_dir("k8s");
    let conf = tmp.join("gateway.toml");
    std::fs::write(&conf, toml_text).unwrap();
    let out = Command::new(bin())
        .env_clear()
        .args(["-t", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ConfigMap config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/inference-gateway");
    assert!(args[1].starts_with("/etc/inference-gateway/"));
    assert_eq!(
        dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        find("Secret")["metadata"]["name"]
    );
    // The drain fits the pod's termination grace period.
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(toml_text.contains("grace_period = \"590s\"") && grace >= 595);
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn dockerfile_and_compose_agree_with_the_readme() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for needle in [
        "FROM rust:",
        "cargo build --release --locked -p inference-gateway -p igw",
        "USER 10001",
        "/usr/local/bin/igw",
        "HEALTHCHECK",
        "/health",
        "ENTRYPOINT [\"/usr/local/bin/inference-gateway\"]",
        "VOLUME [\"/var/lib/inference-gateway\"]",
        "DATABASE_URL=sqlite:///var/lib/inference-gateway/",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
    for cmd in [
        "docker build -t inference-gateway .",
        "docker run --rm -p 8080:8080",
        "docker compose up --build",
        "kubectl apply -k deploy/kubernetes/",
    ] {
        assert!(readme.contains(cmd), "README lacks `{cmd}`");
    }
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("docker-compose.yml")).unwrap())
            .unwrap();
    assert!(compose["services"]["gateway"]["build"].is_string());
    assert!(compose["services"]["prometheus"].is_mapping());
    let gw_env = &compose["services"]["gateway"]["environment"];
    assert!(gw_env["DATABASE_URL"]
        .as_str()
        .unwrap()
        .starts_with("postgres://igw:igw@postgres:5432/"));
    assert!(compose["services"]["postgres"]["healthcheck"].is_mapping());
    assert_eq!(
        compose["services"]["gateway"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    let prom: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/compose-prometheus.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "gateway:9464"
    );
}
