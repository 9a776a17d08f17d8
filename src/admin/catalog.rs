//! `/admin/v1/providers` and `/admin/v1/models`: providers, aliases and pool members at run time.
//!
//! - `POST /admin/v1/providers` (201): a custom provider with the file's provider fields (`url`,
//!   `dialect`, `auth`, `headers`, `retry`, ...), `api_key` (write-only: never returned, never
//!   logged) and `active`. `GET/PUT/DELETE /admin/v1/providers/{id}`; pool members under
//!   `/admin/v1/providers/{id}/backends[/{bid}]` (`url`, `api_key`, `weight`, `active`).
//! - `POST /admin/v1/models` (201): an alias (`name`, `target`, `fallbacks`, `defaults` or seed
//!   003's `default_params`, `system_prompt_prefix`, `timeouts`, `active`), or, with seed 003's
//!   `model_id` and backends under `/admin/v1/models/{id}/backends`, a pool of its own.
//! - The file's providers and aliases are listed with `"source": "config"` and id
//!   `config:<name>`; changing them is 409 `read_only`. A name the file (or the built-in
//!   provider table) already uses is 409 `already_exists`.

use http::Method;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};

use super::keys::invalid;
use super::{control, json_body, page, page_params, rfc3339, store_failed, AdminRequest};
use crate::catalog::{self as cat, Invalid};
use crate::control::ControlPlane;
use crate::errors::{ApiError, Code};
use crate::proxy::{Gateway, RequestCtx};
use crate::store::catalog::{Entry, Kind};
use crate::store::{now_ms, StoreError};

pub(super) async fn route(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &AdminRequest<'_>,
    kind: Kind,
) -> Result<(u16, Value), ApiError> {
    let body = match *req.method {
        Method::POST | Method::PUT | Method::PATCH => Some(json_body(gw, session, ctx).await?),
        _ => None,
    };
    let at = Catalog { gw, req, kind };
    match (req.method, &req.parts[1..], body) {
        (&Method::GET, [], _) => at.list().map(|v| (200, v)),
        (&Method::POST, [], Some(b)) => at.create(b).await.map(|v| (201, v)),
        (&Method::GET, [id], _) => at.find(id).map(|l| (200, at.json(&l))),
        (&Method::PUT | &Method::PATCH, [id], Some(b)) => at.update(id, b).await.map(|v| (200, v)),
        (&Method::DELETE, [id], _) => at.delete(id).await.map(|v| (200, v)),
        (&Method::GET, [id, "backends"], _) => at.backends(id).map(|v| (200, v)),
        (&Method::POST, [id, "backends"], Some(b)) => at.add_backend(id, b).await.map(|v| (201, v)),
        (&Method::GET, [id, "backends", bid], _) => at.backend(id, bid).map(|b| (200, b)),
        (&Method::PUT | &Method::PATCH, [id, "backends", bid], Some(b)) => {
            at.update_backend(id, bid, b).await.map(|v| (200, v))
        }
        (&Method::DELETE, [id, "backends", bid], _) => {
            at.delete_backend(id, bid).await.map(|v| (200, v))
        }
        (_, [] | [_] | [_, "backends"] | [_, "backends", _], _) => Err(req.not_allowed()),
        _ => Err(ApiError::of(Code::NotFound, "Invalid URL")),
    }
}

/// A provider or model as listed: the file's, or the store's.
enum Listed {
    Config(String),
    Store(Entry),
}

struct Catalog<'a> {
    gw: &'a Gateway,
    req: &'a AdminRequest<'a>,
    kind: Kind,
}

fn unprocessable(e: Invalid) -> ApiError {
    if e.field.is_empty() {
        ApiError::of(Code::InvalidField, e.message)
    } else {
        invalid(e.field, &e.message)
    }
}

fn backend_json(e: &Entry) -> Value {
    json!({"id": e.id, "object": "backend", "url": e.doc.get("url"),
        "weight": e.doc.get("weight").and_then(Value::as_u64).unwrap_or(1),
        "active": cat::active(&e.doc), "has_api_key": e.secret.is_some(),
        "created_at": rfc3339(e.created_at), "updated_at": rfc3339(e.updated_at)})
}

fn duration(d: Option<crate::config::HumanDuration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!(humantime::format_duration(d.get()).to_string())
    })
}

