//! Directories and files that only the agent's account may read: sessions'
//! work, spool and artifacts folders hold what steps wrote and logged, and
//! a spool's `lease.json` names a lease the hub honours. On Unix folders are
//! made 0700 and files 0600 (less the umask); on Windows they inherit the
//! parent folder's ACL (a system install's folder under `%ProgramData%` is
//! the service's).

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Makes `dir` and any missing parents, each 0700 on Unix.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    builder(true).create(dir)
}

/// Makes `dir`, whose parent exists, 0700 on Unix.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    builder(false).create(dir)
}

fn builder(recursive: bool) -> fs::DirBuilder {
    let mut b = fs::DirBuilder::new();
    b.recursive(recursive);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b
}

/// Creates (or truncates) `path` for writing, 0600 on Unix when new.
pub fn create_file(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes `bytes` to `path` as [`create_file`] makes it.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(bytes)
}

/// Takes group and other access away from a folder that is the agent's
/// alone (one an earlier version made 0755). Not for folders an operator
/// may share.
pub fn tighten(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = fs::metadata(dir) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0
            && let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the folder private to the agent's account");
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_are_0700_files_0600_and_loose_folders_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(p)), 0o700, "{p}");
        }
        write(&deep.join("lease.json"), b"{}").unwrap();
        assert_eq!(mode(&deep.join("lease.json")), 0o600);

        let loose = root.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        tighten(&loose);
        assert_eq!(mode(&loose), 0o700);
    }
}
