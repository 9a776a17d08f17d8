//! The A2A wire: agent cards, and sending a message until the task settles, in A2A 1.0
//! (`SendMessage`, `GetTask`, `A2A-Version: 1.0`, `TASK_STATE_*`, `ROLE_USER`, parts without a
//! `kind`) or 0.3 (`message/send`, `tasks/get`, lower-case states, parts with `kind`), chosen
//! from the card: a JSON-RPC interface of `supportedInterfaces` with version 1.x first, then
//! 0.3; a card without interfaces (0.2/0.3) is 0.3 at its `url`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The protocol generation an agent is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V03,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V1 => "1.0",
            Version::V03 => "0.3",
        }
    }
}

/// What the gateway uses of an agent's card.
#[derive(Debug, Clone)]
pub struct Card {
    pub name: String,
    pub description: String,
    pub endpoint: String,
    pub version: Version,
    pub skills: Vec<Skill>,
}

#[derive(Debug, Clone)]
pub struct Skill {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// Reads a card (JSON) into what the gateway uses.
pub fn parse_card(v: &Value, base_url: &str) -> Result<Card, String> {
    let name = v["name"].as_str().unwrap_or("").to_string();
    let mut chosen: Option<(String, Version)> = None;
    if let Some(ifaces) = v["supportedInterfaces"].as_array() {
        let jsonrpc = |want: &dyn Fn(&str) -> bool| {
            ifaces.iter().find_map(|i| {
                let binding = i["protocolBinding"].as_str().unwrap_or("JSONRPC");
                let version = i["protocolVersion"].as_str().unwrap_or("");
                (binding.eq_ignore_ascii_case("JSONRPC") && want(version))
                    .then(|| i["url"].as_str().map(str::to_string))
                    .flatten()
            })
        };
        chosen = jsonrpc(&|ver| ver.starts_with("1."))
            .map(|u| (u, Version::V1))
            .or_else(|| jsonrpc(&|ver| ver.starts_with("0.3")).map(|u| (u, Version::V03)));
    }
    if chosen.is_none() {
        let transport = v["preferredTransport"].as_str().unwrap_or("JSONRPC");
        if transport.eq_ignore_ascii_case("JSONRPC") {
            let url = v["url"].as_str().unwrap_or(base_url).to_string();
            chosen = Some((url, Version::V03));
        }
    }
    let (endpoint, version) = chosen.ok_or("the card offers no JSON-RPC interface")?;
    let skills = v["skills"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| {
                    Some(Skill {
                        id: s["id"].as_str()?.to_string(),
                        name: s["name"].as_str().unwrap_or("").to_string(),
                        description: s["description"].as_str().unwrap_or("").to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Card {
        name,
        description: v["description"].as_str().unwrap_or("").to_string(),
        endpoint,
        version,
        skills,
    })
}

/// How a task ended, as the model is told.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    /// `None`: completed; else the tool error label (`tool_error` for failed/rejected/canceled).
    pub error: Option<&'static str>,
}

/// A task's state, both generations' names folded to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Working,
    Completed,
    Failed,
    InputRequired,
    AuthRequired,
}

fn state_of(s: &str) -> State {
    match s
        .trim_start_matches("TASK_STATE_")
        .to_ascii_lowercase()
        .replace('_', "-")
        .as_str()
    {
        "completed" => State::Completed,
        "failed" | "rejected" | "canceled" | "cancelled" => State::Failed,
        "input-required" => State::InputRequired,
        "auth-required" => State::AuthRequired,
        _ => State::Working,
    }
}

fn parts_text(parts: &Value) -> Vec<String> {
    parts
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    if let Some(t) = p["text"].as_str() {
                        return Some(t.to_string());
                    }
                    if let Some(d) = p.get("data").filter(|d| !d.is_null()) {
                        return Some(d.to_string());
                    }
                    p.get("file")
                        .or_else(|| p.get("url"))
                        .map(|f| format!("[file {f}]"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The text of a task: its artifacts, else its status message.
fn task_text(task: &Value) -> String {
    let mut out: Vec<String> = task["artifacts"]
        .as_array()
        .map(|a| a.iter().flat_map(|x| parts_text(&x["parts"])).collect())
        .unwrap_or_default();
    if out.is_empty() {
        out = parts_text(&task["status"]["message"]["parts"]);
    }
    out.join("\n")
}

pub struct Call<'a> {
    pub http: &'a reqwest13::Client,
    pub endpoint: &'a str,
    pub version: Version,
    pub headers: &'a [(http::HeaderName, http::HeaderValue)],
    pub agent: &'a str,
}

impl Call<'_> {
    async fn rpc(
        &self,
        id: u64,
        method: &str,
        params: Value,
        budget: Duration,
    ) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut req = self
            .http
            .post(self.endpoint)
            .timeout(budget)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("a2a-version", self.version.label())
            // An agent that calls this gateway back must not get the gateway's tools again.
            .header("x-mcp-bypass", "true")
            .header("x-a2a-bypass", "true")
            .body(body.to_string());
        for (k, v) in self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else {
                format!("the agent could not be reached: {}", without_url(&e))
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the agent's answer failed: {}", without_url(&e)))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| format!("the agent answered {status} without JSON-RPC"))?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            return Err(format!(
                "the agent refused: {} ({})",
                e["message"].as_str().unwrap_or("error"),
                e["code"]
            ));
        }
        Ok(v["result"].clone())
    }

