//! What the gateway offers its own MCP clients (`/mcp`): every MCP server's tools under the
//! names the servers give them (the loop's clash rule, without the `mcp_` prefix the loop adds
//! for models), then every A2A agent's skills (`a2a_<agent>_<skill>`, as in the loop), then the
//! gateway's own tools (`gateway_chat`, `gateway_list_models`); on a clash MCP servers win, then
//! A2A, then the gateway's tools. A key's tool allowlist (`tools = ["add", "fs_*"]`) filters it, here
//! and in the server-side loop alike.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Catalog, CatalogTool};
use filters::tool_loop::GATEWAY_TOOL_PREFIX;

/// The gateway's own tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayTool {
    Chat,
    ListModels,
}

impl GatewayTool {
    pub const ALL: [GatewayTool; 2] = [GatewayTool::Chat, GatewayTool::ListModels];

    pub fn name(self) -> &'static str {
        match self {
            GatewayTool::Chat => "gateway_chat",
            GatewayTool::ListModels => "gateway_list_models",
        }
    }

    /// The `tools/list` entry.
    fn definition(self) -> Value {
        match self {
            GatewayTool::Chat => json!({
                "name": self.name(),
                "title": "Chat with a model through the gateway",
                "description": "Sends a conversation to a model through the gateway (with the caller's key, model list and limits) and returns its answer.",
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string", "description": "A model the gateway serves: provider/model or an alias (gateway_list_models lists them)"},
                        "prompt": {"type": "string", "description": "The user's message (or give messages)"},
                        "messages": {"type": "array", "description": "OpenAI chat messages ({role, content}); used instead of prompt", "items": {"type": "object"}},
                        "system": {"type": "string", "description": "A system prompt"},
                        "max_tokens": {"type": "integer", "minimum": 1},
                        "temperature": {"type": "number"}
                    },
                    "required": ["model"]
                },
                "annotations": {"readOnlyHint": true, "openWorldHint": true}
            }),
            GatewayTool::ListModels => json!({
                "name": self.name(),
                "title": "List the gateway's models",
                "description": "Lists the models this caller may use through the gateway.",
                "inputSchema": {"type": "object", "properties": {}},
                "annotations": {"readOnlyHint": true}
            }),
        }
    }
}

/// Where an offered tool goes.
#[derive(Clone)]
pub enum Target {
    /// A tool of one of the MCP servers (index into the catalogue snapshot).
    Mcp(usize),
    /// A skill of an A2A agent (index into the A2A catalogue snapshot).
    A2a(usize),
    Gateway(GatewayTool),
}

impl Target {
    /// The `tool_type` label of metrics.
    pub fn tool_type(&self) -> &'static str {
        match self {
            Target::Mcp(_) => "mcp",
            Target::A2a(_) => "a2a",
            Target::Gateway(_) => "gateway",
        }
    }
}

pub struct ExposedTool {
    pub name: String,
    pub target: Target,
    /// The `tools/list` entry (with `name` set to the exposed name).
    pub definition: Value,
}

/// The tools `/mcp` offers now, in a stable order (servers in configuration order, then the
/// gateway's), after the allowlist.
pub struct Exposed {
    pub catalog: Arc<Catalog>,
    pub a2a: Arc<crate::a2a::A2aCatalog>,
    pub tools: Vec<ExposedTool>,
}

impl Exposed {
    pub fn build(
        catalog: Arc<Catalog>,
        a2a: Arc<crate::a2a::A2aCatalog>,
        allow: &[String],
    ) -> Exposed {
        let mut tools = Vec::new();
        for (i, t) in catalog.all().iter().enumerate() {
            if !t.healthy {
                continue;
            }
            let name = exposed_name(t);
            if !allowed(allow, name) {
                continue;
            }
            let mut definition = serde_json::to_value(&*t.spec).unwrap_or_else(|_| json!({}));
            definition["name"] = json!(name);
            tools.push(ExposedTool {
                name: name.to_string(),
                target: Target::Mcp(i),
                definition,
            });
        }
        for (i, t) in a2a.tools().iter().enumerate() {
            let taken = tools.iter().any(|x| x.name == t.name);
            if !taken && allowed(allow, &t.name) {
                tools.push(ExposedTool {
                    name: t.name.clone(),
                    target: Target::A2a(i),
                    definition: t.mcp_definition.clone(),
                });
            }
        }
        for g in GatewayTool::ALL {
            let taken = tools.iter().any(|t| t.name == g.name());
            if !taken && allowed(allow, g.name()) {
                tools.push(ExposedTool {
                    name: g.name().to_string(),
                    target: Target::Gateway(g),
                    definition: g.definition(),
                });
            }
        }
        Exposed {
            catalog,
            a2a,
            tools,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ExposedTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn mcp_tool(&self, i: usize) -> &CatalogTool {
        &self.catalog.all()[i]
    }
}

/// The `/mcp` name of a catalogue tool: the loop's name without its `mcp_` prefix.
pub fn exposed_name(t: &CatalogTool) -> &str {
    t.name.strip_prefix(GATEWAY_TOOL_PREFIX).unwrap_or(&t.name)
}

/// Whether a key's allowlist lets it use a tool named `name` (its `/mcp` name; the loop strips
/// its `mcp_` prefix before asking). An empty list allows every tool. Patterns are names with
/// `*` standing for any run of characters.
pub fn allowed(patterns: &[String], name: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p, name))
}

fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if last {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_globs() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(allowed(&[], "anything"));
        assert!(allowed(&p(&["add"]), "add"));
        assert!(!allowed(&p(&["add"]), "adder"));
        assert!(allowed(&p(&["fs_*"]), "fs_read"));
        assert!(!allowed(&p(&["fs_*"]), "xfs_read"));
        assert!(allowed(&p(&["*_read"]), "fs_read"));
        assert!(allowed(&p(&["a*c*e"]), "abcde"));
        assert!(!allowed(&p(&["a*c*e"]), "abcd"));
        assert!(allowed(&p(&["*"]), "x"));
        assert!(allowed(&p(&["gateway_*", "add"]), "gateway_chat"));
    }
}
