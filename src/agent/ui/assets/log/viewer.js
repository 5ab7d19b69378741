// Piper's web UI, the log viewer (3/3): the view of a step's page. Uses
// app.js's `$`, `$$`, `api`, `notice`, `scheduleRefresh` and `refreshLive`.
//
// A log may be hundreds of megabytes. The page keeps a window of it: the
// bytes of at most MAX_LINES lines (and MAX_BYTES), as the pages read from
// /log, with each line's offset and the colours it starts with. Only the
// lines in view (and OVERSCAN around them) become HTML, when drawn: a
// window kept as HTML strings left megabytes of garbage per move, and the
// tab grew past 150 MB before V8 collected it. Moving (earlier, later,
// top, bottom, a line, a byte offset, a match, the first error) reads the
// part wanted with ranged reads of /log after asking /log/locate where a
// line starts; the far side of the window goes as it moves. One move at a
// time: a click while one is under way is ignored. Lines have one height
// (they do not wrap; the log scrolls sideways), so a line's place is its
// index times that height.
const OVERSCAN = 40;          // lines drawn above and below the view

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}


class LogViewer {
  constructor(pre) {
    this.pre = pre;
    this.build = pre.dataset.build;
    this.step = pre.dataset.step;
    this.base = `/api/v1/builds/${this.build}/log`;
    this.status = $("#log-status");
    this.position = $("#log-position");
    this.followButton = $("#follow");
    this.window = new LogWindow(0);
    this.firstLine = 1;       // number of the window's first line
    this.length = 0;          // the log's length, as far as known
    this.lines = 0;           // the log's lines, as far as known
    this.live = false;        // the build may still write
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
    this.hitIndex = -1;       // the index of the line marked as found
    this.lineHeight = 0;
  }

  query(extra) {
    return `step=${encodeURIComponent(this.step)}&${extra}`;
  }

  get following() { return this.followButton.getAttribute("aria-pressed") === "true"; }
  set following(on) {
    this.followButton.setAttribute("aria-pressed", on ? "true" : "false");
  }
  get start() { return this.window.start; }
  get end() { return this.window.end; }
  get atEnd() { return this.end >= this.length; }
  lastLine() { return this.firstLine + this.window.length - 1; }

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

  // The view's elements are the lines drawn: indexes [drawn[0], drawn[1])
  // of the window, in order. A scroll adds and removes lines at the edges,
  // a window that grows or shrinks at one side shifts the indexes, and
  // only a new window (a move elsewhere) draws all anew: each drawing
  // leaves garbage (elements, layout, shaped text) that the renderer holds
  // until it collects, and redrawing 400 lines at every move grew the tab
  // by ~2 MB a click.

  size() {
    this.canvas.style.height = `${this.window.length * this.height()}px`;
  }

  linesHtml(first, end) {
    let html = "";
    for (let i = first; i < end; i++) {
      html += `<span class="line${i === this.hitIndex ? " hit" : ""}">${this.window.html(i)}\n</span>`;
    }
    return html;
  }

  // Draws the lines in view (and OVERSCAN around them) that are not yet.
  draw() {
    const h = this.height();
    const count = this.window.length;
    this.size();
    const top = this.canvas.getBoundingClientRect().top;
    // The lines in view, and those to draw.
    const seen = Math.min(count, Math.max(0, Math.floor(-top / h)));
    const seenEnd = Math.min(count, Math.max(seen, Math.ceil((innerHeight - top) / h)));
    const first = Math.max(0, seen - OVERSCAN);
    const end = Math.min(count, seenEnd + OVERSCAN);
    let [a, b] = this.drawn;
    this.markHit();
    // What is in view is drawn, with room to scroll: nothing to do.
    const inside = a <= Math.max(0, seen - OVERSCAN / 2) && b >= Math.min(count, seenEnd + OVERSCAN / 2);
    if (!inside) {
      const view = this.view;
      if (end <= a || first >= b) {
        view.innerHTML = this.linesHtml(first, end);
      } else {
        for (; a < first; a++) view.firstElementChild.remove();
        for (; b > end; b--) view.lastElementChild.remove();
        if (first < a) view.insertAdjacentHTML("afterbegin", this.linesHtml(first, a));
        if (b < end) view.insertAdjacentHTML("beforeend", this.linesHtml(b, end));
      }
      this.drawn = [first, end];
      this.paint(view);
    }
    this.view.style.transform = `translateY(${this.drawn[0] * h}px)`;
  }

  // Colours beyond the named ones, kept in data attributes (see spanHtml).
  paint(root) {
    for (const el of root.querySelectorAll("[data-fg]:not([style]), [data-bg]:not([style])")) {
      if (el.dataset.fg) el.style.color = el.dataset.fg;
      if (el.dataset.bg) el.style.backgroundColor = el.dataset.bg;
    }
  }

  // Marks the line found last, if it is drawn.
  markHit() {
    const hit = this.hit ? this.window.starts.indexOf(this.hit.offset) : -1;
    if (hit === this.hitIndex) return;
    const [a, b] = this.drawn;
    for (const i of [this.hitIndex, hit]) {
      if (i >= a && i < b) this.view.children[i - a].classList.toggle("hit", i === hit);
    }
    this.hitIndex = hit;
  }

  // Line i's element again (a live line that grew).
  redrawLine(i) {
    const [a, b] = this.drawn;
    if (i < a || i >= b) return;
    const el = this.view.children[i - a];
    el.innerHTML = `${this.window.html(i)}\n`;
    this.paint(el);
  }