    /// Sends `message` and waits (blocking send, then polling) until the task settles or
    /// `timeout` passes.
    pub async fn ask(&self, message: &str, timeout: Duration) -> Answer {
        let started = Instant::now();
        let left = |started: Instant| timeout.saturating_sub(started.elapsed());
        let message_id = uuid::Uuid::new_v4().to_string();
        let (method, params) = match self.version {
            Version::V1 => (
                "SendMessage",
                json!({"message": {"role": "ROLE_USER", "parts": [{"text": message}], "messageId": message_id}}),
            ),
            Version::V03 => (
                "message/send",
                json!({"message": {"role": "user", "parts": [{"kind": "text", "text": message}],
                    "messageId": message_id, "kind": "message"}}),
            ),
        };
        let first = match self.rpc(1, method, params, left(started)).await {
            Ok(v) => v,
            Err(e) => return self.failure(e, timeout),
        };
        // 1.0 wraps the answer (`task` or `message`); 0.3 gives it bare with a `kind`.
        let mut task = match (first.get("task"), first.get("message")) {
            (Some(t), _) => t.clone(),
            (None, Some(m)) => {
                return Answer {
                    text: parts_text(&m["parts"]).join("\n"),
                    error: None,
                }
            }
            _ if first["kind"] == "message" => {
                return Answer {
                    text: parts_text(&first["parts"]).join("\n"),
                    error: None,
                }
            }
            _ => first,
        };
        let mut n = 2;
        loop {
            let state = state_of(task["status"]["state"].as_str().unwrap_or(""));
            let text = task_text(&task);
            match state {
                State::Completed => return Answer { text, error: None },
                State::Failed => {
                    let s = task["status"]["state"].as_str().unwrap_or("failed");
                    return Answer {
                        text: format!("Error: the agent's task ended {s}: {text}"),
                        error: Some("tool_error"),
                    };
                }
                State::InputRequired => {
                    return Answer {
                        text: format!("The agent {} needs more input: {text}", self.agent),
                        error: None,
                    }
                }
                State::AuthRequired => {
                    return Answer {
                        text: format!("The agent {} needs authorization: {text}", self.agent),
                        error: None,
                    }
                }
                State::Working => {}
            }
            if started.elapsed() >= timeout {
                return self.failure("timeout".into(), timeout);
            }
            tokio::time::sleep(Duration::from_millis(200).min(left(started))).await;
            let id = task["id"].clone();
            let get = match self.version {
                Version::V1 => "GetTask",
                Version::V03 => "tasks/get",
            };
            task = match self.rpc(n, get, json!({"id": id}), left(started)).await {
                Ok(v) => v.get("task").cloned().unwrap_or(v),
                Err(e) => return self.failure(e, timeout),
            };
            n += 1;
        }
    }

    fn failure(&self, e: String, timeout: Duration) -> Answer {
        if e == "timeout" {
            Answer {
                text: format!(
                    "Error: the agent {} did not finish within {} ms",
                    self.agent,
                    timeout.as_millis()
                ),
                error: Some("timeout"),
            }
        } else {
            Answer {
                text: format!("Error: {e}"),
                error: Some("call_error"),
            }
        }
    }
}

/// A reqwest error's text without its URL (which may hold credentials).
fn without_url(e: &reqwest13::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), &crate::mcp::redact_url(u.as_str()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_of_both_generations() {
        let v1 = json!({"name": "Echo Agent", "supportedInterfaces": [
            {"url": "http://a/", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            {"url": "http://a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
            "preferredTransport": "JSONRPC", "protocolVersion": "0.3", "url": "http://a/",
            "skills": [{"id": "echo", "name": "Echo", "description": "Echo the input", "tags": []}]});
        let c = parse_card(&v1, "http://a").unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.version),
            ("http://a/v1", Version::V1)
        );
        assert_eq!(c.skills[0].id, "echo");
        let only03 = json!({"name": "Old", "supportedInterfaces": [
            {"url": "http://b/", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"}]});
        assert_eq!(
            parse_card(&only03, "http://b").unwrap().version,
            Version::V03
        );
        let legacy = json!({"name": "Legacy", "url": "http://c/rpc", "protocolVersion": "0.3.0"});
        let c = parse_card(&legacy, "http://c").unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.version),
            ("http://c/rpc", Version::V03)
        );
        let grpc = json!({"name": "G", "supportedInterfaces": [
            {"url": "http://d", "protocolBinding": "GRPC", "protocolVersion": "1.0"}], "preferredTransport": "GRPC"});
        assert!(parse_card(&grpc, "http://d").is_err());
    }

    #[test]
    fn states_and_texts() {
        assert_eq!(state_of("TASK_STATE_COMPLETED"), State::Completed);
        assert_eq!(state_of("input-required"), State::InputRequired);
        assert_eq!(state_of("TASK_STATE_INPUT_REQUIRED"), State::InputRequired);
        assert_eq!(state_of("TASK_STATE_REJECTED"), State::Failed);
        assert_eq!(state_of("working"), State::Working);
        let task =
            json!({"artifacts": [{"parts": [{"text": "a"}, {"kind": "data", "data": {"x": 1}}]}]});
        assert_eq!(task_text(&task), "a\n{\"x\":1}");
        let asking = json!({"status": {"state": "input-required", "message": {"parts": [{"kind": "text", "text": "Which city?"}]}}});
        assert_eq!(task_text(&asking), "Which city?");
    }
}
