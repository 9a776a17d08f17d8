//! Cost of a request from its exact usage and the model table's prices.

use filters::usage::Usage;

use crate::config::{Config, ModelEntry, ModelTable};

pub struct Prices {
    table: ModelTable,
}

impl Prices {
    pub fn from_config(cfg: &Config) -> Prices {
        Prices {
            table: cfg.model_table.clone(),
        }
    }

    /// The priced entry of `provider/model` (see `ModelTable::find` for snapshots and
    /// patterns).
    fn find(&self, provider: &str, model: &str) -> Option<&ModelEntry> {
        self.table.find(provider, model).filter(|e| e.priced())
    }

    pub fn has(&self, provider: &str, model: &str) -> bool {
        self.find(provider, model).is_some()
    }

    /// USD for `usage` of `provider/model` (0 when the model has no price). Cached prompt
    /// tokens cost `cached_input`; prompt tokens written to Anthropic's cache
    /// (`cache_creation_input_tokens`, split by TTL when the usage says so) cost
    /// `cache_write_5m` / `cache_write_1h`; each falls back to `input`.
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> f64 {
        let Some(p) = self.find(provider, model) else {
            return 0.0;
        };
        let (input, output) = (p.input.unwrap_or(0.0), p.output.unwrap_or(0.0));
        let cached = usage
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(usage.prompt_tokens);
        let field = |k: &str| usage.extra.get(k).and_then(serde_json::Value::as_u64);
        let written = field("cache_creation_input_tokens")
            .unwrap_or(0)
            .min(usage.prompt_tokens - cached);
        let written_1h = usage
            .extra
            .get("cache_creation")
            .and_then(|c| c.get("ephemeral_1h_input_tokens"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            .min(written);
        let written_5m = written - written_1h;
        let fresh = usage.prompt_tokens - cached - written;
        (fresh as f64 * input
            + cached as f64 * p.cached_input.unwrap_or(input)
            + written_5m as f64 * p.cache_write_5m.unwrap_or(input)
            + written_1h as f64 * p.cache_write_1h.unwrap_or(input)
            + usage.completion_tokens as f64 * output)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_and_written_tokens_at_their_price() {
        let mut cfg = Config::from_toml(
            "[models.\"openai/m\"]\ninput = 2.0\noutput = 10.0\ncached_input = 1.0\n\
             [models.\"anthropic/c*\"]\ninput = 3.0\noutput = 15.0\ncached_input = 0.3\ncache_write_5m = 3.75\ncache_write_1h = 6.0\n",
        )
        .unwrap();
        cfg.model_table = ModelTable::build(&Default::default(), &cfg.models.table, &cfg.prices);
        let p = Prices::from_config(&cfg);
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
            total_tokens: 1_100_000,
            prompt_tokens_details: Some(filters::usage::PromptTokensDetails {
                cached_tokens: Some(400_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!((p.cost("openai", "m", &u) - (1.2 + 0.4 + 1.0)).abs() < 1e-9);
        // Dated snapshots take their base model's price.
        assert!((p.cost("openai", "m-2025-01-01", &u) - 2.6).abs() < 1e-9);
        assert!(!p.has("openai", "mx"));
        assert!(
            !p.has("openai", "m-pro"),
            "only version suffixes are stripped"
        );
        assert_eq!(p.cost("openai", "unknown", &u), 0.0);
        // Anthropic: 200k read from cache, 300k written (100k of them for an hour), 500k fresh.
        let mut a = u.clone();
        a.prompt_tokens_details = Some(filters::usage::PromptTokensDetails {
            cached_tokens: Some(200_000),
            ..Default::default()
        });
        a.extra
            .insert("cache_creation_input_tokens".into(), 300_000.into());
        a.extra.insert(
            "cache_creation".into(),
            serde_json::json!({"ephemeral_1h_input_tokens": 100_000}),
        );
        let want = 0.5 * 3.0 + 0.2 * 0.3 + 0.2 * 3.75 + 0.1 * 6.0 + 0.1 * 15.0;
        assert!((p.cost("anthropic", "c-sonnet", &a) - want).abs() < 1e-9);
    }
}
