//! The control plane: the admin API's keys on a real store (SQLite in process, PostgreSQL with
//! two gateway processes), the snapshot the request path reads, and bad admin input.

use std::time::{Duration, Instant};

use inference_gateway::testing::InProcessGateway;
use serde_json::{json, Value};

use crate::common::*;

const ADMIN: &str = "admin-key-for-tests-0123456789";

async fn admin(addr: std::net::SocketAddr, method: &str, path: &str, body: &Value) -> RawResponse {
    let b = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    raw_request(
        addr,
        method,
        path,
        &[("x-admin-key", ADMIN), ("content-type", "application/json")],
        &b,
    )
    .await
}

async fn chat(addr: std::net::SocketAddr, key: &str, model: &str) -> RawResponse {
    let auth = format!("Bearer {key}");
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    raw_request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await
}

fn assert_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
}

async fn mock() -> MockUpstream {
    MockUpstream::start(|req| {
        let m = req.json()["model"].as_str().unwrap_or("").to_string();
        json_response(200, &chat_completion(&m, "hello"))
    })
    .await
}

fn config_key() -> String {
    format!(
        "[[keys]]\nname = \"from-file\"\nhash = \"{}\"\n",
        key_hash("sk-from-the-file")
    )
}

/// Create, use, limit, list (never the secret), change, revoke; keys of the file are read-only;
/// bad input is 4xx; everything survives a restart on the same SQLite file.
#[tokio::test(flavor = "multi_thread")]
async fn key_lifecycle_on_sqlite() {
    let up = mock().await;
    let dir = temp_dir("sqlite-store");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let gw = InProcessGateway::start(&env, Some(&config_key()));
    let a = gw.addr;

    // The admin key, and only it.
    let r = raw_request(a, "GET", "/admin/v1/keys", &[], b"").await;
    assert_error(&r, 401, "invalid_admin_key");
    let r = raw_request(a, "GET", "/admin/v1/keys", &[("x-admin-key", "nope")], b"").await;
    assert_error(&r, 401, "invalid_admin_key");
    let r = raw_request(
        a,
        "GET",
        "/admin/v1/keys",
        &[("authorization", "Bearer sk-from-the-file")],
        b"",
    )
    .await;
    assert_error(&r, 401, "invalid_admin_key");
    let bearer = format!("Bearer {ADMIN}");
    let r = raw_request(
        a,
        "GET",
        "/admin/v1/keys",
        &[("authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Create: the key once, its hash never.
    let r = admin(
        a,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "alice", "rpm_limit": 1, "allowed_models": ["openai/*"], "owner": "team-a",
            "metadata": {"env": "test"}, "expires_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["api_key"]["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("igw-"), "{key}");
    assert_eq!(created["api_key"]["key_prefix"], key[..12]);
    assert_eq!(created["api_key"]["rpm"], 1);
    assert_eq!(created["api_key"]["models"], json!(["openai/*"]));
    assert_eq!(created["api_key"]["source"], "store");
    assert!(!created["api_key"].to_string().contains("sha256:"));

    // Used at once on this replica, with its limits and model list.
    let r = chat(a, &key, "openai/gpt-x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat(a, &key, "openai/gpt-x").await;
    assert_error(&r, 429, "rate_limit_exceeded");
    let r = chat(a, &key, "anthropic/claude").await;
    assert_error(&r, 403, "model_not_allowed");
    // The file's key still works beside it; an unknown key does not.
    assert_eq!(
        chat(a, "sk-from-the-file", "openai/gpt-x").await.status,
        200
    );
    assert_error(
        &chat(a, "igw-nope", "openai/gpt-x").await,
        401,
        "invalid_api_key",
    );

    // Listed, never with the secret; the file's key read-only.
    let r = admin(a, "GET", "/admin/v1/keys", &Value::Null).await;
    let text = r.text();
    assert!(!text.contains(&key) && !text.contains("sha256:"), "{text}");
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["config:from-file".to_string(), id.clone()]);
    for (m, body) in [("PUT", json!({"rpm": 5})), ("DELETE", Value::Null)] {
        let r = admin(a, m, "/admin/v1/keys/config:from-file", &body).await;
        assert_error(&r, 409, "read_only");
    }
    let r = admin(
        a,
        "GET",
        &format!("/admin/v1/keys/{id}/usage"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["requests_this_minute"], 1, "{}", r.text());
    assert_eq!(r.json()["limits"]["rpm"], 1);

    // Bad input: 400, 409, 413, 422 naming the field, 404, 405.
    let raw = |body: &'static [u8]| async move {
        raw_request(a, "POST", "/admin/v1/keys", &[("x-admin-key", ADMIN)], body).await
    };
    assert_error(&raw(b"{not json").await, 400, "invalid_json");
    assert_error(&raw(b"[1,2]").await, 400, "invalid_json");
    let big = format!("{{\"name\":\"x\",\"owner\":\"{}\"}}", "a".repeat(100_000));
    let r = raw_request(
        a,
        "POST",
        "/admin/v1/keys",
        &[("x-admin-key", ADMIN)],
        big.as_bytes(),
    )
    .await;
    assert_error(&r, 413, "request_too_large");
    for (body, param) in [
        (json!({"name": "b", "rpm": "ten"}), json!("rpm")),
        (
            json!({"name": "b", "budget_period": "hourly"}),
            json!("budget_period"),
        ),
        (
            json!({"name": "b", "expires_at": "tomorrow"}),
            json!("expires_at"),
        ),
        (json!({"name": "b c"}), json!("name")),
        (json!({"rpm": 1}), json!("name")),
        // A guardrail profile the configuration does not have.
        (
            json!({"name": "b", "guardrails": "nope"}),
            json!("guardrails"),
        ),
        (json!({"name": "b", "colour": "red"}), Value::Null),
    ] {
        let r = admin(a, "POST", "/admin/v1/keys", &body).await;
        assert_error(&r, 422, "invalid_field");
        assert_eq!(r.json()["error"]["param"], param, "{body}");
    }
    assert!(admin(
        a,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "b", "colour": "red"})
    )
    .await
    .text()
    .contains("colour"));
    for name in ["alice", "from-file"] {
        let r = admin(a, "POST", "/admin/v1/keys", &json!({"name": name})).await;
        assert_error(&r, 409, "already_exists");
    }
    assert_error(
        &admin(a, "GET", "/admin/v1/keys/key_nope", &Value::Null).await,
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "PATCH", "/admin/v1/keys", &json!({})).await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &admin(a, "GET", "/admin/v1/nothing", &Value::Null).await,
        404,
        "not_found",
    );

    // Pages.
    for n in ["bob", "carol"] {
        let r = admin(a, "POST", "/admin/v1/keys", &json!({"name": n})).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = match cursor.is_empty() {
            true => "/admin/v1/keys?limit=2".to_string(),
            false => format!("/admin/v1/keys?limit=2&cursor={cursor}"),
        };
        let v = admin(a, "GET", &q, &Value::Null).await.json();
        for k in v["data"].as_array().unwrap() {
            seen.push(k["name"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["from-file", "alice", "bob", "carol"]);
    assert_error(
        &admin(a, "GET", "/admin/v1/keys?limit=5000", &Value::Null).await,
        400,
        "invalid_value",
    );

    // A partial update takes effect at once.
    let r = admin(
        a,
        "PUT",
        &format!("/admin/v1/keys/{id}"),
        &json!({"rpm": null, "owner": "team-b"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rpm"], Value::Null);
    assert_eq!(r.json()["owner"], "team-b");
    assert_eq!(r.json()["models"], json!(["openai/*"]), "untouched");
    assert_eq!(chat(a, &key, "openai/gpt-x").await.status, 200);

    // Revoked: refused, kept for the ledger (listed on request).
    let r = admin(a, "DELETE", &format!("/admin/v1/keys/{id}"), &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["revoked_at"].is_string());
    assert_error(&chat(a, &key, "openai/gpt-x").await, 401, "invalid_api_key");
    let names = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        !names(admin(a, "GET", "/admin/v1/keys", &Value::Null).await.json())
            .contains(&"alice".to_string())
    );
    assert!(names(
        admin(
            a,
            "GET",
            "/admin/v1/keys?include_revoked=true",
            &Value::Null
        )
        .await
        .json()
    )
    .contains(&"alice".to_string()));
    // Its name can be used again.
    let r = admin(a, "POST", "/admin/v1/keys", &json!({"name": "alice"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice2 = r.json()["key"].as_str().unwrap().to_string();

    // Every change is in the audit log, newest first, without a secret.
    let v = admin(a, "GET", "/admin/v1/audit", &Value::Null)
        .await
        .json();
    let actions: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.revoke",
            "key.update",
            "key.create",
            "key.create",
            "key.create"
        ],
        "{v}"
    );
    assert_eq!(v["data"][1]["target"], json!(id));
    assert_eq!(v["data"][2]["detail"]["fields"], json!(["owner", "rpm"]));
    assert_eq!(v["data"][0]["actor"], "admin-key");
    assert_eq!(v["data"][0]["client"], "127.0.0.1");
    let all = v.to_string();
    assert!(!all.contains(&key) && !all.contains(&alice2) && !all.contains("sha256:"));
    let first = admin(a, "GET", "/admin/v1/audit?limit=4", &Value::Null)
        .await
        .json();
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let rest = admin(
        a,
        "GET",
        &format!("/admin/v1/audit?limit=4&cursor={cursor}"),
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);
    // A new gateway on the same file (the first keeps running, as during an upgrade): the keys
    // and the revocation are read back from the store.
    let _old = gw;
    let gw = InProcessGateway::start(&env, Some(&config_key()));
    assert_error(
        &chat(gw.addr, &key, "openai/gpt-x").await,
        401,
        "invalid_api_key",
    );
    assert_eq!(chat(gw.addr, &alice2, "openai/gpt-x").await.status, 200);
    // Revoking every key does not open the gateway.
    let listed = admin(gw.addr, "GET", "/admin/v1/keys", &Value::Null)
        .await
        .json();
    for k in listed["data"].as_array().unwrap() {
        let id = k["id"].as_str().unwrap();
        if !id.starts_with("config:") {
            admin(
                gw.addr,
                "DELETE",
                &format!("/admin/v1/keys/{id}"),
                &Value::Null,
            )
            .await;
        }
    }
    let r = raw_request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        json!({"model": "openai/gpt-x", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_error(&r, 401, "missing_api_key");
}

/// Without an admin key the admin API does not exist; without a store it lists the file's
/// keys and cannot issue any. AUTH_ENABLE without keys is valid with a store and an admin key.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_exists_only_with_an_admin_key() {
    let up = mock().await;
    let env = provider_env(&[("openai", up.url("/v1"))]);
    let gw = InProcessGateway::start(&env, Some(&config_key()));
    let r = admin(gw.addr, "GET", "/admin/v1/keys", &Value::Null).await;
    assert_error(&r, 404, "not_found");
    let mut env2 = env.clone();
    env2.push(("ADMIN_API_KEY", ADMIN.into()));
    let gw = InProcessGateway::start(&env2, Some(&config_key()));
    let r = admin(gw.addr, "GET", "/admin/v1/keys", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], "config:from-file");
    let r = admin(gw.addr, "POST", "/admin/v1/keys", &json!({"name": "x"})).await;
    assert_error(&r, 503, "store_unavailable");
    // Health for the UI and the CLI: providers with their backends, version, uptime.
    let h = admin(gw.addr, "GET", "/admin/v1/health", &Value::Null).await;
    assert_eq!(h.status, 200, "{}", h.text());
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["providers"]["openai"].is_object(), "{h}");
    assert!(h["store"].is_null());
    let r = raw_request(gw.addr, "GET", "/admin/v1/health", &[], b"").await;
    assert_error(&r, 401, "invalid_admin_key");
    // This replica's recent activity: the interval so far counts the file key's requests.
    for _ in 0..3 {
        assert_eq!(
            chat(gw.addr, "sk-from-the-file", "openai/gpt-x")
                .await
                .status,
            200
        );
    }
    let s = admin(gw.addr, "GET", "/admin/v1/stats", &Value::Null)
        .await
        .json();
    assert_eq!(s["object"], "stats", "{s}");
    assert_eq!(s["interval_seconds"], 10);
    assert_eq!(s["current"]["requests"], 3, "{s}");
    assert_eq!(s["current"]["requests_by_provider"]["openai"], 3, "{s}");
    assert!(
        s["current"]["latency_p50_ms"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    assert_eq!(s["current"]["error_rate"], 0.0);
    // With a store: AUTH_ENABLE and no keys at all is a gateway that waits for keys.
    let dir = temp_dir("auth-enable");
    let mut env3 = env.clone();
    env3.push(("ADMIN_API_KEY", ADMIN.into()));
    env3.push(("AUTH_ENABLE", "true".into()));
    env3.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("s.db").display()),
    ));
    let gw = InProcessGateway::start(&env3, None);
    assert_error(
        &chat(gw.addr, "anything", "openai/gpt-x").await,
        401,
        "invalid_api_key",
    );
    let key = admin(gw.addr, "POST", "/admin/v1/keys", &json!({"name": "first"}))
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(chat(gw.addr, &key, "openai/gpt-x").await.status, 200);
}

/// Two gateway processes on one PostgreSQL: a key made on one is served by the other within a
/// second, and its revocation too. `-t` checks the store; `migrate` applies the schema.
#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_keys_through_postgres() {
    let up = mock().await;
    let url = postgres().database("two_gateways");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("DATABASE_URL", url.clone()));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let run = |args: &[&str], env: &[(&str, String)]| {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&["migrate"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("store migrated"));
    let out = run(&["-t"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A store that cannot be opened or written fails the check, naming no password.
    let mut bad = env.clone();
    bad.retain(|(k, _)| *k != "DATABASE_URL");
    bad.push((
        "DATABASE_URL",
        format!(
            "postgres://postgres:pw-secret@127.0.0.1:{}/nope",
            postgres().port
        ),
    ));
    let out = run(&["-t"], &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pw-secret"));
    let mut bad = env.clone();
    bad.retain(|(k, _)| *k != "DATABASE_URL");
    bad.push(("DATABASE_URL", "sqlite:///nonexistent-dir/igw.db".into()));
    assert_eq!(run(&["-t"], &bad).status.code(), Some(2));

    let gw1 = GatewayProcess::start(&env, None);
    let gw2 = GatewayProcess::start(&env, None);
    let r = admin(
        gw1.addr(),
        "POST",
        "/admin/v1/keys",
        &json!({"name": "shared", "tpm": 100000}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let id = r.json()["api_key"]["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    while chat(gw2.addr(), &key, "openai/gpt-x").await.status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the key did not reach the second gateway within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let created_after = t.elapsed();
    let r = admin(
        gw1.addr(),
        "DELETE",
        &format!("/admin/v1/keys/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = Instant::now();
    while chat(gw2.addr(), &key, "openai/gpt-x").await.status != 401 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the revocation did not reach the second gateway within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "PostgreSQL: a new key reached the second gateway after {created_after:?}, its revocation after {:?}",
        t.elapsed()
    );
    // The second gateway lists what the first made (revoked, on request).
    let v = admin(
        gw2.addr(),
        "GET",
        "/admin/v1/keys?include_revoked=true",
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(v["data"][0]["name"], "shared");
    assert!(v["data"][0]["revoked_at"].is_string());
    // Spend booked by either gateway lands in the one ledger (PostgreSQL's upsert and sums).
    let r = admin(
        gw1.addr(),
        "POST",
        "/admin/v1/teams",
        &json!({"name": "t1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        gw1.addr(),
        "POST",
        "/admin/v1/keys",
        &json!({"name": "payer", "team": "t1", "budget_usd": 10}),
    )
    .await;
    let key = r.json()["key"].as_str().unwrap().to_string();
    let t = Instant::now();
    while chat(gw2.addr(), &key, "openai/gpt-4o").await.status != 200 {
        assert!(t.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(chat(gw1.addr(), &key, "openai/gpt-4o").await.status, 200);
    assert_eq!(chat(gw2.addr(), &key, "openai/gpt-4o").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin(
            gw1.addr(),
            "GET",
            "/admin/v1/spend?group_by=team",
            &Value::Null,
        )
        .await
        .json();
        if v["data"][0]["requests"] == 3 {
            assert_eq!(v["data"][0]["team"], "t1");
            assert_eq!(v["data"][0]["prompt_tokens"], 27);
            assert!(v["total"]["spend_usd"].as_f64().unwrap() > 0.0, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One audit log for both gateways.
    let v = admin(gw2.addr(), "GET", "/admin/v1/audit?limit=2", &Value::Null)
        .await
        .json();
    assert_eq!(v["data"][0]["action"], "key.create", "{v}");
    assert_eq!(v["data"][1]["action"], "team.create", "{v}");
    let c = v["next_cursor"].as_str().unwrap();
    let v = admin(
        gw2.addr(),
        "GET",
        &format!("/admin/v1/audit?cursor={c}"),
        &Value::Null,
    )
    .await
    .json();
    let rest: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["key.revoke", "key.create"], "{v}");
    assert_eq!(v["next_cursor"], Value::Null);
    // A model added on one replica routes on the other within a second.
    let r = admin(
        gw1.addr(),
        "POST",
        "/admin/v1/models",
        &json!({"name": "shared-model", "target": "openai/gpt-4o-mini"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t = Instant::now();
    while chat(gw2.addr(), &key, "shared-model").await.status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the model did not reach the second gateway within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "PostgreSQL: a new model routed on the second gateway after {:?}",
        t.elapsed()
    );
    assert_eq!(up.last().json()["model"], "gpt-4o-mini");
}

/// Spend goes to the store's ledger off the request path: reported by key, team, model and day,
/// and a restart loads the period's spend back (a spent budget stays spent).
#[tokio::test(flavor = "multi_thread")]
async fn spend_is_booked_in_the_ledger_and_survives_a_restart() {
    let up = mock().await;
    let dir = temp_dir("ledger");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let gw = InProcessGateway::start(&env, None);
    let r = admin(
        gw.addr,
        "POST",
        "/admin/v1/teams",
        &json!({"name": "research"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        gw.addr,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "spender", "team": "research", "budget_usd": 0.0002, "budget_period": "monthly"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let id = r.json()["api_key"]["id"].as_str().unwrap().to_string();
    // Each answer costs the mock's usage at gpt-4o's price; the budget allows a few.
    let mut ok = 0;
    for _ in 0..20 {
        match chat(gw.addr, &key, "openai/gpt-4o").await.status {
            200 => ok += 1,
            429 => break,
            s => panic!("status {s}"),
        }
    }
    assert!(
        (1..20).contains(&ok),
        "{ok} requests before the budget ran out"
    );
    let spent = admin(
        gw.addr,
        "GET",
        &format!("/admin/v1/keys/{id}/usage"),
        &Value::Null,
    )
    .await
    .json()["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(spent >= 0.0002, "{spent}");
    // In the ledger within about a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let v = admin(gw.addr, "GET", "/admin/v1/spend?group_by=key", &Value::Null)
            .await
            .json();
        if v["total"]["requests"] == ok {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["data"][0]["key"], "spender", "{report}");
    // /health?verbose says where the store is and what the ledger wrote.
    let auth = format!("Bearer {key}");
    let h = raw_request(
        gw.addr,
        "GET",
        "/health?verbose",
        &[("authorization", &auth)],
        b"",
    )
    .await
    .json();
    assert_eq!(h["store"]["kind"], "sqlite", "{h}");
    assert_eq!(h["store"]["reachable"], true, "{h}");
    assert!(
        h["store"]["ledger_rows_written"].as_u64().unwrap() >= 1,
        "{h}"
    );
    assert_eq!(h["store"]["ledger_bookings_dropped"], 0, "{h}");
    assert_eq!(report["data"][0]["principal"], "key:spender");
    assert!(
        (report["data"][0]["spend_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{report}"
    );
    let by = |g: &str| {
        let gw = gw.addr;
        let q = format!("/admin/v1/spend?group_by={g}");
        async move { admin(gw, "GET", &q, &Value::Null).await.json() }
    };
    assert_eq!(by("team").await["data"][0]["team"], "research");
    assert_eq!(by("model").await["data"][0]["model"], "openai/gpt-4o");
    let today =
        humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].to_string();
    assert_eq!(by("day").await["data"][0]["day"], today);
    // A window before any spend is empty; bad parameters are 400s naming them.
    let r = admin(
        gw.addr,
        "GET",
        "/admin/v1/spend?from=2020-01-01&to=2020-02-01",
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["data"], json!([]), "{}", r.text());
    for (q, param) in [
        ("group_by=user", "group_by"),
        ("from=yesterday", "from"),
        ("from=2030-01-01&to=2020-01-01", "from"),
    ] {
        let r = admin(
            gw.addr,
            "GET",
            &format!("/admin/v1/spend?{q}"),
            &Value::Null,
        )
        .await;
        assert_error(&r, 400, "invalid_value");
        assert_eq!(r.json()["error"]["param"], param);
    }

    // A new process on the same store: the month's spend is loaded back, the budget stays spent.
    let gw2 = InProcessGateway::start(&env, None);
    let again = admin(
        gw2.addr,
        "GET",
        &format!("/admin/v1/keys/{id}/usage"),
        &Value::Null,
    )
    .await
    .json()["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(
        (again - spent).abs() < 1e-9,
        "{again} after the restart, {spent} before"
    );
    assert_error(
        &chat(gw2.addr, &key, "openai/gpt-4o").await,
        429,
        "insufficient_quota",
    );
}

/// A team's limits and budget are shared by its keys: a request passes both its key's and its
/// team's, and the team's spend comes back after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn team_limits_and_budget_are_shared_by_its_keys() {
    let up = mock().await;
    let dir = temp_dir("teams");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;
    let team = |body: Value| async move { admin(a, "POST", "/admin/v1/teams", &body).await };
    let r = team(json!({"name": "research", "rpm": 3})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let research = r.json()["id"].as_str().unwrap().to_string();
    assert_error(
        &team(json!({"name": "research"})).await,
        409,
        "already_exists",
    );
    let r = team(json!({"name": "x", "models": ["openai/*"]})).await;
    assert_error(&r, 422, "invalid_field");
    let r = admin(
        a,
        "PUT",
        &format!("/admin/v1/teams/{research}"),
        &json!({"name": "other"}),
    )
    .await;
    assert_error(&r, 422, "invalid_field");
    // A key names an existing team.
    let r = admin(
        a,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "k0", "team": "ghost"}),
    )
    .await;
    assert_error(&r, 422, "invalid_field");
    assert_eq!(r.json()["error"]["param"], "team");
    let key = |name: &str, team: &str| {
        let body = json!({"name": name, "team": team});
        async move {
            let r = admin(a, "POST", "/admin/v1/keys", &body).await;
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["key"].as_str().unwrap().to_string()
        }
    };
    let (k1, k2) = (key("k1", "research").await, key("k2", "research").await);
    // Three requests a minute for the team, whichever key sends them.
    for k in [&k1, &k2, &k1] {
        assert_eq!(chat(a, k, "openai/gpt-4o").await.status, 200);
    }
    let r = chat(a, &k2, "openai/gpt-4o").await;
    assert_error(&r, 429, "rate_limit_exceeded");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("research"),
        "{}",
        r.text()
    );
    let u = admin(
        a,
        "GET",
        &format!("/admin/v1/teams/{research}/usage"),
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(u["requests_this_minute"], 3, "{u}");

    // A budget for two keys (each answer costs about $0.0000525).
    let r = team(json!({"name": "frugal", "budget_usd": 0.0001, "budget_period": "monthly"})).await;
    let frugal = r.json()["id"].as_str().unwrap().to_string();
    let (k3, k4) = (key("k3", "frugal").await, key("k4", "frugal").await);
    assert_eq!(chat(a, &k3, "openai/gpt-4o").await.status, 200);
    assert_eq!(chat(a, &k4, "openai/gpt-4o").await.status, 200);
    assert_error(
        &chat(a, &k3, "openai/gpt-4o").await,
        429,
        "insufficient_quota",
    );
    let u = admin(
        a,
        "GET",
        &format!("/admin/v1/teams/{frugal}/usage"),
        &Value::Null,
    )
    .await
    .json();
    let spent = u["spend_usd"].as_f64().unwrap();
    assert!(spent >= 0.0001, "{u}");
    // The ledger has it before the restart (written within about a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin(a, "GET", "/admin/v1/spend?group_by=team", &Value::Null)
            .await
            .json();
        let frugal_row = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["team"] == "frugal")
            .cloned();
        if frugal_row.is_some_and(|g| g["requests"] == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new process: the team's month is loaded back from the ledger.
    let gw2 = InProcessGateway::start(&env, None);
    assert_error(
        &chat(gw2.addr, &k4, "openai/gpt-4o").await,
        429,
        "insufficient_quota",
    );
    let u = admin(
        gw2.addr,
        "GET",
        &format!("/admin/v1/teams/{frugal}/usage"),
        &Value::Null,
    )
    .await
    .json();
    assert!(
        (u["spend_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{u}"
    );
    // Deleting the team lifts its shared limits (the keys' own still apply).
    let r = admin(
        gw2.addr,
        "DELETE",
        &format!("/admin/v1/teams/{frugal}"),
        &Value::Null,
    )
    .await;
    assert!(r.json()["deleted_at"].is_string(), "{}", r.text());
    assert_eq!(chat(gw2.addr, &k4, "openai/gpt-4o").await.status, 200);
    let listed = admin(gw2.addr, "GET", "/admin/v1/teams", &Value::Null)
        .await
        .json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let all = admin(
        gw2.addr,
        "GET",
        "/admin/v1/teams?include_deleted=true",
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "{all}");
}

/// A mock OpenAI-compatible server that names itself in every answer.
async fn named_mock(name: &'static str) -> MockUpstream {
    MockUpstream::start(move |req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if req.method == "GET" {
            return json_response(200, r#"{"object":"list","data":[]}"#);
        }
        let m = body["model"].as_str().unwrap_or("").to_string();
        json_response(200, &chat_completion(&m, name))
    })
    .await
}

fn answer(r: &RawResponse) -> String {
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Models (aliases, and seed 003's models with backends of their own) and providers added,
/// changed and removed at run time; provider keys write-only; the file's objects read-only;
/// bad input 4xx; everything read back by a new gateway on the same SQLite file.
#[tokio::test(flavor = "multi_thread")]
async fn models_and_providers_at_run_time() {
    let up = named_mock("hello").await;
    let b1 = named_mock("from-b1").await;
    let b2 = named_mock("from-b2").await;
    let dir = temp_dir("catalog-store");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let toml = "[aliases.smart]\ntarget = \"openai/gpt-4o\"\n";
    let gw = InProcessGateway::start(&env, Some(toml));
    let a = gw.addr;
    let open_chat = |model: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        async move { post_chat(a, body.to_string().as_bytes()).await }
    };

    // The file's alias and provider are listed, read-only.
    let models = admin(a, "GET", "/admin/v1/models", &Value::Null)
        .await
        .json();
    assert_eq!(models["data"][0]["id"], "config:smart", "{models}");
    assert_eq!(models["data"][0]["source"], "config");
    assert_eq!(models["data"][0]["target"], "openai/gpt-4o");
    let r = admin(
        a,
        "PUT",
        "/admin/v1/models/config:smart",
        &json!({"target": "openai/x"}),
    )
    .await;
    assert_error(&r, 409, "read_only");
    let providers = admin(a, "GET", "/admin/v1/providers", &Value::Null)
        .await
        .json();
    let openai = providers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "config:openai")
        .cloned()
        .unwrap_or_else(|| panic!("{providers}"));
    assert_eq!(openai["source"], "config");
    assert_eq!(openai["has_api_key"], true);
    assert!(
        !providers.to_string().contains("sk-openai-test"),
        "{providers}"
    );
    let r = admin(
        a,
        "DELETE",
        "/admin/v1/providers/config:openai",
        &Value::Null,
    )
    .await;
    assert_error(&r, 409, "read_only");

    // Seed 003's flow: a model, then its backends.
    let r = admin(
        a,
        "POST",
        "/admin/v1/models",
        &json!({"name": "llama-3", "model_id": "meta-llama/Llama-3.1-70B-Instruct",
            "default_params": {"temperature": 0.7}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let model = r.json();
    let mid = model["id"].as_str().unwrap().to_string();
    assert_eq!(model["routable"], false);
    assert_eq!(model["defaults"]["temperature"], 0.7);
    assert_error(&open_chat("llama-3").await, 400, "provider_not_determined");
    let r = admin(
        a,
        "POST",
        &format!("/admin/v1/models/{mid}/backends"),
        &json!({"url": b1.url(""), "weight": 1}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let bk1 = r.json()["id"].as_str().unwrap().to_string();
    let r = open_chat("llama-3").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answer(&r), "from-b1");
    let sent = b1.last().json();
    assert_eq!(sent["model"], "meta-llama/Llama-3.1-70B-Instruct");
    assert_eq!(sent["temperature"], 0.7);
    assert!(b1.last().header("authorization").is_none());
    // A second backend with its own key: both serve, the key goes to its backend only.
    let r = admin(
        a,
        "POST",
        &format!("/admin/v1/models/{mid}/backends"),
        &json!({"url": b2.url(""), "weight": 1, "api_key": "sk-backend-two-secret"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["has_api_key"], true);
    assert!(!r.text().contains("sk-backend-two-secret"));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = open_chat("llama-3").await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(answer(&r));
    }
    assert_eq!(seen.len(), 2, "both backends serve: {seen:?}");
    assert_eq!(
        b2.last().header("authorization"),
        Some("Bearer sk-backend-two-secret")
    );
    assert!(b1
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
    // Take b1 out: b2 serves everything.
    let r = admin(
        a,
        "PUT",
        &format!("/admin/v1/models/{mid}/backends/{bk1}"),
        &json!({"active": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], false);
    let before = b1.count();
    for _ in 0..3 {
        assert_eq!(answer(&open_chat("llama-3").await), "from-b2");
    }
    assert_eq!(b1.count(), before);
    let listed = admin(a, "GET", &format!("/admin/v1/models/{mid}"), &Value::Null).await;
    assert_eq!(listed.json()["backends"].as_array().unwrap().len(), 2);
    assert_eq!(listed.json()["routable"], true);
    assert!(!listed.text().contains("sk-backend-two-secret"));

    // An alias to a provider's model, with seed 003's transforms.
    let r = admin(
        a,
        "POST",
        "/admin/v1/models",
        &json!({"name": "fast", "target": "openai/gpt-4o-mini", "fallbacks": ["smart"],
            "transforms": {"system_prompt_prefix": "Be brief."}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let fast = r.json()["id"].as_str().unwrap().to_string();
    let r = open_chat("fast").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = up.last().json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(sent["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("Be brief."));
    // Listed by /v1/models beside the file's alias.
    let ids = raw_request(a, "GET", "/v1/models", &[], b"").await.json();
    let ids: Vec<&str> = ids["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"fast") && ids.contains(&"llama-3") && ids.contains(&"smart"),
        "{ids:?}"
    );
    // Changed (PUT is partial), then deleted.
    let r = admin(
        a,
        "PUT",
        &format!("/admin/v1/models/{fast}"),
        &json!({"target": "openai/gpt-4.1-nano"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["system_prompt_prefix"], "Be brief.");
    open_chat("fast").await;
    assert_eq!(up.last().json()["model"], "gpt-4.1-nano");
    let r = admin(
        a,
        "DELETE",
        &format!("/admin/v1/models/{fast}"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["deleted"], true, "{}", r.text());
    assert_error(&open_chat("fast").await, 400, "provider_not_determined");
    let r = admin(a, "GET", &format!("/admin/v1/models/{fast}"), &Value::Null).await;
    assert_error(&r, 404, "not_found");

    // A provider at run time: routable by prefix, its key write-only.
    let r = admin(
        a,
        "POST",
        "/admin/v1/providers",
        &json!({"name": "local", "url": b1.url("/v1"), "api_key": "sk-local-provider-secret"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let local = r.json();
    assert_eq!(local["has_api_key"], true);
    assert!(!r.text().contains("sk-local-provider-secret"));
    let r = open_chat("local/qwen").await;
    assert_eq!(answer(&r), "from-b1", "{}", r.text());
    assert_eq!(b1.last().path, "/v1/chat/completions");
    assert_eq!(b1.last().json()["model"], "qwen");
    assert_eq!(
        b1.last().header("authorization"),
        Some("Bearer sk-local-provider-secret")
    );
    // Pool members replace its url (as `backends` in the file), with its key unless they
    // have their own.
    let pid = local["id"].as_str().unwrap().to_string();
    let r = admin(
        a,
        "POST",
        &format!("/admin/v1/providers/{pid}/backends"),
        &json!({"url": b2.url("/v1"), "weight": 3}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(answer(&open_chat("local/qwen").await), "from-b2");
    }
    assert_eq!(
        b2.last().header("authorization"),
        Some("Bearer sk-local-provider-secret")
    );
    let r = admin(
        a,
        "POST",
        &format!("/admin/v1/providers/{pid}/backends"),
        &json!({"url": b1.url("/v1")}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        seen.insert(answer(&open_chat("local/qwen").await));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let all = admin(a, "GET", "/admin/v1/providers", &Value::Null).await;
    assert!(!all.text().contains("sk-local-provider-secret"));
    let audit = admin(a, "GET", "/admin/v1/audit?limit=100", &Value::Null).await;
    assert!(audit.text().contains("provider.create"), "{}", audit.text());
    assert!(!audit.text().contains("sk-local-provider-secret"));
    assert!(!audit.text().contains("sk-backend-two-secret"));

    // Bad input: taken names, unknown fields, wrong types, bad URLs, unknown targets.
    for (path, body, status, code, param) in [
        (
            "/admin/v1/providers",
            json!({"name": "openai", "url": "http://h"}),
            409,
            "already_exists",
            "name",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "local", "url": "http://h"}),
            409,
            "already_exists",
            "name",
        ),
        (
            "/admin/v1/models",
            json!({"name": "smart", "target": "openai/x"}),
            409,
            "already_exists",
            "name",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "p2", "url": "ftp://h"}),
            422,
            "invalid_field",
            "url",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "p2"}),
            422,
            "invalid_field",
            "url",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "p2", "url": "http://h", "max_concurrent": "many"}),
            422,
            "invalid_field",
            "max_concurrent",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "p 2", "url": "http://h"}),
            422,
            "invalid_field",
            "name",
        ),
        (
            "/admin/v1/providers",
            json!({"name": "p2", "url": "http://h", "dialect": "klingon"}),
            422,
            "invalid_field",
            "dialect",
        ),
        (
            "/admin/v1/models",
            json!({"name": "m2", "target": "nowhere/x"}),
            422,
            "invalid_field",
            "target",
        ),
        (
            "/admin/v1/models",
            json!({"name": "m2", "target": "openai"}),
            422,
            "invalid_field",
            "target",
        ),
        (
            "/admin/v1/models",
            json!({"name": "m2", "target": "openai/x", "fallbacks": ["nope/x"]}),
            422,
            "invalid_field",
            "fallbacks",
        ),
        (
            "/admin/v1/models",
            json!({"name": "m2", "target": "openai/x", "defaults": {"stream": true}}),
            422,
            "invalid_field",
            "defaults",
        ),
        (
            "/admin/v1/models",
            json!({"target": "openai/x"}),
            422,
            "invalid_field",
            "name",
        ),
        (
            "/admin/v1/models",
            json!({"name": "openai/gpt-4o", "target": "openai/x"}),
            422,
            "invalid_field",
            "name",
        ),
        (
            "/admin/v1/models",
            json!({"name": "local/qwen", "target": "openai/x"}),
            422,
            "invalid_field",
            "name",
        ),
        (
            &format!("/admin/v1/models/{mid}/backends"),
            json!({"url": "not a url"}),
            422,
            "invalid_field",
            "url",
        ),
        (
            &format!("/admin/v1/models/{mid}/backends"),
            json!({"url": "http://h", "weight": 0}),
            422,
            "invalid_field",
            "weight",
        ),
    ] {
        let r = admin(a, "POST", path, &body).await;
        assert_error(&r, status, code);
        assert_eq!(r.json()["error"]["param"], param, "{body}: {}", r.text());
    }
    let r = admin(
        a,
        "POST",
        "/admin/v1/providers",
        &json!({"name": "p2", "url": "http://h", "colour": "blue"}),
    )
    .await;
    assert_error(&r, 422, "invalid_field");
    assert!(r.text().contains("colour"), "{}", r.text());
    let r = raw_request(
        a,
        "POST",
        "/admin/v1/models",
        &[("x-admin-key", ADMIN)],
        b"{nope",
    )
    .await;
    assert_error(&r, 400, "invalid_json");

    // A new gateway on the same file routes what the first one added.
    let _old = gw;
    let gw = InProcessGateway::start(&env, Some(toml));
    let again = post_chat(
        gw.addr,
        json!({"model": "llama-3", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(answer(&again), "from-b2", "{}", again.text());
    let r = post_chat(
        gw.addr,
        json!({"model": "local/qwen", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Deleting a provider removes its pool members and its routes.
    let r = admin(
        gw.addr,
        "DELETE",
        &format!("/admin/v1/providers/{pid}"),
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_chat(
        gw.addr,
        json!({"model": "local/qwen", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_error(&r, 400, "provider_not_determined");
}

/// The request log: every API request's record in the store (bodies with `store.log_bodies`),
/// filtered by key, model and status, paged newest first; pruned past its retention.
#[tokio::test(flavor = "multi_thread")]
async fn request_log_on_sqlite() {
    let up = MockUpstream::start(|req| {
        let body = req.json();
        let m = body["model"].as_str().unwrap_or("").to_string();
        if body["stream"] == true {
            sse_steps(
                chat_stream(&m, &["hel", "lo"], true).as_bytes(),
                &[],
                Duration::ZERO,
            )
        } else {
            json_response(200, &chat_completion(&m, "hello"))
        }
    })
    .await;
    let dir = temp_dir("request-log");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push((
        "DATABASE_URL",
        format!("sqlite://{}", dir.join("igw.db").display()),
    ));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    env.push(("STORE_LOG_BODIES", "true".into()));
    let gw = InProcessGateway::start(&env, None);
    let a = gw.addr;
    let mut keys = Vec::new();
    for (name, models) in [
        ("alice", json!(["openai/*"])),
        ("bob", json!(["openai/gpt-4o"])),
    ] {
        let r = admin(
            a,
            "POST",
            "/admin/v1/keys",
            &json!({"name": name, "models": models}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        keys.push(r.json()["key"].as_str().unwrap().to_string());
    }
    let r = chat(a, &keys[0], "openai/gpt-x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first_id = r.headers["x-request-id"].clone();
    let auth = format!("Bearer {}", keys[0]);
    let body = json!({"model": "openai/gpt-y", "stream": true,
        "messages": [{"role": "user", "content": "stream please"}]});
    let r = raw_request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_error(
        &chat(a, &keys[1], "openai/gpt-x").await,
        403,
        "model_not_allowed",
    );

    // Written within about a second, off the request path.
    let deadline = Instant::now() + Duration::from_secs(5);
    let all = loop {
        let v = admin(a, "GET", "/admin/v1/requests", &Value::Null)
            .await
            .json();
        if v["data"].as_array().is_some_and(|d| d.len() >= 3) {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rows = all["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{all}");
    // Newest first.
    assert_eq!(rows[0]["key"], "bob");
    assert_eq!(rows[0]["status"], 403);
    assert_eq!(rows[1]["model"], "openai/gpt-y");
    assert_eq!(rows[2]["request_id"], first_id.as_str());
    assert_eq!(rows[2]["provider"], "openai");
    assert_eq!(rows[2]["upstream_model"], "gpt-x");
    assert_eq!(rows[2]["prompt_tokens"], 9);
    assert_eq!(rows[2]["path"], "/v1/chat/completions");
    assert!(
        rows[2].get("request_body").is_none(),
        "bodies only in the detail"
    );
    for k in &keys {
        assert!(
            !all.to_string().contains(k.as_str()),
            "a caller key in the log"
        );
    }
    // Filters.
    let q = |query: &'static str| async move {
        admin(
            a,
            "GET",
            &format!("/admin/v1/requests?{query}"),
            &Value::Null,
        )
        .await
        .json()
    };
    assert_eq!(q("key=alice").await["data"].as_array().unwrap().len(), 2);
    assert_eq!(q("status=4xx").await["data"][0]["key"], "bob");
    assert_eq!(q("status=403").await["data"].as_array().unwrap().len(), 1);
    assert_eq!(q("status=200").await["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        q("model=openai/gpt-y").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let by_id = admin(
        a,
        "GET",
        &format!("/admin/v1/requests?request_id={first_id}"),
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(by_id["data"].as_array().unwrap().len(), 1);
    // A key's admin id works as well as its name.
    let listed = admin(a, "GET", "/admin/v1/keys", &Value::Null).await.json();
    let bob_id = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = admin(
        a,
        "GET",
        &format!("/admin/v1/requests?key={bob_id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(
        v.json()["data"].as_array().unwrap().len(),
        1,
        "{}",
        v.text()
    );
    // Pages.
    let p1 = q("limit=2").await;
    assert_eq!(p1["data"].as_array().unwrap().len(), 2);
    let c = p1["next_cursor"].as_str().unwrap().to_string();
    let p2 = admin(
        a,
        "GET",
        &format!("/admin/v1/requests?limit=2&cursor={c}"),
        &Value::Null,
    )
    .await
    .json();
    assert_eq!(p2["data"].as_array().unwrap().len(), 1);
    assert_eq!(p2["data"][0]["request_id"], first_id.as_str());
    assert_eq!(p2["next_cursor"], Value::Null);
    // The detail has the record and the bodies (store.log_bodies).
    let id = rows[2]["id"].as_str().unwrap();
    let d = admin(a, "GET", &format!("/admin/v1/requests/{id}"), &Value::Null)
        .await
        .json();
    assert!(
        d["request_body"].as_str().unwrap().contains("\"hi\""),
        "{d}"
    );
    assert!(
        d["response_body"].as_str().unwrap().contains("hello"),
        "{d}"
    );
    assert_eq!(d["record"]["status"], 200);
    let sid = rows[1]["id"].as_str().unwrap();
    let d = admin(a, "GET", &format!("/admin/v1/requests/{sid}"), &Value::Null)
        .await
        .json();
    let streamed = d["response_body"].as_str().unwrap();
    assert!(
        streamed.contains("data: ") && streamed.contains("[DONE]"),
        "{d}"
    );
    // Bad input.
    assert_error(
        &admin(a, "GET", "/admin/v1/requests?status=abc", &Value::Null).await,
        400,
        "invalid_value",
    );
    assert_error(
        &admin(a, "GET", "/admin/v1/requests?cursor=zzz", &Value::Null).await,
        400,
        "invalid_value",
    );
    assert_error(
        &admin(a, "GET", "/admin/v1/requests/req_nope", &Value::Null).await,
        404,
        "not_found",
    );
    assert_error(
        &admin(a, "POST", "/admin/v1/requests", &json!({})).await,
        405,
        "method_not_allowed",
    );
    let health = raw_request(a, "GET", "/health?verbose", &[], b"")
        .await
        .json();
    assert!(
        health["store"]["request_log_rows_written"]
            .as_u64()
            .unwrap()
            >= 3,
        "{health}"
    );

    // Past the retention: pruned when a gateway starts (and every ten minutes).
    let _old = gw;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.push(("STORE_REQUEST_LOG_RETENTION", "1s".into()));
    let gw = InProcessGateway::start(&env, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin(gw.addr, "GET", "/admin/v1/requests", &Value::Null)
            .await
            .json();
        if v["data"].as_array().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "not pruned: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The database dies mid-load: requests keep succeeding from the snapshot, `/health?verbose`
/// says the store is unreachable, admin writes are refused (503), and the spend ledger and the
/// request log written meanwhile land once the database is back.
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_mid_load() {
    let up = mock().await;
    let pg = Postgres::private();
    let url = pg.database("outage");
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("DATABASE_URL", url));
    env.push(("ADMIN_API_KEY", ADMIN.into()));
    let gw = GatewayProcess::start(&env, None);
    let a = gw.addr();
    let r = admin(
        a,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "steady", "budget_usd": 100}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().unwrap().to_string();
    let reachable = |a| async move {
        raw_request(a, "GET", "/health?verbose", &[], b"")
            .await
            .json()["store"]["reachable"]
            .as_bool()
    };
    assert_eq!(reachable(a).await, Some(true));

    // Load from four callers until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, key) = (stop.clone(), key.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.push(chat(a, &key, "openai/gpt-4o").await.status);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.kill();
    let down = Instant::now();
    while reachable(a).await != Some(false) {
        assert!(
            down.elapsed() < Duration::from_secs(5),
            "the outage was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = down.elapsed();
    // Changes cannot be made while it is down; nothing hangs.
    let t = Instant::now();
    let r = admin(
        a,
        "POST",
        "/admin/v1/keys",
        &json!({"name": "during-outage"}),
    )
    .await;
    assert_error(&r, 503, "store_unavailable");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart();
    let back = Instant::now();
    while reachable(a).await != Some(true) {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the store did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    let n = statuses.len() as u64;
    assert!(n >= 20, "{n} requests");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeds through the outage: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    // What was booked during the outage lands: the ledger counts every request, and so does
    // the request log.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spend = admin(a, "GET", "/admin/v1/spend?group_by=key", &Value::Null)
            .await
            .json();
        // Every page of the request log.
        let (mut listed, mut cursor) = (0u64, String::new());
        let logged = loop {
            let page = format!("/admin/v1/requests?key=steady&limit=1000&cursor={cursor}");
            let logged = admin(a, "GET", &page, &Value::Null).await.json();
            listed += logged["data"].as_array().map_or(0, Vec::len) as u64;
            match logged["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break logged,
            }
        };
        if spend["data"][0]["requests"] == n && listed == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger {} and request log {listed} of {n} requests: {spend} {logged} {}",
            spend["data"][0]["requests"],
            gw.log_text()
                .lines()
                .filter(|l| l.contains("WARN"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "database outage: {n} requests, all 200; the outage noticed after {noticed:?}; every booking written after the restart"
    );
    let health = raw_request(a, "GET", "/health?verbose", &[], b"")
        .await
        .json();
    assert_eq!(health["store"]["ledger_bookings_dropped"], 0, "{health}");
    assert_eq!(health["store"]["request_log_rows_dropped"], 0, "{health}");
}