/// A name for a stored provider or model: what routes and metrics labels can carry.
fn check_name(v: Option<&Value>, kind: Kind) -> Result<String, ApiError> {
    let Some(v) = v else {
        return Err(invalid("name", "required"));
    };
    let s = v
        .as_str()
        .ok_or_else(|| invalid("name", "expected a string"))?;
    let extra: &[char] = match kind {
        // A model may be named like an upstream model (`meta-llama/Llama-3.1-8B`).
        Kind::Model => &['.', '_', '-', '/', ':'],
        // A provider's name is the file's alphabet (it prefixes models and names variables).
        _ => &['_', '-'],
    };
    let ok = (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    if !ok {
        return Err(invalid(
            "name",
            "1 to 128 letters, digits, '_' or '-' (models also '.', '/' and ':')",
        ));
    }
    Ok(s.to_string())
}

/// `api_key` of a body: `Some(None)` clears it.
fn take_secret(body: &mut Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match body.remove("api_key") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 4096 => Ok(Some(Some(s))),
        Some(_) => Err(invalid(
            "api_key",
            "expected a string of 1 to 4096 characters",
        )),
    }
}

fn check_active(body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.get("active") {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(invalid("active", "expected true or false")),
    }
}

/// The body's fields merged into a document (`null` removes one).
fn merge(doc: &mut Map<String, Value>, body: Map<String, Value>) {
    for (k, v) in body {
        if v.is_null() {
            doc.remove(&k);
        } else {
            doc.insert(k, v);
        }
    }
}

/// Seed 003's names for a model's fields.
fn normalise_model(body: &mut Map<String, Value>) {
    if let Some(v) = body.remove("default_params") {
        body.entry("defaults").or_insert(v);
    }
    if let Some(Value::Object(mut t)) = body.remove("transforms") {
        if let Some(p) = t.remove("system_prompt_prefix") {
            body.entry("system_prompt_prefix").or_insert(p);
        }
    }
}

