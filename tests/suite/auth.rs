//! Keys, OIDC, limits and budgets, black-box: the gateway binary, a mock provider, a local OIDC
//! issuer (discovery + JWKS) with keys made in the test, and real `redis-server`s.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use serde_json::{json, Value};

/// `[[keys]]` hash of `key`, from the gateway's own `hash-key` subcommand.
fn hash(key: &str) -> String {
    key_hash(key)
}

fn chat(model: &str) -> Vec<u8> {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

async fn call(gw: &GatewayProcess, key: Option<&str>, body: &[u8]) -> RawResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    raw_request(gw.addr(), "POST", "/v1/chat/completions", &headers, body).await
}

/// `GET path` with a bearer key.
async fn get(gw: &GatewayProcess, path: &str, key: &str) -> RawResponse {
    let auth = format!("Bearer {key}");
    raw_request(gw.addr(), "GET", path, &[("authorization", &auth)], b"").await
}

/// Waits until at least 10 s remain in the current minute (limits count per minute).
async fn fresh_minute() {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A burst on a loaded CI box can take well over ten seconds: leave it half a minute.
    if s % 60 > 30 {
        tokio::time::sleep(Duration::from_secs(61 - s % 60)).await;
    }
}

fn ok_provider() -> impl Fn(&Recorded) -> Vec<Step> + Send + Sync + 'static {
    |req: &Recorded| {
        if req.method == "GET" {
            return json_response(200, r#"{"object":"list","data":[]}"#);
        }
        if req.json()["stream"] == true {
            let body = chat_stream("gpt-4o", &["a", "b", "c"], true);
            return sse_steps(body.as_bytes(), &[], Duration::ZERO);
        }
        json_response(200, &chat_completion("gpt-4o", "ok"))
    }
}

