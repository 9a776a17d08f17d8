//! Model routing: `?provider=`, aliases, the `provider/model` prefix, and allow/deny lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{AliasConfig, Config};
use crate::errors::{ApiError, Code};
use crate::providers::{Provider, Providers};

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    pub provider: Arc<Provider>,
    /// Model name sent upstream.
    pub upstream_model: String,
    pub alias: Option<&'a AliasConfig>,
}

pub struct Router {
    providers: Arc<Providers>,
    aliases: BTreeMap<String, AliasConfig>,
    allowed: Vec<String>,
    disallowed: Vec<String>,
}

impl Router {
    pub fn new(cfg: &Config, providers: Arc<Providers>) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Router {
            providers,
            aliases: cfg.aliases.clone(),
            allowed: lower(&cfg.models.allowed),
            disallowed: lower(&cfg.models.disallowed),
        }
    }

    pub fn aliases(&self) -> &BTreeMap<String, AliasConfig> {
        &self.aliases
    }

    /// Resolves `model` (and an optional `?provider=`) to a provider and upstream model.
    ///
    /// Precedence: `?provider=` (model sent as given), then an alias, then the `provider/` prefix
    /// (split at the first `/`, so `groq/meta-llama/x` sends `meta-llama/x` to groq).
    pub fn route(&self, model: &str, provider_param: Option<&str>) -> Result<Route<'_>, ApiError> {
        let route = if let Some(name) = provider_param {
            let provider = self.provider(name).ok_or_else(|| {
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
            let provider = self.provider(p).expect("validated at load");
            Route {
                provider,
                upstream_model: m.to_string(),
                alias: Some(alias),
            }
        } else {
            let found = model
                .split_once('/')
                .and_then(|(p, m)| Some((self.provider(p)?, m)))
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
        self.aliases.contains_key(model)
            || model
                .split_once('/')
                .is_some_and(|(p, m)| !m.is_empty() && self.provider(p).is_some())
    }

    fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers
            .get(name)
            .or_else(|| self.providers.get(&name.to_ascii_lowercase()))
            .cloned()
    }

    /// A model is refused if any of its names (as requested, `provider/model`, bare model) is on
    /// the deny list, or an allow list exists and none of them is on it. Checking every name
    /// means an alias cannot be used to reach a denied model.
    fn check_allowed(&self, requested: &str, route: &Route<'_>) -> Result<(), ApiError> {
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
