//! Cron expressions for `trigger.schedule`: five fields (minute, hour, day of
//! month, month, day of week) with `*`, lists, ranges and steps, plus
//! `@hourly`, `@daily`, `@weekly`, `@monthly` and `@yearly`. As in cron, when
//! both day fields are restricted a time matches if either does.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// A point in local time, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    pub minute: u32,
    pub hour: u32,
    /// 1–31
    pub day: u32,
    /// 1–12
    pub month: u32,
    /// 0 = Sunday
    pub weekday: u32,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("{name}: `{s}` is not a step"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{name}: a step of 0"));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a
                .parse::<u32>()
                .map_err(|_| format!("{name}: `{a}` is not a number"))?;
            let b = b
                .parse::<u32>()
                .map_err(|_| format!("{name}: `{b}` is not a number"))?;
            (a, b)
        } else {
            let v = range
                .parse::<u32>()
                .map_err(|_| format!("{name}: `{range}` is not a number"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name}: `{part}` is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts[..] else {
            return Err(format!(
                "`{text}` has {} fields; a schedule has 5: minute hour day-of-month month day-of-week",
                parts.len()
            ));
        };
        let weekdays = field(weekday, "day of week", 0, 7)?;
        Ok(Schedule {
            text: text.trim().to_string(),
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days: field(day, "day of month", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            // 7 is Sunday too.
            weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
            days_restricted: day != "*",
            weekdays_restricted: weekday != "*",
        })
    }

    pub fn matches(&self, at: Minute) -> bool {
        let bit = |set: u64, v: u32| set & (1 << v) != 0;
        let day = bit(self.days, at.day);
        let weekday = bit(self.weekdays, at.weekday);
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        };
        bit(self.minutes, at.minute)
            && bit(self.hours, at.hour)
            && bit(self.months, at.month)
            && day_ok
    }
}

impl Minute {
    /// The current minute in local time.
    pub fn now() -> Minute {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = secs as libc::time_t;
        // SAFETY: localtime_r writes only into the tm we own.
        let tm = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            libc::localtime_r(&t, &mut tm);
            tm
        };
        Minute {
            minute: tm.tm_min as u32,
            hour: tm.tm_hour as u32,
            day: tm.tm_mday as u32,
            month: tm.tm_mon as u32 + 1,
            weekday: tm.tm_wday as u32,
        }
    }

    /// Identifies the minute (for "run once per minute" bookkeeping).
    pub fn key(&self, year_day: i64) -> String {
        format!(
            "{year_day}:{:02}{:02}-{:02}:{:02}",
            self.month, self.day, self.hour, self.minute
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> Minute {
        Minute {
            minute,
            hour,
            day,
            month,
            weekday,
        }
    }

    #[test]
    fn fields_lists_ranges_steps_and_shortcuts() {
        let nightly = Schedule::parse("0 3 * * *").unwrap();
        assert!(nightly.matches(at(0, 3, 14, 6, 2)));
        assert!(!nightly.matches(at(1, 3, 14, 6, 2)));
        let every15 = Schedule::parse("*/15 9-17 * * 1-5").unwrap();
        assert!(every15.matches(at(45, 17, 1, 1, 5)));
        assert!(!every15.matches(at(45, 17, 1, 1, 6)));
        assert!(!every15.matches(at(10, 12, 1, 1, 3)));
        assert!(
            Schedule::parse("@daily")
                .unwrap()
                .matches(at(0, 0, 9, 9, 0))
        );
        assert!(
            Schedule::parse("0 0 * * 7")
                .unwrap()
                .matches(at(0, 0, 9, 9, 0)),
            "7 is Sunday"
        );
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(
            either.matches(at(0, 0, 1, 3, 4))
                && either.matches(at(0, 0, 9, 3, 1))
                && !either.matches(at(0, 0, 9, 3, 2))
        );
        assert!(
            Schedule::parse("5,10 * * * *")
                .unwrap()
                .matches(at(10, 4, 2, 2, 2))
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(
            Schedule::parse("0 3 * *")
                .unwrap_err()
                .contains("has 4 fields")
        );
        assert!(
            Schedule::parse("60 * * * *")
                .unwrap_err()
                .contains("minute")
        );
        assert!(
            Schedule::parse("* 24 * * *")
                .unwrap_err()
                .contains("outside 0-23")
        );
        assert!(
            Schedule::parse("*/0 * * * *")
                .unwrap_err()
                .contains("step of 0")
        );
        assert!(
            Schedule::parse("x * * * *")
                .unwrap_err()
                .contains("not a number")
        );
    }
}
