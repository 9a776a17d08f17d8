// Models: aliases (the file's, read-only, and the store's) with their targets and fallbacks;
// add, edit and remove the store's.

import { admin, adminList } from "../api.js";
import { badge, checkbox, clear, confirmAction, field, h, notify, showError, table } from "../dom.js";

function list(v) {
  return String(v || "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

export async function render(root) {
  const name = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "fast" });
  const target = h("input", { type: "text", autocomplete: "off", placeholder: "openai/gpt-4o-mini" });
  const fallbacks = h("input", { type: "text", autocomplete: "off", placeholder: "groq/llama-3.1-8b-instant, anthropic/claude-haiku-4-5" });
  const prefix = h("input", { type: "text", autocomplete: "off" });
  const active = checkbox("Active", true);
  const submit = h("button", { type: "submit" }, "Add alias");
  const cancel = h("button", { type: "button", class: "quiet", hidden: true }, "Cancel edit");
  const heading = h("h2", { id: "alias-form-title" }, "Add an alias");
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "alias-form-title" },
    heading,
    h("div", { class: "row" }, field("Alias name", name), field("Target", target), field("Fallbacks", fallbacks)),
    field("System prompt prefix", prefix),
    active.wrap,
    h("div", { class: "actions" }, submit, cancel),
  );
  const listing = h("div", { id: "models-list" });
  root.append(
    h("h1", {}, "Models"),
    h("p", { class: "note" }, "Aliases route a name to provider/model, with fallbacks tried in order. The file's aliases are read-only here; the store's reach every replica within a second."),
    form,
    listing,
  );

  let editing = null;
  const reset = () => {
    editing = null;
    form.reset();
    active.input.checked = true;
    name.disabled = false;
    submit.textContent = "Add alias";
    heading.textContent = "Add an alias";
    cancel.hidden = true;
  };
  cancel.addEventListener("click", reset);

  async function load() {
    const models = await adminList("models");
    clear(listing).append(
      table(
        [
          { title: "Name", value: (m) => h("span", { class: "mono" }, m.name) },
          { title: "Target", value: (m) => m.target || (m.model_id ? `${m.model_id} (own backends)` : "–") },
          { title: "Fallbacks", value: (m) => (m.fallbacks || []).join(", ") || "–" },
          { title: "Active", value: (m) => (m.active ? badge("active", "ok") : badge("inactive", "muted")) },
          { title: "Routable", value: (m) => (m.routable === false ? badge("no", "bad") : badge("yes", "ok")) },
          { title: "Source", value: (m) => m.source },
          {
            title: "Actions",
            value: (m) =>
              m.source === "config"
                ? h("span", { class: "note" }, "from the file")
                : h(
                    "div",
                    { class: "actions" },
                    h("button", { type: "button", class: "small quiet", "aria-label": `Edit ${m.name}`, onclick: () => edit(m) }, "Edit"),
                    h("button", { type: "button", class: "small danger", "aria-label": `Remove ${m.name}`, onclick: () => remove(m) }, "Remove"),
                  ),
          },
        ],
        models,
        "No alias yet: add one above.",
      ),
    );
  }

  function edit(m) {
    editing = m;
    name.value = m.name;
    name.disabled = true;
    target.value = m.target || "";
    fallbacks.value = (m.fallbacks || []).join(", ");
    prefix.value = m.system_prompt_prefix || "";
    active.input.checked = m.active !== false;
    submit.textContent = "Save alias";
    heading.textContent = `Edit ${m.name}`;
    cancel.hidden = false;
    target.focus();
  }

  async function remove(m) {
    if (!(await confirmAction(`Remove the alias ${m.name}? Requests naming it will fail on every replica within a second.`, "Remove alias"))) return;
    try {
      await admin(`models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
      notify(`Alias ${m.name} removed.`, "info");
      if (editing && editing.id === m.id) reset();
      await load();
    } catch (err) {
      showError(err);
    }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      target: target.value.trim() || null,
      fallbacks: list(fallbacks.value),
      system_prompt_prefix: prefix.value.trim() || null,
      active: active.input.checked,
    };
    submit.disabled = true;
    try {
      if (editing) {
        await admin(`models/${encodeURIComponent(editing.id)}`, { method: "PUT", body });
        notify(`Alias ${editing.name} saved.`, "info");
      } else {
        await admin("models", { method: "POST", body: { name: name.value.trim(), ...body } });
        notify(`Alias ${name.value.trim()} added.`, "info");
      }
      reset();
      await load();
    } catch (err) {
      showError(err);
    } finally {
      submit.disabled = false;
    }
  });

  await load();
  return null;
}
