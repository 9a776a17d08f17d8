//! The catalog's runtime side: providers, models and backends added through the admin API
//! (`crate::store::catalog`), built into the router's and the pools' run-time layers.
//!
//! A stored provider is a provider of the configuration file (the same fields, the same
//! validation, the same `Provider` and `Pool`), with its pool members as backend rows. A stored
//! model is an alias: to a `provider/model` target, or, with backends of its own (seed 003's
//! model registry: vLLM servers for one model), to a pool provider named `model:<name>` that no
//! other route reaches. Unchanged pools are reused across rebuilds, so a change elsewhere does
//! not reset their backends' health.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::config::resilience::{BackendConfig, RetryConfig, TimeoutsConfig};
use crate::config::{AliasConfig, ProviderConfig, Secret};
use crate::pool::{Pool, Pools};
use crate::providers::Provider;
use crate::routing::{Router, RuntimeAlias, RuntimeRoutes};
use crate::store::catalog::{Entry, Kind};

/// Fields a stored provider may have: a file provider's, less `backends` (rows of their own),
/// `api_key` (kept apart, write-only), `api_key_file`, `enabled` (`active` instead) and
/// `health_check` (active checks are the file's only).
pub const PROVIDER_FIELDS: &[&str] = &[
    "url",
    "dialect",
    "auth",
    "auth_header",
    "headers",
    "query",
    "chat_path",
    "completions_path",
    "embeddings_path",
    "models_path",
    "default_max_tokens",
    "stream_usage",
    "responses_api",
    "responses_path",
    "balance",
    "retry",
    "timeouts",
    "max_concurrent",
    "max_queue",
    "queue_timeout",
    "circuit_breaker",
];

/// Fields of a stored model (an alias), beside `name` and `active`.
pub const MODEL_FIELDS: &[&str] = &[
    "target",
    "model_id",
    "fallbacks",
    "defaults",
    "system_prompt_prefix",
    "timeouts",
    "dialect",
];

/// Fields of a backend, beside `api_key`.
pub const BACKEND_FIELDS: &[&str] = &["url", "weight", "active"];

/// A field the catalog cannot use, named (the admin API answers 422 with it).
#[derive(Debug)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// `active` unless a document says `"active": false`.
pub fn active(doc: &Map<String, Value>) -> bool {
    doc.get("active").and_then(Value::as_bool).unwrap_or(true)
}

