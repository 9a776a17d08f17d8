//! `/admin/v1/keys`: virtual API keys at run time.
//!
//! - `POST /admin/v1/keys` -> 201 `{"key": "igw-...", "api_key": {...}}`: the key is shown once
//!   and stored as its SHA-256 only.
//! - `GET /admin/v1/keys[?include_revoked=true&limit=&cursor=]`, `GET/PUT/DELETE
//!   /admin/v1/keys/{id}` (`PUT` changes the fields it names; `DELETE` revokes, and the key
//!   stays listed for the ledger and audit), `GET /admin/v1/keys/{id}/usage`.
//! - Keys of the configuration file are listed with `"source": "config"` and id
//!   `config:<name>`; changing them is 409 `read_only` (edit the file).

use std::collections::BTreeMap;

use http::Method;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};

use super::{control, json_body, page, page_params, rfc3339, store_failed, AdminRequest};
use crate::auth::Principal;
use crate::config::auth::{BudgetPeriod, KeyConfig, LimitsSpec};
use crate::errors::{ApiError, Code};
use crate::proxy::{Gateway, RequestCtx};
use crate::store::keys::{KeySpec, StoredKey};
use crate::store::{now_ms, StoreError};

pub(super) async fn route(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &AdminRequest<'_>,
) -> Result<(u16, Value), ApiError> {
    match (req.method, &req.parts[1..]) {
        (&Method::GET, []) => list(gw, req).map(|v| (200, v)),
        (&Method::POST, []) => {
            let fields = json_body(gw, session, ctx).await?;
            create(gw, req, fields).await.map(|v| (201, v))
        }
        (&Method::GET, [id]) => Ok((200, key_json(&find(gw, id)?))),
        (&Method::PUT | &Method::PATCH, [id]) => {
            let fields = json_body(gw, session, ctx).await?;
            update(gw, req, id, fields).await.map(|v| (200, v))
        }
        (&Method::DELETE, [id]) => revoke(gw, req, id).await.map(|v| (200, v)),
        (&Method::GET, [id, "usage"]) => usage(gw, id).await.map(|v| (200, v)),
        (_, [] | [_] | [_, "usage"]) => Err(req.not_allowed()),
        _ => Err(ApiError::of(Code::NotFound, "Invalid URL")),
    }
}

/// A key as the admin API shows it (never its secret or hash).
enum Listed {
    Config(KeyConfig),
    Store(StoredKey),
}

