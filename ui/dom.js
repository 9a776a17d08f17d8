// Small DOM helpers: elements from data (never from HTML strings), formatting, the page's
// message line and a confirmation dialog.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

let fieldSeq = 0;
// A labelled control: `{label, input}`; the label names the control (its accessible name).
export function field(label, control) {
  if (!control.id) control.id = `f${++fieldSeq}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control);
}

export function checkbox(label, checked = false) {
  const input = h("input", { type: "checkbox", checked });
  return { wrap: h("label", { class: "inline" }, input, label), input };
}

// A table: `columns` are `{title, value(row) -> Node|string, num?}`.
export function table(columns, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("div", { class: "table-wrap" }, h("p", { class: "empty" }, empty));
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.title)))),
      h(
        "tbody",
        {},
        rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(r) ?? "")))),
      ),
    ),
  );
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind}` }, text);
}

export function healthBadge(status) {
  const s = String(status ?? "unknown");
  const kind = s === "healthy" || s === "ok" || s === "true" ? "ok" : s === "half_open" ? "warn" : s === "unknown" ? "muted" : "bad";
  const text = s === "true" ? "healthy" : s === "false" ? "down" : s;
  return badge(text, kind);
}

const nf = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });
export function num(v, digits = 2) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return digits === 2 ? nf.format(v) : Number(v).toFixed(digits);
}

export function usd(v) {
  if (v === null || v === undefined) return "–";
  if (v !== 0 && Math.abs(v) < 0.01) return `$${Number(v).toPrecision(2)}`;
  return `$${Number(v).toFixed(2)}`;
}

export function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${nf.format(v)} ms`;
}

export function pct(v) {
  if (v === null || v === undefined) return "–";
  return `${(v * 100).toFixed(1)}%`;
}

export function when(v) {
  if (!v) return "–";
  const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return d.toLocaleString();
}

// The message line under the header: errors from the API are shown, never swallowed.
export function notify(message, kind = "error") {
  const box = document.getElementById("notice");
  document.getElementById("notice-text").textContent = message;
  box.classList.toggle("info", kind === "info");
  box.hidden = false;
}

export function showError(err) {
  const msg = err && err.message ? err.message : String(err);
  const status = err && err.status ? ` (${err.status}${err.code ? ` ${err.code}` : ""})` : "";
  notify(`${msg}${status}`);
}

export function clearNotice() {
  document.getElementById("notice").hidden = true;
}

// Asks before something that cannot be undone; resolves true when confirmed.
export function confirmAction(text, confirmLabel) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = confirmLabel;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "yes"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
  });
}

// Runs `fn` now and every `seconds` until the returned stop function is called; errors are
// shown once per failure streak.
export function every(seconds, fn) {
  let stopped = false;
  let timer = null;
  let failing = false;
  const tick = async () => {
    try {
      await fn();
      failing = false;
    } catch (err) {
      if (!failing) showError(err);
      failing = true;
    }
    if (!stopped) timer = setTimeout(tick, seconds * 1000);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
