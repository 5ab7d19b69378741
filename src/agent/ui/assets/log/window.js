// Piper's web UI, the log viewer (2/3): the window, a part of a log kept
// as the bytes read and split into lines.

const PAGE = 256 * 1024;      // bytes read per move
const MAX_LINES = 20000;      // lines the window holds at most
const MAX_BYTES = 8 * 1024 * 1024; // and bytes (lines may be long)
const LIVE_KEEP = 15000;      // what a live tail keeps when it trims

// Bytes `start..end` of a log, as the pages they were read in, split into
// lines: `starts[i]` is where line i begins, `styles[i]` the colours it
// begins with. The last line may be open (no newline yet).
class LogWindow {
  constructor(start) {
    this.pages = [];          // { start, bytes }, in order, touching
    this.start = start;
    this.end = start;
    this.starts = [];
    this.styles = [];
    this.open = false;        // the last line has no newline yet
    this.style = PLAIN;       // the style after the last closed line
    this.decoder = new TextDecoder();
  }

  get length() { return this.starts.length; }

  // Bytes `a..b` of the window (one page's view, or a copy across pages).
  slice(a, b) {
    let i = this.pageAt(a);
    const page = this.pages[i];
    if (b <= page.start + page.bytes.length) return page.bytes.subarray(a - page.start, b - page.start);
    const out = new Uint8Array(b - a);
    for (let at = a; at < b; i++) {
      const p = this.pages[i];
      const piece = p.bytes.subarray(at - p.start, Math.min(b, p.start + p.bytes.length) - p.start);
      out.set(piece, at - a);
      at += piece.length;
    }
    return out;
  }

  pageAt(offset) {
    let lo = 0;
    let hi = this.pages.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.pages[mid].start <= offset) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  // Where line i's text ends (before its newline).
  lineEnd(i) {
    if (i + 1 < this.starts.length) return this.starts[i + 1] - 1;
    return this.open ? this.end : this.end - 1;
  }

  // Line i as HTML.
  html(i) {
    const a = this.starts[i];
    const b = this.lineEnd(i);
    return a < b ? lineHtml(this.styles[i], this.decoder.decode(this.slice(a, b))) : "";
  }

  // Adds bytes at the end (they continue the window).
  append(bytes) {
    if (!bytes.length) return;
    const base = this.end;
    this.pages.push({ start: base, bytes });
    this.end += bytes.length;
    let pos = 0;
    while (pos < bytes.length) {
      if (!this.open) {
        this.starts.push(base + pos);
        this.styles.push(this.style);
        this.open = true;
      }
      const nl = bytes.indexOf(10, pos);
      if (nl < 0) break;
      const begin = this.starts[this.starts.length - 1];
      const before = this.styles[this.styles.length - 1];
      this.style = begin >= base
        ? styleAfter(before, bytes, begin - base, nl)
        : styleAfter(before, this.slice(begin, base + nl), 0, base + nl - begin);
      this.open = false;
      pos = nl + 1;
    }
  }

  // Adds whole lines before the window (they end where it starts).
  prepend(from, bytes) {
    const earlier = new LogWindow(from);
    earlier.append(bytes);
    this.pages.unshift(...earlier.pages);
    this.starts.unshift(...earlier.starts);
    this.styles.unshift(...earlier.styles);
    this.start = from;
    return earlier.length;
  }

  // Drops the first `n` lines.
  dropFirst(n) {
    if (n <= 0) return;
    this.starts.splice(0, n);
    this.styles.splice(0, n);
    this.start = this.starts.length ? this.starts[0] : this.end;
    while (this.pages.length > 1 && this.pages[1].start <= this.start) this.pages.shift();
  }

  // Keeps the first `n` lines.
  keepFirst(n) {
    if (this.starts.length <= n) return;
    this.end = this.starts[n];
    this.style = this.styles[n];
    this.starts.length = n;
    this.styles.length = n;
    this.open = false;
    while (this.pages.length > 1 && this.pages[this.pages.length - 1].start >= this.end) this.pages.pop();
    const last = this.pages[this.pages.length - 1];
    if (last) last.bytes = last.bytes.subarray(0, this.end - last.start);
  }

  // How many lines to drop from one side to hold at most `lines` lines
  // and MAX_BYTES bytes (but never the last line left).
  excess(lines, fromFront) {
    let n = Math.max(0, this.starts.length - lines);
    const size = (k) => {
      if (k === 0) return this.end - this.start;
      return fromFront ? this.end - this.starts[k] : this.starts[this.starts.length - k] - this.start;
    };
    while (n < this.starts.length - 1 && size(n) > MAX_BYTES) n++;
    return n;
  }
}
