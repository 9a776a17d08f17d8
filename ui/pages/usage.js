// Usage: spend and tokens from the store's ledger (every replica's), over time and by key,
// team and model, for a chosen period.

import { admin } from "../api.js";
import { barChart } from "../chart.js";
import { clear, field, h, num, showError, table, usd } from "../dom.js";

const PERIODS = {
  today: { label: "Today (by hour)", days: 0, by: "hour" },
  week: { label: "Last 7 days", days: 7, by: "day" },
  month: { label: "Last 30 days", days: 30, by: "day" },
};

function from(p) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - (p.days ? p.days - 1 : 0));
  return d.toISOString().slice(0, 10);
}

function byTable(title, noun, report) {
  return [
    h("h2", {}, title),
    table(
      [
        { title: noun, value: (g) => h("span", { class: "mono" }, g[report.group_by] ?? "–") },
        { title: "Requests", value: (g) => num(g.requests, 0), num: true },
        { title: "Prompt tokens", value: (g) => num(g.prompt_tokens, 0), num: true },
        { title: "Completion tokens", value: (g) => num(g.completion_tokens, 0), num: true },
        { title: "Spend", value: (g) => usd(g.spend_usd), num: true },
      ],
      report.data,
      "Nothing spent in this period.",
    ),
  ];
}

export async function render(root) {
  const period = h(
    "select",
    {},
    Object.entries(PERIODS).map(([k, p]) => h("option", { value: k, selected: k === "week" }, p.label)),
  );
  const out = h("div", { id: "usage-body" });
  root.append(
    h("h1", {}, "Usage"),
    h("p", { class: "note" }, "From the store's ledger: every replica's requests, booked per hour (UTC) within about a second of their end."),
    h("div", { class: "row" }, field("Period", period)),
    out,
  );

  async function load() {
    const p = PERIODS[period.value];
    const q = `from=${from(p)}`;
    const [time, keys, teams, models] = await Promise.all(
      [p.by, "key", "team", "model"].map((by) => admin(`spend?group_by=${by}&${q}`)),
    );
    const points = time.data.slice().sort((a, b) => String(a[p.by]).localeCompare(String(b[p.by])));
    const label = (g) => (p.by === "hour" ? String(g.hour).slice(11, 16) : String(g.day).slice(5));
    const t = time.total;
    clear(out).append(
      h(
        "div",
        { class: "tiles" },
        h("div", { class: "tile" }, h("div", { class: "label" }, "Spend"), h("div", { class: "value" }, usd(t.spend_usd))),
        h("div", { class: "tile" }, h("div", { class: "label" }, "Requests"), h("div", { class: "value" }, num(t.requests, 0))),
        h("div", { class: "tile" }, h("div", { class: "label" }, "Tokens"), h("div", { class: "value" }, num(t.prompt_tokens + t.completion_tokens, 0))),
      ),
      h(
        "div",
        { class: "charts" },
        barChart(`Spend per ${p.by} (USD)`, points.map(label), points.map((g) => g.spend_usd), (v) => usd(v)),
        barChart(`Tokens per ${p.by}`, points.map(label), points.map((g) => g.prompt_tokens + g.completion_tokens)),
      ),
      ...byTable("By key", "Key", keys),
      ...byTable("By team", "Team", teams),
      ...byTable("By model", "Model", models),
    );
  }
  period.addEventListener("change", () => load().catch(showError));
  await load();
  return null;
}
