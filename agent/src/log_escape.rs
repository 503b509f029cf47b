//! Log lines that cannot forge other lines or hide text: control
//! characters (CR, LF, ESC sequences, DEL, C1) and the bidirectional
//! formatting characters (U+202E and its kin) in anything the agent logs
//! (workflow names, step ids, the hub's messages) are written escaped.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    Json,
}

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
        let mut out = escape(body, self.style);
        out.push_str(end);
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether `c` must not reach a log line as itself.
fn dangerous(c: char) -> bool {
    c.is_control() && c != '\t'
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

pub fn escape(text: &str, style: Style) -> String {
    if !text.chars().any(dangerous) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !dangerous(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => match style {
                Style::Plain => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                // All of them are in the Basic Multilingual Plane.
                Style::Json => out.push_str(&format!("\\u{:04x}", c as u32)),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const EVIL: &str = "pay\r\nINFO forged line\u{1b}[2J\u{7}\u{202e}cod.exe\u{9b}1m\u{7f}";

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
            !body.chars().any(dangerous),
            "nothing raw is left: {body:?}"
        );
    }

    #[test]
    fn plain_lines_escape_control_and_bidi_characters() {
        let line = logged(false);
        clean(&line);
        assert!(
            line.contains(
                r"workflow=pay\r\nINFO forged line\u{1b}[2J\u{7}\u{202e}cod.exe\u{9b}1m\u{7f}"
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
        let text = "robot `r1` registered; waiting for sessions\t(日本語)";
        assert_eq!(escape(text, Style::Plain), text);
        assert_eq!(escape(text, Style::Json), text);
    }
}
