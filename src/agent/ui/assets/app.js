// Piper's web UI: the little JavaScript the server-rendered pages need.
// Everything it reads or changes goes through the public /api/v1:
//   - live regions ([data-live]) re-render from this same page when
//     /api/v1/updates (Server-Sent Events) names a build they show;
//   - the log viewer reads /log (a tail, earlier parts on demand) and
//     follows /events (SSE) from where it stopped;
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

if ($("[data-live]")) {
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

// ---- ANSI colours ----------------------------------------------------------
// The same classes as the server's excerpts (src/agent/ui/ansi.rs).

const PALETTE = [0, 95, 135, 175, 215, 255];
function color256(n) {
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  n -= 16;
  return `rgb(${PALETTE[Math.floor(n / 36)]},${PALETTE[Math.floor(n / 6) % 6]},${PALETTE[n % 6]})`;
}

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(";").map((p) => Number(p) || 0);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) { for (const k of Object.keys(style)) delete style[k]; }
    else if (c === 1) style.b = true;
    else if (c === 2) style.dim = true;
    else if (c === 3) style.i = true;
    else if (c === 4) style.u = true;
    else if (c === 22) { delete style.b; delete style.dim; }
    else if (c === 23) delete style.i;
    else if (c === 24) delete style.u;
    else if (c >= 30 && c <= 37) { style.fg = c - 30; delete style.fgRgb; }
    else if (c >= 90 && c <= 97) { style.fg = c - 82; delete style.fgRgb; }
    else if (c === 39) { delete style.fg; delete style.fgRgb; }
    else if (c >= 40 && c <= 47) { style.bg = c - 40; delete style.bgRgb; }
    else if (c >= 100 && c <= 107) { style.bg = c - 92; delete style.bgRgb; }
    else if (c === 49) { delete style.bg; delete style.bgRgb; }
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      const n = codes[i + 2] || 0;
      const key = c === 38 ? "fg" : "bg";
      if (n < 16) { style[key] = n; delete style[key + "Rgb"]; } else { style[key + "Rgb"] = color256(n); delete style[key]; }
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      const key = c === 38 ? "fg" : "bg";
      style[key + "Rgb"] = `rgb(${codes[i + 2] || 0},${codes[i + 3] || 0},${codes[i + 4] || 0})`;
      delete style[key];
      i += 4;
    }
  }
}

// Renders log bytes into lines (<span class="line">) inside `target`,
// keeping colours and partial escapes/characters across calls.
class Renderer {
  constructor(target, offset) {
    this.target = target;
    this.offset = offset;
    this.style = {};
    this.pending = "";
    this.decoder = new TextDecoder();
    this.line = null;
    this.lines = 0;
  }

  newLine() {
    this.line = document.createElement("span");
    this.line.className = "line";
    this.line.pieceOffset = this.offset;
    this.target.appendChild(this.line);
    this.lines++;
  }

  text(text) {
    if (!text) return;
    if (!this.line) this.newLine();
    const keys = Object.keys(this.style);
    if (keys.length === 0) { this.line.appendChild(document.createTextNode(text)); return; }
    const span = document.createElement("span");
    const classes = [];
    if (this.style.fg !== undefined) classes.push(`fg-${this.style.fg}`);
    if (this.style.bg !== undefined) classes.push(`bg-${this.style.bg}`);
    for (const k of ["b", "dim", "i", "u"]) if (this.style[k]) classes.push(k);
    span.className = classes.join(" ");
    if (this.style.fgRgb) span.style.color = this.style.fgRgb;
    if (this.style.bgRgb) span.style.backgroundColor = this.style.bgRgb;
    span.textContent = text;
    this.line.appendChild(span);
  }

