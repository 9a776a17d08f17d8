//! `[models]`: the gateway-wide allow and deny lists, and the model table.
//!
//! The model table (`conf/models.toml`, embedded; `[models."provider/model-pattern"]` in the
//! configuration adds or overrides entries) says per model what the gateway needs to know:
//! prices, context window and output limit, modalities, and the rules of its API that the
//! dialect translations follow. A pattern is an exact `provider/model`, or ends in `*`.
//! It absorbs the older `[prices]` table, whose entries keep working.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Default)]
pub struct ModelsConfig {
    /// If non-empty, only these models may be used (`ALLOWED_MODELS`).
    pub allowed: Vec<String>,
    /// These models may never be used (`DISALLOWED_MODELS`).
    pub disallowed: Vec<String>,
    /// The model table entries of the configuration file (over the embedded table).
    pub table: BTreeMap<String, ModelEntry>,
}

/// One model (or pattern) of the table. Prices are USD per million tokens.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cached_input: Option<f64>,
    /// Prompt tokens written to a 5-minute / 1-hour cache (Anthropic).
    pub cache_write_5m: Option<f64>,
    pub cache_write_1h: Option<f64>,
    pub context_window: Option<u64>,
    /// The most output tokens the model produces; Anthropic requests without `max_tokens` ask
    /// for this much.
    pub max_output_tokens: Option<u64>,
    /// Input kinds: `text`, `image`, `pdf`, `audio`.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// Completion tokens reserved against TPM and budgets for a request without `max_tokens`
    /// (over `limits.default_completion_reserve`).
    pub completion_reserve: Option<u64>,
    /// The API refuses `temperature` together with `top_p` (Claude 4.1 and later).
    pub sampling_exclusive: Option<bool>,
    /// The API takes native structured outputs (Anthropic `output_config.format`).
    pub structured_outputs: Option<bool>,
    /// `[min, max]` thinking budget in tokens; `reasoning_effort` budgets are kept inside it
    /// (a minimum above 0: thinking cannot be turned off).
    pub thinking_budget: Option<[u64; 2]>,
}

impl ModelEntry {
    /// Fields set here win over `base`'s.
    fn over(&self, base: &ModelEntry) -> ModelEntry {
        ModelEntry {
            input: self.input.or(base.input),
            output: self.output.or(base.output),
            cached_input: self.cached_input.or(base.cached_input),
            cache_write_5m: self.cache_write_5m.or(base.cache_write_5m),
            cache_write_1h: self.cache_write_1h.or(base.cache_write_1h),
            context_window: self.context_window.or(base.context_window),
            max_output_tokens: self.max_output_tokens.or(base.max_output_tokens),
            modalities: if self.modalities.is_empty() {
                base.modalities.clone()
            } else {
                self.modalities.clone()
            },
            completion_reserve: self.completion_reserve.or(base.completion_reserve),
            sampling_exclusive: self.sampling_exclusive.or(base.sampling_exclusive),
            structured_outputs: self.structured_outputs.or(base.structured_outputs),
            thinking_budget: self.thinking_budget.or(base.thinking_budget),
        }
    }

    pub fn priced(&self) -> bool {
        self.input.is_some() && self.output.is_some()
    }

    pub fn validate(&self, key: &str) -> Result<(), String> {
        let prices = [
            self.input,
            self.output,
            self.cached_input,
            self.cache_write_5m,
            self.cache_write_1h,
        ];
        if !prices
            .into_iter()
            .flatten()
            .all(|v| v.is_finite() && v >= 0.0)
        {
            return Err(format!("models.{key:?}: prices must be >= 0"));
        }
        if self.thinking_budget.is_some_and(|[lo, hi]| lo > hi) {
            return Err(format!(
                "models.{key:?}.thinking_budget: [min, max] with min <= max"
            ));
        }
        if self.input.is_some() != self.output.is_some() {
            return Err(format!(
                "models.{key:?}: input and output prices go together"
            ));
        }
        let (provider, model) = key.split_once('/').unwrap_or(("", ""));
        let star = model.find('*');
        if provider.is_empty() || model.is_empty() || star.is_some_and(|i| i + 1 != model.len()) {
            return Err(format!(
                "models.{key:?}: provider/model, or provider/prefix* (a `*` only at the end)"
            ));
        }
        Ok(())
    }
}

/// The merged table: exact entries and `*` patterns.
#[derive(Debug, Clone, Default)]
pub struct ModelTable {
    exact: BTreeMap<String, ModelEntry>,
    /// `(prefix, entry)`, longest prefix first.
    patterns: Vec<(String, ModelEntry)>,
}

