//! A2A agents as tools: each configured agent's skills become tools `a2a_<agent>_<skill>` that
//! the server-side loop (and `/mcp`) runs like MCP tools: the gateway sends the model's message
//! to the agent, waits for the task to settle and gives the agent's text back.
//!
//! - [`A2aHub`] holds one slot per agent and the published catalogue of tools (a snapshot,
//!   rebuilt when an agent's card or health changes).
//! - [`DiscoveryService`] reads every agent's card in the background (the gateway serves while
//!   agents are down) and again every minute; an agent that cannot be reached is retried with a
//!   doubling wait (1 s to 10 s).
//! - [`client`] speaks the wire (A2A 1.0 or 0.3, from the card).

pub mod client;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Map, Value};

use crate::config::a2a::{A2aAgentConfig, A2aConfig};
use crate::mcp::ToolOutcome;

/// Tool names start with this (the loop knows its own tools by it).
pub const TOOL_PREFIX: &str = filters::tool_loop::A2A_TOOL_PREFIX;
const MAX_NAME: usize = 64;
const REFRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
struct AgentState {
    card: Option<client::Card>,
    healthy: bool,
    last_error: Option<String>,
}

pub struct AgentSlot {
    pub cfg: A2aAgentConfig,
    /// Credentials and extra headers for every request to the agent.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    state: RwLock<AgentState>,
}

/// A skill as offered.
pub struct A2aTool {
    /// `a2a_<agent>_<skill>`.
    pub name: String,
    pub agent: usize,
    pub skill: String,
    pub description: String,
    /// The OpenAI `tools[]` entry.
    pub definition: Value,
    /// The `/mcp` `tools/list` entry.
    pub mcp_definition: Value,
}

#[derive(Default)]
pub struct A2aCatalog {
    tools: Vec<A2aTool>,
}

impl A2aCatalog {
    pub fn tools(&self) -> &[A2aTool] {
        &self.tools
    }

