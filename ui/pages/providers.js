// Providers: every backend of every configured provider with its health, ejections, requests in
// flight and latency (time to response headers, a moving average), refreshed every 5 s.

import { admin } from "../api.js";
import { clear, every, h, healthBadge, ms, num, table, when } from "../dom.js";

export async function render(root) {
  root.append(
    h("h1", {}, "Providers"),
    h("p", { class: "note" }, "Backends as this replica sees them; latency is the time to the backend's response headers (a moving average)."),
  );
  const body = h("div", { id: "providers-list" });
  const store = h("p", { class: "note" });
  root.append(body, store);
  return every(5, async () => {
    const health = await admin("health");
    const rows = [];
    for (const [name, p] of Object.entries(health.providers || {}).sort()) {
      for (const b of p.backends || []) rows.push({ provider: name, balance: p.balance, ...b });
    }
    clear(body).append(
      table(
        [
          { title: "Provider", value: (r) => r.provider },
          { title: "Backend", value: (r) => h("span", { class: "mono" }, r.backend) },
          { title: "Weight", value: (r) => num(r.weight, 0), num: true },
          { title: "Health", value: (r) => healthBadge(r.status) },
          { title: "Ejections", value: (r) => num(r.ejections, 0), num: true },
          { title: "In flight", value: (r) => num(r.outstanding, 0), num: true },
          { title: "Latency", value: (r) => ms(r.latency_ms), num: true },
          { title: "Balance", value: (r) => r.balance },
        ],
        rows,
        "No provider is configured.",
      ),
    );
    const st = health.store;
    store.textContent = `Gateway ${health.version}, up ${num(health.uptime_seconds / 60, 0)} min, status ${health.status}. Store: ${st ? `${st.kind}${st.reachable ? "" : " (unreachable: serving from the last snapshot)"}` : "none (keys and spend in memory)"}. Checked ${when(Date.now() / 1000)}.`;
  });
}
