// MCP: the MCP servers and A2A agents the gateway connects to, their health and their tools
// (as the model and /mcp see them).

import { admin } from "../api.js";
import { clear, every, h, healthBadge, num, table, when } from "../dom.js";

export async function render(root) {
  const servers = h("div", { id: "mcp-servers" });
  const tools = h("div", { id: "mcp-tools" });
  const agents = h("div", { id: "a2a-agents" });
  root.append(
    h("h1", {}, "MCP"),
    h("p", { class: "note" }, "Tool servers as this replica sees them, whether or not MCP_EXPOSE / A2A_EXPOSE publish them."),
    h("h2", {}, "MCP servers"),
    servers,
    h("h2", {}, "MCP tools"),
    tools,
    h("h2", {}, "A2A agents"),
    agents,
  );
  return every(10, async () => {
    const health = await admin("health");
    clear(servers).append(
      table(
        [
          { title: "Server", value: (s) => s.name },
          { title: "Transport", value: (s) => s.transport },
          { title: "URL", value: (s) => h("span", { class: "mono" }, s.url || "stdio") },
          { title: "Health", value: (s) => healthBadge(s.healthy ? "healthy" : "down") },
          { title: "Tools", value: (s) => num(s.tools, 0), num: true },
          { title: "Connected", value: (s) => when(s.connected_at) },
          { title: "Last error", value: (s) => s.last_error || "–" },
        ],
        health.mcp_servers || [],
        "No MCP server is configured (MCP_SERVERS).",
      ),
    );
    clear(tools).append(
      table(
        [
          { title: "Tool", value: (t) => h("span", { class: "mono" }, t.name) },
          { title: "Server", value: (t) => t.server },
          { title: "Description", value: (t) => t.description || "–" },
          { title: "Health", value: (t) => healthBadge(t.healthy ? "healthy" : "down") },
        ],
        health.mcp_tools || [],
        "No tools.",
      ),
    );
    clear(agents).append(
      table(
        [
          { title: "Agent", value: (a) => a.name || "–" },
          { title: "URL", value: (a) => h("span", { class: "mono" }, a.url) },
          { title: "Protocol", value: (a) => a.protocol_version || "–" },
          { title: "Health", value: (a) => healthBadge(a.healthy ? "healthy" : "down") },
          { title: "Skills", value: (a) => (a.skills || []).map((s) => s.name).join(", ") || "–" },
          { title: "Last error", value: (a) => a.last_error || "–" },
        ],
        health.a2a_agents || [],
        "No A2A agent is configured (A2A_AGENTS).",
      ),
    );
  });
}
