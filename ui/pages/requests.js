// Requests: the store's request log, newest first, filtered by key, model and status, with a
// detail view of one request (its bodies only when the gateway keeps them).

import { admin } from "../api.js";
import { badge, clear, field, h, ms, num, showError, table, usd, when } from "../dom.js";

function statusBadge(s) {
  return badge(String(s), s >= 500 || s === 0 ? "bad" : s >= 400 ? "warn" : "ok");
}

function pretty(text) {
  if (text === null || text === undefined) return null;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

export async function render(root) {
  const key = h("input", { type: "text", autocomplete: "off", placeholder: "name or key_..." });
  const model = h("input", { type: "text", autocomplete: "off" });
  const status = h("input", { type: "text", autocomplete: "off", placeholder: "200, 4xx or error" });
  const apply = h("button", { type: "submit" }, "Apply filters");
  const form = h("form", { class: "card" }, h("div", { class: "row" }, field("Key", key), field("Model", model), field("Status", status), apply));
  const listing = h("div", { id: "requests-list" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more");
  const detail = h("section", { id: "request-detail", "aria-live": "polite" });
  root.append(
    h("h1", {}, "Requests"),
    h("p", { class: "note" }, "Recent API requests from the store's request log (kept for STORE_REQUEST_LOG_RETENTION; bodies only with STORE_LOG_BODIES=true)."),
    form,
    listing,
    more,
    detail,
  );

  let rows = [];
  let cursor = null;

  function query() {
    const q = new URLSearchParams({ limit: "50" });
    if (key.value.trim()) q.set("key", key.value.trim());
    if (model.value.trim()) q.set("model", model.value.trim());
    if (status.value.trim()) q.set("status", status.value.trim());
    if (cursor) q.set("cursor", cursor);
    return q.toString();
  }

  async function load(next = false) {
    if (!next) {
      rows = [];
      cursor = null;
    }
    const page = await admin(`requests?${query()}`);
    rows = rows.concat(page.data || []);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    clear(listing).append(
      table(
        [
          { title: "Time", value: (r) => when(r.created_at) },
          { title: "Key", value: (r) => r.key || "–" },
          { title: "Model", value: (r) => h("span", { class: "mono" }, r.model || "–") },
          { title: "Provider", value: (r) => r.provider || "–" },
          { title: "Status", value: (r) => statusBadge(r.status) },
          { title: "Duration", value: (r) => ms(r.duration_ms), num: true },
          { title: "TTFT", value: (r) => ms(r.ttft_ms), num: true },
          { title: "Tokens", value: (r) => `${num(r.prompt_tokens, 0)} + ${num(r.completion_tokens, 0)}`, num: true },
          { title: "Cost", value: (r) => usd(r.spend_usd), num: true },
          {
            title: "Details",
            value: (r) => h("button", { type: "button", class: "small quiet", "aria-label": `Details of ${r.id}`, onclick: () => show(r.id) }, "Details"),
          },
        ],
        rows,
        "No request matches.",
      ),
    );
  }

  async function show(id) {
    try {
      const r = await admin(`requests/${encodeURIComponent(id)}`);
      const fields = [
        ["Request id", r.request_id],
        ["Log id", r.id],
        ["Time", when(r.created_at)],
        ["Method and path", `${r.method || ""} ${r.path || ""}`],
        ["Key", r.key],
        ["Team", r.team],
        ["Model", r.model],
        ["Provider / upstream model", `${r.provider || "–"} / ${r.upstream_model || "–"}`],
        ["Status", r.status],
        ["Error", r.error],
        ["Duration", ms(r.duration_ms)],
        ["Time to first token", ms(r.ttft_ms)],
        ["Tokens", `${num(r.prompt_tokens, 0)} prompt, ${num(r.completion_tokens, 0)} completion${r.usage_estimated ? " (estimated)" : ""}`],
        ["Cost", usd(r.spend_usd)],
        ["Client left early", r.client_disconnected ? "yes" : "no"],
      ];
      clear(detail).append(
        h("div", { class: "card" },
          h("h2", {}, `Request ${r.request_id || r.id}`),
          h("dl", { class: "detail" }, fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? "–" : String(v))])),
          r.request_body ? [h("h3", {}, "Request body"), h("pre", {}, pretty(r.request_body))] : h("p", { class: "note" }, "Bodies are not kept (STORE_LOG_BODIES is off)."),
          r.response_body ? [h("h3", {}, "Answer"), h("pre", {}, pretty(r.response_body))] : null,
          h("details", {}, h("summary", {}, "Whole record"), h("pre", {}, JSON.stringify(r.record, null, 2))),
        ),
      );
      detail.scrollIntoView({ block: "nearest" });
    } catch (err) {
      showError(err);
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    load().catch(showError);
  });
  more.addEventListener("click", () => load(true).catch(showError));
  await load();
  return null;
}
