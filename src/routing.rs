//! Model routing: `?provider=`, aliases, the `provider/model` prefix, and allow/deny lists.
//!
//! Two layers: what the configuration file declares (fixed for the process's life) and what the
//! control plane adds at run time ([`RuntimeRoutes`]: providers and models from the admin API),
//! swapped whole when the store changes and read without a lock. The file wins a name clash
//! (the admin API refuses one anyway).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{AliasConfig, Config};
use crate::errors::{ApiError, Code};
use crate::providers::{Provider, Providers};

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: Arc<Provider>,
    /// Model name sent upstream.
    pub upstream_model: String,
    pub alias: Option<Arc<AliasConfig>>,
}

/// Providers and models added at run time (the control plane's catalog).
#[derive(Default)]
pub struct RuntimeRoutes {
    /// Routable by name (`?provider=`, `name/model`).
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub aliases: BTreeMap<String, RuntimeAlias>,
}

/// A model of the admin API: an alias resolved to its provider when the catalog was built (a
/// model with backends of its own has a pool provider no other route reaches).
pub struct RuntimeAlias {
    pub alias: Arc<AliasConfig>,
    pub provider: Arc<Provider>,
    pub upstream_model: String,
}

pub struct Router {
    providers: Arc<Providers>,
    aliases: BTreeMap<String, Arc<AliasConfig>>,
    runtime: ArcSwap<RuntimeRoutes>,
    allowed: Vec<String>,
    disallowed: Vec<String>,
}