  // Scrolls the page without the scroll counting as the reader's.
  scrollBy(y) {
    this.ourScroll = true;
    window.scrollBy(0, y);
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  scrollToIndex(index, block) {
    const h = this.height();
    this.size();
    const top = this.canvas.getBoundingClientRect().top + window.scrollY;
    const y = block === "center" ? top + index * h - innerHeight / 2 : top + index * h;
    this.ourScroll = true;
    window.scrollTo(0, Math.max(0, y));
    this.draw();
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  scrollToEnd() {
    this.ourScroll = true;
    this.size();
    window.scrollTo(0, document.documentElement.scrollHeight);
    this.draw();
    requestAnimationFrame(() => { this.ourScroll = false; });
  }

  // ---- the window

  // Replaces the window with the log from `from` (a line's start) on.
  show(from, bytes, firstLine) {
    this.window = new LogWindow(from);
    this.window.append(bytes);
    this.firstLine = firstLine;
    this.view.textContent = "";
    this.drawn = [0, 0];
    this.hitIndex = -1;
  }

  append(bytes) {
    const open = this.window.open ? this.window.length - 1 : -1;
    this.window.append(bytes);
    if (open >= 0) this.redrawLine(open);
  }

  // The window's far side goes as it moves.
  dropLast() {
    const n = this.window.excess(MAX_LINES, false);
    if (n === 0) return;
    const keep = this.window.length - n;
    this.window.keepFirst(keep);
    let [a, b] = this.drawn;
    for (; b > Math.max(a, keep); b--) this.view.lastElementChild.remove();
    this.drawn = [Math.min(a, b), b];
    this.following = false;
  }

  dropFirst(keep) {
    const n = this.window.excess(keep, true);
    if (n === 0) return;
    this.window.dropFirst(n);
    this.firstLine += n;
    let [a, b] = this.drawn;
    for (; a < Math.min(b, n); a++) this.view.firstElementChild.remove();
    this.drawn = [Math.max(0, a - n), Math.max(0, b - n)];
    this.hitIndex = this.hitIndex >= n ? this.hitIndex - n : -1;
    this.size();
    this.view.style.transform = `translateY(${this.drawn[0] * this.height()}px)`;
    if (!this.following) this.scrollBy(-n * this.height());
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
      this.draw();
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

  // Whole lines only, unless `read` reached the end of what is written.
  cutToLines(read, bytes) {
    if (read.next >= this.length) return bytes;
    const nl = bytes.lastIndexOf(10);
    return nl >= 0 ? bytes.subarray(0, nl + 1) : bytes;
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
    this.show(0, this.cutToLines(read, read.bytes), 1);
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
    const bytes = this.cutToLines(read, whole);
    const before = bytes.subarray(0, position.offset - offset);
    let newlines = 0;
    for (let i = before.indexOf(10); i >= 0; i = before.indexOf(10, i + 1)) newlines++;
    this.following = false;
    this.show(offset, bytes, position.line - newlines);
    const index = this.window.starts.indexOf(position.offset);
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
    const starts = this.window.starts;
    const at = starts.indexOf(position.offset);
    const next = at >= 0 && at + 1 < starts.length ? starts[at + 1] : position.offset + 1;
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
    const starts = this.window.starts;
    const at = starts.findIndex((start) => start >= offset);
    return this.firstLine + (at < 0 ? starts.length : at);
  }

  async earlier() {
    if (this.start === 0) return;
    let from = Math.max(0, this.start - PAGE);
    const read = await this.read(from, this.start - from);
    ({ offset: from } = LogViewer.whole(from, read.bytes));
    const added = this.window.prepend(from, read.bytes.subarray(from - read.offset));
    this.firstLine -= added;
    // What is drawn stays, under new indexes, and in place for the reader.
    this.drawn = [this.drawn[0] + added, this.drawn[1] + added];
    if (this.hitIndex >= 0) this.hitIndex += added;
    this.size();
    this.view.style.transform = `translateY(${this.drawn[0] * this.height()}px)`;
    this.scrollBy(added * this.height());
    this.dropLast();
  }

  async later() {
    if (this.atEnd) return;
    const read = await this.read(this.end, PAGE);
    this.append(this.cutToLines(read, read.bytes));
    this.length = Math.max(this.length, this.end);
    this.dropFirst(MAX_LINES);
  }

  // Says where the window is, and enables the moves that can be made.
  controls() {
    const shown = this.window.length;
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

  // A chunk of the live log: shown by a window at the end; elsewhere
  // counted.
  onChunk(chunk) {
    let bytes = fromBase64(chunk.data);
    if (chunk.offset < this.length) bytes = bytes.subarray(this.length - chunk.offset);
    const atEnd = this.atEnd;
    this.length = Math.max(this.length, chunk.next);
    if (atEnd && !this.busy) {
      this.append(bytes);
      if (this.window.excess(MAX_LINES, true) > 0) this.dropFirst(LIVE_KEEP);
      this.lines = Math.max(this.lines, this.lastLine());
      if (this.following) this.scrollToEnd(); else this.draw();
      this.controls();
    } else {
      for (let i = bytes.indexOf(10); i >= 0; i = bytes.indexOf(10, i + 1)) this.lines++;
      if (!this.busy) this.controls();
    }
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
    source.addEventListener("chunk", (e) => this.onChunk(JSON.parse(e.data)));
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
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; this.draw(); });
      if (this.ourScroll || !this.following) return;
      const atEnd = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
      if (!atEnd) this.following = false;
    });
    window.addEventListener("resize", () => this.draw());
    this.move(() => this.open());
  }
}

const logPre = document.getElementById("log");
if (logPre) new LogViewer(logPre).attach();