    pub fn get(&self, name: &str) -> Option<&A2aTool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

pub struct A2aHub {
    pub cfg: A2aConfig,
    pub agents: Vec<AgentSlot>,
    catalog: RwLock<Arc<A2aCatalog>>,
    changes: tokio::sync::watch::Sender<u64>,
    http: Option<reqwest13::Client>,
}

fn sanitize(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

/// `a2a_<agent>_<skill>` names for every agent's skills, unique (a number added on a clash),
/// at most 64 characters.
fn assign(agents: &[(String, Vec<String>)]) -> Vec<Vec<String>> {
    let mut taken = HashSet::new();
    agents
        .iter()
        .map(|(agent, skills)| {
            skills
                .iter()
                .map(|skill| {
                    let mut base = format!("{TOOL_PREFIX}{}_{}", sanitize(agent), sanitize(skill));
                    base.truncate(MAX_NAME);
                    let mut name = base.clone();
                    let mut n = 2;
                    while taken.contains(&name) {
                        let suffix = format!("_{n}");
                        let mut b = base.clone();
                        b.truncate(MAX_NAME - suffix.len());
                        name = b + &suffix;
                        n += 1;
                    }
                    taken.insert(name.clone());
                    name
                })
                .collect()
        })
        .collect()
}

impl A2aHub {
    pub fn new(cfg: &A2aConfig) -> Arc<A2aHub> {
        let agents = cfg
            .agents
            .iter()
            .map(|a| {
                let mut headers: Vec<(http::HeaderName, http::HeaderValue)> = a
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                            http::HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect();
                if let Some(t) = &a.bearer_token {
                    if let Ok(mut v) =
                        http::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    {
                        v.set_sensitive(true);
                        headers.push((http::header::AUTHORIZATION, v));
                    }
                }
                AgentSlot {
                    cfg: a.clone(),
                    headers,
                    state: RwLock::new(AgentState::default()),
                }
            })
            .collect();
        let http = reqwest13::Client::builder().no_proxy().build().ok();
        Arc::new(A2aHub {
            cfg: cfg.clone(),
            agents,
            catalog: RwLock::new(Arc::new(A2aCatalog::default())),
            changes: tokio::sync::watch::channel(0).0,
            http,
        })
    }

    pub fn catalog(&self) -> Arc<A2aCatalog> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes of the offered tools (a counter).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn set(&self, i: usize, card: Result<client::Card, String>) {
        {
            let mut st = self.agents[i]
                .state
                .write()
                .unwrap_or_else(|e| e.into_inner());
            match card {
                Ok(c) => {
                    st.card = Some(c);
                    st.healthy = true;
                    st.last_error = None;
                }
                Err(e) => {
                    st.healthy = false;
                    st.last_error = Some(e);
                }
            }
        }
        self.publish();
    }

    /// Rebuilds the catalogue from the agents' cards (healthy agents' skills only).
    fn publish(&self) {
        let mut lists = Vec::new();
        let mut owners = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            let st = a.state.read().unwrap_or_else(|e| e.into_inner());
            let Some(card) = st.card.as_ref().filter(|_| st.healthy) else {
                continue;
            };
            let skills: Vec<&client::Skill> = card
                .skills
                .iter()
                .filter(|s| {
                    (a.cfg.include_skills.is_empty() || a.cfg.include_skills.contains(&s.id))
                        && !a.cfg.exclude_skills.contains(&s.id)
                })
                .collect();
            let agent_name = a.cfg.name.clone().unwrap_or_else(|| card.name.clone());
            lists.push((
                agent_name.clone(),
                skills.iter().map(|s| s.id.clone()).collect(),
            ));
            owners.push((
                i,
                agent_name,
                card.description.clone(),
                skills.into_iter().cloned().collect::<Vec<_>>(),
            ));
        }
        let names = assign(&lists);
        let mut tools = Vec::new();
        for ((i, agent, agent_desc, skills), names) in owners.into_iter().zip(names) {
            for (s, name) in skills.into_iter().zip(names) {
                let mut description = if s.description.is_empty() {
                    s.name.clone()
                } else {
                    s.description.clone()
                };
                description.push_str(&format!(" (A2A agent {agent}"));
                if !agent_desc.is_empty() {
                    description.push_str(&format!(": {agent_desc}"));
                }
                description.push(')');
                let schema = json!({"type": "object", "properties": {"message": {
                    "type": "string", "description": "The message to send to the agent"}},
                    "required": ["message"]});
                tools.push(A2aTool {
                    definition: json!({"type": "function", "function": {"name": name,
                        "description": description, "parameters": schema}}),
                    mcp_definition: json!({"name": name, "description": description,
                        "inputSchema": schema}),
                    name,
                    agent: i,
                    skill: s.id,
                    description,
                });
            }
        }
        let names = |c: &A2aCatalog| c.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let new = A2aCatalog { tools };
        let changed = names(&self.catalog()) != names(&new);
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Runs one skill. Never fails: every problem becomes the outcome's text.
    pub async fn call(&self, tool: &A2aTool, arguments: &str) -> ToolOutcome {
        let started = Instant::now();
        let (content, error) = self.call_inner(tool, arguments).await;
        let mut content = content;
        if content.len() > crate::mcp::MAX_TOOL_RESULT_BYTES {
            let mut cut = crate::mcp::MAX_TOOL_RESULT_BYTES;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
            content.push_str("\n[truncated by the gateway]");
        }
        ToolOutcome {
            content,
            error,
            duration: started.elapsed(),
        }
    }

    async fn call_inner(&self, tool: &A2aTool, arguments: &str) -> (String, Option<&'static str>) {
        let args: Map<String, Value> = match serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        }) {
            Ok(Value::Object(m)) => m,
            _ => {
                return (
                    "Error: the arguments must be a JSON object with a message".into(),
                    Some("invalid_arguments"),
                )
            }
        };
        let Some(message) = args.get("message").and_then(Value::as_str) else {
            return (
                "Error: message (a string) is required".into(),
                Some("invalid_arguments"),
            );
        };
        let slot = &self.agents[tool.agent];
        let card = slot
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .card
            .clone();
        let (Some(card), Some(http)) = (card, &self.http) else {
            return (
                format!("Error: the A2A agent of {} is unavailable", tool.name),
                Some("server_unavailable"),
            );
        };
        let timeout = slot.cfg.timeout.unwrap_or(self.cfg.client_timeout).get();
        let agent = slot.cfg.name.clone().unwrap_or(card.name.clone());
        let call = client::Call {
            http,
            endpoint: &card.endpoint,
            version: card.version,
            headers: &slot.headers,
            agent: &agent,
        };
        let answer = call.ask(message, timeout).await;
        (answer.text, answer.error)
    }