  // Text of one line part: colours applied, other escapes dropped.
  styled(text) {
    text = this.pending + text;
    this.pending = "";
    const esc = /\x1b(?:\[([0-9;?]*)([@-~])|[^[])/g;
    let last = 0;
    for (let m; (m = esc.exec(text));) {
      this.text(text.slice(last, m.index).replace(/\r/g, ""));
      if (m[2] === "m") applySgr(this.style, m[1] || "");
      last = esc.lastIndex;
    }
    let rest = text.slice(last);
    const open = rest.lastIndexOf("\x1b");
    if (open >= 0 && rest.length - open < 32) { this.pending = rest.slice(open); rest = rest.slice(0, open); }
    this.text(rest.replace(/\r/g, ""));
  }

  write(bytes) {
    let start = 0;
    while (start < bytes.length) {
      const nl = bytes.indexOf(10, start);
      const end = nl < 0 ? bytes.length : nl;
      if (!this.line) this.newLine();
      this.styled(this.decoder.decode(bytes.subarray(start, end), { stream: true }));
      this.offset += end - start;
      if (nl < 0) break;
      this.line.appendChild(document.createTextNode("\n"));
      this.line = null;
      this.offset += 1;
      start = nl + 1;
    }
  }
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// ---- the log viewer -------------------------------------------------------

const TAIL = 256 * 1024;      // what a page shows at first
const MAX_LINES = 60000;      // more: the oldest lines leave the page

class LogViewer {
  constructor(pre) {
    this.pre = pre;
    this.build = pre.dataset.build;
    this.step = pre.dataset.step;
    this.status = $("#log-status");
    this.followButton = $("#follow");
    this.earlierButton = $("#earlier");
    this.start = 0;
    this.next = 0;
    this.renderer = null;
    this.ourScroll = false;
  }

  get following() { return this.followButton.getAttribute("aria-pressed") === "true"; }
  set following(on) {
    this.followButton.setAttribute("aria-pressed", on ? "true" : "false");
    if (on) this.scrollToEnd();
  }

  scrollToEnd() {
    this.ourScroll = true;
    window.scrollTo(0, document.documentElement.scrollHeight);
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  async start_() {
    const step = encodeURIComponent(this.step);
    const response = await fetch(`/api/v1/builds/${this.build}/log?step=${step}&tail=${TAIL}`, { credentials: "same-origin" });
    if (!response.ok) { this.status.textContent = `Cannot read the log: ${response.status}`; return; }
    let start = Number(response.headers.get("x-piper-offset") || 0);
    this.next = Number(response.headers.get("x-piper-next-offset") || 0);
    let bytes = new Uint8Array(await response.arrayBuffer());
    if (start > 0) {
      // Start at a whole line.
      const nl = bytes.indexOf(10);
      if (nl >= 0) { bytes = bytes.subarray(nl + 1); start += nl + 1; }
    }
    this.start = start;
    this.renderer = new Renderer(this.pre, start);
    this.renderer.write(bytes);
    this.earlierButton.hidden = this.start === 0;
    if (this.pre.dataset.final === "true" && response.headers.get("x-piper-build-status") !== "running" && response.headers.get("x-piper-build-status") !== "queued") {
      this.status.textContent = bytes.length ? "" : "No output.";
      return;
    }
    if (this.following) this.scrollToEnd();
    this.follow();
  }

  follow() {
    const step = encodeURIComponent(this.step);
    const source = new EventSource(`/api/v1/builds/${this.build}/events?step=${step}&offset=${this.next}`);
    // Closed while the page is hidden (back/forward cache), as the update
    // stream is; taken up again from where it was when shown.
    this.source = source;
    if (!this.hideListener) {
      this.hideListener = true;
      window.addEventListener("pagehide", () => { if (this.source) { this.source.close(); this.source = null; this.resume = true; } });
      window.addEventListener("pageshow", (e) => { if (e.persisted && this.resume) { this.resume = false; this.follow(); } });
    }
    this.status.textContent = "Streaming…";
    source.addEventListener("chunk", (e) => {
      const chunk = JSON.parse(e.data);
      let bytes = fromBase64(chunk.data);
      if (chunk.offset < this.next) bytes = bytes.subarray(this.next - chunk.offset);
      this.next = chunk.next;
      this.renderer.write(bytes);
      this.trim();
      if (this.following) this.scrollToEnd();
    });
    source.addEventListener("end", (e) => {
      source.close();
      this.source = null;
      const status = JSON.parse(e.data).status;
      this.status.textContent = `The build ended: ${status}.`;
      this.followButton.setAttribute("aria-pressed", "false");
      refreshLive();
    });
    source.onerror = () => {
      // Reconnect from where we are, not from the URL's old offset.
      source.close();
      this.source = null;
      this.status.textContent = "Connection lost; reconnecting…";
      // Not for a page hidden meanwhile: its `pageshow` takes it up.
      setTimeout(() => { if (!this.resume) this.follow(); }, 1000);
    };
  }

  // A step that prints for hours must not fill the page's memory.
  trim() {
    const lines = this.pre.children;
    if (lines.length <= MAX_LINES) return;
    const drop = lines.length - MAX_LINES + 5000;
    for (let i = 0; i < drop; i++) this.pre.firstElementChild.remove();
    this.start = this.pre.firstElementChild.pieceOffset;
    this.earlierButton.hidden = false;
  }

  async earlier() {
    if (this.start === 0) return;
    const step = encodeURIComponent(this.step);
    let from = Math.max(0, this.start - TAIL);
    const response = await fetch(`/api/v1/builds/${this.build}/log?step=${step}&offset=${from}&limit=${this.start - from}`, { credentials: "same-origin" });
    if (!response.ok) { notice(`Cannot read the log: ${response.status}`); return; }
    let bytes = new Uint8Array(await response.arrayBuffer());
    if (from > 0) {
      const nl = bytes.indexOf(10);
      if (nl >= 0) { bytes = bytes.subarray(nl + 1); from += nl + 1; }
    }
    const part = document.createDocumentFragment();
    new Renderer(part, from).write(bytes);
    const before = document.documentElement.scrollHeight;
    this.pre.insertBefore(part, this.pre.firstChild);
    // Keep what the reader looked at in place.
    window.scrollBy(0, document.documentElement.scrollHeight - before);
    this.start = from;
    this.earlierButton.hidden = this.start === 0;
  }

  firstError() {
    const pattern = /\b(error|errors|failed|failure|fatal|panicked|exception)\b/i;
    for (const hit of $$(".line.hit", this.pre)) hit.classList.remove("hit");
    const line = Array.from(this.pre.children).find((l) => pattern.test(l.textContent));
    if (!line) { this.status.textContent = "No error in the output shown."; return; }
    this.following = false;
    line.classList.add("hit");
    line.scrollIntoView({ block: "center" });
    this.status.textContent = "First error highlighted.";
  }

  attach() {
    this.followButton.addEventListener("click", () => { this.following = !this.following; });
    this.earlierButton.addEventListener("click", () => this.earlier());
    $("#first-error").addEventListener("click", () => this.firstError());
    window.addEventListener("scroll", () => {
      if (this.ourScroll || !this.following) return;
      const atEnd = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
      if (!atEnd) this.followButton.setAttribute("aria-pressed", "false");
    });
    this.start_();
  }
}

const logPre = document.getElementById("log");
if (logPre) new LogViewer(logPre).attach();
tick();