/// Checks each field on its own (so a wrong type is named), then the whole document.
fn parse_fields<T: serde::de::DeserializeOwned>(
    doc: &Map<String, Value>,
    allowed: &'static [&'static str],
    skip: &[&str],
) -> Result<T, Invalid> {
    let mut rest = Map::new();
    for (k, v) in doc {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let Some(field) = allowed.iter().find(|f| **f == k) else {
            return Err(invalid(
                "",
                format!(
                    "Unknown field {k:?} (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        };
        if v.is_null() {
            continue;
        }
        let one = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
        serde_json::from_value::<T>(one).map_err(|e| invalid(field, e.to_string()))?;
        rest.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(rest)).map_err(|e| invalid("", e.to_string()))
}

/// The backends of `parent` that serve (active), as a pool's members.
fn backends_of<'a>(entries: &'a [Entry], parent: &str) -> impl Iterator<Item = &'a Entry> {
    let parent = parent.to_string();
    entries.iter().filter(move |e| {
        e.kind == Kind::Backend && e.parent.as_deref() == Some(&parent) && active(&e.doc)
    })
}

fn backend_config(e: &Entry) -> BackendConfig {
    BackendConfig {
        url: e.doc["url"].as_str().unwrap_or_default().to_string(),
        weight: e.doc.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32,
        api_key: e.secret.clone().map(Secret::new),
    }
}

/// A backend document's check (`url` an http(s) URL, `weight` 1 to 1000).
pub fn check_backend(doc: &Map<String, Value>) -> Result<(), Invalid> {
    for k in doc.keys() {
        if !BACKEND_FIELDS.contains(&k.as_str()) {
            return Err(invalid(
                "",
                format!("Unknown field {k:?} (a backend has url, api_key, weight, active)"),
            ));
        }
    }
    let url = doc.get("url").and_then(Value::as_str).unwrap_or_default();
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
    if !ok {
        return Err(invalid("url", "must be an http(s) URL with a host"));
    }
    match doc.get("weight") {
        None | Some(Value::Null) => {}
        Some(w) if w.as_u64().is_some_and(|w| (1..=1000).contains(&w)) => {}
        Some(_) => return Err(invalid("weight", "must be an integer from 1 to 1000")),
    }
    match doc.get("active") {
        None | Some(Value::Null | Value::Bool(_)) => Ok(()),
        Some(_) => Err(invalid("active", "expected true or false")),
    }
}

/// A stored provider as a provider and its pool (the checks of the file's providers apply).
pub fn provider_pool(
    name: &str,
    doc: &Map<String, Value>,
    secret: Option<&str>,
    backends: Vec<BackendConfig>,
    retry: Option<&RetryConfig>,
) -> Result<(Arc<Provider>, Arc<Pool>), Invalid> {
    let mut pc: ProviderConfig = parse_fields(doc, PROVIDER_FIELDS, &["name", "active"])?;
    pc.api_key = secret.filter(|s| !s.is_empty()).map(Secret::new);
    pc.backends = backends;
    pc.configured = true;
    // No key anywhere and no `auth` said: a local server (vLLM, Ollama), called without one.
    if pc.auth.is_none() && pc.api_key.is_none() && pc.backends.iter().all(|b| b.api_key.is_none())
    {
        pc.auth = Some("none".into());
    }
    if pc.url.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("url", "required"));
    }
    if let Some(d) = &pc.dialect {
        if filters::dialects::Dialect::parse(d).is_none() {
            return Err(invalid(
                "dialect",
                "expected openai, anthropic, google or cohere",
            ));
        }
    }
    let bad = |e: crate::config::ConfigError| {
        // The file's messages name `providers.<name>.<field>`: keep the field.
        let field = PROVIDER_FIELDS
            .iter()
            .find(|f| e.0.contains(&format!(".{f}")))
            .copied()
            .unwrap_or("");
        invalid(field, e.0)
    };
    crate::config::providers::fill_defaults(name, &mut pc).map_err(bad)?;
    // A model's pool provider (`model:<name>`) is named outside the file's alphabet on purpose
    // (no route reaches it by name): checked as a plain name.
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    pc.validate(&plain).map_err(bad)?;
    let provider = Arc::new(Provider::from_config(name, &pc).map_err(bad)?);
    let pool = Arc::new(Pool::from_config(name, &pc, &provider, retry).map_err(bad)?);
    Ok((provider, pool))
}

/// A stored model's alias fields (`target` may be absent: a model with backends).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelDoc {
    pub target: Option<String>,
    pub model_id: Option<String>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    #[serde(default)]
    pub defaults: Map<String, Value>,
    pub system_prompt_prefix: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    pub dialect: Option<String>,
}

/// A model document's own checks (what it points at is checked against the router).
pub fn parse_model(name: &str, doc: &Map<String, Value>) -> Result<ModelDoc, Invalid> {
    let m: ModelDoc = parse_fields(doc, MODEL_FIELDS, &["name", "active"])?;
    if let Some(t) = &m.target {
        if !t
            .split_once('/')
            .is_some_and(|(p, m)| !p.is_empty() && !m.is_empty())
        {
            return Err(invalid("target", "must be provider/model"));
        }
    }
    for k in ["model", "messages", "stream"] {
        if m.defaults.contains_key(k) {
            return Err(invalid("defaults", format!("{k} cannot have a default")));
        }
    }
    crate::config::resilience::validate_alias_timeouts(name, &m.timeouts)
        .map_err(|e| invalid("timeouts", e.0))?;
    if let Some(d) = &m.dialect {
        if filters::dialects::Dialect::parse(d).is_none() {
            return Err(invalid(
                "dialect",
                "expected openai, anthropic, google or cohere",
            ));
        }
    }
    Ok(m)
}

