// Playground: chat with any model through the gateway as a caller would. It uses a short-lived
// key minted through the admin API for this tab (labelled, expiring within the hour, listed on
// the Keys page), streams the answer and shows TTFT, tokens and cost from the model table.

import { ApiError, admin, api, readAnswer } from "../api.js";
import { checkbox, clear, field, h, ms, num, showError, usd, when } from "../dom.js";

const SESSION_KEY = "igw.playground_key";
const LIFETIME_MS = 60 * 60 * 1000;

function stamp(d) {
  return d.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

// This tab's playground key: kept while it has more than five minutes left.
async function sessionKey() {
  const kept = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  if (kept && Date.parse(kept.expires_at) - Date.now() > 5 * 60 * 1000) return kept;
  const now = new Date();
  const body = {
    name: `playground-${stamp(now)}-${Math.random().toString(36).slice(2, 6)}`,
    expires_at: new Date(now.getTime() + LIFETIME_MS).toISOString(),
    metadata: { created_by: "web-ui", purpose: "playground" },
  };
  const out = await admin("keys", { method: "POST", body });
  const key = { key: out.key, id: out.api_key.id, name: out.api_key.name, expires_at: body.expires_at };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(key));
  return key;
}

// Server-sent events from a fetch body: calls `onData` with each event's data.
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

export async function render(root) {
  const modelSelect = h("select", {});
  const system = h("textarea", { rows: 3, placeholder: "You are a helpful assistant." });
  const message = h("textarea", { rows: 4, placeholder: "Ask something…" });
  const tools = checkbox("MCP tools", true);
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "quiet", disabled: true }, "Stop");
  const reset = h("button", { type: "button", class: "quiet" }, "Clear");
  const keyInfo = h("p", { class: "note", id: "playground-key" }, "Minting a key for this session…");
  const transcript = h("div", { class: "card transcript", id: "transcript", "aria-live": "polite", "aria-label": "Conversation" });
  const metrics = h("div", { class: "metrics", id: "playground-metrics", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card" },
    field("Model", modelSelect),
    field("System prompt", system),
    field("Message", message),
    tools.wrap,
    h("div", { class: "actions" }, send, stop, reset),
    keyInfo,
  );
  root.append(
    h("h1", {}, "Playground"),
    h("div", { class: "playground" }, form, h("div", {}, transcript, metrics)),
  );

  let key = null;
  try {
    key = await sessionKey();
    keyInfo.textContent = `Calling as ${key.name} (a key for this session, expires ${when(key.expires_at)}; listed on the Keys page).`;
  } catch (err) {
    if (err.status === 503) {
      keyInfo.textContent = `No key could be minted (${err.message}); calling without one, which works on an open gateway.`;
    } else {
      showError(err);
      keyInfo.textContent = `No key could be minted: ${err.message}`;
    }
  }

  // Models the key may use, with their prices.
  const prices = {};
  try {
    const res = await api("/v1/models?include=pricing", { apiKey: key && key.key });
    const list = await readAnswer(res);
    for (const m of list.data || []) {
      modelSelect.append(h("option", { value: m.id }, m.id));
      if (m.pricing) prices[m.id] = { input: parseFloat(m.pricing.input_per_token), output: parseFloat(m.pricing.output_per_token) };
    }
  } catch (err) {
    showError(err);
  }
  if (!modelSelect.options.length) modelSelect.append(h("option", { value: "" }, "no model available"));

  let history = [];
  let controller = null;

  function turn(who, text) {
    const body = h("span", { class: "text" }, text);
    const el = h("div", { class: `turn ${who}` }, h("span", { class: "who" }, who === "user" ? "You" : who === "assistant" ? "Assistant" : "Error"), body);
    transcript.append(el);
    return body;
  }

  reset.addEventListener("click", () => {
    history = [];
    clear(transcript);
    clear(metrics);
  });
  stop.addEventListener("click", () => controller && controller.abort());

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = message.value.trim();
    if (!text || controller) return;
    const model = modelSelect.value;
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    history.push({ role: "user", content: text });
    messages.push(...history);
    turn("user", text);
    message.value = "";
    const out = turn("assistant", "");
    clear(metrics).append(h("span", {}, "Waiting for the first token…"));
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let ttft = null;
    let usage = null;
    let answer = "";
    let finish = null;
    try {
      const headers = tools.input.checked ? {} : { "X-MCP-Bypass": "true" };
      const res = await api("/v1/chat/completions", {
        method: "POST",
        apiKey: key && key.key,
        headers,
        signal: controller.signal,
        body: { model, messages, stream: true, stream_options: { include_usage: true } },
      });
      if (!res.ok) await readAnswer(res);
      await readEvents(res.body, (data) => {
        if (data === "[DONE]") return false;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error.message || "the stream failed", chunk.error.code);
        if (chunk.usage) usage = chunk.usage;
        const choice = (chunk.choices || [])[0];
        const delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          if (ttft === null) ttft = performance.now() - started;
          answer += delta;
          out.textContent = answer;
        }
        if (choice && choice.finish_reason) finish = choice.finish_reason;
        return true;
      });
      history.push({ role: "assistant", content: answer });
    } catch (err) {
      history.pop();
      if (err.name === "AbortError") {
        out.textContent = `${answer} [stopped]`;
      } else {
        out.parentElement.classList.add("error");
        out.textContent = `${answer}${answer ? "\n" : ""}${err.message}`;
        showError(err);
      }
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
    const total = performance.now() - started;
    const p = prices[model];
    const cost = usage && p ? usage.prompt_tokens * p.input + usage.completion_tokens * p.output : null;
    clear(metrics).append(
      h("span", { id: "metric-ttft" }, `TTFT ${ms(ttft === null ? null : Math.round(ttft))}`),
      h("span", { id: "metric-total" }, `total ${ms(Math.round(total))}`),
      h("span", { id: "metric-tokens" }, usage ? `${num(usage.prompt_tokens, 0)} prompt + ${num(usage.completion_tokens, 0)} completion tokens` : "tokens –"),
      h("span", { id: "metric-cost" }, cost === null ? (p ? "cost –" : "cost – (no price for this model)") : `cost ${usd(cost)}`),
      finish ? h("span", {}, `finish: ${finish}`) : null,
    );
  });
  return () => controller && controller.abort();
}
