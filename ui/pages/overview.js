// Overview: this replica's live numbers and the last 15 minutes as charts, per provider too.

import { admin } from "../api.js";
import { lineChart } from "../chart.js";
import { clear, every, h, healthBadge, ms, num, pct, table, usd } from "../dom.js";

function tile(label, value) {
  return h("div", { class: "tile" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

function today() {
  return new Date().toISOString().slice(0, 10);
}

// Spend today from the ledger (all replicas), or null without a store.
async function spendToday() {
  try {
    const r = await admin(`spend?group_by=day&from=${today()}`);
    return r.total.spend_usd;
  } catch (err) {
    if (err.status === 503) return null;
    throw err;
  }
}

export async function render(root) {
  root.append(
    h("h1", {}, "Overview"),
    h("p", { class: "note", id: "overview-scope" }, "Live numbers of this replica (each replica keeps its own series): one point every 10 s over the last 15 minutes, refreshed every 5 s."),
  );
  const tiles = h("div", { class: "tiles", id: "overview-tiles" });
  const providers = h("section", { "aria-labelledby": "overview-providers" });
  const charts = h("div", { class: "charts" });
  root.append(tiles, h("h2", { id: "overview-providers" }, "Providers"), providers, h("h2", {}, "Last 15 minutes"), charts);

  return every(5, async () => {
    const [stats, health, spend] = await Promise.all([admin("stats"), admin("health"), spendToday()]);
    const cur = (stats && stats.current) || {};
    const points = ((stats && stats.data) || []).concat([cur]);
    clear(tiles).append(
      tile("Requests/s", num(cur.requests_per_second)),
      tile("Tokens/s", num(cur.tokens_per_second)),
      tile("Error rate", pct(cur.error_rate)),
      tile("Latency p50", ms(cur.latency_p50_ms)),
      tile("Latency p99", ms(cur.latency_p99_ms)),
      tile("TTFT p50", ms(cur.ttft_p50_ms)),
      tile("Active streams", num(stats ? stats.active_streams : null, 0)),
      tile("In flight", num(stats ? stats.in_flight : null, 0)),
      tile(spend === null ? "Spend, 15 min (this replica)" : "Spend today", usd(spend === null ? points.reduce((a, p) => a + (p.spend_usd || 0), 0) : spend)),
    );

    // Requests per provider over the window, with each provider's backends' health.
    const counts = {};
    for (const p of points) for (const [k, v] of Object.entries(p.requests_by_provider || {})) counts[k] = (counts[k] || 0) + v;
    const names = [...new Set([...Object.keys(health.providers || {}), ...Object.keys(counts)])].sort();
    const rows = names.map((name) => {
      const backends = ((health.providers || {})[name] || {}).backends || [];
      const status = backends.length ? (backends.every((b) => b.status === "healthy") ? "healthy" : backends.some((b) => b.status === "healthy") ? "half_open" : "ejected") : "unknown";
      const lat = backends.map((b) => b.latency_ms).filter((v) => v !== null && v !== undefined);
      return { name, status, backends: backends.length, requests: counts[name] || 0, latency: lat.length ? Math.min(...lat) : null, inflight: backends.reduce((a, b) => a + (b.outstanding || 0), 0) };
    });
    clear(providers).append(
      table(
        [
          { title: "Provider", value: (r) => r.name },
          { title: "Health", value: (r) => healthBadge(r.status) },
          { title: "Backends", value: (r) => num(r.backends, 0), num: true },
          { title: "Requests (15 min)", value: (r) => num(r.requests, 0), num: true },
          { title: "In flight", value: (r) => num(r.inflight, 0), num: true },
          { title: "Latency", value: (r) => ms(r.latency), num: true },
        ],
        rows,
        "No provider is configured.",
      ),
    );

    const labels = points.map((p) => (p.at ? new Date(p.at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : ""));
    const series = (key) => points.map((p) => (p[key] === undefined ? null : p[key]));
    clear(charts).append(
      lineChart("Requests/s", labels, [{ name: "requests/s", values: series("requests_per_second") }]),
      lineChart("Tokens/s", labels, [{ name: "tokens/s", values: series("tokens_per_second") }]),
      lineChart("Latency (ms)", labels, [
        { name: "p50", values: series("latency_p50_ms") },
        { name: "p99", values: series("latency_p99_ms") },
      ], " ms"),
      lineChart("Time to first token (ms)", labels, [
        { name: "p50", values: series("ttft_p50_ms") },
        { name: "p99", values: series("ttft_p99_ms") },
      ], " ms"),
      lineChart("Error rate", labels, [{ name: "errors", values: series("error_rate") }]),
      lineChart("Spend (USD per interval)", labels, [{ name: "spend", values: series("spend_usd") }]),
    );
  });
}
