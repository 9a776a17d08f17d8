// The UI's shell: sign-in, navigation between pages (the URL's hash), and each page's refresh
// timers stopped when the person leaves it.

import { admin, adminKey, onUnauthorized, setAdminKey } from "./api.js";
import { clear, clearNotice, showError } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as providers from "./pages/providers.js";
import * as models from "./pages/models.js";
import * as keys from "./pages/keys.js";
import * as usage from "./pages/usage.js";
import * as requests from "./pages/requests.js";
import * as mcp from "./pages/mcp.js";
import * as playground from "./pages/playground.js";

const PAGES = { overview, providers, models, keys, usage, requests, mcp, playground };
const TITLES = {
  overview: "Overview",
  providers: "Providers",
  models: "Models",
  keys: "Keys",
  usage: "Usage",
  requests: "Requests",
  mcp: "MCP",
  playground: "Playground",
};

let stopPage = null;

function showSignIn(message) {
  setAdminKey(null);
  if (stopPage) stopPage();
  stopPage = null;
  clear(document.getElementById("page"));
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.title = "Sign in · Inference Gateway";
  document.getElementById("admin-key").focus();
}

async function route() {
  if (!adminKey()) {
    showSignIn();
    return;
  }
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  const name = (location.hash.replace(/^#\/?/, "").split("/")[0] || "overview").toLowerCase();
  const page = PAGES[name] ? name : "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${page}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (stopPage) stopPage();
  stopPage = null;
  clearNotice();
  const root = clear(document.getElementById("page"));
  document.title = `${TITLES[page]} · Inference Gateway`;
  try {
    stopPage = (await PAGES[page].render(root)) || null;
  } catch (err) {
    showError(err);
  }
}

document.getElementById("sign-in").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = document.getElementById("admin-key").value.trim();
  const out = document.getElementById("sign-in-error");
  out.textContent = "";
  try {
    // The key is checked before it is kept.
    await admin("health", { key });
  } catch (err) {
    out.textContent = `Sign-in failed: ${err.message}`;
    return;
  }
  document.getElementById("admin-key").value = "";
  setAdminKey(key);
  if (!location.hash) location.hash = "#/overview";
  route();
});

document.getElementById("sign-out").addEventListener("click", () => showSignIn());
document.getElementById("notice-close").addEventListener("click", clearNotice);
onUnauthorized((err) => showSignIn(`Signed out: ${err.message}`));
window.addEventListener("hashchange", route);
route();