fn key_json(k: &Listed) -> Value {
    match k {
        Listed::Config(c) => {
            let l = &c.limits;
            json!({"id": format!("config:{}", c.name), "object": "api_key", "name": c.name,
                "key_prefix": null, "owner": c.owner, "team": null, "models": l.models,
                "rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent,
                "budget_usd": l.budget_usd, "budget_period": l.budget_period,
                "expires_at": c.expires, "metadata": c.metadata, "tools": l.tools,
                "guardrails": l.guardrails,
                "created_at": null, "updated_at": null, "revoked_at": null, "source": "config"})
        }
        Listed::Store(k) => {
            let s = &k.spec;
            json!({"id": k.id, "object": "api_key", "name": k.name, "key_prefix": k.key_prefix,
                "owner": k.owner, "team": k.team, "models": s.models, "rpm": s.rpm, "tpm": s.tpm,
                "max_concurrent": s.max_concurrent, "budget_usd": s.budget_usd,
                "budget_period": s.budget_period, "expires_at": k.expires_at.map(rfc3339),
                "metadata": s.metadata, "tools": s.tools, "guardrails": s.guardrails,
                "created_at": rfc3339(k.created_at),
                "updated_at": rfc3339(k.updated_at), "revoked_at": k.revoked_at.map(rfc3339),
                "source": "store"})
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::of(Code::NotFound, format!("No key with id '{id}'")).param("id")
}

fn read_only(name: &str) -> ApiError {
    ApiError::of(
        Code::ReadOnly,
        format!("Key {name:?} comes from the configuration file: change it there"),
    )
}

/// A key by id: `config:<name>` or a stored key's id (revoked ones too).
fn find(gw: &Gateway, id: &str) -> Result<Listed, ApiError> {
    if let Some(name) = id.strip_prefix("config:") {
        return gw
            .cfg
            .keys
            .iter()
            .find(|k| k.name == name)
            .map(|k| Listed::Config(k.clone()))
            .ok_or_else(|| not_found(id));
    }
    let Some(cp) = gw.control.as_deref() else {
        return Err(not_found(id));
    };
    cp.keys()
        .iter()
        .find(|k| k.id == id)
        .map(|k| Listed::Store(k.clone()))
        .ok_or_else(|| not_found(id))
}

fn list(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    let (limit, cursor) = page_params(req)?;
    let revoked = req.param("include_revoked").as_deref() == Some("true");
    let mut items: Vec<Value> = gw
        .cfg
        .keys
        .iter()
        .map(|k| key_json(&Listed::Config(k.clone())))
        .collect();
    if let Some(cp) = gw.control.as_deref() {
        items.extend(
            cp.keys()
                .iter()
                .filter(|k| revoked || k.revoked_at.is_none())
                .map(|k| key_json(&Listed::Store(k.clone()))),
        );
    }
    page(items, limit, cursor.as_deref())
}

/// The fields of a create or update body; each `Some` when present (`Some(None)`: cleared).
#[derive(Default)]
pub(super) struct Fields {
    pub(super) name: Option<String>,
    pub(super) owner: Option<Option<String>>,
    pub(super) team: Option<Option<String>>,
    pub(super) models: Option<Vec<String>>,
    pub(super) rpm: Option<Option<u64>>,
    pub(super) tpm: Option<Option<u64>>,
    pub(super) max_concurrent: Option<Option<u64>>,
    pub(super) budget_usd: Option<Option<f64>>,
    pub(super) budget_period: Option<BudgetPeriod>,
    pub(super) expires_at: Option<Option<i64>>,
    pub(super) metadata: Option<BTreeMap<String, String>>,
    pub(super) tools: Option<Vec<String>>,
    pub(super) guardrails: Option<Option<String>>,
}

pub(super) fn invalid(field: &'static str, what: &str) -> ApiError {
    ApiError::of(Code::InvalidField, format!("{field}: {what}")).param(field)
}

fn opt_string(field: &'static str, v: &Value) -> Result<Option<String>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= 256 => Ok(Some(s.clone())),
        Value::String(_) => Err(invalid(field, "at most 256 characters")),
        _ => Err(invalid(field, "expected a string or null")),
    }
}

fn opt_count(field: &'static str, v: &Value) -> Result<Option<u64>, ApiError> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, "expected a non-negative integer or null")),
    }
}

fn strings(field: &'static str, v: &Value) -> Result<Vec<String>, ApiError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(field, "expected an array of strings"))?;
    if items.len() > 1000 {
        return Err(invalid(field, "at most 1000 entries"));
    }
    items
        .iter()
        .map(|i| {
            i.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .map(str::to_string)
                .ok_or_else(|| invalid(field, "expected non-empty strings"))
        })
        .collect()
}

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// Which object a body describes: a team takes only the shared limits and budget.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Object {
    Key,
    Team,
}

