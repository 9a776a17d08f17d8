//! Cost of a request from its exact usage and the price table.

use std::collections::HashMap;

use filters::usage::Usage;

use crate::config::auth::Price;
use crate::config::Config;

pub struct Prices {
    by_model: HashMap<String, Price>,
}

impl Prices {
    pub fn from_config(cfg: &Config) -> Prices {
        Prices {
            by_model: cfg.prices.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// The price of `provider/model`: an exact entry, else the longest entry the name extends
    /// with `-...` (dated snapshots: `gpt-4o-2024-08-06` is priced as `gpt-4o`).
    fn find(&self, provider: &str, model: &str) -> Option<&Price> {
        let full = format!("{provider}/{model}");
        if let Some(p) = self.by_model.get(&full) {
            return Some(p);
        }
        // Only a version suffix (`-2024-08-06`, `-20250514`, `-0613`: digits and dashes) is
        // stripped: `o3-pro` or `gpt-4o-mini` are other models, never priced as `o3`/`gpt-4o`.
        let mut cut = full.len();
        while let Some(i) = full[..cut].rfind('-') {
            if !full[i..].bytes().all(|b| b == b'-' || b.is_ascii_digit()) {
                return None;
            }
            if let Some(p) = self.by_model.get(&full[..i]) {
                return Some(p);
            }
            cut = i;
        }
        None
    }

    pub fn has(&self, provider: &str, model: &str) -> bool {
        self.find(provider, model).is_some()
    }

    /// USD for `usage` of `provider/model` (0 when the model has no price).
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> f64 {
        let Some(p) = self.find(provider, model) else {
            return 0.0;
        };
        let cached = usage
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        (fresh as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + usage.completion_tokens as f64 * p.output)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_at_their_price() {
        let mut cfg = Config::default();
        cfg.prices.insert(
            "openai/m".into(),
            Price {
                input: 2.0,
                output: 10.0,
                cached_input: Some(1.0),
            },
        );
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
    }
}
