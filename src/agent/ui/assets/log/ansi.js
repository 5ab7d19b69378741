// Piper's web UI, the log viewer (1/3): terminal colours (SGR escapes) in
// log bytes, as HTML. The same classes as the server's excerpts
// (src/agent/ui/ansi.rs). Served joined with window.js and viewer.js as
// /assets/log.js, which only a step's page loads (after app.js).
"use strict";

// The same classes as the server's excerpts (src/agent/ui/ansi.rs). A
// style is an object that is never changed once made, so lines that
// start alike share one.

const PLAIN = Object.freeze({});
const PALETTE = [0, 95, 135, 175, 215, 255];
function color256(n) {
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  n -= 16;
  return `rgb(${PALETTE[Math.floor(n / 36)]},${PALETTE[Math.floor(n / 6) % 6]},${PALETTE[n % 6]})`;
}

// The style after the SGR parameters `params` ("1;31"), from `style`.
function applySgr(style, params) {
  const s = { ...style };
  const codes = params === "" ? [0] : params.split(";").map((p) => Number(p) || 0);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) { for (const k of Object.keys(s)) delete s[k]; }
    else if (c === 1) s.b = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.i = true;
    else if (c === 4) s.u = true;
    else if (c === 22) { delete s.b; delete s.dim; }
    else if (c === 23) delete s.i;
    else if (c === 24) delete s.u;
    else if (c >= 30 && c <= 37) { s.fg = c - 30; delete s.fgRgb; }
    else if (c >= 90 && c <= 97) { s.fg = c - 82; delete s.fgRgb; }
    else if (c === 39) { delete s.fg; delete s.fgRgb; }
    else if (c >= 40 && c <= 47) { s.bg = c - 40; delete s.bgRgb; }
    else if (c >= 100 && c <= 107) { s.bg = c - 92; delete s.bgRgb; }
    else if (c === 49) { delete s.bg; delete s.bgRgb; }
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      const n = codes[i + 2] || 0;
      const key = c === 38 ? "fg" : "bg";
      if (n < 16) { s[key] = n; delete s[key + "Rgb"]; } else { s[key + "Rgb"] = color256(n); delete s[key]; }
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      const key = c === 38 ? "fg" : "bg";
      s[key + "Rgb"] = `rgb(${codes[i + 2] || 0},${codes[i + 3] || 0},${codes[i + 4] || 0})`;
      delete s[key];
      i += 4;
    }
  }
  return Object.keys(s).length ? Object.freeze(s) : PLAIN;
}

// The style after `bytes[a..b)` (a line), from `style`; read from the
// bytes, not from text, as it runs on every line the window takes in.
// Most lines have no escape or the same few (`ESC[32m`, `ESC[0m`): a
// style's transitions are remembered by the parameters' bytes, so a line
// allocates nothing (what a page of lines allocated was most of the
// tab's garbage).
const TRANSITIONS = new WeakMap();  // style -> Map(params key -> style)
function styleAfter(style, bytes, a, b) {
  for (let i = bytes.indexOf(27, a); i >= 0 && i < b; i = bytes.indexOf(27, i + 1)) {
    if (bytes[i + 1] !== 91) continue; // not "ESC ["
    let j = i + 2;
    // The parameters as a number, exact for up to six bytes.
    let key = 1;
    while (j < b && ((bytes[j] >= 48 && bytes[j] <= 57) || bytes[j] === 59)) {
      key = key * 256 + bytes[j];
      j++;
    }
    if (j < b && bytes[j] === 109) style = transition(style, key, j - i - 2 <= 6, bytes, i + 2, j);
    i = j;
  }
  return style;
}

function transition(style, key, exact, bytes, a, b) {
  const params = () => String.fromCharCode(...bytes.subarray(a, b));
  if (!exact) return applySgr(style, params());
  let known = TRANSITIONS.get(style);
  if (!known) { known = new Map(); TRANSITIONS.set(style, known); }
  let next = known.get(key);
  if (!next) {
    next = applySgr(style, params());
    // Alike styles are one object, so their transitions are found again.
    next = intern(next);
    known.set(key, next);
  }
  return next;
}

const STYLES = new Map();  // a style's JSON -> the style
function intern(style) {
  if (style === PLAIN) return style;
  const name = JSON.stringify(style);
  const known = STYLES.get(name);
  if (known) return known;
  if (STYLES.size < 4096) STYLES.set(name, style);
  return style;
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
const escapeHtml = (text) => text.replace(/[&<>"]/g, (c) => ESCAPES[c]);

// Text in a style, as HTML. Colours beyond the 16 named ones go in data
// attributes, set as styles once drawn: the page's CSP refuses inline
// `style` attributes.
function spanHtml(style, text) {
  if (!text) return "";
  if (style === PLAIN) return escapeHtml(text);
  const classes = [];
  if (style.fg !== undefined) classes.push(`fg-${style.fg}`);
  if (style.bg !== undefined) classes.push(`bg-${style.bg}`);
  for (const k of ["b", "dim", "i", "u"]) if (style[k]) classes.push(k);
  const rgb = (style.fgRgb ? ` data-fg="${style.fgRgb}"` : "") + (style.bgRgb ? ` data-bg="${style.bgRgb}"` : "");
  return `<span class="${classes.join(" ")}"${rgb}>${escapeHtml(text)}</span>`;
}

// One line's text (from `style` on) as HTML: colours applied, other
// escapes and carriage returns dropped, and an escape cut off at the end
// (a live line still being written) left out.
function lineHtml(style, text) {
  const esc = /\x1b(?:\[([0-9;?]*)([@-~])|[^[])/g;
  let html = "";
  let last = 0;
  for (let m; (m = esc.exec(text));) {
    html += spanHtml(style, text.slice(last, m.index).replace(/\r/g, ""));
    if (m[2] === "m") style = applySgr(style, m[1] || "");
    last = esc.lastIndex;
  }
  let rest = text.slice(last);
  const open = rest.lastIndexOf("\x1b");
  if (open >= 0 && rest.length - open < 32) rest = rest.slice(0, open);
  return html + spanHtml(style, rest.replace(/\r/g, ""));
}
