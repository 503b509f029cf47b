//! Keeping the processes that steps start (`shell.run`, the browser's
//! driver and so Chromium) away from protected files: the robot's own
//! credentials.
//!
//! On Linux this is Landlock, which allows rather than denies: the ruleset
//! grants everything on every entry of each protected path's ancestors
//! except the next component on the way to it, and only directory listing
//! on the ancestors themselves. So a protected file can be neither read,
//! written, renamed nor linked out of its directory, while the rest of the
//! file system behaves as before. Entries that appear in those ancestor
//! directories while a process runs are not reachable by it either (the
//! ruleset is built anew for every spawn), which is why the credentials
//! belong in a directory of their own, away from `/tmp` and the work dir.
//!
//! The ruleset is built in the parent, where allocating is fine; the child
//! only makes two async-signal-safe calls before exec: `no_new_privs` (which
//! Landlock requires of a process without CAP_SYS_ADMIN; it is set for root
//! too, so that the step runs alike under every account) and
//! `landlock_restrict_self`. Elsewhere, and on a kernel without Landlock,
//! nothing is enforced and [`support`] says so.

use std::path::PathBuf;

/// Whether this machine can keep protected files from steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// Landlock, at this ABI version.
    Landlock { abi: u32 },
    /// Nothing enforces the protection; why.
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot list {path} to keep the protected files from the step: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the Landlock ruleset that keeps the protected files from the step: {0}")]
    Ruleset(std::io::Error),
    /// A protected file that vanished (moved by a new `tasuki register
    /// --credentials`, say) cannot be located to be hidden; its copy at
    /// the new place would be readable. Refusing is the safe side.
    #[error(
        "{path} is protected from steps but cannot be found ({source}); no step process is \
         started until the agent is restarted with its credentials in place"
    )]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(target_os = "linux")]
pub use linux::{Sandbox, support};

