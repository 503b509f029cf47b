//! The agent's config file (`agent.toml`) on arbitrary text, read as
//! `Effective::load` reads it: the file's entries, then each value checked
//! for its key's kind.
//!
//! Beyond "no panic": every entry is a known key with the line it is on
//! (`tasuki config show` prints `file:line`), every problem says what is
//! wrong, and a problem with a key names its line.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tasuki_fuzz::agent_settings::{file, schema, value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    match file::read(text) {
        Ok(entries) => {
            for e in entries {
                let key = schema::find(e.key).expect("file::read returns known keys");
                assert!(
                    (1..=lines).contains(&e.line),
                    "`{}` placed at line {} of {lines}",
                    e.key,
                    e.line
                );
                match value::from_toml(key.kind, &e.value, Path::new("/etc/tasuki")) {
                    Ok(v) => {
                        let _ = v.shown(key.kind);
                    }
                    Err(message) => assert!(!message.is_empty()),
                }
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(!p.message.is_empty());
                if let Some(line) = p.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {}",
                        p.message
                    );
                }
                if p.key.is_some() {
                    assert!(p.line.is_some(), "no line for `{:?}`: {}", p.key, p.message);
                }
            }
        }
    }
});
