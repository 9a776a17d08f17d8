//! `[guardrails]`: checks on what goes to a model and what comes back (see README
//! "Guardrails"). The top-level rules apply to every caller; `[guardrails.profiles.<name>]`
//! are other sets of rules that a key or team selects with `guardrails = "<name>"`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, HumanDuration};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFailureMode {
    /// The webhook did not answer (in time): the request is refused (503).
    #[default]
    FailClosed,
    /// The webhook did not answer: the request goes on unchecked by it.
    FailOpen,
}

/// One set of rules (the top level, or a profile).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailRules {
    /// Requests whose text matches one of these regexes are refused (400 `content_blocked`),
    /// nothing sent upstream.
    pub deny_patterns: Vec<String>,
    /// E-mail addresses, phone numbers, card numbers (Luhn), IBANs and API-key-shaped strings
    /// replaced by `[REDACTED_<KIND>]` before the request leaves.
    pub redact_pii: bool,
    /// Answers whose text matches one of these end with `finish_reason: "content_filter"`.
    pub output_deny_patterns: Vec<String>,
    /// Characters of a streamed answer held back so a match across chunks is caught first
    /// (unset in a profile: the top level's).
    pub output_window: Option<usize>,
    /// Posted `{"phase", "model", "principal", "messages" | "output"}`; answers
    /// `{"action": "allow" | "deny" | "rewrite", "messages"?, "output"?, "reason"?}`.
    pub webhook_url: Option<String>,
    pub webhook_timeout: Option<HumanDuration>,
    pub webhook_failure_mode: Option<WebhookFailureMode>,
}

/// `[guardrails]`: every caller's rules (unless its key or team names a profile), and the
/// profiles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailsConfig {
    pub deny_patterns: Vec<String>,
    pub redact_pii: bool,
    pub output_deny_patterns: Vec<String>,
    pub output_window: usize,
    pub webhook_url: Option<String>,
    pub webhook_timeout: HumanDuration,
    pub webhook_failure_mode: WebhookFailureMode,
    pub profiles: BTreeMap<String, GuardrailRules>,
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        GuardrailsConfig {
            deny_patterns: Vec::new(),
            redact_pii: false,
            output_deny_patterns: Vec::new(),
            output_window: 64,
            webhook_url: None,
            webhook_timeout: HumanDuration::secs(2),
            webhook_failure_mode: WebhookFailureMode::FailClosed,
            profiles: BTreeMap::new(),
        }
    }
}

impl GuardrailsConfig {
    /// The top level as a profile's rules, scalars filled in.
    pub fn top(&self) -> GuardrailRules {
        let t = self;
        GuardrailRules {
            deny_patterns: t.deny_patterns.clone(),
            redact_pii: t.redact_pii,
            output_deny_patterns: t.output_deny_patterns.clone(),
            output_window: Some(t.output_window),
            webhook_url: t.webhook_url.clone(),
            webhook_timeout: Some(t.webhook_timeout),
            webhook_failure_mode: Some(t.webhook_failure_mode),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |key: &str, r: &GuardrailRules| -> Result<(), ConfigError> {
            for (field, list) in [
                ("deny_patterns", &r.deny_patterns),
                ("output_deny_patterns", &r.output_deny_patterns),
            ] {
                for p in list {
                    regex::Regex::new(p).map_err(|e| {
                        ConfigError(format!("{key}.{field}: {p:?} is not a valid regex: {e}"))
                    })?;
                }
            }
            if let Some(u) = &r.webhook_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError(format!(
                        "{key}.webhook_url must be an http:// or https:// URL"
                    )));
                }
            }
            if r.output_window == Some(0) {
                return Err(ConfigError(format!(
                    "{key}.output_window must be at least 1"
                )));
            }
            Ok(())
        };
        check("guardrails", &self.top())?;
        for (name, p) in &self.profiles {
            check(&format!("guardrails.profiles.{name}"), p)?;
        }
        Ok(())
    }
}
