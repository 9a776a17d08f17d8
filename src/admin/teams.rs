//! `/admin/v1/teams`: limits and a budget shared by a team's keys (a key names its team with
//! `team`). A request must pass both its key's limits and its team's.
//!
//! `POST` (201), `GET` (list, pages), `GET/PUT/DELETE /admin/v1/teams/{id}` (`PUT` changes the
//! fields it names; `DELETE` removes the team's limits, kept for the ledger and audit), `GET
//! /admin/v1/teams/{id}/usage`.

use http::Method;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};

use super::keys::{fields, invalid, Object};
use super::{control, json_body, page, page_params, rfc3339, store_failed, AdminRequest};
use crate::auth::Principal;
use crate::errors::{ApiError, Code};
use crate::proxy::{Gateway, RequestCtx};
use crate::store::keys::KeySpec;
use crate::store::teams::StoredTeam;
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
            let body = json_body(gw, session, ctx).await?;
            create(gw, req, body).await.map(|v| (201, v))
        }
        (&Method::GET, [id]) => Ok((200, team_json(&find(gw, id)?))),
        (&Method::PUT | &Method::PATCH, [id]) => {
            let body = json_body(gw, session, ctx).await?;
            update(gw, req, id, body).await.map(|v| (200, v))
        }
        (&Method::DELETE, [id]) => delete(gw, req, id).await.map(|v| (200, v)),
        (&Method::GET, [id, "usage"]) => usage(gw, id).await.map(|v| (200, v)),
        (_, [] | [_] | [_, "usage"]) => Err(req.not_allowed()),
        _ => Err(ApiError::of(Code::NotFound, "Invalid URL")),
    }
}

fn team_json(t: &StoredTeam) -> Value {
    let s = &t.spec;
    json!({"id": t.id, "object": "team", "name": t.name, "rpm": s.rpm, "tpm": s.tpm,
        "max_concurrent": s.max_concurrent, "budget_usd": s.budget_usd,
        "budget_period": s.budget_period, "metadata": s.metadata, "guardrails": s.guardrails,
        "created_at": rfc3339(t.created_at), "updated_at": rfc3339(t.updated_at),
        "deleted_at": t.deleted_at.map(rfc3339)})
}

fn find(gw: &Gateway, id: &str) -> Result<StoredTeam, ApiError> {
    let not_found = || ApiError::of(Code::NotFound, format!("No team with id '{id}'")).param("id");
    let cp = gw.control.as_deref().ok_or_else(not_found)?;
    cp.teams()
        .iter()
        .find(|t| t.id == id)
        .cloned()
        .ok_or_else(not_found)
}

fn list(gw: &Gateway, req: &AdminRequest<'_>) -> Result<Value, ApiError> {
    let (limit, cursor) = page_params(req)?;
    let deleted = req.param("include_deleted").as_deref() == Some("true");
    let items = gw
        .control
        .as_deref()
        .map(|cp| {
            cp.teams()
                .iter()
                .filter(|t| deleted || t.deleted_at.is_none())
                .map(team_json)
                .collect()
        })
        .unwrap_or_default();
    page(items, limit, cursor.as_deref())
}

/// Applies a body's fields (a team takes the shared limits only) to a team's spec.
fn apply(
    gw: &Gateway,
    body: Map<String, Value>,
    t: &mut StoredTeam,
) -> Result<Option<String>, ApiError> {
    let f = fields(body, Object::Team)?;
    super::keys::guardrails_exist(gw, &f)?;
    let name = f.name.clone();
    let mut key = crate::store::keys::StoredKey {
        id: String::new(),
        name: String::new(),
        hash: String::new(),
        key_prefix: String::new(),
        owner: None,
        team: None,
        spec: std::mem::take(&mut t.spec),
        expires_at: None,
        created_at: 0,
        updated_at: 0,
        revoked_at: None,
    };
    f.apply(&mut key);
    t.spec = key.spec;
    Ok(name)
}

fn duplicate(name: &str) -> ApiError {
    ApiError::of(
        Code::AlreadyExists,
        format!("A team named {name:?} already exists"),
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
    let now = now_ms();
    let mut team = StoredTeam {
        id: format!("team_{}", uuid::Uuid::new_v4().simple()),
        name: String::new(),
        spec: KeySpec::default(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    let Some(name) = apply(gw, body, &mut team)? else {
        return Err(invalid("name", "required"));
    };
    team.name = name.clone();
    if cp
        .teams()
        .iter()
        .any(|t| t.deleted_at.is_none() && t.name == name)
    {
        return Err(duplicate(&name));
    }
    let audit = req.audit(
        "team.create",
        &team.id,
        json!({"name": name, "fields": given}),
    );
    match cp.store.insert_team(&team, &audit).await {
        Ok(()) => {}
        Err(StoreError::Duplicate) => return Err(duplicate(&name)),
        Err(e) => return Err(store_failed(e)),
    }
    if let Err(e) = cp.refresh().await {
        log::warn!("admin API: refresh after a write failed: {e}");
    }
    Ok(team_json(&team))
}

async fn update(
    gw: &Gateway,
    req: &AdminRequest<'_>,
    id: &str,
    body: Map<String, Value>,
) -> Result<Value, ApiError> {
    let cp = control(gw)?;
    let mut team = find(gw, id)?;
    if team.deleted_at.is_some() {
        return Err(ApiError::of(
            Code::ReadOnly,
            format!("Team {id} is deleted"),
        ));
    }
    let given: Vec<String> = body.keys().cloned().collect();
    if let Some(n) = apply(gw, body, &mut team)? {
        if n != team.name {
            // Keys name their team: renaming would strand them.
            return Err(invalid(
                "name",
                "a team cannot be renamed (its keys name it)",
            ));
        }
    }
    team.updated_at = now_ms();
    let audit = req.audit(
        "team.update",
        id,
        json!({"name": team.name, "fields": given}),
    );
    match cp.store.update_team(&team, &audit).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::of(
                Code::NotFound,
                format!("No team with id '{id}'"),
            ))
        }
        Err(e) => return Err(store_failed(e)),
    }
    if let Err(e) = cp.refresh().await {
        log::warn!("admin API: refresh after a write failed: {e}");
    }
    Ok(team_json(&team))
}

async fn delete(gw: &Gateway, req: &AdminRequest<'_>, id: &str) -> Result<Value, ApiError> {
    let cp = control(gw)?;
    let team = find(gw, id)?;
    if team.deleted_at.is_none() {
        let audit = req.audit("team.delete", id, json!({"name": team.name}));
        cp.store
            .delete_team(id, now_ms(), &audit)
            .await
            .map_err(store_failed)?;
        if let Err(e) = cp.refresh().await {
            log::warn!("admin API: refresh after a write failed: {e}");
        }
    }
    Ok(team_json(&find(gw, id)?))
}

/// Live usage of a team against its shared limits and budget.
async fn usage(gw: &Gateway, id: &str) -> Result<Value, ApiError> {
    let team = find(gw, id)?;
    let p = Principal {
        id: format!("team:{}", team.name),
        name: format!("team {}", team.name),
        limits: std::sync::Arc::new(crate::auth::limits_of(&team.spec)),
        owner: None,
        team: None,
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
        "object": "team_usage", "team": team_json(&team), "period": l.budget_period,
        "spend_usd": counts.spend_micro as f64 / 1e6, "budget_usd": l.budget_usd,
        "requests_this_minute": counts.requests, "tokens_this_minute": counts.tokens,
        "limits": {"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent},
    }))
}