impl ModelTable {
    /// The embedded table, then the configuration's `[models."..."]`, then legacy `[prices]`.
    pub fn build(
        builtin: &BTreeMap<String, ModelEntry>,
        configured: &BTreeMap<String, ModelEntry>,
        prices: &BTreeMap<String, super::auth::Price>,
    ) -> ModelTable {
        let mut merged = builtin.clone();
        for (k, v) in configured {
            let e = merged.get(k).map_or_else(|| v.clone(), |b| v.over(b));
            merged.insert(k.clone(), e);
        }
        for (k, p) in prices {
            let e = merged.entry(k.clone()).or_default();
            e.input = Some(p.input);
            e.output = Some(p.output);
            if p.cached_input.is_some() {
                e.cached_input = p.cached_input;
            }
        }
        let mut t = ModelTable::default();
        for (k, v) in merged {
            match k.strip_suffix('*') {
                Some(prefix) => t.patterns.push((prefix.to_string(), v)),
                None => {
                    t.exact.insert(k, v);
                }
            }
        }
        t.patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        t
    }

    /// The entry of `provider/model`: an exact entry, else the same model without a version
    /// suffix (`gpt-4o-2024-08-06` as `gpt-4o`; only digits and dashes are stripped, so
    /// `o3-pro` is not `o3`), else the longest matching pattern.
    pub fn find(&self, provider: &str, model: &str) -> Option<&ModelEntry> {
        // The key is put together on the stack: this runs several times per request with limits
        // on (permission, reserve, settlement), and `format!` was a visible part of its cost.
        let mut stack = [0u8; 160];
        let heap: String;
        let n = provider.len() + 1 + model.len();
        let full: &str = if n <= stack.len() {
            stack[..provider.len()].copy_from_slice(provider.as_bytes());
            stack[provider.len()] = b'/';
            stack[provider.len() + 1..n].copy_from_slice(model.as_bytes());
            std::str::from_utf8(&stack[..n]).expect("two strings and a slash")
        } else {
            heap = format!("{provider}/{model}");
            &heap
        };
        if let Some(e) = self.exact.get(full) {
            return Some(e);
        }
        let mut cut = full.len();
        while let Some(i) = full[..cut].rfind('-') {
            if !full[i..].bytes().all(|b| b == b'-' || b.is_ascii_digit()) {
                break;
            }
            if let Some(e) = self.exact.get(&full[..i]) {
                return Some(e);
            }
            cut = i;
        }
        self.patterns
            .iter()
            .find(|(prefix, _)| full.starts_with(prefix.as_str()))
            .map(|(_, e)| e)
    }
}

impl<'de> Deserialize<'de> for ModelsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelsConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`allowed`, `disallowed`, or \"provider/model\" tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelsConfig, A::Error> {
                let mut out = ModelsConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "allowed" => out.allowed = map.next_value()?,
                        "disallowed" => out.disallowed = map.next_value()?,
                        k if k.contains('/') => {
                            let e: ModelEntry = map.next_value()?;
                            e.validate(k).map_err(de::Error::custom)?;
                            out.table.insert(key, e);
                        }
                        k => {
                            return Err(de::Error::custom(format!(
                                "unknown field `{k}` in [models]: expected allowed, disallowed or \"provider/model\""
                            )))
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// The embedded table (`conf/models.toml`).
pub fn builtin() -> BTreeMap<String, ModelEntry> {
    #[derive(Deserialize)]
    struct File {
        models: ModelsConfig,
    }
    let f: File =
        toml::from_str(include_str!("../../conf/models.toml")).expect("conf/models.toml is valid");
    f.models.table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_snapshots_overrides_and_legacy_prices() {
        let builtin = builtin();
        assert!(!builtin.is_empty());
        let cfg: super::super::Config = super::super::Config::from_toml(
            r#"
[models]
allowed = []
[models."anthropic/claude-sonnet-4-5*"]
max_output_tokens = 32000
[models."vllm/llama*"]
input = 0.1
output = 0.2
completion_reserve = 256
[prices."openai/gpt-4o"]
input = 9.0
output = 9.0
"#,
        )
        .unwrap();
        let t = ModelTable::build(&builtin, &cfg.models.table, &cfg.prices);
        let s = t.find("anthropic", "claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(s.max_output_tokens, Some(32000), "the configuration wins");
        assert_eq!(s.input, Some(3.0), "the rest comes from the embedded entry");
        assert_eq!(s.sampling_exclusive, Some(true));
        assert_eq!(
            t.find("vllm", "llama-3.1-8b").unwrap().completion_reserve,
            Some(256)
        );
        assert_eq!(t.find("openai", "gpt-4o").unwrap().input, Some(9.0));
        assert_eq!(
            t.find("openai", "gpt-4o-2024-08-06").unwrap().input,
            Some(9.0),
            "a dated snapshot is its base model"
        );
        assert!(t.find("openai", "gpt-4o-mini-tts").is_none());
        assert!(super::super::Config::from_toml("[models.\"x\"]\ninput = 1.0\n").is_err());
        assert!(super::super::Config::from_toml("[models]\nbogus = 1\n").is_err());
        assert!(super::super::Config::from_toml("[models.\"a/*b\"]\n").is_err());
    }
}
