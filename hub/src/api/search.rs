//! The `query` of `GET /v1/session_queues`: space-separated terms
//! `before:YYYY-MM-DD`, `after:YYYY-MM-DD` and `is:STATUS`, as in
//! AUTORO's session search. Dates are UTC days; `before:D` means created
//! before D began, `after:D` created on D or later. Several `is:` terms
//! mean any of those statuses.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use tasuki_protocol::SessionStatus;

use super::error::ApiError;
use super::query::shorten;
use crate::db::sessions::Filter;

const MAX_QUERY_CHARS: usize = 1000;

pub fn parse(query: &str) -> Result<Filter, ApiError> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(bad(format!(
            "the query is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let mut filter = Filter::default();
    for term in query.split_whitespace() {
        let (key, value) = term.split_once(':').unwrap_or((term, ""));
        match key {
            "before" => {
                let t = day_start(term, value)?;
                filter.before = Some(filter.before.map_or(t, |b| b.min(t)));
            }
            "after" => {
                let t = day_start(term, value)?;
                filter.after = Some(filter.after.map_or(t, |a| a.max(t)));
            }
            "is" => {
                let status: SessionStatus = value
                    .parse()
                    .map_err(|e| bad(format!("`{}`: {e}", shorten(term))))?;
                if !filter.statuses.contains(&status) {
                    filter.statuses.push(status);
                }
            }
            _ => {
                return Err(bad(format!(
                    "unknown search term `{}`; the terms are before:YYYY-MM-DD, \
                     after:YYYY-MM-DD and is:STATUS ({})",
                    shorten(term),
                    SessionStatus::ALL.map(SessionStatus::as_str).join(", ")
                )));
            }
        }
    }
    Ok(filter)
}

fn day_start(term: &str, value: &str) -> Result<i64, ApiError> {
    let err = || {
        bad(format!(
            "`{}`: the date must be YYYY-MM-DD, such as 2019-07-01",
            shorten(term)
        ))
    };
    // jiff also reads other ISO 8601 spellings; the document promises this one.
    let well_formed = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !well_formed {
        return Err(err());
    }
    let date: Date = value.parse().map_err(|_| err())?;
    let start = date.to_zoned(TimeZone::UTC).map_err(|_| err())?;
    Ok(start.timestamp().as_millisecond())
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request("invalid_query", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_terms() {
        let f = parse("before:2019-10-11  after:2019-07-01 is:success is:error").unwrap();
        assert_eq!(f.before, Some(1_570_752_000_000));
        assert_eq!(f.after, Some(1_561_939_200_000));
        assert_eq!(
            f.statuses,
            vec![SessionStatus::Success, SessionStatus::Error]
        );
        assert_eq!(parse("").unwrap(), Filter::default());
    }

    #[test]
    fn names_a_bad_term() {
        for (q, needle) in [
            ("before:2019-13-01", "before:2019-13-01"),
            ("after:yesterday", "after:yesterday"),
            ("is:done", "done"),
            ("workflow:3", "workflow:3"),
            ("before:20191011", "before:20191011"),
        ] {
            let e = parse(q).unwrap_err();
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
    }
}