impl Catalog<'_> {
    fn noun(&self) -> &'static str {
        match self.kind {
            Kind::Provider => "provider",
            _ => "model",
        }
    }

    fn cp(&self) -> Result<&ControlPlane, ApiError> {
        control(self.gw)
    }

    fn not_found(&self, id: &str) -> ApiError {
        ApiError::of(Code::NotFound, format!("No {} with id '{id}'", self.noun())).param("id")
    }

    fn entries(&self) -> std::sync::Arc<Vec<Entry>> {
        self.gw
            .control
            .as_deref()
            .map(ControlPlane::catalog)
            .unwrap_or_default()
    }

    /// The file's names of this kind (configured providers; aliases).
    fn config_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Provider => self
                .gw
                .providers
                .iter()
                .filter(|p| p.configured)
                .map(|p| p.name.clone())
                .collect(),
            _ => self.gw.cfg.aliases.keys().cloned().collect(),
        }
    }

    fn find(&self, id: &str) -> Result<Listed, ApiError> {
        if let Some(name) = id.strip_prefix("config:") {
            return self
                .config_names()
                .into_iter()
                .find(|n| n == name)
                .map(Listed::Config)
                .ok_or_else(|| self.not_found(id));
        }
        self.entries()
            .iter()
            .find(|e| e.id == id && e.kind == self.kind)
            .cloned()
            .map(Listed::Store)
            .ok_or_else(|| self.not_found(id))
    }

    /// A stored object by id (the file's are read-only).
    fn stored(&self, id: &str) -> Result<Entry, ApiError> {
        match self.find(id)? {
            Listed::Store(e) => Ok(e),
            Listed::Config(name) => Err(ApiError::of(
                Code::ReadOnly,
                format!(
                    "The {} {name:?} comes from the configuration file: change it there",
                    self.noun()
                ),
            )),
        }
    }

    fn json(&self, l: &Listed) -> Value {
        match (l, self.kind) {
            (Listed::Config(name), Kind::Provider) => {
                let pool = self.gw.pools.get(name);
                let p = self.gw.router.provider_named(name);
                let backends: Vec<Value> = pool.as_ref().map_or(Vec::new(), |pool| {
                    pool.slots
                        .iter()
                        .map(|s| json!({"url": s.label, "weight": s.weight, "has_api_key": !s.provider.missing_key()}))
                        .collect()
                });
                json!({"id": format!("config:{name}"), "object": "provider", "name": name,
                    "source": "config", "active": true,
                    "url": p.as_ref().map(|p| format!("{}://{}{}", if p.tls {"https"} else {"http"}, p.authority, p.base_path)),
                    "dialect": p.as_ref().map(|p| p.dialect.name()),
                    "has_api_key": p.as_ref().is_some_and(|p| !p.missing_key()),
                    "backends": backends, "created_at": null, "updated_at": null})
            }
            (Listed::Config(name), _) => {
                let a = self.gw.router.file_alias(name);
                json!({"id": format!("config:{name}"), "object": "model", "name": name,
                    "source": "config", "active": true,
                    "target": a.map(|a| a.target.clone()),
                    "fallbacks": a.map(|a| a.fallbacks.clone()),
                    "defaults": a.map(|a| a.defaults.clone()),
                    "system_prompt_prefix": a.and_then(|a| a.system_prompt_prefix.clone()),
                    "timeouts": a.map(|a| json!({"connect": duration(a.timeouts.connect),
                        "first_byte": duration(a.timeouts.first_byte),
                        "stream_idle": duration(a.timeouts.stream_idle),
                        "total": duration(a.timeouts.total)})),
                    "backends": [], "created_at": null, "updated_at": null})
            }
            (Listed::Store(e), _) => {
                let mut v = Map::new();
                v.insert("id".into(), json!(e.id));
                v.insert("object".into(), json!(self.noun()));
                v.insert("name".into(), json!(e.name));
                v.insert("source".into(), json!("store"));
                v.insert("active".into(), json!(cat::active(&e.doc)));
                for (k, val) in &e.doc {
                    v.entry(k.clone()).or_insert(val.clone());
                }
                if self.kind == Kind::Provider {
                    v.insert("has_api_key".into(), json!(e.secret.is_some()));
                } else {
                    // Whether requests can reach it now (a model needs a target or a backend).
                    v.insert("routable".into(), json!(self.gw.router.resolves(&e.name)));
                }
                let backends: Vec<Value> = self
                    .entries()
                    .iter()
                    .filter(|b| b.kind == Kind::Backend && b.parent.as_deref() == Some(&e.id))
                    .map(backend_json)
                    .collect();
                v.insert("backends".into(), Value::Array(backends));
                v.insert("created_at".into(), json!(rfc3339(e.created_at)));
                v.insert("updated_at".into(), json!(rfc3339(e.updated_at)));
                Value::Object(v)
            }
        }
    }

    fn list(&self) -> Result<Value, ApiError> {
        let (limit, cursor) = page_params(self.req)?;
        let mut items: Vec<Value> = self
            .config_names()
            .into_iter()
            .map(|n| self.json(&Listed::Config(n)))
            .collect();
        items.extend(
            self.entries()
                .iter()
                .filter(|e| e.kind == self.kind)
                .map(|e| self.json(&Listed::Store(e.clone()))),
        );
        page(items, limit, cursor.as_deref())
    }

    /// Refuses a name the file, the built-in table or another stored object uses, and a model
    /// name that would shadow `provider/model` routing (`openai/gpt-4o` as an alias).
    fn check_free(&self, name: &str) -> Result<(), ApiError> {
        if let Some((p, _)) = name.split_once('/') {
            let provider = self.gw.router.provider_named(p).is_some()
                || self
                    .entries()
                    .iter()
                    .any(|e| e.kind == Kind::Provider && e.name == p);
            if provider {
                return Err(invalid(
                    "name",
                    &format!("{p:?} is a provider: this name would hide provider/model routing"),
                ));
            }
        }
        let taken_by_file = self.gw.cfg.providers.contains_key(name)
            || self.gw.cfg.aliases.contains_key(name)
            || self.gw.providers.get(name).is_some();
        let taken_by_store = self
            .entries()
            .iter()
            .any(|e| e.kind != Kind::Backend && e.name == name);
        if taken_by_file || taken_by_store {
            return Err(ApiError::of(
                Code::AlreadyExists,
                format!(
                    "The name {name:?} is taken (a provider or model of the {})",
                    if taken_by_file {
                        "configuration file or the built-in table"
                    } else {
                        "store"
                    }
                ),
            )
            .param("name"));
        }
        Ok(())
    }

    /// Whether an object of this kind would build, with its backends as they would be.
    fn check(
        &self,
        name: &str,
        doc: &Map<String, Value>,
        secret: Option<&str>,
        backends: &[Entry],
    ) -> Result<(), ApiError> {
        match self.kind {
            Kind::Provider => {
                let members = backends
                    .iter()
                    .filter(|b| cat::active(&b.doc))
                    .map(|b| crate::config::resilience::BackendConfig {
                        url: b.doc["url"].as_str().unwrap_or_default().into(),
                        weight: b.doc.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32,
                        api_key: b.secret.clone().map(crate::config::Secret::new),
                    })
                    .collect();
                cat::provider_pool(name, doc, secret, members, self.gw.cfg.retry.as_ref())
                    .map(|_| ())
                    .map_err(unprocessable)
            }
            _ => {
                let m = cat::parse_model(name, doc).map_err(unprocessable)?;
                if let Some(t) = &m.target {
                    let (p, _) = t.split_once('/').expect("checked");
                    let known = self.gw.router.provider_named(p).is_some()
                        || self
                            .entries()
                            .iter()
                            .any(|e| e.kind == Kind::Provider && e.name == p);
                    if !known {
                        return Err(invalid("target", &format!("unknown provider {p:?}")));
                    }
                }
                for f in &m.fallbacks {
                    if !self.gw.router.resolves(f) {
                        return Err(invalid(
                            "fallbacks",
                            &format!("{f:?} is neither a model nor provider/model"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    fn backends_of(&self, id: &str) -> Vec<Entry> {
        self.entries()
            .iter()
            .filter(|b| b.kind == Kind::Backend && b.parent.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    async fn refreshed(&self, cp: &ControlPlane) {
        if let Err(e) = cp.refresh().await {
            log::warn!("admin API: refresh after a write failed: {e}");
        }
    }

    fn duplicate(&self, name: &str) -> ApiError {
        ApiError::of(
            Code::AlreadyExists,
            format!("A {} named {name:?} already exists", self.noun()),
        )
        .param("name")
    }

    async fn create(&self, mut body: Map<String, Value>) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let name = check_name(body.get("name"), self.kind)?;
        let secret = match self.kind {
            Kind::Provider => take_secret(&mut body)?.flatten(),
            _ => None,
        };
        if self.kind == Kind::Model {
            normalise_model(&mut body);
        }
        check_active(&body)?;
        body.remove("name");
        let given: Vec<String> = body.keys().cloned().collect();
        let mut doc = Map::new();
        merge(&mut doc, body);
        self.check(&name, &doc, secret.as_deref(), &[])?;
        self.check_free(&name)?;
        let now = now_ms();
        let prefix = if self.kind == Kind::Provider {
            "prov"
        } else {
            "mdl"
        };
        let entry = Entry {
            id: format!("{prefix}_{}", uuid::Uuid::new_v4().simple()),
            kind: self.kind,
            name: name.clone(),
            parent: None,
            doc,
            secret,
            created_at: now,
            updated_at: now,
        };
        let audit = self.req.audit(
            &format!("{}.create", self.noun()),
            &entry.id,
            json!({"name": name, "fields": given}),
        );
        match cp.store.insert_entry(&entry, &audit).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => return Err(self.duplicate(&name)),
            Err(e) => return Err(store_failed(e)),
        }
        self.refreshed(cp).await;
        Ok(self.json(&Listed::Store(entry)))
    }

    async fn update(&self, id: &str, mut body: Map<String, Value>) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let mut entry = self.stored(id)?;
        if let Some(n) = body.remove("name") {
            if n.as_str() != Some(entry.name.as_str()) {
                return Err(invalid(
                    "name",
                    "cannot be renamed (models and fallbacks name it): create a new one",
                ));
            }
        }
        if self.kind == Kind::Provider {
            if let Some(s) = take_secret(&mut body)? {
                entry.secret = s;
            }
        } else {
            normalise_model(&mut body);
        }
        check_active(&body)?;
        let given: Vec<String> = body.keys().cloned().collect();
        merge(&mut entry.doc, body);
        self.check(
            &entry.name,
            &entry.doc,
            entry.secret.as_deref(),
            &self.backends_of(id),
        )?;
        entry.updated_at = now_ms();
        let audit = self.req.audit(
            &format!("{}.update", self.noun()),
            id,
            json!({"name": entry.name, "fields": given}),
        );
        match cp.store.update_entry(&entry, &audit).await {
            Ok(true) => {}
            Ok(false) => return Err(self.not_found(id)),
            Err(e) => return Err(store_failed(e)),
        }
        self.refreshed(cp).await;
        Ok(self.json(&Listed::Store(entry)))
    }

    async fn delete(&self, id: &str) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let entry = self.stored(id)?;
        let audit = self.req.audit(
            &format!("{}.delete", self.noun()),
            id,
            json!({"name": entry.name}),
        );
        match cp.store.delete_entry(id, &audit).await {
            Ok(true) => {}
            Ok(false) => return Err(self.not_found(id)),
            Err(e) => return Err(store_failed(e)),
        }
        self.refreshed(cp).await;
        Ok(json!({"id": id, "object": self.noun(), "name": entry.name, "deleted": true}))
    }

    fn backends(&self, id: &str) -> Result<Value, ApiError> {
        let (limit, cursor) = page_params(self.req)?;
        let items = match self.find(id)? {
            Listed::Config(_) => self.json(&self.find(id)?)["backends"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Listed::Store(e) => self.backends_of(&e.id).iter().map(backend_json).collect(),
        };
        page(items, limit, cursor.as_deref())
    }

    fn find_backend(&self, id: &str, bid: &str) -> Result<(Entry, Entry), ApiError> {
        let parent = self.stored(id)?;
        let backend = self
            .backends_of(id)
            .into_iter()
            .find(|b| b.id == bid)
            .ok_or_else(|| {
                ApiError::of(Code::NotFound, format!("No backend with id '{bid}'")).param("id")
            })?;
        Ok((parent, backend))
    }

    fn backend(&self, id: &str, bid: &str) -> Result<Value, ApiError> {
        self.find_backend(id, bid).map(|(_, b)| backend_json(&b))
    }

    /// Checks a parent with its backends as they would be after a change.
    fn check_members(&self, parent: &Entry, members: &[Entry]) -> Result<(), ApiError> {
        if self.kind == Kind::Provider {
            self.check(&parent.name, &parent.doc, parent.secret.as_deref(), members)
        } else {
            Ok(())
        }
    }

    async fn add_backend(&self, id: &str, mut body: Map<String, Value>) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let parent = self.stored(id)?;
        let secret = take_secret(&mut body)?.flatten();
        cat::check_backend(&body).map_err(unprocessable)?;
        let now = now_ms();
        let bid = format!("bk_{}", uuid::Uuid::new_v4().simple());
        let entry = Entry {
            id: bid.clone(),
            kind: Kind::Backend,
            name: bid.clone(),
            parent: Some(parent.id.clone()),
            doc: body,
            secret,
            created_at: now,
            updated_at: now,
        };
        let mut members = self.backends_of(id);
        if members.len() >= 1000 {
            return Err(invalid("url", "a pool has at most 1000 backends"));
        }
        members.push(entry.clone());
        self.check_members(&parent, &members)?;
        let audit = self.req.audit(
            "backend.create",
            &bid,
            json!({"parent": parent.id, "url": entry.doc.get("url")}),
        );
        cp.store
            .insert_entry(&entry, &audit)
            .await
            .map_err(store_failed)?;
        self.refreshed(cp).await;
        Ok(backend_json(&entry))
    }

    async fn update_backend(
        &self,
        id: &str,
        bid: &str,
        mut body: Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let (parent, mut entry) = self.find_backend(id, bid)?;
        if let Some(s) = take_secret(&mut body)? {
            entry.secret = s;
        }
        let given: Vec<String> = body.keys().cloned().collect();
        merge(&mut entry.doc, body);
        cat::check_backend(&entry.doc).map_err(unprocessable)?;
        let members: Vec<Entry> = self
            .backends_of(id)
            .into_iter()
            .map(|b| if b.id == bid { entry.clone() } else { b })
            .collect();
        self.check_members(&parent, &members)?;
        entry.updated_at = now_ms();
        let audit = self.req.audit(
            "backend.update",
            bid,
            json!({"parent": parent.id, "fields": given}),
        );
        match cp.store.update_entry(&entry, &audit).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ApiError::of(
                    Code::NotFound,
                    format!("No backend with id '{bid}'"),
                ))
            }
            Err(e) => return Err(store_failed(e)),
        }
        self.refreshed(cp).await;
        Ok(backend_json(&entry))
    }

    async fn delete_backend(&self, id: &str, bid: &str) -> Result<Value, ApiError> {
        let cp = self.cp()?;
        let (parent, _) = self.find_backend(id, bid)?;
        let audit = self
            .req
            .audit("backend.delete", bid, json!({"parent": parent.id}));
        cp.store
            .delete_entry(bid, &audit)
            .await
            .map_err(store_failed)?;
        self.refreshed(cp).await;
        Ok(json!({"id": bid, "object": "backend", "deleted": true}))
    }
}
