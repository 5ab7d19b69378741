//! Human durations as written in `piper.lua` (`"90s"`, `"10m"`, `"1h30m"`,
//! `"250ms"`, or a number of seconds) and as printed in summaries.

use std::time::Duration;

/// The longest duration Piper accepts anywhere (timeouts, grace periods,
/// debounce): a year. Longer values are mistakes (`math.huge`), and
/// `Instant + duration` must never overflow.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `"1h30m"`, `"10m"`, `"45s"`, `"250ms"` or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}` has a number without a unit (use ms, s, m or h)"))?;
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration like \"90s\", \"10m\" or \"1h30m\""
            ));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` has a malformed number"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "`{text}` has unknown unit `{other}` (use ms, s, m or h)"
                ));
            }
        };
        total += seconds(value * scale)?;
        rest = &rest[unit_len..];
    }
    if total > MAX {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(total)
}

/// A number of seconds as a duration: finite, not negative, at most [`MAX`].
pub fn seconds(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > MAX.as_secs_f64() {
        return Err(format!("{secs} seconds is longer than a year"));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{secs} is not a valid number of seconds"))
}

/// Short form for tables: `312ms`, `4.2s`, `3m05s`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        if secs < 3600 {
            format!("{}m{:02}s", secs / 60, secs % 60)
        } else {
            format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        for (text, ms) in [
            ("90s", 90_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("1.5s", 1_500),
            ("2", 2_000),
            ("0.5", 500),
        ] {
            assert_eq!(parse(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        assert!(parse("10 minutes").unwrap_err().contains("unknown unit"));
        assert!(parse("m").unwrap_err().contains("not a duration"));
        assert!(parse("").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("inf").is_err());
        assert!(parse("nan").is_err());
        assert!(parse("1e20").unwrap_err().contains("longer than a year"));
        assert!(parse("9000h").unwrap_err().contains("longer than a year"));
        assert!(seconds(f64::INFINITY).is_err());
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_millis(312)), "312ms");
        assert_eq!(format(Duration::from_millis(4_200)), "4.2s");
        assert_eq!(format(Duration::from_secs(185)), "3m05s");
    }
}