#[cfg(not(target_os = "linux"))]
pub use other::{Sandbox, support};

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeSet;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::{ConfineError, Support};

    // From <linux/landlock.h>.
    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: libc::c_int = 1;
    const EXECUTE: u64 = 1 << 0;
    const WRITE_FILE: u64 = 1 << 1;
    const READ_FILE: u64 = 1 << 2;
    const READ_DIR: u64 = 1 << 3;
    /// The thirteen rights of ABI 1, EXECUTE to MAKE_SYM.
    const ABI1_ALL: u64 = (1 << 13) - 1;
    const REFER: u64 = 1 << 13;
    const TRUNCATE: u64 = 1 << 14;
    const IOCTL_DEV: u64 = 1 << 15;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    fn abi() -> Result<u32, std::io::Error> {
        // SAFETY: with a null attribute and size 0, this only asks the version.
        let version = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if version < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(version as u32)
        }
    }

    pub fn support() -> Support {
        match abi() {
            Ok(abi) if abi >= 1 => Support::Landlock { abi },
            Ok(_) => Support::Unavailable("the kernel reports no Landlock ABI".into()),
            Err(e) => Support::Unavailable(match e.raw_os_error() {
                Some(libc::ENOSYS) => "this kernel has no Landlock (Linux 5.13 or later has it)".into(),
                Some(libc::EOPNOTSUPP) => {
                    "Landlock is disabled on this kernel (add `landlock` to the `lsm=` boot parameter)".into()
                }
                _ => format!("Landlock cannot be used: {e}"),
            }),
        }
    }

    /// Every file-system right the kernel's ABI knows: all of them are
    /// handled, so that what is not granted is denied.
    fn handled(abi: u32) -> u64 {
        let mut rights = ABI1_ALL;
        if abi >= 2 {
            rights |= REFER;
        }
        if abi >= 3 {
            rights |= TRUNCATE;
        }
        if abi >= 5 {
            rights |= IOCTL_DEV;
        }
        rights
    }

    /// A Landlock ruleset, ready to be applied to a child before it execs.
    #[derive(Clone)]
    pub struct Sandbox {
        ruleset: Arc<OwnedFd>,
    }

    impl Sandbox {
        /// The ruleset that hides `protected`, or `None` when there is
        /// nothing to protect or no Landlock to do it (the agent warned at
        /// start). Protected paths that do not exist are left out.
        pub fn build(protected: &[PathBuf]) -> Result<Option<Sandbox>, ConfineError> {
            let hidden = canonical_set(protected)?;
            if hidden.is_empty() {
                return Ok(None);
            }
            let Ok(abi) = abi() else {
                return Ok(None);
            };
            let handled = handled(abi);
            let ruleset = create_ruleset(handled).map_err(ConfineError::Ruleset)?;
            let ancestors: BTreeSet<PathBuf> = hidden
                .iter()
                .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
                .collect();
            let dir_rights = handled;
            let file_rights = handled & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV);
            for dir in &ancestors {
                add_rule(&ruleset, dir, READ_DIR).map_err(ConfineError::Ruleset)?;
                let entries = std::fs::read_dir(dir).map_err(|source| ConfineError::List {
                    path: dir.clone(),
                    source,
                })?;
                for entry in entries {
                    let entry = entry.map_err(|source| ConfineError::List {
                        path: dir.clone(),
                        source,
                    })?;
                    let path = entry.path();
                    if hidden.contains(&path) || ancestors.contains(&path) {
                        continue;
                    }
                    // A link is followed to where it points, and is granted
                    // there (or not); an entry that vanished is nothing to grant.
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    let rights = if kind.is_symlink() {
                        continue;
                    } else if kind.is_dir() {
                        dir_rights
                    } else {
                        file_rights
                    };
                    match add_rule(&ruleset, &path, rights) {
                        Ok(()) => {}
                        // Gone since it was listed, or not ours to open:
                        // then it stays out of reach, which is safe.
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOENT) | Some(libc::EACCES) | Some(libc::ELOOP)
                            ) => {}
                        Err(e) => return Err(ConfineError::Ruleset(e)),
                    }
                }
            }
            Ok(Some(Sandbox {
                ruleset: Arc::new(ruleset),
            }))
        }

        /// Applies the ruleset to the child of `command` just before it
        /// execs; the spawn fails if the kernel refuses.
        pub fn install(&self, command: &mut tokio::process::Command) {
            let ruleset = self.ruleset.clone();
            let restrict = move || -> std::io::Result<()> {
                // SAFETY: both calls are plain system calls, async-signal-safe,
                // on a file descriptor that the closure keeps open.
                unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32)
                        != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            };
            // SAFETY: `restrict` allocates nothing and takes no lock.
            unsafe {
                command.pre_exec(restrict);
            }
        }
    }

    /// The protected paths as the kernel sees them (links resolved), a path
    /// inside another one left out (it is covered). A path that cannot be
    /// resolved is an error: leaving it out would leave it readable.
    fn canonical_set(protected: &[PathBuf]) -> Result<BTreeSet<PathBuf>, ConfineError> {
        let mut all = BTreeSet::new();
        for path in protected {
            let canonical =
                std::fs::canonicalize(path).map_err(|source| ConfineError::Missing {
                    path: path.clone(),
                    source,
                })?;
            if canonical.parent().is_some() {
                all.insert(canonical);
            }
        }
        Ok(all
            .iter()
            .filter(|p| !p.ancestors().skip(1).any(|a| all.contains(a)))
            .cloned()
            .collect())
    }

    fn create_ruleset(handled: u64) -> std::io::Result<OwnedFd> {
        let attr = RulesetAttr {
            handled_access_fs: handled,
        };
        // SAFETY: `attr` is a valid struct of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor (close-on-exec).
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn add_rule(ruleset: &OwnedFd, path: &Path, rights: u64) -> std::io::Result<()> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid C string; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just opened.
        let parent = unsafe { OwnedFd::from_raw_fd(fd) };
        let attr = PathBeneathAttr {
            allowed_access: rights,
            parent_fd: parent.as_raw_fd(),
        };
        // SAFETY: `attr` lives across the call.
        let done = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_path_inside_another_protected_one_is_covered_by_it() {
            let dir = tempfile::tempdir().unwrap();
            let inner = dir.path().join("creds.toml");
            std::fs::write(&inner, "x").unwrap();
            let set = canonical_set(&[inner.clone(), dir.path().to_path_buf()]).unwrap();
            assert_eq!(set.len(), 1);
            assert!(set.contains(&std::fs::canonicalize(dir.path()).unwrap()));
        }

        /// A protected file that has gone cannot be hidden where it went:
        /// no sandbox, and so no step, rather than an unconfined one.
        #[test]
        fn a_protected_path_that_vanished_refuses_the_spawn() {
            let dir = tempfile::tempdir().unwrap();
            let gone = dir.path().join("credentials.toml");
            let error = Sandbox::build(std::slice::from_ref(&gone))
                .err()
                .expect("refused");
            assert!(matches!(error, ConfineError::Missing { .. }), "{error}");
            assert!(error.to_string().contains("credentials.toml"), "{error}");
        }

        /// Two protected files and a protected folder in one folder: all
        /// three out of reach, their neighbour not.
        #[tokio::test]
        async fn protected_paths_sharing_a_folder_are_all_out_of_reach_and_nothing_else() {
            let dir = tempfile::tempdir().unwrap();
            let path = |name: &str| dir.path().join(name);
            std::fs::create_dir(path("nested")).unwrap();
            for name in ["a", "b", "c", "nested/e"] {
                std::fs::write(path(name), name).unwrap();
            }
            let sandbox = Sandbox::build(&[path("a"), path("b"), path("nested")])
                .unwrap()
                .expect("this kernel has Landlock");
            let mut command = tokio::process::Command::new("sh");
            command
                .args(["-c", "for f in \"$@\"; do if cat \"$f\" >/dev/null 2>&1; then echo \"read $f\"; else echo \"denied $f\"; fi; done", "sh"])
                .args(["a", "b", "c", "nested/e"])
                .current_dir(dir.path());
            sandbox.install(&mut command);
            let out = command.output().await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "denied a\ndenied b\nread c\ndenied nested/e\n"
            );
        }

        #[test]
        fn the_rights_grow_with_the_abi() {
            assert_eq!(handled(1), ABI1_ALL);
            assert_eq!(handled(3), ABI1_ALL | REFER | TRUNCATE);
            assert_eq!(handled(7), ABI1_ALL | REFER | TRUNCATE | IOCTL_DEV);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::path::PathBuf;

    use super::{ConfineError, Support};

    /// Nothing to apply: see [`support`].
    #[derive(Clone)]
    pub struct Sandbox;

    impl Sandbox {
        pub fn build(_protected: &[PathBuf]) -> Result<Option<Sandbox>, ConfineError> {
            Ok(None)
        }

        pub fn install(&self, _command: &mut tokio::process::Command) {}
    }

    pub fn support() -> Support {
        Support::Unavailable(format!(
            "{} has no Landlock; run the agent under an account of its own and steps under another",
            std::env::consts::OS
        ))
    }
}