fn alias_of(m: &ModelDoc, target: String) -> AliasConfig {
    AliasConfig {
        target,
        defaults: m.defaults.clone(),
        system_prompt_prefix: m.system_prompt_prefix.clone(),
        fallbacks: m.fallbacks.clone(),
        timeouts: m.timeouts,
    }
}

/// The pool provider of a model with backends of its own.
pub fn model_pool_name(model: &str) -> String {
    format!("model:{model}")
}

/// What was built for one pool, and from what (reused while the inputs are unchanged).
pub struct Built {
    fingerprint: String,
    provider: Arc<Provider>,
    pool: Arc<Pool>,
}

/// Builds the run-time layers from the catalog and swaps them into the router and the pools.
/// Entries that no longer make sense (a model whose target provider was deleted) are skipped
/// with a warning: the admin API refuses them when written, but a later change can strand them.
pub fn apply(
    entries: &[Entry],
    router: &Router,
    pools: &Pools,
    retry: Option<&RetryConfig>,
    cache: &mut BTreeMap<String, Built>,
) {
    let mut next_cache = BTreeMap::new();
    let mut built = |name: &str,
                     fingerprint: String,
                     make: &dyn Fn() -> Result<(Arc<Provider>, Arc<Pool>), Invalid>|
     -> Option<(Arc<Provider>, Arc<Pool>)> {
        let pair = match cache.remove(name) {
            Some(b) if b.fingerprint == fingerprint => (b.provider, b.pool),
            _ => match make() {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("catalog: {name}: {} {}", e.field, e.message);
                    return None;
                }
            },
        };
        next_cache.insert(
            name.to_string(),
            Built {
                fingerprint,
                provider: pair.0.clone(),
                pool: pair.1.clone(),
            },
        );
        Some(pair)
    };
    let fingerprint = |e: &Entry| {
        let members: Vec<Value> = backends_of(entries, &e.id)
            .map(|b| json!([b.doc, b.secret]))
            .collect();
        json!([e.doc, e.secret, members]).to_string()
    };
    let mut routes = RuntimeRoutes::default();
    let mut run_pools = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == Kind::Provider && active(&e.doc))
    {
        let make = || {
            let members = backends_of(entries, &e.id).map(backend_config).collect();
            provider_pool(&e.name, &e.doc, e.secret.as_deref(), members, retry)
        };
        if let Some((provider, pool)) = built(&e.name, fingerprint(e), &make) {
            routes.providers.insert(e.name.clone(), provider);
            run_pools.insert(e.name.clone(), pool);
        }
    }
    // Pools first: a route is never published before its pool.
    let mut model_pools = BTreeMap::new();
    let mut aliases = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == Kind::Model && active(&e.doc))
    {
        let m = match parse_model(&e.name, &e.doc) {
            Ok(m) => m,
            Err(err) => {
                log::warn!("catalog: model {}: {}", e.name, err.message);
                continue;
            }
        };
        let members: Vec<BackendConfig> = backends_of(entries, &e.id).map(backend_config).collect();
        let upstream_model = m.model_id.clone().unwrap_or_else(|| e.name.clone());
        let (provider, upstream_model) = if !members.is_empty() {
            let pool_name = model_pool_name(&e.name);
            let mut doc = Map::new();
            doc.insert("url".into(), json!(members[0].url));
            if let Some(d) = &m.dialect {
                doc.insert("dialect".into(), json!(d));
            }
            let make = || provider_pool(&pool_name, &doc, None, members.clone(), retry);
            let Some((provider, pool)) = built(&pool_name, fingerprint(e), &make) else {
                continue;
            };
            model_pools.insert(pool_name, pool);
            (provider, upstream_model)
        } else if let Some(target) = &m.target {
            let (p, model) = target.split_once('/').expect("checked by parse_model");
            let provider = routes
                .providers
                .get(p)
                .cloned()
                .or_else(|| router.file_provider(p));
            match provider {
                Some(provider) => (provider, model.to_string()),
                None => {
                    log::warn!(
                        "catalog: model {}: its target provider {p:?} does not exist",
                        e.name
                    );
                    continue;
                }
            }
        } else {
            // Created, no backend yet (seed 003 adds them next): nothing to route to.
            continue;
        };
        let target = format!("{}/{}", provider.name, upstream_model);
        aliases.insert(
            e.name.clone(),
            RuntimeAlias {
                alias: Arc::new(alias_of(&m, target)),
                provider,
                upstream_model,
            },
        );
    }
    routes.aliases = aliases;
    run_pools.extend(model_pools);
    pools.set_runtime(run_pools);
    router.set_runtime(routes);
    *cache = next_cache;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, kind: Kind, name: &str, parent: Option<&str>, doc: Value) -> Entry {
        Entry {
            id: id.into(),
            kind,
            name: name.into(),
            parent: parent.map(str::to_string),
            doc: doc.as_object().unwrap().clone(),
            secret: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn models_and_providers_are_routed_and_unchanged_pools_kept() {
        let mut cfg = crate::config::Config::from_toml("").unwrap();
        crate::config::providers_for_tests(&mut cfg);
        let providers = Arc::new(crate::providers::Providers::from_config(&cfg).unwrap());
        let pools = Pools::from_config(&cfg, &providers).unwrap();
        let router = Router::new(&cfg, providers);
        let mut entries = vec![
            entry(
                "m1",
                Kind::Model,
                "llama-3",
                None,
                json!({"model_id": "meta/llama"}),
            ),
            entry(
                "b1",
                Kind::Backend,
                "b1",
                Some("m1"),
                json!({"url": "http://10.0.0.1:8000"}),
            ),
            entry(
                "p1",
                Kind::Provider,
                "local",
                None,
                json!({"url": "http://10.0.0.2/v1"}),
            ),
            entry(
                "m2",
                Kind::Model,
                "fast",
                None,
                json!({"target": "local/qwen", "fallbacks": ["openai/gpt-4o"]}),
            ),
            entry("m3", Kind::Model, "empty", None, json!({})),
        ];
        let mut cache = BTreeMap::new();
        apply(&entries, &router, &pools, None, &mut cache);
        let r = router.route("llama-3", None).unwrap();
        assert_eq!(r.provider.name, "model:llama-3");
        assert_eq!(r.upstream_model, "meta/llama");
        assert_eq!(r.provider.chat_path, "/chat/completions");
        assert!(!pools.get("model:llama-3").unwrap().missing_key());
        let r = router.route("fast", None).unwrap();
        assert_eq!(r.provider.name, "local");
        assert_eq!(r.upstream_model, "qwen");
        assert_eq!(r.alias.unwrap().fallbacks, ["openai/gpt-4o"]);
        assert_eq!(
            router.route("local/x", None).unwrap().provider.name,
            "local"
        );
        assert!(router.route("empty", None).is_err());
        // Unchanged pools survive a rebuild; a changed one is new.
        let before_local = pools.get("local").unwrap();
        let before_llama = pools.get("model:llama-3").unwrap();
        entries[1].doc.insert("weight".into(), json!(2));
        apply(&entries, &router, &pools, None, &mut cache);
        assert!(Arc::ptr_eq(&before_local, &pools.get("local").unwrap()));
        assert!(!Arc::ptr_eq(
            &before_llama,
            &pools.get("model:llama-3").unwrap()
        ));
        // An inactive provider and the models targeting it go.
        entries[2].doc.insert("active".into(), json!(false));
        apply(&entries, &router, &pools, None, &mut cache);
        assert!(router.route("local/x", None).is_err());
        assert!(router.route("fast", None).is_err());
        assert!(pools.get("local").is_none());
    }
}
