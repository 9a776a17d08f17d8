//! Guardrails at run time (`[guardrails]`): each profile's compiled rules, the choice of a
//! profile for a caller (its key's, else its team's, else the top level's), and the webhook.
//! Nothing here runs when no rule is configured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::RegexSet;
use serde_json::{json, Value};

use crate::config::guardrails::{GuardrailRules, WebhookFailureMode};
use crate::config::Config;

pub struct Webhook {
    pub url: String,
    pub timeout: Duration,
    pub fail_open: bool,
}

/// One set of compiled rules.
pub struct Profile {
    pub name: String,
    pub deny: Option<RegexSet>,
    pub redact_pii: bool,
    pub output: Option<RegexSet>,
    pub window: usize,
    pub webhook: Option<Webhook>,
}

impl Profile {
    fn build(name: &str, r: &GuardrailRules, top: &GuardrailRules) -> Profile {
        let set = |p: &[String]| {
            (!p.is_empty()).then(|| RegexSet::new(p).expect("validated with the configuration"))
        };
        Profile {
            name: name.to_string(),
            deny: set(&r.deny_patterns),
            redact_pii: r.redact_pii,
            output: set(&r.output_deny_patterns),
            window: r.output_window.or(top.output_window).unwrap_or(64),
            webhook: r.webhook_url.as_ref().map(|u| Webhook {
                url: u.clone(),
                timeout: r
                    .webhook_timeout
                    .or(top.webhook_timeout)
                    .map_or(Duration::from_secs(2), |d| d.get()),
                fail_open: r.webhook_failure_mode.or(top.webhook_failure_mode)
                    == Some(WebhookFailureMode::FailOpen),
            }),
        }
    }

    /// Whether the profile checks anything on the way in.
    pub fn checks_input(&self) -> bool {
        self.deny.is_some() || self.redact_pii || self.webhook.is_some()
    }

    /// Whether the profile checks answers.
    pub fn checks_output(&self) -> bool {
        self.output.is_some() || self.webhook.is_some()
    }
}

pub struct Guardrails {
    top: Arc<Profile>,
    profiles: HashMap<String, Arc<Profile>>,
    pub redactor: filters::guard::Redactor,
    http: Option<reqwest13::Client>,
}

/// What the webhook said.
pub enum Verdict {
    Allow,
    Deny(String),
    /// New messages (input) or new output text.
    Rewrite(Value),
}

impl Guardrails {
    /// The guardrails, when any rule is configured.
    pub fn from_config(cfg: &Config) -> Option<Guardrails> {
        let top_rules = cfg.guardrails.top();
        let top = Profile::build("default", &top_rules, &top_rules);
        let profiles: HashMap<String, Arc<Profile>> = cfg
            .guardrails
            .profiles
            .iter()
            .map(|(n, r)| (n.clone(), Arc::new(Profile::build(n, r, &top_rules))))
            .collect();
        let any = top.checks_input()
            || top.checks_output()
            || profiles
                .values()
                .any(|p| p.checks_input() || p.checks_output());
        if !any {
            return None;
        }
        let webhooks = top.webhook.is_some() || profiles.values().any(|p| p.webhook.is_some());
        Some(Guardrails {
            top: Arc::new(top),
            profiles,
            redactor: filters::guard::Redactor::new(),
            http: webhooks
                .then(|| reqwest13::Client::builder().no_proxy().build().ok())
                .flatten(),
        })
    }

    /// The caller's profile: its key's, else its team's, else the top level's; `None` when
    /// it checks nothing.
    pub fn profile_for(&self, p: Option<&crate::auth::Principal>) -> Option<Arc<Profile>> {
        let named = p.and_then(|p| {
            p.limits
                .guardrails
                .clone()
                .or_else(|| p.team_limits.as_ref().and_then(|t| t.guardrails.clone()))
        });
        let profile = match named {
            // Validated when configured; a profile removed since is the top level's rules.
            Some(n) => self
                .profiles
                .get(&n)
                .cloned()
                .unwrap_or_else(|| self.top.clone()),
            None => self.top.clone(),
        };
        (profile.checks_input() || profile.checks_output()).then_some(profile)
    }

    /// Asks the webhook; `Err` when it failed or did not answer in time (the caller applies
    /// the failure mode).
    pub async fn ask(&self, hook: &Webhook, payload: Value) -> Result<Verdict, String> {
        let http = self.http.as_ref().ok_or("no HTTP client")?;
        let send = http
            .post(&hook.url)
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send();
        let resp = tokio::time::timeout(hook.timeout, send)
            .await
            .map_err(|_| format!("no answer within {:?}", hook.timeout))?
            .map_err(|e| format!("unreachable ({})", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let body = tokio::time::timeout(hook.timeout, resp.bytes())
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.without_url().to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|_| "not JSON".to_string())?;
        match v["action"].as_str() {
            Some("allow") => Ok(Verdict::Allow),
            Some("deny") => Ok(Verdict::Deny(
                v["reason"]
                    .as_str()
                    .unwrap_or("refused by the guardrail webhook")
                    .to_string(),
            )),
            Some("rewrite") => {
                let new = v
                    .get("messages")
                    .or_else(|| v.get("output"))
                    .cloned()
                    .ok_or("rewrite without messages or output")?;
                Ok(Verdict::Rewrite(new))
            }
            _ => Err(format!("unknown action {}", v["action"])),
        }
    }

    pub fn payload(
        phase: &str,
        model: &str,
        principal: Option<&str>,
        what: (&str, Value),
    ) -> Value {
        let mut v = json!({"phase": phase, "model": model, "principal": principal});
        v[what.0] = what.1;
        v
    }
}
