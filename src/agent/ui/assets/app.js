// Piper's web UI: the little JavaScript the server-rendered pages need.
// Everything it reads or changes goes through the public /api/v1:
//   - live regions ([data-live]) re-render from this same page when
//     /api/v1/updates (Server-Sent Events) names a build they show;
//   - the log viewer shows a window of the log, read from /log in ranges
//     (/log/locate says where a line, a match or the first error is), and
//     follows /events (SSE) from where the log ended;
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

// Turns log bytes into lines of HTML, keeping colours and partial
// escapes/characters across calls: `write` returns more HTML for the line
// the last call left open (`head`) and the HTML of each line it began.
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ESCAPES[c]);

class Renderer {
  constructor(offset) {
    this.offset = offset;
    this.style = {};
    this.pending = "";
    this.decoder = new TextDecoder();
    this.open = false;     // the last line written has no newline yet
  }

  // One piece of text in the current style, as HTML.
  text(text) {
    if (!text) return "";
    const keys = Object.keys(this.style);
    if (keys.length === 0) return escapeHtml(text);
    const classes = [];
    if (this.style.fg !== undefined) classes.push(`fg-${this.style.fg}`);
    if (this.style.bg !== undefined) classes.push(`bg-${this.style.bg}`);
    for (const k of ["b", "dim", "i", "u"]) if (this.style[k]) classes.push(k);
    let css = "";
    if (this.style.fgRgb) css += `color:${this.style.fgRgb};`;
    if (this.style.bgRgb) css += `background-color:${this.style.bgRgb};`;
    return `<span class="${classes.join(" ")}"${css ? ` style="${css}"` : ""}>${escapeHtml(text)}</span>`;
  }

