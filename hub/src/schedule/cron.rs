//! Cron expressions, and the times they name in a time zone.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six, with
//! seconds first; each field is `*`, a number, a range `a-b`, a step
//! (`*/n`, `a-b/n`, `a/n`) or a comma-separated list of those; months and
//! days of the week also by name (`JAN`, `MON`), and Sunday as 0 or 7.
//! When both day fields are restricted, a day matching either runs (as
//! every cron does). `@yearly`, `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly` stand for their usual five fields.
//!
//! Times are wall-clock times in the schedule's zone. On a day that
//! daylight saving skips an hour, a time inside the gap runs as far after
//! the jump as it was after the gap's start (02:30 runs at 03:30, when the
//! clocks go from 02:00 to 03:00); on a day that repeats an hour, a time
//! inside it runs once, at its first occurrence. That is jiff's
//! "compatible" reading, the one RFC 5545 (iCalendar) prescribes.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    /// Bits 1 to 31.
    days_of_month: u64,
    /// Bits 1 to 12.
    months: u64,
    /// Bits 0 (Sunday) to 6.
    days_of_week: u64,
    /// Whether each day field is `*` (a restricted one alone decides).
    any_day_of_month: bool,
    any_day_of_week: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// How far ahead a next time is looked for: an expression that names no
/// time in this many years (`0 0 30 2 *`) names none at all.
const SEARCH_YEARS: i16 = 8;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if text.starts_with('@') => {
                return Err(CronError(format!(
                    "`{text}` is not a cron shorthand; they are @yearly, @monthly, @weekly, \
                     @daily and @hourly"
                )));
            }
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError(format!(
                    "a cron expression has 5 fields (minute hour day-of-month month \
                     day-of-week) or 6 (with seconds first), not {n}"
                )));
            }
        };
        let mut days_of_week = bits(rest[4], &DAY_OF_WEEK)?;
        // Sunday is 0 and 7.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        Ok(Cron {
            seconds: bits(second, &SECOND)?,
            minutes: bits(rest[0], &MINUTE)?,
            hours: bits(rest[1], &HOUR)?,
            days_of_month: bits(rest[2], &DAY_OF_MONTH)?,
            months: bits(rest[3], &MONTH)?,
            days_of_week,
            any_day_of_month: rest[2] == "*",
            any_day_of_week: rest[4] == "*",
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = has(self.days_of_month, date.day() as u32);
        let dow = has(
            self.days_of_week,
            date.weekday().to_sunday_zero_offset() as u32,
        );
        match (self.any_day_of_month, self.any_day_of_week) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first time after `after` that the expression names in `tz`;
    /// `None` if it names none in the next years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let give_up = start.year().saturating_add(SEARCH_YEARS);
        // The whole second after `after`'s.
        let mut t = start.with().subsec_nanosecond(0).build().ok()?;
        t = t.checked_add(1.second()).ok()?;
        while t.year() <= give_up {
            if !has(self.months, t.month() as u32) {
                t = t
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(midnight());
            } else if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(midnight());
            } else if !has(self.hours, t.hour() as u32) {
                t = t
                    .with()
                    .minute(0)
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if !has(self.minutes, t.minute() as u32) {
                t = t
                    .with()
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.minute())
                    .ok()?;
            } else if !has(self.seconds, t.second() as u32) {
                t = t.checked_add(1.second()).ok()?;
            } else {
                let at = tz.to_ambiguous_timestamp(t).compatible().ok()?;
                if at > after {
                    return Some(at);
                }
                // A repeated hour's second pass, already run in its first.
                t = t.checked_add(1.second()).ok()?;
            }
        }
        None
    }

    /// The next `n` times after `after`.
    pub fn upcoming(&self, after: Timestamp, tz: &TimeZone, n: usize) -> Vec<Timestamp> {
        let mut times = Vec::with_capacity(n);
        let mut from = after;
        while times.len() < n
            && let Some(next) = self.next_after(from, tz)
        {
            times.push(next);
            from = next;
        }
        times
    }
}

fn midnight() -> jiff::civil::Time {
    jiff::civil::Time::midnight()
}