/// Reads a body's fields (seed 003's names accepted as aliases: `rpm_limit`, `tpm_limit`,
/// `allowed_models`); an unknown field or a wrong type is 422 naming it.
pub(super) fn fields(body: Map<String, Value>, object: Object) -> Result<Fields, ApiError> {
    let mut f = Fields::default();
    for (k, v) in &body {
        let key_only = matches!(
            k.as_str(),
            "owner" | "team" | "models" | "allowed_models" | "expires_at" | "tools"
        );
        if object == Object::Team && key_only {
            return Err(ApiError::of(
                Code::InvalidField,
                format!("Unknown field {k:?} (a team has name, rpm, tpm, max_concurrent, budget_usd, budget_period, metadata, guardrails)"),
            ));
        }
        match k.as_str() {
            "name" => {
                let n = v.as_str().filter(|n| valid_name(n)).ok_or_else(|| {
                    invalid(
                        "name",
                        "1-64 characters of letters, digits, '-', '_', '.', '@'",
                    )
                })?;
                f.name = Some(n.to_string());
            }
            "owner" => f.owner = Some(opt_string("owner", v)?),
            "team" => f.team = Some(opt_string("team", v)?),
            "models" | "allowed_models" => f.models = Some(strings("models", v)?),
            "rpm" | "rpm_limit" => f.rpm = Some(opt_count("rpm", v)?),
            "tpm" | "tpm_limit" => f.tpm = Some(opt_count("tpm", v)?),
            "max_concurrent" => f.max_concurrent = Some(opt_count("max_concurrent", v)?),
            "budget_usd" => {
                f.budget_usd = Some(match v {
                    Value::Null => None,
                    v => Some(
                        v.as_f64()
                            .filter(|b| b.is_finite() && *b >= 0.0)
                            .ok_or_else(|| {
                                invalid("budget_usd", "expected a non-negative number or null")
                            })?,
                    ),
                })
            }
            "budget_period" => {
                f.budget_period = Some(serde_json::from_value(v.clone()).map_err(|_| {
                    invalid("budget_period", "expected daily, weekly, monthly or total")
                })?)
            }
            "expires_at" => {
                f.expires_at = Some(match v {
                    Value::Null => None,
                    Value::String(s) => Some(
                        humantime::parse_rfc3339_weak(s)
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_millis() as i64)
                            .ok_or_else(|| invalid("expires_at", "expected an RFC 3339 time"))?,
                    ),
                    _ => return Err(invalid("expires_at", "expected an RFC 3339 time or null")),
                })
            }
            "metadata" => {
                let m = v
                    .as_object()
                    .ok_or_else(|| invalid("metadata", "expected an object of strings"))?;
                if m.len() > 64 {
                    return Err(invalid("metadata", "at most 64 entries"));
                }
                let mut out = BTreeMap::new();
                for (mk, mv) in m {
                    let s = mv
                        .as_str()
                        .filter(|s| s.len() <= 1024 && mk.len() <= 128)
                        .ok_or_else(|| invalid("metadata", "expected short string values"))?;
                    out.insert(mk.clone(), s.to_string());
                }
                f.metadata = Some(out);
            }
            "tools" => f.tools = Some(strings("tools", v)?),
            "guardrails" => f.guardrails = Some(opt_string("guardrails", v)?),
            other => {
                let mut e = ApiError::of(Code::InvalidField, format!("Unknown field {other:?}"));
                e.param = None;
                return Err(e);
            }
        }
    }
    Ok(f)
}

impl Fields {
    /// Applies the fields present to a key.
    pub(super) fn apply(self, k: &mut StoredKey) {
        let s = &mut k.spec;
        if let Some(v) = self.name {
            k.name = v;
        }
        if let Some(v) = self.owner {
            k.owner = v;
        }
        if let Some(v) = self.team {
            k.team = v;
        }
        if let Some(v) = self.models {
            s.models = v;
        }
        if let Some(v) = self.rpm {
            s.rpm = v;
        }
        if let Some(v) = self.tpm {
            s.tpm = v;
        }
        if let Some(v) = self.max_concurrent {
            s.max_concurrent = v;
        }
        if let Some(v) = self.budget_usd {
            s.budget_usd = v;
        }
        if let Some(v) = self.budget_period {
            s.budget_period = v;
        }
        if let Some(v) = self.expires_at {
            k.expires_at = v;
        }
        if let Some(v) = self.metadata {
            s.metadata = v;
        }
        if let Some(v) = self.tools {
            s.tools = v;
        }
        if let Some(v) = self.guardrails {
            s.guardrails = v;
        }
    }
}