    /// `GET /v1/a2a/agents` body.
    pub fn listing(&self) -> Value {
        let catalog = self.catalog();
        let data: Vec<Value> = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let st = a.state.read().unwrap_or_else(|e| e.into_inner());
                let tools: Vec<Value> = catalog
                    .tools
                    .iter()
                    .filter(|t| t.agent == i)
                    .map(
                        |t| json!({"name": t.name, "skill": t.skill, "description": t.description}),
                    )
                    .collect();
                json!({
                    "name": a.cfg.name.clone().or_else(|| st.card.as_ref().map(|c| c.name.clone())),
                    "url": crate::mcp::redact_url(&a.cfg.url),
                    "protocol_version": st.card.as_ref().map(|c| c.version.label()),
                    "healthy": st.healthy,
                    "last_error": st.last_error,
                    "skills": tools,
                })
            })
            .collect();
        json!({"object": "list", "data": data})
    }

    async fn fetch_card(&self, slot: &AgentSlot) -> Result<client::Card, String> {
        let http = self.http.as_ref().ok_or("no HTTP client")?;
        let base = slot.cfg.url.trim_end_matches('/');
        let mut last = String::new();
        for path in ["/.well-known/agent-card.json", "/.well-known/agent.json"] {
            let mut req = http
                .get(format!("{base}{path}"))
                .timeout(Duration::from_secs(10));
            for (k, v) in &slot.headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let bytes = r
                        .bytes()
                        .await
                        .map_err(|e| format!("reading the card: {e}"))?;
                    let v: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("the agent card is not JSON: {e}"))?;
                    return client::parse_card(&v, base);
                }
                Ok(r) => last = format!("{path}: {}", r.status()),
                Err(_) => last = "the agent could not be reached".into(),
            }
        }
        Err(last)
    }
}

/// Reads every agent's card in the background (a Pingora background service).
pub struct DiscoveryService {
    pub hub: Arc<A2aHub>,
}

#[async_trait]
impl BackgroundService for DiscoveryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<_> = (0..self.hub.agents.len())
            .map(|i| {
                let hub = self.hub.clone();
                tokio::spawn(async move {
                    let mut failures: u32 = 0;
                    loop {
                        let r = hub.fetch_card(&hub.agents[i]).await;
                        let wait = match &r {
                            Ok(c) => {
                                if failures > 0
                                    || hub.agents[i]
                                        .state
                                        .read()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .card
                                        .is_none()
                                {
                                    log::info!(
                                        "A2A agent {} ({}): {} skills, protocol {}",
                                        c.name,
                                        crate::mcp::redact_url(&hub.agents[i].cfg.url),
                                        c.skills.len(),
                                        c.version.label()
                                    );
                                }
                                failures = 0;
                                REFRESH
                            }
                            Err(e) => {
                                failures += 1;
                                if failures == 1 {
                                    log::warn!(
                                        "A2A agent {}: {e}; retrying",
                                        crate::mcp::redact_url(&hub.agents[i].cfg.url)
                                    );
                                }
                                Duration::from_secs(1 << failures.min(3).saturating_sub(1))
                                    .min(Duration::from_secs(10))
                            }
                        };
                        hub.set(i, r);
                        tokio::time::sleep(wait).await;
                    }
                })
            })
            .collect();
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        let n = assign(&[
            ("Echo Agent".into(), vec!["echo".into(), "Ask-Me".into()]),
            ("echo agent".into(), vec!["echo".into()]),
        ]);
        assert_eq!(n[0], ["a2a_echo_agent_echo", "a2a_echo_agent_ask_me"]);
        assert_eq!(n[1], ["a2a_echo_agent_echo_2"]);
        let long = assign(&[("x".repeat(80), vec!["y".into()])]);
        assert!(long[0][0].len() <= 64);
    }
}
