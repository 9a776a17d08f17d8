// Calls to the gateway: the admin API with the admin key of this tab, the OpenAI-compatible
// API with the playground's key. Errors carry the gateway's message (its error envelope).

const ADMIN_KEY = "igw.admin_key";

export function adminKey() {
  return sessionStorage.getItem(ADMIN_KEY);
}

export function setAdminKey(key) {
  if (key) sessionStorage.setItem(ADMIN_KEY, key);
  else sessionStorage.removeItem(ADMIN_KEY);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
}

// Listeners told when the admin key stops working (the app signs out).
const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

async function parse(res) {
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const e = data && data.error;
    const message = (e && (e.message || e.type)) || `${res.status} ${res.statusText || "error"}`;
    throw new ApiError(res.status, message, e && e.code);
  }
  return data;
}

async function send(url, init) {
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, `The gateway could not be reached (${err.message})`);
  }
  return res;
}

// `path` is relative to /admin/v1/ (it may carry a query string).
export async function admin(path, { method = "GET", body, key } = {}) {
  const headers = { "X-Admin-Key": key || adminKey() || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await send(`/admin/v1/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  try {
    return await parse(res);
  } catch (err) {
    if (err.status === 401 && !key) unauthorized.forEach((fn) => fn(err));
    throw err;
  }
}

// Every page of a list (at most `max` items).
export async function adminList(path, max = 1000) {
  const out = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await admin(`${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    out.push(...(page.data || []));
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

// The OpenAI-compatible API, as a caller holding `apiKey` (none on an open gateway).
export async function api(path, { method = "GET", body, apiKey, headers = {}, signal } = {}) {
  const h = { ...headers };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await send(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  return res;
}

export { parse as readAnswer };
