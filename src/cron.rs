//! Cron expressions for `trigger.schedule`, on the `croner` crate: five
//! fields (minute, hour, day of month, month, day of week) with lists,
//! ranges, steps, names (`MON`, `JAN`), `L` (last), `W` (nearest weekday),
//! `#` (nth weekday), and `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`. Times are the agent's local time zone, DST included (croner
//! evaluates wall-clock times through chrono). Chosen over the parser Piper
//! had by hand: the extensions users expect, and DST, are croner's job.

use std::fmt;

#[cfg(feature = "agent")]
use chrono::{DateTime, Local, TimeZone};

#[derive(Clone)]
pub struct Schedule {
    text: String,
    // Read by the agent's scheduler; the engine only checks the syntax.
    #[cfg_attr(not(feature = "agent"), allow(dead_code))]
    cron: croner::Cron,
}

/// Stored as its text (the configuration cache); parsed again on load.
impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A minute, as Unix minutes (seconds / 60): what agents agree on when
/// they queue a scheduled run once per slot.
#[cfg(feature = "agent")]
pub type UnixMinute = i64;

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && fields != 5 {
            return Err(format!(
                "`{trimmed}` has {fields} fields; a schedule has 5: minute hour day-of-month month day-of-week"
            ));
        }
        let cron = croner::parser::CronParser::new()
            .parse(trimmed)
            .map_err(|e| format!("`{trimmed}`: {e}"))?;
        Ok(Schedule {
            text: trimmed.to_string(),
            cron,
        })
    }

    /// Whether the schedule fires in `minute`, read in local time.
    #[cfg(feature = "agent")]
    pub fn matches(&self, minute: UnixMinute) -> bool {
        match Local.timestamp_opt(minute * 60, 0) {
            chrono::LocalResult::Single(at) | chrono::LocalResult::Ambiguous(at, _) => {
                self.matches_at(&at)
            }
            chrono::LocalResult::None => false,
        }
    }

    #[cfg(feature = "agent")]
    fn matches_at(&self, at: &DateTime<Local>) -> bool {
        self.cron.is_time_matching(at).unwrap_or(false)
    }
}

/// The current minute, from one clock reading.
#[cfg(feature = "agent")]
pub fn this_minute() -> UnixMinute {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64 / 60)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// A local wall-clock time as a Unix minute.
    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> UnixMinute {
        Local
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp()
            / 60
    }

    #[test]
    fn fields_lists_ranges_steps_names_and_shortcuts() {
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        assert!(nightly.matches(at(2026, 6, 14, 3, 0)));
        assert!(!nightly.matches(at(2026, 6, 14, 3, 1)));
        // 2026-01-02 is a Friday, 2026-01-03 a Saturday.
        let every15 = Schedule::parse("*/15 9-17 * * MON-FRI").unwrap();
        assert!(every15.matches(at(2026, 1, 2, 17, 45)));
        assert!(!every15.matches(at(2026, 1, 3, 17, 45)));
        assert!(!every15.matches(at(2026, 1, 2, 12, 10)));
        assert!(
            Schedule::parse("@daily")
                .unwrap()
                .matches(at(2026, 9, 9, 0, 0))
        );
        // The last day of the month, and the last Friday.
        assert!(
            Schedule::parse("0 0 L * *")
                .unwrap()
                .matches(at(2026, 2, 28, 0, 0))
        );
        assert!(
            Schedule::parse("0 0 * * FRI#L")
                .unwrap()
                .matches(at(2026, 1, 30, 0, 0))
        );
        assert!(
            Schedule::parse("5,10 * * * *")
                .unwrap()
                .matches(at(2026, 2, 2, 4, 10))
        );
        let _ = Utc::now();
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(
            Schedule::parse("0 3 * *")
                .unwrap_err()
                .contains("has 4 fields")
        );
        for bad in ["60 * * * *", "* 24 * * *", "x * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
