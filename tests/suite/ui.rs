//! The web UI (`/ui/`): its headers and assets over HTTP, then every page in a real headless
//! Chromium driven through WebDriver: sign in, providers on the overview, create and revoke a
//! key, add an alias, chat in the playground with a streamed answer, usage, requests and MCP,
//! a narrow window, and no console errors. Screenshots go to `docs/ui/` only with
//! `UPDATE_SCREENSHOTS=1`.

use std::time::{Duration, Instant};

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::webdriver::Browser;
use crate::common::*;
use crate::mcp_support::HttpMcpServer;

const ADMIN: &str = "admin-key-for-the-ui-0123456789";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

fn assert_guarded(r: &RawResponse, what: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
}

/// Assets, statuses and headers, without a browser.
#[tokio::test(flavor = "multi_thread")]
async fn ui_is_served_with_its_policy() {
    // Without an admin credential there is no UI (and still the policy).
    let gw = InProcessGateway::start(&[], None);
    let r = raw_request(gw.addr, "GET", "/ui/", &[], b"").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_guarded(&r, "404 without an admin key");

    let gw = InProcessGateway::start(&[("ADMIN_API_KEY", ADMIN.into())], None);
    let a = gw.addr;
    let r = raw_request(a, "GET", "/ui", &[], b"").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/ui/"));
    assert_guarded(&r, "redirect");

    let r = raw_request(a, "GET", "/ui/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_guarded(&r, "index");
    let html = r.text();
    assert!(
        html.contains("<script type=\"module\" src=\"/ui/app.js\">"),
        "{html}"
    );
    // Nothing from elsewhere: every src and href is the UI's own or a fragment.
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let v = &html[i + attr.len()..];
            assert!(
                v.starts_with("/ui/") || v.starts_with('#'),
                "{attr}{}",
                &v[..20.min(v.len())]
            );
        }
    }

    let r = raw_request(a, "GET", "/ui/pages/playground.js", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_guarded(&r, "module");
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let etag = r.header("etag").expect("an ETag").to_string();
    let r = raw_request(
        a,
        "GET",
        "/ui/pages/playground.js",
        &[("if-none-match", &etag)],
        b"",
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_guarded(&r, "304");

    let r = raw_request(a, "GET", "/ui/style.css", &[], b"").await;
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let r = raw_request(a, "GET", "/ui/../admin/v1/health", &[], b"").await;
    assert_ne!(r.status, 200, "no way out of /ui");
    let r = raw_request(a, "GET", "/ui/secret.js", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_guarded(&r, "unknown asset");
    let r = raw_request(a, "POST", "/ui/", &[], b"{}").await;
    assert_eq!(r.status, 405);
    assert_guarded(&r, "405");
    // The pages need no credential; the admin API they call does.
    let r = raw_request(a, "GET", "/admin/v1/health", &[], b"").await;
    assert_eq!(r.status, 401);
}

async fn upstream() -> MockUpstream {
    MockUpstream::start(|req| {
        if req.body.is_empty() {
            // GET /v1/models (the gateway lists what each provider serves).
            return models_list();
        }
        let body = req.json();
        let model = body["model"].as_str().unwrap_or("").to_string();
        if body["stream"] == true {
            let sse = chat_stream(&model, &["Hello", " from", " the", " mock", "."], true);
            let mut steps = vec![Step::Write(sse_head())];
            // Pieces a little apart, so the answer streams in.
            for event in sse.split_inclusive("\n\n") {
                steps.push(Step::Write(chunk(event.as_bytes())));
                steps.push(Step::Sleep(Duration::from_millis(30)));
            }
            steps.push(Step::Write(last_chunk()));
            steps
        } else {
            json_response(200, &chat_completion(&model, "hello"))
        }
    })
    .await
}

async fn admin_get(a: std::net::SocketAddr, path: &str) -> Value {
    let r = raw_request(a, "GET", path, &[("x-admin-key", ADMIN)], b"").await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

async fn chat_as(a: std::net::SocketAddr, key: &str, model: &str) -> u16 {
    let auth = format!("Bearer {key}");
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    raw_request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await
    .status
}

/// Keeps a screenshot of the page in docs/ui/ when UPDATE_SCREENSHOTS=1 (a PNG either way).
async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000,
        "{name}: not a PNG"
    );
    if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ui");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// Checks that a control of the page has this accessible name (as Chromium computes it).
async fn named(b: &Browser, e: &crate::common::webdriver::Element, name: &str) {
    assert_eq!(b.accessible_name(e).await, name, "accessible name");
}

async fn open(b: &Browser, page: &str, heading: &str) {
    let link = b.link(page).await;
    b.click(&link).await;
    b.xpath(&format!("//h1[normalize-space(.)='{heading}']"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn web_ui_in_a_real_browser() {
    let up = upstream().await;
    let mcp = HttpMcpServer::start(0).await;
    let dir = temp_dir("ui-store");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    env.push(("AUTH_ENABLE", "true".into()));
    env.push(("MCP_ENABLE", "true".into()));
    env.push(("MCP_SERVERS", mcp.url.clone()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;
    let base = format!("http://{a}");
    // The MCP server's tools are listed once the gateway has connected.
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin_get(a, "/admin/v1/health").await["mcp_tools"]
        .as_array()
        .map_or(0, Vec::len)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the MCP server's tools never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{base}/ui/")).await;

    // Sign in: a wrong key is refused on the page, the right one opens the overview.
    let key_input = b.labelled("Admin key").await;
    named(&b, &key_input, "Admin key").await;
    b.type_text(&key_input, "not-the-admin-key").await;
    b.click(&b.button("Sign in").await).await;
    b.wait_text(
        "Sign-in failed: Incorrect admin key",
        Duration::from_secs(10),
    )
    .await;
    screenshot(&b, "sign-in").await;
    // The refused attempt is the only console error allowed (the browser logs the 401).
    let early = b.console().await;
    assert!(
        early
            .iter()
            .any(|(l, m)| l == "SEVERE" && m.contains("401")),
        "the console is read (the refused sign-in is in it): {early:?}"
    );
    assert!(
        early
            .iter()
            .filter(|(l, _)| l == "SEVERE")
            .all(|(_, m)| m.contains("401")),
        "{early:?}"
    );
    b.clear(&key_input).await;
    b.type_text(&key_input, ADMIN).await;
    b.click(&b.button("Sign in").await).await;
    b.xpath("//h1[normalize-space(.)='Overview']").await;
    // Providers on the overview, with their health.
    let text = b.wait_text("openai", Duration::from_secs(10)).await;
    assert!(text.contains("healthy"), "{text}");
    assert!(
        text.contains("this replica"),
        "the page says whose series it is: {text}"
    );
    for tile in [
        "Requests/s",
        "Tokens/s",
        "Error rate",
        "Latency p99",
        "TTFT p50",
        "Active streams",
    ] {
        assert!(text.contains(tile), "{tile} on the overview: {text}");
    }
    assert!(b.exists("svg[role='img']").await, "charts drawn as SVG");

    // Keys: create one (shown once, with a copy button), use it, revoke it with confirmation.
    open(&b, "Keys", "Keys").await;
    let name = b.labelled("Key name").await;
    named(&b, &name, "Key name").await;
    b.type_text(&name, "alice").await;
    let create = b.button("Create key").await;
    named(&b, &create, "Create key").await;
    b.click(&create).await;
    let shown = b.css("input[aria-label='New key']").await;
    let secret = b
        .property(&shown, "value")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(secret.starts_with("igw-"), "{secret}");
    b.button("Copy").await;
    b.wait_text("not shown again", Duration::from_secs(5)).await;
    assert_eq!(chat_as(a, &secret, "openai/gpt-4o-mini").await, 200);
    b.xpath("//td[.//span[normalize-space(.)='alice']]").await;
    screenshot(&b, "keys").await;
    b.click(&b.button("Revoke alice").await).await;
    let confirm = b.button("Revoke key").await;
    b.wait_text("cannot be undone", Duration::from_secs(5))
        .await;
    b.click(&confirm).await;
    b.wait_text("Key alice revoked.", Duration::from_secs(10))
        .await;
    assert_eq!(
        chat_as(a, &secret, "openai/gpt-4o-mini").await,
        401,
        "revoked at once"
    );
    let keys = admin_get(a, "/admin/v1/keys?include_revoked=true").await;
    assert!(
        keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "alice" && !k["revoked_at"].is_null()),
        "{keys}"
    );

    // Models: add an alias; the gateway routes it at once.
    open(&b, "Models", "Models").await;
    let alias = b.labelled("Alias name").await;
    named(&b, &alias, "Alias name").await;
    b.type_text(&alias, "fast").await;
    b.type_text(&b.labelled("Target").await, "openai/gpt-4o-mini")
        .await;
    b.click(&b.button("Add alias").await).await;
    b.wait_text("Alias fast added.", Duration::from_secs(10))
        .await;
    b.xpath("//td[.//span[normalize-space(.)='fast']]").await;
    let models = admin_get(a, "/admin/v1/models").await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "fast" && m["target"] == "openai/gpt-4o-mini"),
        "{models}"
    );
    screenshot(&b, "models").await;
    // Errors from the API are shown to the person: the same name again is 409.
    b.type_text(&b.labelled("Alias name").await, "fast").await;
    b.type_text(&b.labelled("Target").await, "openai/gpt-4o")
        .await;
    b.click(&b.button("Add alias").await).await;
    b.wait_text("(409 already_exists)", Duration::from_secs(10))
        .await;
    let seen = b.console().await;
    assert!(
        seen.iter()
            .filter(|(l, _)| l == "SEVERE")
            .all(|(_, m)| m.contains("409")),
        "{seen:?}"
    );
    b.click(&b.button("Dismiss message").await).await;
    // Edit: fallbacks added to the alias.
    b.click(&b.button("Edit fast").await).await;
    let fallbacks = b.labelled("Fallbacks").await;
    b.clear(&fallbacks).await;
    b.type_text(&fallbacks, "openai/gpt-4o").await;
    b.click(&b.button("Save alias").await).await;
    b.wait_text("Alias fast saved.", Duration::from_secs(10))
        .await;
    let models = admin_get(a, "/admin/v1/models").await;
    let fast = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "fast")
        .cloned()
        .unwrap();
    assert_eq!(fast["fallbacks"], json!(["openai/gpt-4o"]), "{fast}");
    assert_eq!(fast["target"], "openai/gpt-4o-mini", "{fast}");

    // Playground: a key minted for the session, a streamed answer with TTFT, tokens and cost.
    open(&b, "Playground", "Playground").await;
    b.wait_text("Calling as playground-", Duration::from_secs(10))
        .await;
    let model = b.labelled("Model").await;
    named(&b, &model, "Model").await;
    b.click(&model).await;
    b.click(&b.xpath("//select//option[@value='fast']").await)
        .await;
    b.type_text(&b.labelled("System prompt").await, "Answer in one line.")
        .await;
    let message = b.labelled("Message").await;
    named(&b, &message, "Message").await;
    b.type_text(&message, "Say hello").await;
    let send = b.button("Send").await;
    named(&b, &send, "Send").await;
    b.click(&send).await;
    b.wait_text("Hello from the mock.", Duration::from_secs(15))
        .await;
    let metrics = b.text(&b.css("#metric-tokens").await).await;
    assert_eq!(metrics, "9 prompt + 5 completion tokens");
    let ttft = b.text(&b.css("#metric-ttft").await).await;
    assert!(ttft.starts_with("TTFT ") && ttft.ends_with(" ms"), "{ttft}");
    let cost = b.text(&b.css("#metric-cost").await).await;
    assert!(
        cost.starts_with("cost $"),
        "priced from the model table: {cost}"
    );
    screenshot(&b, "playground").await;
    // What went upstream: a stream, the system prompt, the alias's target.
    let sent = up.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["content"], "Answer in one line.");
    // The session's key: labelled, expiring within the hour, listed on the Keys page.
    let keys = admin_get(a, "/admin/v1/keys").await;
    let pk = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"].as_str().unwrap_or("").starts_with("playground-"))
        .cloned()
        .expect("a playground key");
    assert_eq!(pk["metadata"]["created_by"], "web-ui", "{pk}");
    let expires = humantime::parse_rfc3339_weak(pk["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3000),
        "{left:?}"
    );
    let pk_name = pk["name"].as_str().unwrap().to_string();
    open(&b, "Keys", "Keys").await;
    b.wait_text(&pk_name, Duration::from_secs(10)).await;

    // Usage: the ledger has the playground's request (written within about a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_get(a, "/admin/v1/spend?group_by=key")
        .await
        .to_string()
        .contains(&pk_name)
    {
        assert!(
            Instant::now() < deadline,
            "the ledger never booked the playground's request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hourly = admin_get(a, "/admin/v1/spend?group_by=hour").await;
    assert_eq!(hourly["group_by"], "hour");
    assert!(
        hourly["data"][0]["hour"]
            .as_str()
            .unwrap()
            .ends_with(":00:00Z"),
        "{hourly}"
    );
    open(&b, "Usage", "Usage").await;
    let period = b.labelled("Period").await;
    b.click(&period).await;
    b.click(&b.xpath("//option[@value='today']").await).await;
    let text = b.wait_text(&pk_name, Duration::from_secs(10)).await;
    assert!(
        text.contains("By team") && text.contains("By model") && text.contains("gpt-4o-mini"),
        "{text}"
    );
    screenshot(&b, "usage").await;

    // Requests: the log, a filter, and one request's detail.
    open(&b, "Requests", "Requests").await;
    b.type_text(&b.labelled("Key").await, &pk_name).await;
    b.click(&b.button("Apply filters").await).await;
    b.wait_text("fast", Duration::from_secs(10)).await;
    b.click(
        &b.xpath("//button[starts-with(@aria-label, 'Details of ')]")
            .await,
    )
    .await;
    let text = b
        .wait_text("Time to first token", Duration::from_secs(10))
        .await;
    assert!(text.contains("/v1/chat/completions"), "{text}");
    screenshot(&b, "requests").await;

    // MCP: the server, its health and its tools.
    open(&b, "MCP", "MCP").await;
    let text = b
        .wait_text("streamable_http", Duration::from_secs(10))
        .await;
    assert!(text.contains("add"), "the test server's tools: {text}");
    screenshot(&b, "mcp").await;

    // Providers: every backend with health, in flight and latency (the mock answered).
    open(&b, "Providers", "Providers").await;
    let text = b
        .wait_text(&format!("http://{}/v1", up.addr), Duration::from_secs(10))
        .await;
    assert!(
        text.contains("healthy") && text.contains(" ms"),
        "latency shown: {text}"
    );
    screenshot(&b, "providers").await;
    open(&b, "Overview", "Overview").await;
    b.wait_text("openai", Duration::from_secs(10)).await;
    screenshot(&b, "overview").await;

    // A narrow window: no page is wider than the screen (tables scroll in their own box).
    b.set_size(390, 844).await;
    for (page, heading) in [
        ("Overview", "Overview"),
        ("Providers", "Providers"),
        ("Models", "Models"),
        ("Keys", "Keys"),
        ("Usage", "Usage"),
        ("Requests", "Requests"),
        ("MCP", "MCP"),
        ("Playground", "Playground"),
    ] {
        open(&b, page, heading).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = b
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth]",
                vec![],
            )
            .await;
        let (w, inner) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
        assert!(w <= inner, "{page} is {w}px wide in a {inner}px window");
    }
    screenshot(&b, "narrow").await;

    // Nothing went wrong in the browser after signing in.
    let log = b.console().await;
    let errors: Vec<_> = log
        .iter()
        .filter(|(l, _)| l == "SEVERE" || l == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.quit().await;
}
