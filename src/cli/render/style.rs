//! Terminal styling and widths for the hosts that draw on a terminal:
//! `anstyle` for the escape codes, `unicode-width` for how many columns a
//! name takes (a CJK step name is two columns a character, an emoji too),
//! `terminal_size` for the width of the screen.

use anstyle::{AnsiColor, Color, Style};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

const fn fg(color: AnsiColor) -> Style {
    Style::new().fg_color(Some(Color::Ansi(color)))
}

pub const DIM: Style = Style::new().dimmed();
pub const BOLD: Style = Style::new().bold();
pub const GREEN: Style = fg(AnsiColor::Green);
pub const RED: Style = fg(AnsiColor::Red);
pub const YELLOW: Style = fg(AnsiColor::Yellow);
pub const CYAN: Style = fg(AnsiColor::Cyan);
pub const SUCCESS: Style = GREEN.bold();
pub const FAILURE: Style = RED.bold();
pub const WARNING: Style = YELLOW.bold();
pub const SEPARATOR: Style = fg(AnsiColor::Blue).bold();

/// Step prefixes cycle through these.
pub const PALETTE: [Style; 10] = [
    fg(AnsiColor::Cyan),
    fg(AnsiColor::Magenta),
    fg(AnsiColor::Yellow),
    fg(AnsiColor::Green),
    fg(AnsiColor::Blue),
    fg(AnsiColor::BrightCyan),
    fg(AnsiColor::BrightMagenta),
    fg(AnsiColor::BrightYellow),
    fg(AnsiColor::BrightGreen),
    fg(AnsiColor::BrightBlue),
];

/// `text` in `style` when colours are on.
pub fn paint(enabled: bool, style: Style, text: &str) -> String {
    if enabled {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// Columns `text` takes on a terminal.
pub fn width(text: &str) -> usize {
    text.width()
}

/// The longest prefix of `text` that fits in `columns`.
pub fn truncate(text: &str, columns: usize) -> &str {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += c.width().unwrap_or(0);
        if used > columns {
            return &text[..i];
        }
    }
    text
}

/// `text` padded with spaces to `columns` (by display width, not chars).
pub fn pad(text: &str, columns: usize) -> String {
    let mut padded = text.to_string();
    padded.extend(std::iter::repeat_n(
        ' ',
        columns.saturating_sub(width(text)),
    ));
    padded
}

/// Columns of the terminal on stderr (100 when it is not a terminal).
pub fn terminal_width() -> usize {
    terminal_size::terminal_size_of(std::io::stderr())
        .map(|(terminal_size::Width(w), _)| usize::from(w))
        .filter(|&w| w > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_columns_not_chars() {
        assert_eq!(width("build"), 5);
        assert_eq!(width("构建"), 4);
        assert_eq!(pad("构建", 6), "构建  ");
        assert_eq!(truncate("构建步骤", 5), "构建");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(paint(false, FAILURE, "x"), "x");
        assert_eq!(paint(true, FAILURE, "x"), "\x1b[1m\x1b[31mx\x1b[0m");
    }
}
