//! Terminal colours (SGR escape sequences) as HTML spans, for the log
//! excerpts the server renders. The live log viewer does the same in
//! `assets/log/ansi.js` with the same class names (`fg-N`, `bg-N`, `b`, `i`,
//! `u`, `dim`), so both look alike. Other escape sequences are dropped.

use maud::{Markup, PreEscaped, html};

#[derive(Clone, Copy, Default, PartialEq)]
struct Style {
    fg: Option<u8>,
    bg: Option<u8>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn classes(&self) -> String {
        let mut classes = Vec::new();
        if let Some(fg) = self.fg {
            classes.push(format!("fg-{fg}"));
        }
        if let Some(bg) = self.bg {
            classes.push(format!("bg-{bg}"));
        }
        for (on, name) in [
            (self.bold, "b"),
            (self.dim, "dim"),
            (self.italic, "i"),
            (self.underline, "u"),
        ] {
            if on {
                classes.push(name.into());
            }
        }
        classes.join(" ")
    }

    /// Applies one SGR sequence's parameters (`1;31`).
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = params.split(';').map(|p| p.parse().unwrap_or(0)).collect();
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                c @ 90..=97 => self.fg = Some((c - 90 + 8) as u8),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some((c - 40) as u8),
                c @ 100..=107 => self.bg = Some((c - 100 + 8) as u8),
                49 => self.bg = None,
                // 256 colours: the first 16 keep their class, others are
                // skipped (the live viewer paints them exactly).
                38 | 48 if codes.get(i + 1) == Some(&5) => {
                    let n = codes.get(i + 2).copied().unwrap_or(0);
                    if n < 16 {
                        if codes[i] == 38 {
                            self.fg = Some(n as u8);
                        } else {
                            self.bg = Some(n as u8);
                        }
                    }
                    i += 2;
                }
                38 | 48 if codes.get(i + 1) == Some(&2) => i += 4,
                _ => {}
            }
            i += 1;
        }
    }
}

/// `text` with its colours as spans; escaped for HTML.
pub fn to_html(text: &str) -> Markup {
    let mut out = String::new();
    let mut style = Style::default();
    let mut rest = text;
    while !rest.is_empty() {
        let Some(esc) = rest.find('\x1b') else {
            push(&mut out, rest, style);
            break;
        };
        push(&mut out, &rest[..esc], style);
        rest = &rest[esc + 1..];
        if let Some(csi) = rest.strip_prefix('[') {
            // CSI: parameters, then one final byte in @..~.
            let end = csi
                .find(|c: char| ('@'..='~').contains(&c))
                .unwrap_or(csi.len());
            if csi[end..].starts_with('m') {
                style.apply(&csi[..end]);
            }
            rest = csi.get(end + 1..).unwrap_or("");
        } else {
            // Another escape: drop it and the byte after it.
            let mut chars = rest.chars();
            chars.next();
            rest = chars.as_str();
        }
    }
    PreEscaped(out)
}

fn push(out: &mut String, text: &str, style: Style) {
    if text.is_empty() {
        return;
    }
    let escaped = html! { (text.replace('\r', "")) }.into_string();
    if style == Style::default() {
        out.push_str(&escaped);
    } else {
        out.push_str(&format!(
            "<span class=\"{}\">{escaped}</span>",
            style.classes()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn colours_become_classes_and_text_is_escaped() {
        let html = to_html("\x1b[1;31merror\x1b[0m: <a> & \x1b[2Kdone").into_string();
        assert_eq!(
            html,
            "<span class=\"fg-1 b\">error</span>: &lt;a&gt; &amp; done"
        );
    }
}
