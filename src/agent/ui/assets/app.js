// Piper's web UI: the little JavaScript the server-rendered pages need.
// Everything it reads or changes goes through the public /api/v1:
//   - live regions ([data-live]) re-render from this same page when
//     /api/v1/updates (Server-Sent Events) names a build they show;
//   - a step's page also loads log.js, the log viewer;
//   - buttons and forms POST to the API; the session cookie is sent by
//     the browser, and the API checks it and the Origin.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function notice(message) {
  const box = $("#notice");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

// An API call; resolves to the parsed JSON body (or null), throws an
// Error whose message is the API's own (naming the field, if any).
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  // A request the agent has not answered within a few seconds says so,
  // rather than leaving a disabled button and nothing else.
  const slow = setTimeout(() => notice("Still waiting for the agent to answer…"), 3000);
  let response, text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } finally {
    clearTimeout(slow);
  }
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    if (response.status === 401 && !path.endsWith("/session")) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    }
    const message = json && json.error ? json.error : `${response.status} ${response.statusText}`;
    throw new Error(json && json.field ? `${json.field}: ${message}` : message);
  }
  return json;
}

// ---- actions -------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-action]");
  if (!button) return;
  const id = button.dataset.build;
  button.disabled = true;
  try {
    switch (button.dataset.action) {
      case "logout":
        await api("DELETE", "/api/v1/session");
        location.href = "/";
        break;
      case "retrigger": {
        const build = await api("POST", `/api/v1/builds/${id}/retrigger`);
        location.href = `/builds/${build.id}`;
        break;
      }
      case "cancel":
        await api("POST", `/api/v1/builds/${id}/cancel`);
        await refreshLive();
        break;
    }
    notice("");
  } catch (error) {
    notice(error.message);
  } finally {
    button.disabled = false;
  }
});

function onSubmit(id, handler) {
  const form = document.getElementById(id);
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("button[type=submit]", form);
    button.disabled = true;
    try {
      await handler(form);
      notice("");
    } catch (error) {
      notice(error.message);
    } finally {
      button.disabled = false;
    }
  });
}

onSubmit("login", async (form) => {
  await api("POST", "/api/v1/session", { token: form.token.value });
  location.href = form.dataset.next || "/";
});

onSubmit("submit", async (form) => {
  const env = {};
  for (const [n, raw] of form.env.value.split("\n").entries()) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`env line ${n + 1}: expected NAME=value, got \`${line}\``);
    env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  const build = await api("POST", "/api/v1/builds", {
    repo: form.repo.value.trim(),
    ref: form.ref.value.trim(),
    pipeline: form.pipeline.value.trim(),
    env,
    requested_by: "web UI",
  });
  location.href = `/builds/${build.id}`;
});

// ---- live regions --------------------------------------------------------

let refreshing = null;
let refreshAgain = false;

// Re-renders every [data-live] region from a fresh copy of this page.
async function refreshLive() {
  if (refreshing) { refreshAgain = true; return refreshing; }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) break;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const old of $$("[data-live]")) {
        const updated = old.id && fresh.getElementById(old.id);
        // Keep keyboard focus where it was, if it was inside.
        const focused = document.activeElement && old.contains(document.activeElement)
          ? document.activeElement.getAttribute("href") : null;
        if (updated) old.replaceWith(updated);
        if (focused) { const again = $(`[href="${CSS.escape(focused)}"]`, updated); if (again) again.focus(); }
      }
      tick();
    } while (refreshAgain);
  })();
  try { await refreshing; } finally { refreshing = null; }
}

// Does an update of build `id` concern what this page shows?
function concerns(id) {
  for (const region of $$("[data-live]")) {
    const live = region.dataset.live;
    if (live === "all") return true;
    if (live.split(" ").includes(String(id))) return true;
    // A running build may trigger builds that are new to this page.
    const own = Number(region.dataset.build);
    if (own && region.dataset.final === "false" && id > own) return true;
  }
  return false;
}

let timer = null;
function scheduleRefresh() {
  clearTimeout(timer);
  timer = setTimeout(refreshLive, 150);
}

// One update stream per page while it is shown. A page the browser keeps
// in its back/forward cache closes its stream (`pagehide`) and opens it
// again when shown (`pageshow`): open streams of hidden pages took the
// browser's six connections to the agent, and the next request waited.
let updates = null;
function openUpdates() {
  if (updates) return;
  const source = new EventSource("/api/v1/updates");
  source.addEventListener("build", (e) => {
    try { if (concerns(JSON.parse(e.data).id)) scheduleRefresh(); } catch (_) { /* ignore */ }
  });
  source.addEventListener("lagged", scheduleRefresh);
  // What was written between the page's rendering and this stream's
  // start was announced to nobody: read the page once more when the
  // stream opens (unless all it shows has ended), and after a reconnect.
  source.addEventListener("open", () => {
    const settled = $$("[data-live]").every((region) => region.dataset.final === "true");
    if (source.seenOpen || !settled) scheduleRefresh();
    source.seenOpen = true;
  });
  updates = source;
}

// A step's page follows its log's stream, which also says when anything
// else of the build was written: one stream per tab, not two.
if ($("[data-live]") && !$("#log")) {
  openUpdates();
  window.addEventListener("pagehide", () => { if (updates) { updates.close(); updates = null; } });
  window.addEventListener("pageshow", (e) => { if (e.persisted) { openUpdates(); scheduleRefresh(); } });
}

// ---- running times -------------------------------------------------------

function duration(ms) {
  ms = Math.max(0, ms);
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)}m ${String(Math.floor(ms / 1000) % 60).padStart(2, "0")}s`;
  return `${Math.floor(ms / 3600000)}h ${String(Math.floor(ms / 60000) % 60).padStart(2, "0")}m`;
}

function tick() {
  for (const el of $$("[data-since]")) el.textContent = duration(Date.now() - Number(el.dataset.since));
}
setInterval(tick, 1000);

tick();