  // Text of one line part: colours applied, other escapes dropped.
  styled(text) {
    text = this.pending + text;
    this.pending = "";
    const esc = /\x1b(?:\[([0-9;?]*)([@-~])|[^[])/g;
    let html = "";
    let last = 0;
    for (let m; (m = esc.exec(text));) {
      html += this.text(text.slice(last, m.index).replace(/\r/g, ""));
      if (m[2] === "m") applySgr(this.style, m[1] || "");
      last = esc.lastIndex;
    }
    let rest = text.slice(last);
    const open = rest.lastIndexOf("\x1b");
    if (open >= 0 && rest.length - open < 32) { this.pending = rest.slice(open); rest = rest.slice(0, open); }
    return html + this.text(rest.replace(/\r/g, ""));
  }

  // -> { head, lines: [html], starts: [offset of each line begun] }
  write(bytes) {
    let head = "";
    const lines = [];
    const starts = [];
    let start = 0;
    while (start < bytes.length) {
      const nl = bytes.indexOf(10, start);
      const end = nl < 0 ? bytes.length : nl;
      const html = this.styled(this.decoder.decode(bytes.subarray(start, end), { stream: true }));
      if (this.open && lines.length === 0) {
        head += html;
      } else {
        starts.push(this.offset);
        lines.push(html);
      }
      this.offset += end - start;
      this.open = nl < 0;
      if (nl < 0) break;
      this.offset += 1;
      start = nl + 1;
    }
    return { head, lines, starts };
  }
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// ---- the log viewer -------------------------------------------------------
//
// A log may be hundreds of megabytes. The page keeps a window of it, at
// most MAX_LINES lines of HTML in memory, and puts in the document only
// the lines in view (and some around them): the lines of a window of
// 20,000 as elements held ~60 MB and left ~6 MB of garbage per page
// loaded. Moving (earlier, later, top, bottom, a line, a byte offset, a
// match, the first error) reads the part wanted with ranged reads of /log
// after asking /log/locate where a line starts; the far side of the
// window goes as it moves. One move at a time: a click while one is under
// way is ignored. Lines have one height (they do not wrap; the log
// scrolls sideways), so a line's place is its index times that height.

const PAGE = 256 * 1024;      // bytes read per move
const MAX_LINES = 20000;      // lines the window holds at most
const LIVE_KEEP = 15000;      // what a live tail keeps when it trims
const OVERSCAN = 100;         // lines drawn above and below the view

class LogViewer {
  constructor(pre) {
    this.pre = pre;
    this.build = pre.dataset.build;
    this.step = pre.dataset.step;
    this.base = `/api/v1/builds/${this.build}/log`;
    this.status = $("#log-status");
    this.position = $("#log-position");
    this.followButton = $("#follow");
    this.start = 0;           // offset of the window's first byte
    this.end = 0;             // offset after its last byte
    this.firstLine = 1;       // number of its first line
    this.length = 0;          // the log's length, as far as known
    this.lines = 0;           // the log's lines, as far as known
    this.live = false;        // the build may still write
    this.renderer = new Renderer(0);
    this.html = [];           // the window's lines, as HTML
    this.starts = [];         // each line's offset
    this.busy = false;
    this.ourScroll = false;
    this.hit = null;          // the line found last (find, first error)
    // The document holds a box as tall as the window, and in it the
    // lines drawn (`drawn` = [first, end) of the window's indexes).
    pre.textContent = "";
    this.canvas = document.createElement("div");
    this.canvas.className = "canvas";
    this.view = document.createElement("div");
    this.canvas.appendChild(this.view);
    pre.appendChild(this.canvas);
    this.drawn = [0, 0];
    this.lineHeight = 0;
  }

  query(extra) {
    return `step=${encodeURIComponent(this.step)}&${extra}`;
  }

  get following() { return this.followButton.getAttribute("aria-pressed") === "true"; }
  set following(on) {
    this.followButton.setAttribute("aria-pressed", on ? "true" : "false");
  }
  get atEnd() { return this.end >= this.length; }
  lastLine() { return this.firstLine + this.html.length - 1; }

  // ---- drawing

  height() {
    if (!this.lineHeight) {
      const probe = document.createElement("span");
      probe.className = "line";
      probe.textContent = "x";
      this.view.appendChild(probe);
      this.lineHeight = probe.getBoundingClientRect().height || 19;
      probe.remove();
    }
    return this.lineHeight;
  }

  // Draws the lines in view (again, with `force`: the window changed).
  draw(force) {
    const h = this.height();
    this.canvas.style.height = `${this.html.length * h}px`;
    const top = this.canvas.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / h) - OVERSCAN);
    const end = Math.min(this.html.length, Math.ceil((innerHeight - top) / h) + OVERSCAN);
    // Still within what is drawn, with room to scroll: nothing to do.
    const [a, b] = this.drawn;
    const inside = a <= Math.max(0, first + OVERSCAN / 2) && b >= Math.min(this.html.length, end - OVERSCAN / 2);
    if (!force && !this.changed && inside) return;
    this.changed = false;
    const hit = this.hit ? this.starts.indexOf(this.hit.offset) : -1;
    let html = "";
    for (let i = first; i < end; i++) {
      html += `<span class="line${i === hit ? " hit" : ""}">${this.html[i]}\n</span>`;
    }
    this.view.style.transform = `translateY(${first * h}px)`;
    this.view.innerHTML = html;
    this.drawn = [first, end];
  }

  scrollToIndex(index, block) {
    const h = this.height();
    const top = this.canvas.getBoundingClientRect().top + window.scrollY;
    const y = block === "center" ? top + index * h - innerHeight / 2 : top + index * h;
    this.ourScroll = true;
    window.scrollTo(0, Math.max(0, y));
    this.draw(true);
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  scrollToEnd() {
    this.ourScroll = true;
    this.draw(true);
    window.scrollTo(0, document.documentElement.scrollHeight);
    this.draw(true);
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  // ---- the window

  // Replaces the window with the log from `from` (a line's start) on.
  show(from, bytes, firstLine) {
    this.renderer = new Renderer(from);
    const out = this.renderer.write(bytes);
    this.html = out.lines;
    this.starts = out.starts;
    this.start = from;
    this.end = from + bytes.length;
    this.firstLine = firstLine;
    this.changed = true;
  }

  // Adds bytes at the end of the window (they continue it).
  append(bytes) {
    const out = this.renderer.write(bytes);
    if (out.head && this.html.length) this.html[this.html.length - 1] += out.head;
    for (const line of out.lines) this.html.push(line);
    for (const start of out.starts) this.starts.push(start);
    this.end += bytes.length;
    this.changed = true;
  }

  // The window's far side goes as it moves.
  dropLast() {
    if (this.html.length <= MAX_LINES) return;
    this.end = this.starts[MAX_LINES];
    this.html.length = MAX_LINES;
    this.starts.length = MAX_LINES;
    this.renderer = new Renderer(this.end);
    this.changed = true;
    this.following = false;
  }

  dropFirst(keep) {
    if (this.html.length <= keep) return;
    const drop = this.html.length - keep;
    this.html.splice(0, drop);
    this.starts.splice(0, drop);
    this.start = this.starts[0];
    this.firstLine += drop;
    this.changed = true;
    if (!this.following) { this.ourScroll = true; window.scrollBy(0, -drop * this.height()); requestAnimationFrame(() => { this.ourScroll = false; }); }
  }

  // ---- moves

  // Runs one move; a move asked for while another runs is dropped.
  async move(what) {
    if (this.busy) return;
    this.busy = true;
    this.pre.setAttribute("aria-busy", "true");
    for (const b of $$("[data-log-move]")) b.disabled = true;
    let done = false;
    try {
      await what();
      done = true;
    } catch (error) {
      notice(error.message);
    } finally {
      this.busy = false;
      this.pre.removeAttribute("aria-busy");
      this.draw(false);
      this.controls();
    }
    // Output that came while the move ran, for a reader who follows.
    if (done && this.following && !this.atEnd) this.move(() => this.later());
  }

  async read(from, limit) {
    const response = await fetch(`${this.base}?${this.query(`offset=${from}&limit=${limit}`)}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`Cannot read the log: ${response.status}`);
    return this.answer(response);
  }

  async answer(response) {
    const status = response.headers.get("x-piper-build-status");
    this.live = status === "running" || status === "queued";
    return {
      offset: Number(response.headers.get("x-piper-offset") || 0),
      next: Number(response.headers.get("x-piper-next-offset") || 0),
      bytes: new Uint8Array(await response.arrayBuffer()),
    };
  }

  async locate(extra) {
    const position = await api("GET", `${this.base}/locate?${this.query(extra)}`);
    this.length = Math.max(this.length, position.length);
    this.lines = Math.max(this.lines, position.lines);
    return position;
  }

  // Bytes from `offset`, cut to start at a whole line (unless at 0).
  static whole(offset, bytes) {
    if (offset === 0) return { offset, bytes };
    const nl = bytes.indexOf(10);
    if (nl < 0) return { offset, bytes };
    return { offset: offset + nl + 1, bytes: bytes.subarray(nl + 1) };
  }

  // The end of the log: what a page shows first, and Bottom.
  async bottom() {
    const response = await fetch(`${this.base}?${this.query(`tail=${PAGE}`)}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`Cannot read the log: ${response.status}`);
    const read = await this.answer(response);
    const { offset, bytes } = LogViewer.whole(read.offset, read.bytes);
    this.length = Math.max(this.length, read.next);
    const position = await this.locate(`offset=${offset}`);
    this.show(offset, bytes, position.line);
    this.hit = null;
    // What was written meanwhile (a live log), up to what is known.
    for (let i = 0; i < 8 && !this.atEnd; i++) await this.later();
    this.lines = Math.max(this.lines, this.lastLine());
    this.scrollToEnd();
  }

  async top() {
    const read = await this.read(0, PAGE);
    let bytes = read.bytes;
    if (read.next < this.length) {
      const nl = bytes.lastIndexOf(10);
      if (nl >= 0) bytes = bytes.subarray(0, nl + 1);
    }
    this.show(0, bytes, 1);
    this.following = false;
    this.hit = null;
    this.scrollToIndex(0);
    if (this.lines === 0) await this.locate("offset=0");
  }

  // Shows the line starting at `position.offset` (from /locate), with
  // some of the log before it, in the middle of the view.
  async goTo(position, highlight) {
    const from = Math.max(0, position.offset - PAGE / 4);
    const read = await this.read(from, PAGE);
    const { offset, bytes: whole } = LogViewer.whole(from, read.bytes);
    let bytes = whole;
    if (read.next < this.length) {
      const nl = bytes.lastIndexOf(10);
      if (nl >= 0) bytes = bytes.subarray(0, nl + 1);
    }
    const before = bytes.subarray(0, position.offset - offset);
    let newlines = 0;
    for (let i = 0; i < before.length; i++) if (before[i] === 10) newlines++;
    this.following = false;
    this.show(offset, bytes, position.line - newlines);
    const index = this.starts.indexOf(position.offset);
    this.hit = highlight && index >= 0 ? { ...position } : null;
    if (index >= 0) this.scrollToIndex(index, "center");
    history.replaceState(null, "", `#L${position.line}`);
  }

  async goToLine(n) {
    await this.goTo(await this.locate(`line=${n}`), true);
  }

  async goToOffset(n) {
    await this.goTo(await this.locate(`offset=${n}`), true);
  }

  // The next line holding `text` after the last one found (or from the
  // window's start).
  async find(text) {
    const from = this.hit && this.hit.text === text ? this.hit.next : this.start;
    const position = await this.locate(`find=${encodeURIComponent(text)}&from=${from}`);
    if (!position.found) {
      this.status.textContent = from > 0 ? `No more lines with “${text}” after line ${this.lineAt(from).toLocaleString()}.` : `No line holds “${text}”.`;
      return;
    }
    await this.goTo(position, true);
    // The next search starts at the line after this one.
    const at = this.starts.indexOf(position.offset);
    const next = at >= 0 && at + 1 < this.starts.length ? this.starts[at + 1] : position.offset + 1;
    this.hit = { ...this.hit, text, next };
    this.status.textContent = `Line ${position.line.toLocaleString()} holds “${text}”.`;
  }

  async firstError() {
    const position = await this.locate("error=true");
    if (!position.found) { this.status.textContent = "No error in the log."; return; }
    await this.goTo(position, true);
    this.status.textContent = `First error: line ${position.line.toLocaleString()}.`;
  }

  lineAt(offset) {
    const at = this.starts.findIndex((start) => start >= offset);
    return this.firstLine + (at < 0 ? this.starts.length : at);
  }

  async earlier() {
    if (this.start === 0) return;
    let from = Math.max(0, this.start - PAGE);
    const read = await this.read(from, this.start - from);
    ({ offset: from } = LogViewer.whole(from, read.bytes));
    const bytes = read.bytes.subarray(from - read.offset);
    const out = new Renderer(from).write(bytes);
    this.html.unshift(...out.lines);
    this.starts.unshift(...out.starts);
    this.start = from;
    this.firstLine -= out.lines.length;
    // Keep what the reader looked at in place.
    this.ourScroll = true;
    this.changed = true;
    this.draw(false);
    window.scrollBy(0, out.lines.length * this.height());
    requestAnimationFrame(() => { this.ourScroll = false; });
    this.dropLast();
  }

  async later() {
    if (this.atEnd) return;
    const read = await this.read(this.end, PAGE);
    // Whole lines only, unless this is the end of what is written.
    let bytes = read.bytes;
    if (read.next < this.length) {
      const nl = bytes.lastIndexOf(10);
      if (nl >= 0) bytes = bytes.subarray(0, nl + 1);
    }
    this.append(bytes);
    this.length = Math.max(this.length, this.end);
    this.dropFirst(MAX_LINES);
  }

  // Says where the window is, and enables the moves that can be made.
  controls() {
    const shown = this.html.length;
    const last = this.lastLine();
    const total = Math.max(this.lines, last);
    const earlier = this.firstLine - 1;
    const later = Math.max(0, total - last);
    const parts = [];
    if (shown) parts.push(`Lines ${this.firstLine.toLocaleString()}–${last.toLocaleString()} of ${total.toLocaleString()}`);
    if (earlier > 0) parts.push(`${earlier.toLocaleString()} earlier lines not shown`);
    if (later > 0 || !this.atEnd) parts.push(`${later.toLocaleString()} later lines not shown`);
    this.position.textContent = parts.join(" · ");
    for (const b of $$("[data-log-move]")) b.disabled = false;
    $("#earlier").disabled = this.start === 0;
    $("#top").disabled = this.start === 0;
    $("#later").disabled = this.atEnd;
  }

  follow() {
    const source = new EventSource(`${this.base.replace(/\/log$/, "/events")}?${this.query(`offset=${this.length}`)}`);
    // Closed while the page is hidden (back/forward cache), as the update
    // stream is; taken up again from where it was when shown.
    this.source = source;
    if (!this.hideListener) {
      this.hideListener = true;
      window.addEventListener("pagehide", () => { if (this.source) { this.source.close(); this.source = null; this.resume = true; } });
      window.addEventListener("pageshow", (e) => { if (e.persisted && this.resume) { this.resume = false; this.follow(); } });
    }
    this.status.textContent = "Streaming…";
    // What was written between the page's rendering and this stream's
    // start (or while it was cut off) was announced to nobody.
    source.addEventListener("open", () => scheduleRefresh());
    source.addEventListener("chunk", (e) => {
      const chunk = JSON.parse(e.data);
      let bytes = fromBase64(chunk.data);
      if (chunk.offset < this.length) bytes = bytes.subarray(this.length - chunk.offset);
      const atEnd = this.atEnd;
      this.length = Math.max(this.length, chunk.next);
      // Shown by a window at the end; elsewhere counted.
      if (atEnd && !this.busy) {
        this.append(bytes);
        if (this.html.length > MAX_LINES) this.dropFirst(LIVE_KEEP);
        this.lines = Math.max(this.lines, this.lastLine());
        if (this.following) this.scrollToEnd(); else this.draw(true);
        this.controls();
      } else {
        for (let i = 0; i < bytes.length; i++) if (bytes[i] === 10) this.lines++;
        if (!this.busy) this.controls();
      }
    });
    // Something else of the build was written (the step's state, say):
    // the header re-reads, at most every 300 ms (other steps may write
    // all the time).
    source.addEventListener("update", () => {
      if (this.updateTimer) return;
      this.updateTimer = setTimeout(() => { this.updateTimer = null; refreshLive(); }, 300);
    });
    source.addEventListener("end", (e) => {
      source.close();
      this.source = null;
      this.live = false;
      const status = JSON.parse(e.data).status;
      this.status.textContent = `The build ended: ${status}.`;
      this.following = false;
      this.controls();
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

  async open() {
    const hash = /^#L(\d+)$/.exec(location.hash);
    if (hash) {
      this.following = false;
      await this.goToLine(Number(hash[1]));
    } else {
      await this.bottom();
    }
    if (!this.live) {
      this.status.textContent = this.length ? "" : "No output.";
      this.following = false;
      return;
    }
    this.follow();
  }

  attach() {
    const on = (id, what) => $(`#${id}`).addEventListener("click", () => this.move(what));
    this.followButton.addEventListener("click", () => {
      const on = !this.following;
      this.following = on;
      if (on && !this.atEnd) this.move(() => this.bottom());
      else if (on) this.scrollToEnd();
    });
    on("earlier", () => this.earlier());
    on("later", () => this.later());
    on("top", () => this.top());
    on("bottom", () => this.bottom());
    on("first-error", () => this.firstError());
    $("#goto").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const n = Number(form.where.value);
      if (!Number.isInteger(n) || n < 0) { notice(`${form.kind.value === "line" ? "Line" : "Byte offset"}: expected a whole number, got “${form.where.value}”`); return; }
      notice("");
      this.move(() => form.kind.value === "line" ? this.goToLine(Math.max(1, n)) : this.goToOffset(n));
    });
    $("#find").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = event.target.text.value;
      if (text) this.move(() => this.find(text));
    });
    let frame = 0;
    window.addEventListener("scroll", () => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; this.draw(false); });
      if (this.ourScroll || !this.following) return;
      const atEnd = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
      if (!atEnd) this.following = false;
    });
    window.addEventListener("resize", () => this.draw(true));
    this.move(() => this.open());
  }
}

const logPre = document.getElementById("log");
if (logPre) new LogViewer(logPre).attach();
tick();
