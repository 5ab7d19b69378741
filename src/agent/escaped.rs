//! Strings from requests (pipeline names, `requested_by`, repositories)
//! and from remotes (git's output) as they go into piperd's own log: with
//! control characters escaped, so a newline cannot forge a log line and
//! CR, ESC or an OSC sequence cannot rewrite a terminal that shows it.

use std::fmt;

/// Displays its text with every control character escaped (`\n`, `\r`,
/// `\t`, others as `\u{1b}`).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            Escaped("ci\n2026-01-01 INFO forged\r\u{1b}]0;title\u{7}").to_string(),
            "ci\\n2026-01-01 INFO forged\\r\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(Escaped("plain ünïcode").to_string(), "plain ünïcode");
    }
}