impl Router {
    pub fn new(cfg: &Config, providers: Arc<Providers>) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Router {
            providers,
            aliases: cfg
                .aliases
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            runtime: Default::default(),
            allowed: lower(&cfg.models.allowed),
            disallowed: lower(&cfg.models.disallowed),
        }
    }

    /// Every alias (the file's, then the run time's) with the provider it goes to.
    pub fn aliases(&self) -> Vec<(String, String)> {
        let rt = self.runtime.load();
        let file = self.aliases.iter().map(|(name, a)| {
            let provider = a.target.split_once('/').map_or("", |(p, _)| p);
            (name.clone(), provider.to_string())
        });
        let run = rt
            .aliases
            .iter()
            .filter(|(name, _)| !self.aliases.contains_key(*name))
            .map(|(name, a)| (name.clone(), a.provider.name.clone()));
        file.chain(run).collect()
    }

    /// Whether the file declares an alias of this name.
    pub fn file_alias(&self, name: &str) -> Option<&Arc<AliasConfig>> {
        self.aliases.get(name)
    }

    /// Replaces what the control plane added (see [`RuntimeRoutes`]).
    pub fn set_runtime(&self, routes: RuntimeRoutes) {
        self.runtime.store(Arc::new(routes));
    }

    /// The providers added at run time.
    pub fn runtime_providers(&self) -> Vec<Arc<Provider>> {
        self.runtime.load().providers.values().cloned().collect()
    }

    /// Resolves `model` (and an optional `?provider=`) to a provider and upstream model.
    ///
    /// Precedence: `?provider=` (model sent as given), then an alias, then the `provider/` prefix
    /// (split at the first `/`, so `groq/meta-llama/x` sends `meta-llama/x` to groq).
    pub fn route(&self, model: &str, provider_param: Option<&str>) -> Result<Route, ApiError> {
        let rt = self.runtime.load();
        let route = if let Some(name) = provider_param {
            let provider = self.provider(&rt, name).ok_or_else(|| {
                ApiError::of(
                    Code::UnknownProvider,
                    format!("Unknown provider {name:?} in ?provider="),
                )
                .param("provider")
            })?;
            Route {
                provider,
                upstream_model: model.to_string(),
                alias: None,
            }
        } else if let Some(alias) = self.aliases.get(model) {
            let (p, m) = alias.target.split_once('/').expect("validated at load");
            let provider = self.provider(&rt, p).expect("validated at load");
            Route {
                provider,
                upstream_model: m.to_string(),
                alias: Some(alias.clone()),
            }
        } else if let Some(a) = rt.aliases.get(model) {
            Route {
                provider: a.provider.clone(),
                upstream_model: a.upstream_model.clone(),
                alias: Some(a.alias.clone()),
            }
        } else {
            let found = model
                .split_once('/')
                .and_then(|(p, m)| Some((self.provider(&rt, p)?, m)))
                .filter(|(_, m)| !m.is_empty());
            match found {
                Some((provider, m)) => Route {
                    provider,
                    upstream_model: m.to_string(),
                    alias: None,
                },
                None => {
                    return Err(ApiError::of(
                        Code::ProviderNotDetermined,
                        format!(
                        "Unable to determine provider for model {model:?}: use the provider/model \
                         format (e.g. openai/gpt-4o) or the ?provider= query parameter"
                    ),
                    )
                    .param("model"))
                }
            }
        };
        self.check_allowed(model, &route)?;
        Ok(route)
    }

    /// Whether `model` names its provider itself: an alias, or a known `provider/` prefix.
    pub fn resolves(&self, model: &str) -> bool {
        let rt = self.runtime.load();
        self.aliases.contains_key(model)
            || rt.aliases.contains_key(model)
            || model
                .split_once('/')
                .is_some_and(|(p, m)| !m.is_empty() && self.provider(&rt, p).is_some())
    }

    /// A provider by name: the file's (and the built-in table), then the run time's.
    fn provider(&self, rt: &RuntimeRoutes, name: &str) -> Option<Arc<Provider>> {
        self.providers
            .get(name)
            .or_else(|| self.providers.get(&name.to_ascii_lowercase()))
            .or_else(|| rt.providers.get(name))
            .cloned()
    }

    /// A provider of the file (or the built-in table) by name.
    pub fn file_provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.get(name).cloned()
    }

    /// A provider by name, whichever layer has it.
    pub fn provider_named(&self, name: &str) -> Option<Arc<Provider>> {
        self.provider(&self.runtime.load(), name)
    }

    /// A model is refused if any of its names (as requested, `provider/model`, bare model) is on
    /// the deny list, or an allow list exists and none of them is on it. Checking every name
    /// means an alias cannot be used to reach a denied model.
    fn check_allowed(&self, requested: &str, route: &Route) -> Result<(), ApiError> {
        if self.allowed.is_empty() && self.disallowed.is_empty() {
            return Ok(());
        }
        let full = format!("{}/{}", route.provider.name, route.upstream_model).to_ascii_lowercase();
        let names = [
            requested.to_ascii_lowercase(),
            full,
            route.upstream_model.to_ascii_lowercase(),
        ];
        let denied = names.iter().any(|n| self.disallowed.contains(n))
            || (!self.allowed.is_empty() && !names.iter().any(|n| self.allowed.contains(n)));
        if denied {
            return Err(ApiError::of(
                Code::ModelNotAllowed,
                format!("Model {requested:?} is not allowed on this gateway"),
            )
            .param("model"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml_text: &str) -> Router {
        let mut cfg = Config::from_toml(toml_text).unwrap();
        crate::config::providers_for_tests(&mut cfg);
        let providers = Arc::new(Providers::from_config(&cfg).unwrap());
        Router::new(&cfg, providers)
    }

    #[test]
    fn matrix() {
        let r = router(
            "[models]\ndisallowed = [\"gpt-3.5-turbo\"]\n[aliases.fast]\ntarget = \"groq/llama-3.1-8b\"\n",
        );
        let ok = |m: &str, p: Option<&str>| {
            let x = r.route(m, p).unwrap();
            (x.provider.name.clone(), x.upstream_model)
        };
        assert_eq!(
            ok("openai/gpt-4o", None),
            ("openai".into(), "gpt-4o".into())
        );
        assert_eq!(
            ok("groq/meta-llama/x", None),
            ("groq".into(), "meta-llama/x".into())
        );
        assert_eq!(
            ok("meta-llama/x", Some("groq")),
            ("groq".into(), "meta-llama/x".into())
        );
        assert_eq!(ok("fast", None), ("groq".into(), "llama-3.1-8b".into()));
        assert_eq!(
            r.route("gpt-4o", None).unwrap_err().code,
            Some("provider_not_determined")
        );
        assert_eq!(r.route("nope/gpt-4o", None).unwrap_err().status, 400);
        assert_eq!(r.route("openai/", None).unwrap_err().status, 400);
        assert_eq!(
            r.route("x", Some("nope")).unwrap_err().code,
            Some("unknown_provider")
        );
        assert_eq!(
            r.route("openai/gpt-3.5-turbo", None).unwrap_err().status,
            403
        );
        assert_eq!(
            r.route("GPT-3.5-TURBO", Some("openai")).unwrap_err().status,
            403
        );
    }

    #[test]
    fn allow_list_covers_aliases() {
        let r = router("[models]\nallowed = [\"openai/gpt-4o\"]\n[aliases.smart]\ntarget = \"openai/gpt-4o\"\n[aliases.cheap]\ntarget = \"openai/gpt-4o-mini\"\n");
        assert!(r.route("openai/gpt-4o", None).is_ok());
        assert!(r.route("smart", None).is_ok());
        assert_eq!(r.route("cheap", None).unwrap_err().status, 403);
        assert_eq!(r.route("openai/gpt-4o-mini", None).unwrap_err().status, 403);
    }
}
