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
pub mod wire;

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
    if let Err(why) = only_owner_writes(dir) {
        found.problems.push(Problem {
            file: Some(dir.join(MANIFEST_FILE).display().to_string()),
            ..Problem::new("", why)
        });
        return;
    }
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

/// A pack runs as the robot: whoever can change its files can run code as
/// the robot. So a pack folder, or a file directly in it, that every user
/// may write, or that another account owns (root aside), is refused (Unix;
/// on Windows the folder's ACL is the administrator's). Group write is
/// allowed: with per-user groups (Ubuntu's umask 002) it is the norm.
fn only_owner_writes(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let me = nix::unistd::geteuid().as_raw();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot list the pack folder: {e}"))?
            .flatten()
            .map(|e| e.path());
        for path in std::iter::once(dir.to_path_buf()).chain(entries) {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode();
            if mode & 0o002 != 0 {
                return Err(format!(
                    "{} is writable by every user (mode {:o}), who could then run code as the robot; \
                     run `chmod o-w {}` (the pack is left out until then)",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ));
            }
            if meta.uid() != me && meta.uid() != 0 {
                return Err(format!(
                    "{} belongs to another account (uid {}), which could then run code as the robot; \
                     give it to this account or root (the pack is left out until then)",
                    path.display(),
                    meta.uid()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::language::allowed::Allowed;
    use crate::{LoadOptions, parse_workflow};

    fn probe_registry() -> Registry {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/packs");
        let found = discover(&[dir]);
        assert!(found.problems.is_empty(), "{}", found.problems);
        let mut registry = Registry::builtin();
        for pack in &found.packs {
            registry.register_pack(pack);
        }
        registry
    }

    const USES_PROBE: &str =
        "version: 1\nname: w\nsteps:\n  - id: s\n    action: probe.hello\n    with: { name: x }\n";

    #[test]
    fn allowed_actions_refuse_a_pack_action_like_a_built_in_one() {
        let registry = probe_registry();
        let only_logs = Allowed::new(&["log".to_string()], &registry).unwrap();
        let options = LoadOptions {
            allowed_actions: Some(only_logs),
            ..LoadOptions::default()
        };
        let problems = parse_workflow(USES_PROBE, "w.yaml", &registry, &options)
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("w.yaml:5:") && problems.contains("this robot refuses `probe.hello`"),
            "{problems}"
        );

        let probe_family = Allowed::new(&["probe.*".to_string()], &registry).unwrap();
        let options = LoadOptions {
            allowed_actions: Some(probe_family),
            ..LoadOptions::default()
        };
        assert!(parse_workflow(USES_PROBE, "w.yaml", &registry, &options).is_ok());
    }

    #[test]
    fn offers_name_each_pack_action_with_its_pack_and_version() {
        let offers = probe_registry().offers();
        let hello = offers.iter().find(|o| o.name == "probe.hello").unwrap();
        assert_eq!(hello.pack, Some(("probe".to_string(), "0.1.0".to_string())));
        assert_eq!(hello.schema_sha256.len(), 64);
        let log = offers.iter().find(|o| o.name == "log").unwrap();
        assert_eq!(log.pack, None);
    }

    #[cfg(unix)]
    #[test]
    fn a_pack_other_users_may_change_is_left_out() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("open");
        std::fs::create_dir(&pack).unwrap();
        std::fs::write(
            pack.join(MANIFEST_FILE),
            "manifest: 1\nname: open\nversion: '1'\ncommand: [x]\nactions:\n  go:\n    args: { type: object }\n",
        )
        .unwrap();
        std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(discover(&[dir.path().to_path_buf()]).packs.len(), 1);
        let script = pack.join("pack.py");
        std::fs::write(&script, "").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o666)).unwrap();
        let found = discover(&[dir.path().to_path_buf()]);
        assert!(found.packs.is_empty());
        let problems = found.problems.to_string();
        assert!(
            problems.contains("pack.py is writable by every user (mode 666)")
                && problems.contains("chmod o-w"),
            "{problems}"
        );
    }

    #[test]
    fn the_first_pack_of_a_name_wins_and_the_second_is_reported() {
        let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/packs/probe");
        let found = discover(&[probe.clone(), probe]);
        assert_eq!(found.packs.len(), 1);
        let problems = found.problems.to_string();
        assert!(problems.contains("was already loaded from"), "{problems}");
    }
}
