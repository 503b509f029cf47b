//! The page shell, error pages, and the small formatting every page uses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};
use tasuki_protocol::SessionStatus;

use super::auth::{CSRF_FIELD, Operator};
use crate::api::error::ApiError;
use crate::db::DbError;

/// A page with the console's navigation, for a signed-in operator.
pub fn page(op: &Operator, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("sessions", "/ui/sessions", "Sessions"),
        ("robots", "/ui/robots", "Robots"),
        ("workflows", "/ui/workflows", "Workflows"),
    ];
    shell(
        title,
        html! {
            header class="top" {
                a class="brand" href="/ui/sessions" { "Tasuki" }
                nav aria-label="Console" {
                    @for (id, href, label) in nav {
                        @if id == current {
                            a href=(href) aria-current="page" { (label) }
                        } @else {
                            a href=(href) { (label) }
                        }
                    }
                }
                div class="who" {
                    span { "key " code { (op.caller.key_id) } }
                    form method="post" action="/ui/logout" class="inline" {
                        input type="hidden" name=(CSRF_FIELD) value=(op.csrf);
                        button type="submit" id="sign-out" { "Sign out" }
                    }
                }
            }
            main { (body) }
        },
    )
}

/// A page without navigation: sign-in, and errors shown before anyone is
/// known.
pub fn bare(title: &str, body: Markup) -> Markup {
    shell(
        title,
        html! {
            header class="top" { a class="brand" href="/ui/sessions" { "Tasuki" } }
            (body)
        },
    )
}

fn shell(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tasuki" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body { (body) }
        }
    }
}

/// A page that says what went wrong, with its status.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, title: &str, message: impl Into<String>) -> PageError {
        PageError {
            status,
            title: title.into(),
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    pub fn internal() -> PageError {
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Hub error",
            "the hub failed to handle this page; its log says why",
        )
    }
}

impl PageError {
    fn database() -> PageError {
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Database unreachable",
            "the hub cannot reach its database, or the database failed this request; the \
             hub's log says why. Try again in a moment.",
        )
    }
}

impl From<DbError> for PageError {
    fn from(e: DbError) -> PageError {
        ApiError::from(e).into()
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        if e.code == crate::api::error::DATABASE {
            return PageError::database();
        }
        let title = match e.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            StatusCode::CONFLICT => "Not possible now",
            s if s.is_server_error() => "Hub error",
            _ => "Refused",
        };
        let message = if e.status.is_server_error() {
            "the hub failed to handle this page; its log says why".to_string()
        } else {
            e.message
        };
        PageError::new(e.status, title, message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.status;
        let page = bare(
            &self.title,
            html! {
                main class="narrow" {
                    h1 { (self.title) }
                    p class="problem" role="alert" id="problem" { (self.message) }
                    p { a href="/ui/sessions" { "Back to the sessions" } }
                }
            },
        );
        (status, page).into_response()
    }
}

/// A status as a word with a symbol; its colour only repeats it.
/// A page's id from its path (`/ui/sessions/{id}`), or the 404 that says
/// it is not one; `what` names the thing (`session`, `workflow`).
pub fn page_id(id: &str, what: &str) -> Result<i64, PageError> {
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        PageError::not_found(format!(
            "`{}` is not a {what} id",
            crate::api::query::shorten(id)
        ))
    })
}

pub fn status(s: SessionStatus) -> Markup {
    let symbol = match s {
        SessionStatus::Queued => "◷",
        SessionStatus::Running => "▶",
        SessionStatus::Waiting => "⏸",
        SessionStatus::Success => "✓",
        SessionStatus::Error => "✗",
        SessionStatus::Cancelled => "■",
    };
    html! {
        span class={ "status status-" (s.as_str()) } data-status=(s.as_str()) {
            span aria-hidden="true" { (symbol) " " } (s.as_str())
        }
    }
}

pub fn time(t: Option<Timestamp>) -> Markup {
    match t {
        Some(t) => html! {
            time datetime=(t.to_string()) { (t.strftime("%Y-%m-%d %H:%M:%S")) span class="tz" { " UTC" } }
        },
        None => html! { span class="none" { "—" } },
    }
}

/// From `start` to `end`, or to now while it has not ended.
pub fn duration_between(start: Option<Timestamp>, end: Option<Timestamp>) -> String {
    match start {
        Some(start) => {
            let end = end.unwrap_or_else(Timestamp::now);
            let ms = end.as_millisecond() - start.as_millisecond();
            duration_ms(ms.max(0) as u64)
        }
        None => "—".into(),
    }
}

pub fn duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Percent-encodes all but the unreserved characters: for a value put in
/// a URL's path segment or query.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Like [`encode`], `/` included: for one path segment.
pub fn encode_segment(text: &str) -> String {
    encode(text).replace('/', "%2F")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_failure_is_a_500_page_that_says_so() {
        let lost = || DbError::Sqlite(rusqlite::Error::InvalidQuery);
        let page = PageError::from(lost());
        assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(page.message.contains("cannot reach its database"));
        // An API error from a database failure says as much, and no more.
        let page = PageError::from(ApiError::from(lost()));
        assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(page.message.contains("cannot reach its database"));
        assert!(!page.message.contains("InvalidQuery"));
        // A row the hub cannot read back is the hub's failure.
        let page = PageError::from(DbError::Corrupt("a test".into()));
        assert!(!page.message.contains("database"), "{}", page.message);
        assert!(!page.message.contains("a test"));
        // Any other failure of the hub does not blame the database.
        let page = PageError::from(ApiError::internal());
        assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!page.message.contains("database"), "{}", page.message);
    }

    #[test]
    fn encodes_and_decodes() {
        assert_eq!(encode("/ui/sessions?a=b&c"), "/ui/sessions%3Fa%3Db%26c");
        assert_eq!(encode_segment("shot 1/2.png"), "shot%201%2F2.png");
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(duration_ms(61_500), "1m 01s");
        assert_eq!(bytes(2048), "2.0 KiB");
    }
}
