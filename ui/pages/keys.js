// Keys: every key with its usage against its limits and budget; create one (its secret shown
// once, with a copy button) and revoke with confirmation.

import { admin, adminList } from "../api.js";
import { badge, checkbox, clear, confirmAction, field, h, notify, num, showError, table, usd, when } from "../dom.js";

function limitCell(used, limit) {
  if (limit === null || limit === undefined) return `${num(used, 0)} / –`;
  return `${num(used, 0)} / ${num(limit, 0)}`;
}

async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API refused (not a secure context): select the text and copy it.
    input.select();
    return document.execCommand && document.execCommand("copy");
  }
}

export async function render(root) {
  const name = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "alice" });
  const models = h("input", { type: "text", autocomplete: "off", placeholder: "openai/*, fast" });
  const team = h("input", { type: "text", autocomplete: "off" });
  const rpm = h("input", { type: "number", min: 1, step: 1 });
  const tpm = h("input", { type: "number", min: 1, step: 1 });
  const budget = h("input", { type: "number", min: 0, step: "any" });
  const period = h(
    "select",
    {},
    ["monthly", "weekly", "daily", "total"].map((p) => h("option", { value: p }, p)),
  );
  const expires = h("input", { type: "datetime-local" });
  const create = h("button", { type: "submit" }, "Create key");
  const created = h("div", { id: "created-key", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "key-form-title" },
    h("h2", { id: "key-form-title" }, "Create a key"),
    h("div", { class: "row" }, field("Key name", name), field("Team", team), field("Models", models)),
    h("div", { class: "row" }, field("Requests per minute", rpm), field("Tokens per minute", tpm), field("Budget (USD)", budget), field("Budget period", period), field("Expires at", expires)),
    create,
    created,
  );
  const showRevoked = checkbox("Show revoked keys");
  const listing = h("div", { id: "keys-list" });
  root.append(
    h("h1", {}, "Keys"),
    h("p", { class: "note" }, "Keys from the store can be changed here; the file's are listed read-only. A key's secret is shown once, when it is created; the store keeps only its hash."),
    form,
    h("h2", {}, "Keys"),
    showRevoked.wrap,
    listing,
  );

  async function load() {
    const keys = await adminList(`keys${showRevoked.input.checked ? "?include_revoked=true" : ""}`);
    // Live usage of the first 200 live keys (one call each; the rest show their limits only).
    const usage = await Promise.all(
      keys.map((k, i) => (k.revoked_at || i >= 200 ? null : admin(`keys/${encodeURIComponent(k.id)}/usage`).catch(() => null))),
    );
    const rows = keys.map((k, i) => ({ ...k, usage: usage[i] }));
    clear(listing).append(
      table(
        [
          { title: "Name", value: (k) => h("span", { class: "mono" }, k.name) },
          { title: "Prefix", value: (k) => h("span", { class: "mono" }, k.key_prefix || "–") },
          { title: "Team", value: (k) => k.team || "–" },
          { title: "Models", value: (k) => (k.models && k.models.length ? k.models.join(", ") : "all") },
          { title: "RPM", value: (k) => (k.usage ? limitCell(k.usage.requests_this_minute, k.rpm) : "–"), num: true },
          { title: "TPM", value: (k) => (k.usage ? limitCell(k.usage.tokens_this_minute, k.tpm) : "–"), num: true },
          {
            title: "Spend / budget",
            value: (k) => (k.usage ? `${usd(k.usage.spend_usd)} / ${k.budget_usd === null || k.budget_usd === undefined ? "–" : `${usd(k.budget_usd)} ${k.budget_period || ""}`}` : "–"),
            num: true,
          },
          { title: "Expires", value: (k) => when(k.expires_at) },
          { title: "Created", value: (k) => when(k.created_at) },
          {
            title: "Status",
            value: (k) => (k.revoked_at ? badge("revoked", "bad") : k.expires_at && new Date(k.expires_at) < new Date() ? badge("expired", "warn") : badge("active", "ok")),
          },
          {
            title: "Actions",
            value: (k) =>
              k.source === "config"
                ? h("span", { class: "note" }, "from the file")
                : k.revoked_at
                  ? ""
                  : h("button", { type: "button", class: "small danger", "aria-label": `Revoke ${k.name}`, onclick: () => revoke(k) }, "Revoke"),
          },
        ],
        rows,
        "No key yet: create one above.",
      ),
    );
  }

  async function revoke(k) {
    if (!(await confirmAction(`Revoke the key ${k.name}? Callers using it get 401 on every replica within a second. This cannot be undone.`, "Revoke key"))) return;
    try {
      await admin(`keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      notify(`Key ${k.name} revoked.`, "info");
      await load();
    } catch (err) {
      showError(err);
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim() };
    const ms = models.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (ms.length) body.models = ms;
    if (team.value.trim()) body.team = team.value.trim();
    if (rpm.value) body.rpm = Number(rpm.value);
    if (tpm.value) body.tpm = Number(tpm.value);
    if (budget.value) {
      body.budget_usd = Number(budget.value);
      body.budget_period = period.value;
    }
    if (expires.value) body.expires_at = new Date(expires.value).toISOString();
    create.disabled = true;
    try {
      const out = await admin("keys", { method: "POST", body });
      const secret = h("input", { type: "text", readonly: true, value: out.key, "aria-label": "New key" });
      const copyButton = h("button", { type: "button" }, "Copy");
      const copied = h("span", { class: "note", "aria-live": "polite" });
      copyButton.addEventListener("click", async () => {
        copied.textContent = (await copy(out.key, secret)) ? "Copied." : "Copy it by hand.";
      });
      clear(created).append(
        h("div", { class: "secret" }, h("strong", {}, `Key ${out.api_key.name}:`), secret, copyButton, copied),
        h("p", { class: "note" }, "Copy it now: it is not shown again."),
      );
      form.reset();
      await load();
    } catch (err) {
      showError(err);
    } finally {
      create.disabled = false;
    }
  });
  showRevoked.input.addEventListener("change", () => load().catch(showError));

  await load();
  return null;
}
