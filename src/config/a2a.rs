//! `[a2a]`: A2A agents whose skills the gateway offers as tools (see README "A2A agents").

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct A2aConfig {
    /// Offer the agents' skills as tools in the server-side loop (`A2A_ENABLE`).
    pub enable: bool,
    /// Serve `GET /v1/a2a/agents` (`A2A_EXPOSE`); 403 otherwise.
    pub expose: bool,
    /// Agents, in priority order (`A2A_AGENTS` adds base URLs after these).
    pub agents: Vec<A2aAgentConfig>,
    /// Longest wait for an agent's answer, a terminal task state included
    /// (`A2A_CLIENT_TIMEOUT`); per agent `timeout` wins.
    pub client_timeout: HumanDuration,
}

impl Default for A2aConfig {
    fn default() -> Self {
        A2aConfig {
            enable: false,
            expose: false,
            agents: Vec::new(),
            client_timeout: HumanDuration::secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aAgentConfig {
    /// The agent's base URL: its card is `<url>/.well-known/agent-card.json` (or `agent.json`).
    pub url: String,
    /// Overrides the card's name in tool names (`a2a_<name>_<skill>`).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Only these skills (ids).
    #[serde(default)]
    pub include_skills: Vec<String>,
    /// Never these skills (ids).
    #[serde(default)]
    pub exclude_skills: Vec<String>,
}

impl A2aAgentConfig {
    pub fn from_url(url: &str) -> A2aAgentConfig {
        A2aAgentConfig {
            url: url.trim_end_matches('/').to_string(),
            name: None,
            bearer_token: None,
            headers: BTreeMap::new(),
            timeout: None,
            include_skills: Vec::new(),
            exclude_skills: Vec::new(),
        }
    }
}

impl A2aConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.client_timeout.get().is_zero() {
            return Err(ConfigError(
                "a2a.client_timeout (A2A_CLIENT_TIMEOUT): must be greater than 0".into(),
            ));
        }
        for (i, a) in self.agents.iter().enumerate() {
            let ok = (a.url.starts_with("http://") || a.url.starts_with("https://"))
                && a.url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ConfigError(format!(
                    "a2a.agents[{i}].url (A2A_AGENTS): {:?} is not an http(s) URL",
                    a.url
                )));
            }
            for (h, v) in &a.headers {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    return Err(ConfigError(format!(
                        "a2a.agents[{i}].headers.{h}: invalid header"
                    )));
                }
            }
        }
        Ok(())
    }
}
