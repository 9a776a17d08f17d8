//! `igw status`, `models`, `keys`, `usage` and `config check`.

use std::path::{Path, PathBuf};

use clap::Args;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{Auth, Failure, Gateway};
use crate::table::{cell, json as print_json, print};
use crate::UsageArgs;

fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub async fn status(gw: &Gateway, as_json: bool) -> Result<(), Failure> {
    let (v, source) = if gw.admin_key.is_some() {
        (
            gw.get("/admin/v1/health", Auth::Admin).await?,
            "/admin/v1/health",
        )
    } else {
        (
            gw.get("/health?verbose", Auth::Api).await?,
            "/health?verbose",
        )
    };
    if as_json {
        print_json(&v);
        return Ok(());
    }
    let version = v["version"].as_str().unwrap_or("?");
    println!(
        "inference-gateway {version} at {}: {}, up {}",
        gw.base,
        v["status"].as_str().unwrap_or("?"),
        uptime(v["uptime_seconds"].as_u64().unwrap_or(0))
    );
    if v.get("providers").is_none() {
        println!(
            "(details hidden: {source} answered without them; server.health_verbose may be off)"
        );
        return Ok(());
    }
    let mut rows = Vec::new();
    if let Some(ps) = v["providers"].as_object() {
        for (name, p) in ps {
            for b in p["backends"].as_array().into_iter().flatten() {
                rows.push(vec![
                    name.clone(),
                    cell(&b["backend"]),
                    cell(&b["status"]),
                    cell(&b["weight"]),
                    cell(&b["outstanding"]),
                    cell(&b["ejections"]),
                    b["latency_ms"]
                        .as_f64()
                        .map_or("-".into(), |l| format!("{l:.1} ms")),
                ]);
            }
        }
    }
    println!();
    if rows.is_empty() {
        println!("no provider is configured");
    } else {
        print(
            &[
                "PROVIDER",
                "BACKEND",
                "HEALTH",
                "WEIGHT",
                "IN FLIGHT",
                "EJECTIONS",
                "LATENCY",
            ],
            &rows,
        );
    }
    if let Some(servers) = v["mcp_servers"].as_array().filter(|s| !s.is_empty()) {
        println!();
        let rows: Vec<Vec<String>> = servers
            .iter()
            .map(|s| {
                vec![
                    cell(&s["name"]),
                    if s["healthy"] == true {
                        "healthy"
                    } else {
                        "down"
                    }
                    .into(),
                    cell(&s["tools"]),
                    cell(&s["url"]),
                    cell(&s["last_error"]),
                ]
            })
            .collect();
        print(
            &["MCP SERVER", "HEALTH", "TOOLS", "URL", "LAST ERROR"],
            &rows,
        );
    }
    if let Some(agents) = v["a2a_agents"].as_array().filter(|s| !s.is_empty()) {
        println!();
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|a| {
                let skills: Vec<String> = a["skills"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| cell(&s["name"]))
                    .collect();
                vec![
                    cell(&a["name"]),
                    if a["healthy"] == true {
                        "healthy"
                    } else {
                        "down"
                    }
                    .into(),
                    cell(&a["protocol_version"]),
                    if skills.is_empty() {
                        "-".into()
                    } else {
                        skills.join(",")
                    },
                    cell(&a["url"]),
                ]
            })
            .collect();
        print(&["A2A AGENT", "HEALTH", "PROTOCOL", "SKILLS", "URL"], &rows);
    }
    if let Some(store) = v.get("store").filter(|s| s.is_object()) {
        println!();
        println!(
            "store: {}{}",
            cell(&store["kind"]),
            if store["reachable"] == false {
                " (unreachable: serving from the last snapshot)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub async fn models(gw: &Gateway, provider: Option<&str>, as_json: bool) -> Result<(), Failure> {
    let path = match provider {
        Some(p) => format!("/v1/models?provider={}", urlencode(p)),
        None => "/v1/models".into(),
    };
    let v = gw.get(&path, Auth::Api).await?;
    if as_json {
        print_json(&v["data"]);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| vec![cell(&m["id"]), cell(&m["owned_by"])])
        .collect();
    print(&["MODEL", "OWNED BY"], &rows);
    Ok(())
}

/// Everything but RFC 3986's unreserved characters (`/` included: an id never climbs a path).
const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A query value or path segment, percent-encoded.
fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ENCODED).to_string()
}

#[derive(Args, Debug)]
pub struct CreateKey {
    name: String,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Budget in USD.
    #[arg(long)]
    budget: Option<f64>,
    /// daily, weekly, monthly or total.
    #[arg(long)]
    budget_period: Option<String>,
    /// Models the key may use (comma-separated; globs like `openai/*`).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long)]
    team: Option<String>,
    /// Expiry: an RFC 3339 time, or a duration from now (`1h`, `30days`).
    #[arg(long)]
    expires: Option<String>,
    /// Print the whole answer as JSON (the key included).
    #[arg(long)]
    json: bool,
}

fn expiry(s: &str) -> Result<String, Failure> {
    if humantime::parse_rfc3339_weak(s).is_ok() {
        return Ok(s.to_string());
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        Failure::Usage(format!(
            "--expires: {s:?} is neither an RFC 3339 time nor a duration (1h, 30days)"
        ))
    })?;
    Ok(humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d).to_string())
}

