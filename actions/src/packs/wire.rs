//! The messages of the pack protocol, version 1, as docs/action-packs.md
//! writes them down. Fields a receiver does not know are ignored; a missing
//! or mistyped one is an error.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::runtime::event::LogLevel;

pub const PROTOCOL_VERSION: u32 = 1;
/// One line of a pack's standard output, at most. Past it the pack is
/// ended: a runaway writer must not exhaust the robot's memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// What a pack writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PackMessage {
    Ready {
        protocol: u32,
    },
    Log {
        #[serde(default)]
        id: Option<String>,
        level: LogLevel,
        message: String,
    },
    Artifact {
        #[serde(default)]
        id: Option<String>,
        path: String,
    },
    Result {
        id: String,
        #[serde(default)]
        output: Value,
    },
    Error {
        id: String,
        code: String,
        message: String,
    },
}

impl PackMessage {
    pub fn parse(line: &[u8]) -> Result<PackMessage, String> {
        serde_json::from_slice(line).map_err(|e| {
            let text = e.to_string();
            // serde's "at line 1 column 37" is noise for a one-line message.
            match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        })
    }
}

/// Where a step runs, as a `run` request tells the pack.
pub struct RunContext<'a> {
    pub session_id: &'a str,
    pub step_id: &'a str,
    pub attempt: u32,
    pub work_dir: &'a Path,
    pub artifacts_dir: &'a Path,
}

pub fn run(id: &str, action: &str, args: &Value, context: &RunContext<'_>) -> String {
    line(json!({
        "type": "run",
        "id": id,
        "action": action,
        "args": args,
        "context": {
            "session_id": context.session_id,
            "step_id": context.step_id,
            "attempt": context.attempt,
            "work_dir": context.work_dir,
            "artifacts_dir": context.artifacts_dir,
        },
    }))
}

pub fn cancel(id: &str) -> String {
    line(json!({"type": "cancel", "id": id}))
}

pub fn shutdown() -> String {
    line(json!({"type": "shutdown"}))
}

fn line(value: Value) -> String {
    let mut text = value.to_string();
    text.push('\n');
    text
}

/// A pack's error code: what `try`/`catch` and the hub see, so it is kept
/// plain (docs/action-packs.md).
pub fn check_error_code(code: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&code.len())
        && code.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err("an error `code` is 1 to 64 lowercase letters, digits, `_`, `.` or `-`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_unknown_fields_are_ignored() {
        let m = PackMessage::parse(br#"{"type":"result","id":"1","output":[1],"extra":true}"#);
        assert_eq!(
            m,
            Ok(PackMessage::Result {
                id: "1".into(),
                output: json!([1])
            })
        );
        let m = PackMessage::parse(br#"{"type":"result","id":"1"}"#);
        assert_eq!(
            m,
            Ok(PackMessage::Result {
                id: "1".into(),
                output: Value::Null
            })
        );
    }

    #[test]
    fn a_mistyped_or_unknown_message_says_what_is_wrong() {
        let e = PackMessage::parse(br#"{"type":"result","id":1}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = PackMessage::parse(br#"{"type":"hello"}"#).unwrap_err();
        assert!(e.contains("unknown variant `hello`"), "{e}");
        let e = PackMessage::parse(b"not json").unwrap_err();
        assert!(e.starts_with("expected"), "{e}");
        let e = PackMessage::parse(br#"{"type":"log","level":"loud","message":"x"}"#).unwrap_err();
        assert!(e.contains("loud"), "{e}");
    }

    #[test]
    fn error_codes_are_plain() {
        assert!(check_error_code("sheet_not_found").is_ok());
        assert!(check_error_code("Bad Code").is_err());
        assert!(check_error_code("").is_err());
    }
}
