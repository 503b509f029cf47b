//! Log field values carry callers' text: workflow and robot names, paths,
//! error messages that quote input. Written raw, a CR or LF forges log
//! lines, an ESC sequence repaints the operator's terminal, and a bidi
//! override (U+202E) makes a line read differently than it is. Every
//! field of every hub log line goes through [`escaping_fields`], so no
//! call site has to remember.

use std::fmt::{self, Write};

use tasuki_protocol::log_escape;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// The field formatter for the hub's subscriber: the message, then
/// `name=value` pairs, as tracing-subscriber's default, with control and
/// bidi characters in them escaped.
pub fn escaping_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(|writer: &mut Writer<'_>, field, value: &dyn fmt::Debug| {
        let mut out = Escaping(writer);
        if field.name() == "message" {
            write!(out, "{value:?}")
        } else {
            write!(out, "{field}={value:?}")
        }
    })
    .delimited(" ")
}

/// Passes text through, with every character that can alter how a log
/// line reads written as an escape instead (`tasuki_protocol::log_escape`,
/// which the agent's log uses too).
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        log_escape::write_escaped(self.0, s, log_escape::Style::Plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(s: &str) -> String {
        let mut text = String::new();
        let mut writer = Writer::new(&mut text);
        Escaping(&mut writer).write_str(s).unwrap();
        text
    }

    #[test]
    fn escapes_what_changes_how_a_line_reads() {
        assert_eq!(
            escape("a\nb\r\x1b[31mc\u{202e}d"),
            "a\\nb\\r\\u{1b}[31mc\\u{202e}d"
        );
        assert_eq!(escape("plain – ünïcode"), "plain – ünïcode");
        assert_eq!(escape("\u{85}\u{7f}\u{2066}"), "\\u{85}\\u{7f}\\u{2066}");
    }
}
