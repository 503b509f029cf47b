//! Action packs (docs/action-packs.md): actions served by a program in any
//! language, found in folders at start, and run through the same registry,
//! validation, masking and process supervision as the built-in actions.
//!
//! - `manifest.rs`: `tasuki-pack.yaml`, read and checked.
//! - `wire.rs`: the protocol's messages.
//! - `process.rs`: one running pack process and its requests.
//! - `action.rs`: a pack's action for the registry, and the session's
//!   running packs.
//! - `check.rs`: `tasuki packs check`, a pack's self-test.

mod action;
mod check;
pub mod manifest;
mod process;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use check::{CheckReport, RequestOutcome, check};
pub use manifest::{MANIFEST_FILE, Manifest};
pub use process::error_codes;
pub use wire::PROTOCOL_VERSION;

use crate::language::problem::{Problem, Problems};
use crate::runtime::registry::Registry;

/// What a search of pack folders found: the packs that load, and every
/// problem with the ones that do not (each leaves out only its own pack).
#[derive(Debug, Default)]
pub struct Found {
    pub packs: Vec<Arc<Manifest>>,
    pub problems: Problems,
}

/// Finds the packs in `dirs`: a folder holding `tasuki-pack.yaml` is a
/// pack; any other folder holds packs, one per subfolder (subfolders
/// without a manifest are skipped). A folder that does not exist is
/// skipped too, so default locations may be absent. The first pack of a
/// name wins; later ones are reported.
pub fn discover(dirs: &[PathBuf]) -> Found {
    let mut found = Found::default();
    for dir in dirs {
        if dir.join(MANIFEST_FILE).is_file() {
            add(&mut found, dir);
            continue;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                found.problems.push(Problem {
                    file: Some(dir.display().to_string()),
                    ..Problem::new("", format!("cannot list the pack folder: {e}"))
                });
                continue;
            }
        };
        let mut subdirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
        subdirs.sort();
        for sub in subdirs {
            add(&mut found, &sub);
        }
    }
    found
}

fn add(found: &mut Found, dir: &Path) {
    match manifest::load(dir) {
        Ok(m) => {
            if let Some(first) = found.packs.iter().find(|p| p.name == m.name) {
                found.problems.push(Problem {
                    file: Some(m.file.display().to_string()),
                    ..Problem::new(
                        "name",
                        format!(
                            "a pack named `{}` was already loaded from {}; this one is left out",
                            m.name,
                            first.dir.display()
                        ),
                    )
                });
            } else {
                found.packs.push(Arc::new(m));
            }
        }
        Err(problems) => found.problems.extend(problems),
    }
}

impl Registry {
    /// Adds every action of `pack` as `<pack>.<action>`.
    pub fn register_pack(&mut self, pack: &Arc<Manifest>) {
        for action in pack.actions.keys() {
            self.register(
                &format!("{}.{action}", pack.name),
                action::PackAction {
                    manifest: pack.clone(),
                    action: action.clone(),
                },
            );
        }
    }
}