/// A guardrail profile named by a key or team must be configured.
pub(super) fn guardrails_exist(gw: &Gateway, f: &Fields) -> Result<(), ApiError> {
    match &f.guardrails {
        Some(Some(p)) if !gw.cfg.guardrails.profiles.contains_key(p) => Err(invalid(
            "guardrails",
            &format!("no [guardrails.profiles.{p}] is configured"),
        )),
        _ => Ok(()),
    }
}

/// A key's team must be a live team.
fn team_exists(gw: &Gateway, f: &Fields) -> Result<(), ApiError> {
    let Some(Some(team)) = &f.team else {
        return Ok(());
    };
    let known = gw.control.as_deref().is_some_and(|cp| {
        cp.teams()
            .iter()
            .any(|t| t.deleted_at.is_none() && t.name == *team)
    });
    if known {
        Ok(())
    } else {
        Err(invalid(
            "team",
            &format!("no team named {team:?} (create it under /admin/v1/teams)"),
        ))
    }
}

/// A name a configuration key or another live stored key has: 409.
fn name_taken(gw: &Gateway, name: &str, except: Option<&str>) -> bool {
    gw.cfg.keys.iter().any(|k| k.name == name)
        || gw.control.as_deref().is_some_and(|cp| {
            cp.keys()
                .iter()
                .any(|k| k.name == name && k.revoked_at.is_none() && Some(k.id.as_str()) != except)
        })
}

fn duplicate(name: &str) -> ApiError {
    ApiError::of(
        Code::AlreadyExists,
        format!("A key named {name:?} already exists"),
    )
    .param("name")
}

async fn create(
    gw: &Gateway,
    req: &AdminRequest<'_>,
    body: Map<String, Value>,
) -> Result<Value, ApiError> {
    let cp = control(gw)?;
    let given: Vec<String> = body.keys().cloned().collect();
    let f = fields(body, Object::Key)?;
    team_exists(gw, &f)?;
    guardrails_exist(gw, &f)?;
    let Some(name) = f.name.clone() else {
        return Err(invalid("name", "required"));
    };
    if name_taken(gw, &name, None) {
        return Err(duplicate(&name));
    }
    let secret = crate::auth::new_key();
    let now = now_ms();
    let mut key = StoredKey {
        id: format!("key_{}", uuid::Uuid::new_v4().simple()),
        name: name.clone(),
        hash: crate::auth::hash_key(&secret),
        key_prefix: secret[..12].to_string(),
        owner: None,
        team: None,
        spec: KeySpec::default(),
        expires_at: None,
        created_at: now,
        updated_at: now,
        revoked_at: None,
    };
    f.apply(&mut key);
    let audit = req.audit(
        "key.create",
        &key.id,
        json!({"name": key.name, "fields": given}),
    );
    match cp.store.insert_key(&key, &audit).await {
        Ok(()) => {}
        Err(StoreError::Duplicate) => return Err(duplicate(&name)),
        Err(e) => return Err(store_failed(e)),
    }
    // This replica serves the key at once; the others within a second.
    if let Err(e) = cp.refresh().await {
        log::warn!("admin API: refresh after a write failed: {e}");
    }
    log::info!("admin: key {name:?} ({}) created", key.id);
    Ok(json!({"key": secret, "api_key": key_json(&Listed::Store(key))}))
}