fn has(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

fn bits(text: &str, field: &Field) -> Result<u64, CronError> {
    let mut set = 0u64;
    for part in text.split(',') {
        let bad = |why: String| {
            CronError(format!(
                "the {} field `{text}`: {why} (it takes {}-{}{})",
                field.name,
                field.min,
                field.max,
                if field.names.is_empty() {
                    String::new()
                } else {
                    format!(
                        " or {}-{}",
                        field.names[0],
                        field.names[field.names.len() - 1]
                    )
                }
            ))
        };
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                // At most the field's maximum, so that counting up by it
                // from a value of the field cannot overflow.
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| (1..=field.max).contains(s))
                    .ok_or_else(|| {
                        bad(format!(
                            "`{step}` is not a step (a whole number from 1 to {})",
                            field.max
                        ))
                    })?;
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, field).map_err(&bad)?,
                value(b, field).map_err(&bad)?,
            )
        } else {
            let a = value(range, field).map_err(&bad)?;
            // `a/n`: from a, every n, to the end.
            (a, if part.contains('/') { field.max } else { a })
        };
        if low > high {
            return Err(bad(format!("the range {low}-{high} runs backwards")));
        }
        let mut n = low;
        while n <= high {
            set |= 1 << n;
            n += step;
        }
    }
    Ok(set)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    let n = match text.parse::<u32>() {
        Ok(n) => n,
        Err(_) => field
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
            .map(|i| i as u32 + field.min)
            .ok_or_else(|| format!("`{text}` is not a number or a name"))?,
    };
    if n < field.min || n > field.max {
        return Err(format!("{n} is out of range"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(expr: &str, after: &str, tz: &str) -> String {
        let tz = TimeZone::get(tz).unwrap();
        let cron = Cron::parse(expr).unwrap();
        cron.next_after(at(after), &tz).unwrap().to_string()
    }

    #[test]
    fn fields_steps_lists_and_names() {
        assert_eq!(
            next("*/5 * * * * *", "2026-12-05T10:00:01Z", "UTC"),
            "2026-12-05T10:00:05Z"
        );
        assert_eq!(
            next("0 9 * * MON-FRI", "2026-12-05T10:00:00Z", "UTC"),
            "2026-12-07T09:00:00Z"
        );
        assert_eq!(
            next("30 8,17 * * *", "2026-12-05T09:00:00Z", "UTC"),
            "2026-12-05T17:30:00Z"
        );
        assert_eq!(
            next("0 0 1 JAN *", "2026-12-05T00:00:00Z", "UTC"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-12-05T09:59:59Z", "UTC"),
            "2026-12-05T10:00:00Z"
        );
        // Sunday is 0 and 7; both day fields restricted: either matches.
        assert_eq!(
            next("0 0 * * 7", "2026-12-05T00:00:00Z", "UTC"),
            "2026-12-06T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * FRI", "2026-12-05T00:00:00Z", "UTC"),
            "2026-12-11T00:00:00Z"
        );
        // Strictly after, to the whole second.
        assert_eq!(
            next("* * * * * *", "2026-12-05T10:00:00.5Z", "UTC"),
            "2026-12-05T10:00:01Z"
        );
        // Never: Feb 30.
        let never = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            never.next_after(at("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(
            next("0 9 * * *", "2026-12-05T01:00:00Z", "Asia/Tokyo"),
            "2026-12-06T00:00:00Z"
        );
        // Berlin springs from 02:00 to 03:00 on 2026-03-29: 02:30 runs at
        // 03:30 local (01:30 UTC), once.
        let cron = Cron::parse("30 2 * * *").unwrap();
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let times = cron.upcoming(at("2026-03-28T12:00:00Z"), &berlin, 2);
        assert_eq!(times[0].to_string(), "2026-03-29T01:30:00Z");
        assert_eq!(times[1].to_string(), "2026-03-30T00:30:00Z");
        // It falls back from 03:00 to 02:00 on 2026-10-25: 02:30 runs once,
        // at its first occurrence (00:30 UTC).
        let times = cron.upcoming(at("2026-10-24T12:00:00Z"), &berlin, 2);
        assert_eq!(times[0].to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(times[1].to_string(), "2026-10-26T01:30:00Z");
        // Every 20 minutes through the repeated hour: each wall time once.
        let cron = Cron::parse("*/20 2 * * *").unwrap();
        let times = cron.upcoming(at("2026-10-24T23:00:00Z"), &berlin, 4);
        let shown: Vec<String> = times.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:20:00Z",
                "2026-10-25T00:40:00Z",
                "2026-10-26T01:00:00Z"
            ]
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, says) in [
            ("* * * *", "5 fields"),
            ("61 * * * *", "the minute field `61`: 61 is out of range"),
            ("* * * * MON-XYZ", "`XYZ` is not a number or a name"),
            ("*/0 * * * *", "is not a step"),
            ("5/4294967295 * * * *", "is not a step"),
            ("5-1 * * * *", "runs backwards"),
            ("@often", "not a cron shorthand"),
        ] {
            let err = Cron::parse(expr).unwrap_err().to_string();
            assert!(err.contains(says), "{expr}: {err}");
        }
    }
}
