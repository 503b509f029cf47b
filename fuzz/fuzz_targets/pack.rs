//! An action pack's manifest (docs/action-packs.md) and the lines a pack
//! writes, on arbitrary text.
//!
//! Beyond "no panic": a manifest is accepted or refused with problems that
//! name the file and say something, and every problem of a document that
//! parsed names its line; a protocol line parses or says why.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tasuki_actions::packs::manifest;
use tasuki_actions::packs::wire::PackMessage;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = PackMessage::parse(data) {
        assert!(!why.is_empty(), "a refused protocol line says why");
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/fuzz/pack");
    let file = dir.join(manifest::MANIFEST_FILE);
    if let Err(problems) = manifest::parse(text, dir, &file) {
        assert!(!problems.is_empty(), "a refused manifest has a problem");
        for p in problems.iter() {
            assert_eq!(p.file.as_deref(), Some("/fuzz/pack/tasuki-pack.yaml"));
            assert!(!p.message.is_empty(), "a problem says something: {p:?}");
        }
    }
});