async fn update(
    gw: &Gateway,
    req: &AdminRequest<'_>,
    id: &str,
    body: Map<String, Value>,
) -> Result<Value, ApiError> {
    let mut key = match find(gw, id)? {
        Listed::Config(c) => return Err(read_only(&c.name)),
        Listed::Store(k) => k,
    };
    if key.revoked_at.is_some() {
        return Err(ApiError::of(
            Code::ReadOnly,
            format!("Key {id} is revoked; create a new one"),
        ));
    }
    let cp = control(gw)?;
    let given: Vec<String> = body.keys().cloned().collect();
    let f = fields(body, Object::Key)?;
    team_exists(gw, &f)?;
    guardrails_exist(gw, &f)?;
    if let Some(n) = &f.name {
        if *n != key.name && name_taken(gw, n, Some(&key.id)) {
            return Err(duplicate(n));
        }
    }
    f.apply(&mut key);
    key.updated_at = now_ms();
    let audit = req.audit(
        "key.update",
        &key.id,
        json!({"name": key.name, "fields": given}),
    );
    match cp.store.update_key(&key, &audit).await {
        Ok(true) => {}
        Ok(false) => return Err(not_found(id)),
        Err(StoreError::Duplicate) => return Err(duplicate(&key.name)),
        Err(e) => return Err(store_failed(e)),
    }
    if let Err(e) = cp.refresh().await {
        log::warn!("admin API: refresh after a write failed: {e}");
    }
    log::info!("admin: key {:?} ({}) updated", key.name, key.id);
    Ok(key_json(&Listed::Store(key)))
}

async fn revoke(gw: &Gateway, req: &AdminRequest<'_>, id: &str) -> Result<Value, ApiError> {
    let key = match find(gw, id)? {
        Listed::Config(c) => return Err(read_only(&c.name)),
        Listed::Store(k) => k,
    };
    let cp = control(gw)?;
    if key.revoked_at.is_none() {
        let audit = req.audit("key.revoke", id, json!({"name": key.name}));
        match cp.store.revoke_key(id, now_ms(), &audit).await {
            Ok(_) => {}
            Err(e) => return Err(store_failed(e)),
        }
        if let Err(e) = cp.refresh().await {
            log::warn!("admin API: refresh after a write failed: {e}");
        }
        log::info!("admin: key {:?} ({id}) revoked", key.name);
    }
    let key = find(gw, id)?;
    Ok(key_json(&key))
}

/// Live usage of a key against its limits and budget (this replica's counters, or Redis's).
async fn usage(gw: &Gateway, id: &str) -> Result<Value, ApiError> {
    let listed = find(gw, id)?;
    let (name, limits, owner, team) = match &listed {
        Listed::Config(c) => (c.name.clone(), c.limits.clone(), c.owner.clone(), None),
        Listed::Store(k) => {
            let s = &k.spec;
            (
                k.name.clone(),
                LimitsSpec {
                    tools: k.spec.tools.clone(),
                    guardrails: k.spec.guardrails.clone(),
                    models: s.models.clone(),
                    rpm: s.rpm,
                    tpm: s.tpm,
                    max_concurrent: s.max_concurrent,
                    budget_usd: s.budget_usd,
                    budget_period: s.budget_period,
                },
                k.owner.clone(),
                k.team.clone(),
            )
        }
    };
    let p = Principal {
        id: format!("key:{name}"),
        name: name.clone(),
        limits: std::sync::Arc::new(limits),
        owner,
        team,
        team_limits: None,
        metadata: Default::default(),
        may_proxy: true,
    };
    let counts = gw.limiter.usage(&p).await.map_err(|e| {
        log::warn!("admin API: usage: {}", e.0);
        ApiError::of(Code::LimitsUnavailable, "usage is unavailable right now")
    })?;
    let l = &p.limits;
    Ok(json!({
        "object": "key_usage",
        "key": key_json(&listed),
        "period": l.budget_period,
        "spend_usd": counts.spend_micro as f64 / 1e6,
        "budget_usd": l.budget_usd,
        "requests_this_minute": counts.requests,
        "tokens_this_minute": counts.tokens,
        "limits": {"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent, "models": l.models},
    }))
}
