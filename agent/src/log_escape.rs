//! Log lines that cannot forge other lines or hide text: control
//! characters (CR, LF, tab, ESC sequences, DEL, C1), the Unicode line
//! separators and the bidirectional formatting characters (U+202E and its
//! kin) in anything the agent logs (workflow names, step ids, the hub's
//! messages) are written escaped. `tasuki_protocol::log_escape` says
//! which, for the hub's log too.
//!
//! It is done once, on the way out, by a writer around each log
//! destination: every field of every event passes through it, whoever
//! wrote the `tracing` call. A formatted event ends with its one newline,
//! which is kept.

use std::io::{self, Write};

/// How escapes are spelt: Rust's `\u{202e}` in plain lines; JSON's
/// `\u202e` in JSON lines, where every such character is inside a string
/// (the syntax is ASCII), so the line stays valid JSON and decodes to the
/// original text.
pub use tasuki_protocol::log_escape::Style;
use tasuki_protocol::log_escape::escape;

/// Wraps a destination; each `write` is one formatted event.
pub struct Escaping<W> {
    inner: W,
    style: Style,
}

impl<W: Write> Escaping<W> {
    pub fn new(inner: W, style: Style) -> Escaping<W> {
        Escaping { inner, style }
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let mut out = escape(body, self.style).into_owned();
        out.push_str(end);
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const EVIL: &str =
        "pay\r\nINFO forged line\u{1b}[2J\u{7}\u{202e}cod.exe\u{9b}1m\u{7f}\u{2028}end";

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What the daemon's own layer writes for one event carrying `EVIL`
    /// in a field and in the message.
    fn logged(json: bool) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let style = if json { Style::Json } else { Style::Plain };
        let make = move || Escaping::new(sink.clone(), style);
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(make)
            .with_ansi(false);
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
            Box::new(tracing_subscriber::registry().with(layer.json()))
        } else {
            Box::new(tracing_subscriber::registry().with(layer))
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(workflow = %EVIL, step = ?EVIL, "session {EVIL} started");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    fn clean(line: &str) {
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(line.ends_with('\n'), "{line:?}");
        let body = line.trim_end_matches('\n');
        assert!(
            !body.chars().any(tasuki_protocol::log_escape::needs_escape),
            "nothing raw is left: {body:?}"
        );
    }

    #[test]
    fn plain_lines_escape_control_and_bidi_characters() {
        let line = logged(false);
        clean(&line);
        assert!(
            line.contains(
                r"workflow=pay\r\nINFO forged line\u{1b}[2J\u{7}\u{202e}cod.exe\u{9b}1m\u{7f}\u{2028}end"
            ),
            "{line}"
        );
        assert!(line.contains(r"session pay\r\nINFO"), "{line}");
    }

    #[test]
    fn json_lines_stay_valid_json_that_decodes_to_the_original() {
        let line = logged(true);
        clean(&line);
        let event: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(event["fields"]["workflow"], EVIL, "{line}");
        assert_eq!(
            event["fields"]["message"],
            format!("session {EVIL} started"),
            "{line}"
        );
    }

    #[test]
    fn ordinary_text_passes_unchanged() {
        let text = "robot `r1` registered; waiting for sessions (日本語 – ünïcode)";
        assert_eq!(escape(text, Style::Plain), text);
        assert_eq!(escape(text, Style::Json), text);
    }
}
