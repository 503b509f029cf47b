//! Which characters of callers' text must not reach a log line as
//! themselves, and how they are written instead. Log lines carry workflow
//! and robot names, host names and messages that quote input: a CR or LF
//! forges lines, an ESC sequence repaints the reader's terminal, and a
//! bidi override (U+202E) makes a line read differently than it is. The
//! hub's field formatter and the agent's log writer both escape with this
//! module, so the two logs escape the same characters.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// How an escape is spelt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Rust's `\u{202e}`, for plain text lines.
    Plain,
    /// JSON's `\u202e`, for characters inside a JSON string: the line stays
    /// valid JSON and decodes to the original text.
    Json,
}

/// C0 and C1 controls (tab included) and DEL, the Unicode line and
/// paragraph separators, and the bidi embedding, override and isolate
/// controls and marks.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Writes `text` to `out` with every character [`needs_escape`] names
/// written as an escape.
pub fn write_escaped(out: &mut impl Write, text: &str, style: Style) -> fmt::Result {
    let mut rest = text;
    while let Some((i, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
        out.write_str(&rest[..i])?;
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            // Every such character is in the Basic Multilingual Plane.
            c => match style {
                Style::Plain => write!(out, "\\u{{{:x}}}", c as u32)?,
                Style::Json => write!(out, "\\u{:04x}", c as u32)?,
            },
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// `text` with every character [`needs_escape`] names escaped; borrowed
/// when there is none.
pub fn escape(text: &str, style: Style) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    // Writing to a String cannot fail.
    let _ = write_escaped(&mut out, text, style);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_changes_how_a_line_reads() {
        assert_eq!(
            escape("a\nb\r\t\x1b[31mc\u{202e}d", Style::Plain),
            "a\\nb\\r\\t\\u{1b}[31mc\\u{202e}d"
        );
        assert_eq!(
            escape("\u{85}\u{7f}\u{2066}\u{2028}\u{2029}", Style::Plain),
            "\\u{85}\\u{7f}\\u{2066}\\u{2028}\\u{2029}"
        );
        assert_eq!(escape("x\u{2028}y\u{1b}", Style::Json), "x\\u2028y\\u001b");
        assert!(matches!(
            escape("plain – ünïcode 日本語", Style::Plain),
            Cow::Borrowed(_)
        ));
    }
}
