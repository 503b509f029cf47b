//! Durations as workflow authors write them: `500ms`, `30s`, `5m`, `1h30m`.

use std::time::Duration;

/// Parses a duration with explicit units. A bare number is refused, because
/// `timeout: 30` could mean seconds or milliseconds and a guess is a bug.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write it like `30s`, `500ms`, `5m` or `1h`".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration `{text}`; write it like `30s`, `500ms`, `5m` or `1h30m`"
            ));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        let millis_per_unit: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "duration `{text}` has no unit; write `{number}s` for seconds or `{number}ms` for milliseconds"
                ));
            }
            other => {
                return Err(format!(
                    "duration `{text}` has unknown unit `{other}`; use ms, s, m, h or d"
                ));
            }
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(number.saturating_mul(millis_per_unit))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
    }
    // Longer than a year is certainly a typo, and would overflow deadlines.
    if total > 366 * 86_400_000 {
        return Err(format!("duration `{text}` is longer than a year"));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Renders a duration the way it would be written in a workflow.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn refuses_ambiguous_or_broken_durations() {
        for bad in [
            "",
            "30",
            "5x",
            "-1s",
            "s",
            "1.5s",
            "99999999999999999999999h",
            "400d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }
}