#[tokio::test]
async fn keys_refuse_what_they_must_and_never_leak_upstream() {
    let up = MockUpstream::start(ok_provider()).await;
    let toml = format!(
        r#"
[aliases.smart]
target = "openai/gpt-4o"

[[keys]]
name = "alpha"
hash = "{}"
models = ["openai/*"]
owner = "team-a"
metadata = {{ cost_center = "42" }}

[[keys]]
name = "beta"
hash = "{}"
models = ["smart"]

[[keys]]
name = "old"
hash = "{}"
expires = "2020-01-01T00:00:00Z"
"#,
        hash("igw-alpha"),
        hash("igw-beta"),
        hash("igw-old")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    let body = chat("openai/gpt-4o");
    for (key, code) in [
        (None, "missing_api_key"),
        (Some("igw-wrong"), "invalid_api_key"),
        (Some("igw-old"), "expired_api_key"),
    ] {
        let r = call(&gw, key, &body).await;
        assert_eq!(r.status, 401, "{key:?}");
        assert_eq!(r.json()["error"]["code"], code);
        assert_eq!(r.json()["error"]["type"], "authentication_error");
    }
    assert_eq!(up.count(), 0);
    // Allowed, by bearer and by x-api-key; the provider sees its own key, never the caller's.
    assert_eq!(call(&gw, Some("igw-alpha"), &body).await.status, 200);
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", "igw-alpha")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    for req in up.requests() {
        assert_eq!(req.header("authorization"), Some("Bearer sk-openai-test"));
        assert_eq!(req.header("x-api-key"), None);
        assert!(!format!("{:?}", req.headers).contains("igw-"));
    }
    // Model allowance: beta may use the alias, not the model directly.
    let r = call(&gw, Some("igw-beta"), &body).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
    assert_eq!(
        call(&gw, Some("igw-beta"), &chat("smart")).await.status,
        200
    );
    let r = call(&gw, Some("igw-alpha"), &chat("anthropic/claude")).await;
    assert_eq!(r.status, 403);
    // Raw pass-through only for keys it cannot be used to get around.
    let r = get(&gw, "/proxy/openai/models", "igw-alpha").await;
    assert_eq!(r.status, 200);
    let r = get(&gw, "/proxy/openai/models", "igw-beta").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "proxy_not_allowed");
    // A bare name in `models` is an alias, not a model on any provider.
    let r = raw_request(
        gw.addr(),
        "POST",
        "/v1/chat/completions?provider=openai",
        &[("authorization", "Bearer igw-beta")],
        &chat("smart"),
    )
    .await;
    assert_eq!(r.status, 403);
    // Other API endpoints need a key too; /health does not.
    let r = raw_request(gw.addr(), "GET", "/v1/models", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = raw_request(gw.addr(), "GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200);
    // /v1/usage reports on the caller.
    let r = get(&gw, "/v1/usage", "igw-alpha").await;
    let v = r.json();
    assert_eq!(v["principal"], "alpha");
    assert_eq!(v["owner"], "team-a");
    assert_eq!(v["metadata"]["cost_center"], "42");
    // The key never reaches the log; its name does.
    let log = gw.log_text();
    assert!(!log.contains("igw-alpha"));
    assert!(log.contains(" key=alpha"), "{log}");
}

#[tokio::test]
async fn rpm_is_exact_under_200_parallel_requests() {
    let up = MockUpstream::start(ok_provider()).await;
    let toml = format!(
        "[[keys]]\nname = \"k\"\nhash = \"{}\"\nrpm = 50\n",
        hash("igw-rpm")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                raw_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", "Bearer igw-rpm")],
                    &chat("openai/gpt-4o"),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
                assert_eq!(r.json()["error"]["type"], "rate_limit_error");
                assert!(r.headers.contains_key("retry-after"));
                assert_eq!(r.headers["x-ratelimit-limit-requests"], "50");
                assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(up.count(), 50);
}

#[tokio::test]
async fn tpm_reserves_then_reconciles_and_concurrency_is_bounded() {
    let slow = Arc::new(Mutex::new(false));
    let s2 = slow.clone();
    let up = MockUpstream::start(move |req: &Recorded| {
        let mut steps = Vec::new();
        if *s2.lock().unwrap() {
            steps.push(Step::Sleep(Duration::from_millis(500)));
        }
        steps.extend(ok_provider()(req));
        steps
    })
    .await;
    let toml = format!(
        "[[keys]]\nname = \"t\"\nhash = \"{}\"\ntpm = 1000\n\
         [[keys]]\nname = \"c\"\nhash = \"{}\"\nmax_concurrent = 2\n",
        hash("igw-tpm"),
        hash("igw-conc")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let body = chat("openai/gpt-4o");
    let reserve = (body.len() as u64).div_ceil(4) + 100;
    // Asking for more than the minute allows is refused before any call.
    let big = json!({"model": "openai/gpt-4o", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&gw, Some("igw-tpm"), big.to_string().as_bytes()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["x-ratelimit-limit-tokens"], "1000");
    // First call: reserved, then settled to its real usage (12 tokens).
    let r = call(&gw, Some("igw-tpm"), &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["x-ratelimit-remaining-tokens"],
        (1000 - reserve).to_string()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = call(&gw, Some("igw-tpm"), &body).await;
    assert_eq!(
        r.headers["x-ratelimit-remaining-tokens"],
        (1000 - 12 - reserve).to_string(),
        "the first reservation was replaced by the 12 tokens used"
    );
    // Concurrency: 2 at a time.
    *slow.lock().unwrap() = true;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                raw_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", "Bearer igw-conc")],
                    &body,
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // Slots are given back.
    *slow.lock().unwrap() = false;
    assert_eq!(call(&gw, Some("igw-conc"), &body).await.status, 200);
}

#[tokio::test]
async fn budget_reached_mid_stream_is_enforced_on_the_next_request() {
    let up = MockUpstream::start(ok_provider()).await;
    let metrics_port = free_port();
    let toml = format!(
        "[prices]\n\"openai/gpt-4o\" = {{ input = 1000000.0, output = 1000000.0 }}\n\
         [[keys]]\nname = \"b\"\nhash = \"{}\"\nbudget_usd = 5.0\nbudget_period = \"daily\"\n",
        hash("igw-budget")
    );
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("TELEMETRY_ENABLE", "true".into()));
    env.push(("TELEMETRY_METRICS_PORT", metrics_port.to_string()));
    let gw = GatewayProcess::start(&env, Some(&toml));
    // At 1 USD a token, this stream (9 prompt + 3 completion tokens) spends 12 USD.
    let stream = json!({"model": "openai/gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&gw, Some("igw-budget"), stream.to_string().as_bytes()).await;
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = call(&gw, Some("igw-budget"), &chat("openai/gpt-4o")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    // A model without a price cannot be charged to a budget.
    let r = call(&gw, Some("igw-budget"), &chat("openai/some-unpriced-model")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "model_not_priced");
    let v = get(&gw, "/v1/usage", "igw-budget").await.json();
    assert_eq!(v["spend_usd"], 12.0);
    assert_eq!(v["budget_usd"], 5.0);
    assert_eq!(v["period"], "daily");
    let m = raw_request(
        ([127, 0, 0, 1], metrics_port).into(),
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .await
    .text();
    assert!(
        m.contains("llm_spend_usd_total{principal=\"key:b\"} 12"),
        "{m}"
    );
    assert!(
        m.contains("llm_rate_limited_total{reason=\"budget\"} 1"),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// OIDC
// ---------------------------------------------------------------------------------------------

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

struct SigningKey {
    kid: String,
    /// PKCS#8 DER of the private key.
    der: Vec<u8>,
    jwk: Value,
}

fn ec_key(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65);
    SigningKey {
        kid: kid.into(),
        der: kp.serialize_der(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..])}),
    }
}

/// An RSA key made with the `openssl` command (rcgen on ring cannot make RSA keys): PKCS#1
/// DER for signing, modulus and exponent for the JWK.
fn rsa_key(kid: &str) -> SigningKey {
    let dir = temp_dir("rsa");
    let pem = dir.join("k.pem");
    let der = dir.join("k.der");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&[
        "genrsa",
        "-traditional",
        "-out",
        pem.to_str().unwrap(),
        "2048",
    ]);
    run(&[
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-traditional",
        "-out",
        der.to_str().unwrap(),
    ]);
    let modulus = run(&["rsa", "-in", pem.to_str().unwrap(), "-noout", "-modulus"]);
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    SigningKey {
        kid: kid.into(),
        der: std::fs::read(&der).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"}),
    }
}

fn token(key: &SigningKey, claims: Value) -> String {
    let rsa = key.jwk["kty"] == "RSA";
    let alg = if rsa {
        jsonwebtoken::Algorithm::RS256
    } else {
        jsonwebtoken::Algorithm::ES256
    };
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(key.kid.clone());
    let k = if rsa {
        jsonwebtoken::EncodingKey::from_rsa_der(&key.der)
    } else {
        jsonwebtoken::EncodingKey::from_ec_der(&key.der)
    };
    jsonwebtoken::encode(&h, &claims, &k).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn oidc_tokens_are_checked_against_the_issuer() {
    let k1 = ec_key("k1");
    let k2 = ec_key("k2");
    let r1 = rsa_key("r1");
    let jwks = Arc::new(Mutex::new(
        json!({"keys": [k1.jwk.clone(), r1.jwk.clone()]}),
    ));
    let issuer_url = Arc::new(Mutex::new(String::new()));
    let (j, iu) = (jwks.clone(), issuer_url.clone());
    let issuer = MockUpstream::start(move |req: &Recorded| {
        let iss = iu.lock().unwrap().clone();
        match req.path.as_str() {
            "/realm/.well-known/openid-configuration" => json_response(
                200,
                &json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")}).to_string(),
            ),
            "/realm/jwks" => json_response(200, &j.lock().unwrap().to_string()),
            _ => json_response(404, "{}"),
        }
    })
    .await;
    let iss = issuer.url("/realm");
    *issuer_url.lock().unwrap() = iss.clone();
    let up = MockUpstream::start(ok_provider()).await;
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.extend([
        ("AUTH_ENABLE", "true".to_string()),
        ("AUTH_OIDC_ISSUER", iss.clone()),
        ("AUTH_OIDC_CLIENT_ID", "gateway".to_string()),
    ]);
    let toml = "[auth]\ntier_claim = \"tier\"\ndefault_tier = \"standard\"\nleeway = \"5s\"\n\
                [auth.tiers.free]\nrpm = 2\n[auth.tiers.standard]\nrpm = 1000\n";
    let gw = GatewayProcess::start(&env, Some(toml));
    let good = || json!({"iss": iss, "aud": "gateway", "sub": "alice", "exp": now() + 300, "nbf": now() - 10});
    let body = chat("openai/gpt-4o");

    let r = call(&gw, Some(&token(&k1, good())), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // RS256 too.
    let r = call(&gw, Some(&token(&r1, good())), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut bad = Vec::new();
    let mut c = good();
    c["exp"] = json!(now() - 60);
    bad.push(("expired", token(&k1, c)));
    let mut c = good();
    c["aud"] = json!("someone-else");
    bad.push(("wrong audience", token(&k1, c)));
    let mut c = good();
    c["iss"] = json!("https://evil.example");
    bad.push(("wrong issuer", token(&k1, c)));
    let mut c = good();
    c["nbf"] = json!(now() + 600);
    bad.push(("not valid yet", token(&k1, c)));
    // Signed by another key that claims k1's id.
    let forged = SigningKey {
        kid: "k1".into(),
        der: k2.der.clone(),
        jwk: json!({}),
    };
    bad.push(("bad signature", token(&forged, good())));
    // alg none, and HS256 keyed with the public JWK (algorithm confusion).
    let payload = b64url(good().to_string().as_bytes());
    bad.push((
        "alg none",
        format!("{}.{payload}.", b64url(br#"{"alg":"none","kid":"k1"}"#)),
    ));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &good(),
        &jsonwebtoken::EncodingKey::from_secret(k1.jwk.to_string().as_bytes()),
    )
    .unwrap();
    bad.push(("HS256 with the public key", hs));
    for (what, t) in bad {
        let r = call(&gw, Some(&t), &body).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_token", "{what}");
    }
    // Key rotation: a token from a key the JWKS does not have yet, then has.
    let rotated = token(&k2, good());
    assert_eq!(call(&gw, Some(&rotated), &body).await.status, 401);
    *jwks.lock().unwrap() = json!({"keys": [k1.jwk.clone(), r1.jwk.clone(), k2.jwk.clone()]});
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if call(&gw, Some(&rotated), &body).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never accepted");
    }
    // The tier claim picks the limits.
    fresh_minute().await;
    let mut c = good();
    c["sub"] = json!("bob");
    c["tier"] = json!("free");
    let t = token(&k1, c);
    assert_eq!(call(&gw, Some(&t), &body).await.status, 200);
    assert_eq!(call(&gw, Some(&t), &body).await.status, 200);
    let r = call(&gw, Some(&t), &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["x-ratelimit-limit-requests"], "2");
    // A missing or unknown tier gets the default tier, never unlimited, never raw /proxy.
    for tier in [None, Some("platinum")] {
        let mut c = good();
        c["sub"] = json!("carol");
        if let Some(t) = tier {
            c["tier"] = json!(t);
        }
        let t = token(&k1, c);
        let r = call(&gw, Some(&t), &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-ratelimit-limit-requests"], "1000", "{tier:?}");
        let r = get(&gw, "/proxy/openai/models", &t).await;
        assert_eq!(r.status, 403, "{tier:?}");
        assert_eq!(r.json()["error"]["code"], "proxy_not_allowed");
    }
    // Without tiers, tokens are unlimited by configuration but never get raw /proxy.
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.extend([
        ("AUTH_OIDC_ISSUER", iss.clone()),
        ("AUTH_OIDC_CLIENT_ID", "gateway".to_string()),
    ]);
    // Tokens carrying the admin claim are admin credentials (the admin API exists without an
    // admin key).
    env.push(("ADMIN_OIDC_CLAIM", "groups=igw-admins".to_string()));
    let untiered = GatewayProcess::start(&env, None);
    let mut admin_claims = good();
    admin_claims["groups"] = json!(["dev", "igw-admins"]);
    let admin_token = token(&k1, admin_claims.clone());
    let r = get(&untiered, "/admin/v1/health", &admin_token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut other = good();
    other["groups"] = json!(["dev"]);
    let mut expired = admin_claims.clone();
    expired["exp"] = json!(now() - 600);
    for (what, t) in [
        ("no admin claim", token(&k1, other)),
        ("no groups at all", token(&k1, good())),
        ("expired", token(&k1, expired)),
        ("not a token", "some-guess-at-an-admin-key".to_string()),
    ] {
        let r = get(&untiered, "/admin/v1/health", &t).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_admin_key", "{what}");
    }
    let t = token(&k1, good());
    assert_eq!(call(&untiered, Some(&t), &body).await.status, 200);
    let r = get(&untiered, "/proxy/openai/models", &t).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "proxy_not_allowed");
    // The token never reaches the provider.
    for req in up.requests() {
        assert_eq!(req.header("authorization"), Some("Bearer sk-openai-test"));
    }
}

// ---------------------------------------------------------------------------------------------
// Redis: limits shared across replicas
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis_and_fail_as_configured() {
    let mut redis = RedisServer::start();
    let up = MockUpstream::start(ok_provider()).await;
    let key_toml = format!(
        "[[keys]]\nname = \"shared\"\nhash = \"{}\"\nrpm = 50\n",
        hash("igw-shared")
    );
    let start = |mode: &str| {
        let mut env = provider_env(&[("openai", up.url("/v1"))]);
        env.push(("REDIS_URL", redis.url()));
        env.push(("LIMITS_FAILURE_MODE", mode.to_string()));
        GatewayProcess::start(&env, Some(&key_toml))
    };
    let a = start("fail_closed");
    let b = start("fail_open");
    fresh_minute().await;
    let addrs = [a.addr(), b.addr()];
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move {
                raw_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", "Bearer igw-shared")],
                    &chat("openai/gpt-4o"),
                )
                .await
                .status
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 50, "one limit for both replicas");
    // Redis goes away: fail_closed answers 503, fail_open keeps serving on local limits.
    redis.kill();
    let r = call(&a, Some("igw-shared"), &chat("openai/gpt-4o")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "limits_unavailable");
    let r = call(&b, Some("igw-shared"), &chat("openai/gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.log_text().contains("limits backend (Redis) failed"));
}

#[tokio::test]
async fn tpm_is_exact_under_200_parallel_requests() {
    // The provider is slow, so every admission happens before any settlement: exactly as many
    // reservations fit as the limit allows.
    let up = MockUpstream::start(|req: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_millis(1500))];
        s.extend(ok_provider()(req));
        s
    })
    .await;
    let body = chat("openai/gpt-4o");
    let reserve = (body.len() as u64).div_ceil(4) + 100;
    let toml = format!(
        "[[keys]]\nname = \"k\"\nhash = \"{}\"\ntpm = {}\n",
        hash("igw-tpm-exact"),
        50 * reserve
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                raw_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", "Bearer igw-tpm-exact")],
                    &body,
                )
                .await
                .status
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 50);
    assert_eq!(up.count(), 50);
}

#[tokio::test]
async fn redis_concurrency_slots_cannot_be_shared_through_a_reused_request_id() {
    let _redis = RedisServer::start();
    let up = MockUpstream::start(|req: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_millis(800))];
        s.extend(ok_provider()(req));
        s
    })
    .await;
    let toml = format!(
        "[[keys]]\nname = \"c\"\nhash = \"{}\"\nmax_concurrent = 2\n",
        hash("igw-redis-conc")
    );
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("REDIS_URL", _redis.url()));
    let gw = GatewayProcess::start(&env, Some(&toml));
    let addr = gw.addr();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                raw_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("authorization", "Bearer igw-redis-conc"),
                        ("x-request-id", "same-id-every-time"),
                    ],
                    &chat("openai/gpt-4o"),
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // Both slots come back when the requests end.
    assert_eq!(
        call(&gw, Some("igw-redis-conc"), &chat("openai/gpt-4o"))
            .await
            .status,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Hardening: reservations that cannot be talked down
// ---------------------------------------------------------------------------------------------

#[test]
fn tiers_without_a_default_tier_are_a_configuration_error() {
    let dir = temp_dir("tiers");
    let p = dir.join("g.toml");
    std::fs::write(
        &p,
        "[auth]\noidc_issuer = \"https://idp.example\"\noidc_client_id = \"gw\"\ntier_claim = \"tier\"\n[auth.tiers.free]\nrpm = 2\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("-t")
        .arg("-c")
        .arg(&p)
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("auth.default_tier"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn malformed_max_tokens_and_n_are_400_and_n_multiplies_the_reservation() {
    let up = MockUpstream::start(ok_provider()).await;
    let toml = format!(
        "[[keys]]\nname = \"t3k\"\nhash = \"{}\"\ntpm = 3000\n",
        hash("igw-t3k")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (field, value) in [
        ("max_tokens", json!("100000")),
        ("max_tokens", json!(100000.0)),
        ("max_tokens", json!(-1)),
        ("max_completion_tokens", json!("x")),
        ("n", json!(9)),
        ("n", json!(0)),
        ("n", json!("2")),
    ] {
        let mut b = json!({"model": "openai/gpt-4o", "messages": msgs});
        b[field] = value.clone();
        let r = call(&gw, Some("igw-t3k"), b.to_string().as_bytes()).await;
        assert_eq!(r.status, 400, "{field}={value}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], field, "{field}={value}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    // n = 8 choices of up to 500 tokens may use 4,000 tokens: more than the 3,000 a minute.
    let b = json!({"model": "openai/gpt-4o", "n": 8, "max_tokens": 500, "messages": msgs});
    let r = call(&gw, Some("igw-t3k"), b.to_string().as_bytes()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Request too large"));
    assert_eq!(up.count(), 0);
    // Without max_tokens, the default reserve (1,024) is held while the request runs.
    let b = json!({"model": "openai/gpt-4o", "messages": msgs}).to_string();
    let r = call(&gw, Some("igw-t3k"), b.as_bytes()).await;
    assert_eq!(r.status, 200);
    let reserve = (b.len() as u64).div_ceil(4) + 1024;
    assert_eq!(
        r.headers["x-ratelimit-remaining-tokens"],
        (3000 - reserve).to_string()
    );
    // n = 2 of 500 fits.
    let b = json!({"model": "openai/gpt-4o", "n": 2, "max_tokens": 500, "messages": msgs});
    assert_eq!(
        call(&gw, Some("igw-t3k"), b.to_string().as_bytes())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn parallel_requests_overshoot_a_budget_by_at_most_one() {
    let up = MockUpstream::start(|req: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_millis(1500))];
        s.extend(ok_provider()(req));
        s
    })
    .await;
    let body = json!({"model": "openai/gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    // 1 USD a token: each request reserves (prompt estimate + 5) USD; the budget holds one and
    // a half reservations, so exactly two are admitted while both are in flight.
    let reserve = (body.len() as u64).div_ceil(4) + 5;
    let toml = format!(
        "[prices]\n\"openai/gpt-4o\" = {{ input = 1000000.0, output = 1000000.0 }}\n\
         [[keys]]\nname = \"par\"\nhash = \"{}\"\nbudget_usd = {}\nbudget_period = \"daily\"\n",
        hash("igw-par"),
        reserve as f64 * 1.5
    );
    let redis = RedisServer::start();
    let memory = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("REDIS_URL", redis.url()));
    env.push(("REDIS_TIMEOUT", "2s".into()));
    let shared = GatewayProcess::start(&env, Some(&toml));
    for (n, gw) in [&memory, &shared].into_iter().enumerate() {
        let addr = gw.addr();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move {
                    let r = raw_request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[("authorization", "Bearer igw-par")],
                        body.as_bytes(),
                    )
                    .await;
                    (r.status, r.json()["error"]["code"].clone())
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                (200, _) => ok += 1,
                (429, c) => assert_eq!(c, "insufficient_quota"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, 2, "reservations admit while spend + reserved < budget");
        assert_eq!(up.count(), 2 * (n + 1));
        // Settled at the real usage (12 tokens each).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            get(gw, "/v1/usage", "igw-par").await.json()["spend_usd"],
            24.0
        );
    }
}

#[tokio::test]
async fn a_client_gone_before_the_answer_still_pays_for_its_prompt() {
    let up = MockUpstream::start(|req: &Recorded| {
        let mut s = vec![Step::Sleep(Duration::from_secs(3))];
        s.extend(ok_provider()(req));
        s
    })
    .await;
    let toml = format!(
        "[prices]\n\"openai/gpt-4o\" = {{ input = 1000000.0, output = 1000000.0 }}\n\
         [[keys]]\nname = \"gone\"\nhash = \"{}\"\nbudget_usd = 100000.0\ntpm = 100000\n",
        hash("igw-gone")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    use tokio::io::AsyncWriteExt;
    let body = chat("openai/gpt-4o");
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer igw-gone\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    // The provider has the prompt; the client leaves before the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = get(&gw, "/v1/usage", "igw-gone").await.json();
    let prompt = (up.last().body.len() as f64 / 4.0).ceil();
    assert_eq!(v["tokens_this_minute"], prompt, "{v}");
    assert_eq!(v["spend_usd"], prompt, "{v}");
}

/// Waits until second 57 of a minute, so a 5 s request ends in the next one.
async fn just_before_a_minute_ends() {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let into = s % 60.0;
    let wait = if into <= 57.0 {
        57.0 - into
    } else {
        117.0 - into
    };
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

#[tokio::test]
async fn a_long_stream_counts_against_the_minute_it_ends_in() {
    // 5 s in the making, then 700 tokens of usage.
    let up = MockUpstream::start(|_req: &Recorded| {
        let mut body = String::new();
        body.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"x\"},\"finish_reason\":null}]}\n\n");
        let tail = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
            data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":600,\"total_tokens\":700}}\n\n\
            data: [DONE]\n\n";
        vec![
            Step::Write(sse_head()),
            Step::Write(chunk(body.as_bytes())),
            Step::Sleep(Duration::from_secs(5)),
            Step::Write(chunk(tail.as_bytes())),
            Step::Write(last_chunk()),
        ]
    })
    .await;
    let mut redis = RedisServer::start();
    let toml = format!(
        "[[keys]]\nname = \"long\"\nhash = \"{}\"\ntpm = 1000\n",
        hash("igw-long")
    );
    let memory = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    let mut env = provider_env(&[("openai", up.url("/v1"))]);
    env.push(("REDIS_URL", redis.url()));
    env.push(("LIMITS_FAILURE_MODE", "fail_closed".into()));
    env.push(("REDIS_TIMEOUT", "2s".into()));
    let shared = GatewayProcess::start(&env, Some(&toml));
    let stream = json!({"model": "openai/gpt-4o", "stream": true, "max_tokens": 600, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let next = json!({"model": "openai/gpt-4o", "max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    just_before_a_minute_ends().await;
    let (a, b) = tokio::join!(
        call(&memory, Some("igw-long"), stream.as_bytes()),
        call(&shared, Some("igw-long"), stream.as_bytes())
    );
    assert_eq!((a.status, b.status), (200, 200));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for gw in [&memory, &shared] {
        // The stream ended in this minute: its 700 tokens count here, so 400 more do not fit.
        let v = get(gw, "/v1/usage", "igw-long").await.json();
        assert_eq!(v["tokens_this_minute"], 700, "{v}");
        let r = call(gw, Some("igw-long"), next.as_bytes()).await;
        assert_eq!(r.status, 429, "{}", r.text());
    }
    redis.kill();
}

#[tokio::test]
async fn health_verbose_needs_a_key_once_auth_is_on() {
    let up = MockUpstream::start(ok_provider()).await;
    let toml = format!(
        "[[keys]]\nname = \"h\"\nhash = \"{}\"\n",
        hash("igw-health")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    // Plain /health stays open for load balancers.
    let r = raw_request(gw.addr(), "GET", "/health", &[], b"").await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = raw_request(gw.addr(), "GET", "/health?verbose", &[], b"").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let v = get(&gw, "/health?verbose", "igw-health").await.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    assert!(v["providers"]["openai"]["backends"].is_array(), "{v}");
    // `off` ignores verbose; `public` shows it to anyone.
    for (mode, open) in [("off", false), ("public", true)] {
        let mut env = provider_env(&[("openai", up.url("/v1"))]);
        env.push(("SERVER_HEALTH_VERBOSE", mode.to_string()));
        let gw = GatewayProcess::start(&env, Some(&toml));
        let r = raw_request(gw.addr(), "GET", "/health?verbose", &[], b"").await;
        assert_eq!(r.status, 200, "{mode}");
        assert_eq!(r.json()["providers"].is_object(), open, "{mode}");
    }
}

#[tokio::test]
async fn model_lists_are_cached_rate_limited_and_filtered_per_key() {
    let up = MockUpstream::start(|req: &Recorded| {
        if req.method == "GET" {
            return json_response(
                200,
                r#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"gpt-3.5-turbo"}]}"#,
            );
        }
        ok_provider()(req)
    })
    .await;
    let toml = format!(
        "[aliases.smart]\ntarget = \"openai/gpt-4o\"\n[aliases.old]\ntarget = \"openai/gpt-3.5-turbo\"\n\
         [[keys]]\nname = \"narrow\"\nhash = \"{}\"\nmodels = [\"openai/gpt-4o\", \"smart\"]\nrpm = 3\n\
         [[keys]]\nname = \"wide\"\nhash = \"{}\"\n",
        hash("igw-narrow"),
        hash("igw-wide")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let ids = |r: RawResponse| {
        let mut ids: Vec<String> = r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(get(&gw, "/v1/models", "igw-wide").await),
        ["old", "openai/gpt-3.5-turbo", "openai/gpt-4o", "smart"]
    );
    let r = get(&gw, "/v1/models", "igw-narrow").await;
    assert_eq!(r.headers["x-ratelimit-limit-requests"], "3");
    assert_eq!(ids(r), ["openai/gpt-4o", "smart"]);
    // One upstream call for all of those: the list is cached.
    assert_eq!(up.count(), 1);
    assert_eq!(get(&gw, "/v1/models", "igw-narrow").await.status, 200);
    assert_eq!(get(&gw, "/v1/models", "igw-narrow").await.status, 200);
    let r = get(&gw, "/v1/models", "igw-narrow").await;
    assert_eq!(r.status, 429, "the list counts against RPM");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn the_model_table_prices_budgets_and_sets_reserves() {
    let up = MockUpstream::start(ok_provider()).await;
    // A self-hosted model priced and given a completion reserve in the model table (no
    // `[prices]`), at 1 USD a token.
    let toml = format!(
        "[models.\"openai/house-*\"]\ninput = 1000000.0\noutput = 1000000.0\ncompletion_reserve = 50\n\
         [[keys]]\nname = \"mt\"\nhash = \"{}\"\nbudget_usd = 1000.0\ntpm = 100000\n",
        hash("igw-model-table")
    );
    let gw = GatewayProcess::start(&provider_env(&[("openai", up.url("/v1"))]), Some(&toml));
    fresh_minute().await;
    let body =
        json!({"model": "openai/house-llm", "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let r = call(&gw, Some("igw-model-table"), body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Reserved: the prompt estimate + the model's own reserve of 50 (not the default 1,024).
    let reserve = (body.len() as u64).div_ceil(4) + 50;
    assert_eq!(
        r.headers["x-ratelimit-remaining-tokens"],
        (100000 - reserve).to_string()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 12 tokens at 1 USD.
    assert_eq!(
        get(&gw, "/v1/usage", "igw-model-table").await.json()["spend_usd"],
        12.0
    );
    // A model the table does not price cannot be charged to the budget.
    let r = call(&gw, Some("igw-model-table"), &chat("openai/other")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "model_not_priced");
}