pub async fn create_key(gw: &Gateway, k: CreateKey) -> Result<(), Failure> {
    let mut body = Map::new();
    body.insert("name".into(), json!(k.name));
    if let Some(v) = k.rpm {
        body.insert("rpm".into(), json!(v));
    }
    if let Some(v) = k.tpm {
        body.insert("tpm".into(), json!(v));
    }
    if let Some(v) = k.budget {
        body.insert("budget_usd".into(), json!(v));
    }
    if let Some(v) = k.budget_period {
        body.insert("budget_period".into(), json!(v));
    }
    if !k.models.is_empty() {
        body.insert("models".into(), json!(k.models));
    }
    if let Some(v) = k.team {
        body.insert("team".into(), json!(v));
    }
    if let Some(v) = k.expires {
        body.insert("expires_at".into(), json!(expiry(&v)?));
    }
    let v = gw
        .json(
            Method::POST,
            "/admin/v1/keys",
            Auth::Admin,
            Some(&Value::Object(body)),
        )
        .await?;
    if k.json {
        print_json(&v);
        return Ok(());
    }
    // The key alone on stdout (KEY=$(igw keys create ...)); the rest on stderr.
    println!("{}", v["key"].as_str().unwrap_or_default());
    eprintln!(
        "created key {} ({}); it is shown only now",
        cell(&v["api_key"]["name"]),
        cell(&v["api_key"]["id"])
    );
    Ok(())
}

async fn all_keys(gw: &Gateway, revoked: bool) -> Result<Vec<Value>, Failure> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/admin/v1/keys?limit=1000&include_revoked={revoked}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = gw.get(&path, Auth::Admin).await?;
        out.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

pub async fn list_keys(gw: &Gateway, revoked: bool, as_json: bool) -> Result<(), Failure> {
    let keys = all_keys(gw, revoked).await?;
    if as_json {
        print_json(&Value::Array(keys));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let budget = match k["budget_usd"].as_f64() {
                Some(b) => format!("${b} {}", k["budget_period"].as_str().unwrap_or("")),
                None => "-".into(),
            };
            vec![
                cell(&k["name"]),
                cell(&k["id"]),
                cell(&k["key_prefix"]),
                cell(&k["team"]),
                cell(&k["rpm"]),
                cell(&k["tpm"]),
                budget.trim().to_string(),
                cell(&k["expires_at"]),
                if k["revoked_at"].is_null() {
                    "active"
                } else {
                    "revoked"
                }
                .into(),
            ]
        })
        .collect();
    print(
        &[
            "NAME", "ID", "PREFIX", "TEAM", "RPM", "TPM", "BUDGET", "EXPIRES", "STATUS",
        ],
        &rows,
    );
    Ok(())
}

pub async fn revoke_key(gw: &Gateway, key: &str) -> Result<(), Failure> {
    let id = if key.starts_with("key_") || key.starts_with("config:") {
        key.to_string()
    } else {
        let keys = all_keys(gw, false).await?;
        let found: Vec<&Value> = keys.iter().filter(|k| k["name"] == key).collect();
        match found.as_slice() {
            [k] => k["id"].as_str().unwrap_or_default().to_string(),
            [] => {
                return Err(Failure::Gateway {
                    status: 404,
                    message: format!("no live key is named {key:?}"),
                })
            }
            _ => {
                return Err(Failure::Usage(format!(
                    "several keys are named {key:?}: revoke one by id"
                )))
            }
        }
    };
    let v = gw
        .json(
            Method::DELETE,
            &format!("/admin/v1/keys/{}", urlencode(&id)),
            Auth::Admin,
            None,
        )
        .await?;
    println!("revoked key {} ({id})", cell(&v["name"]));
    Ok(())
}

pub async fn usage(gw: &Gateway, a: UsageArgs) -> Result<(), Failure> {
    if gw.admin_key.is_none() {
        let v = gw.get("/v1/usage", Auth::Api).await?;
        if a.json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "object")
            .map(|(k, v)| vec![k.clone(), cell(v)])
            .collect();
        print(&["FIELD", "VALUE"], &rows);
        return Ok(());
    }
    let mut path = format!("/admin/v1/spend?group_by={}", urlencode(&a.group_by));
    for (name, v) in [("from", &a.from), ("to", &a.to)] {
        if let Some(v) = v {
            path.push_str(&format!("&{name}={}", urlencode(v)));
        }
    }
    let v = gw.get(&path, Auth::Admin).await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    let by = v["group_by"].as_str().unwrap_or("key").to_string();
    let mut rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            vec![
                cell(&g[&by]),
                cell(&g["requests"]),
                cell(&g["prompt_tokens"]),
                cell(&g["completion_tokens"]),
                format!("${:.6}", g["spend_usd"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    let t = &v["total"];
    rows.push(vec![
        "TOTAL".into(),
        cell(&t["requests"]),
        cell(&t["prompt_tokens"]),
        cell(&t["completion_tokens"]),
        format!("${:.6}", t["spend_usd"].as_f64().unwrap_or(0.0)),
    ]);
    println!("{} to {}", cell(&v["from"]), cell(&v["to"]));
    print(
        &[
            &by.to_uppercase(),
            "REQUESTS",
            "PROMPT TOKENS",
            "COMPLETION TOKENS",
            "SPEND",
        ],
        &rows,
    );
    Ok(())
}

/// The gateway binary: beside igw, else on PATH.
fn gateway_binary() -> Option<PathBuf> {
    const NAME: &str = "inference-gateway";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(NAME)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(NAME))
            .find(|p| p.is_file())
    })
}

pub fn config_check(file: &Path) -> Result<(), Failure> {
    let bin = gateway_binary().ok_or_else(|| {
        Failure::Other("no inference-gateway binary beside igw or on PATH".into())
    })?;
    let status = std::process::Command::new(&bin)
        .arg("-t")
        .arg("-c")
        .arg(file)
        .status()
        .map_err(|e| Failure::Other(format!("cannot run {}: {e}", bin.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Other(format!(
            "{} is not a valid configuration ({} -t said why above)",
            file.display(),
            bin.display()
        )))
    }
}
