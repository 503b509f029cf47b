//! The database's files are readable by their owner only: they hold
//! sealed secrets, workflows, params, logs and artifacts.
//!
//! On Unix the database file is created 0600 before SQLite opens it, and
//! SQLite gives its `-wal` and `-shm` files the mode of the database file;
//! files an older hub left readable by others are tightened, with a log
//! line. On Windows files take the ACL of their folder, which the
//! operator restricts (the hub's data folder).

use std::io;
use std::path::Path;

/// `<db>`, `<db>-wal`, `<db>-shm`, `<db>-journal`.
#[cfg(unix)]
fn database_files(db: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    files
}

#[cfg(unix)]
pub fn make_private(db: &Path) -> io::Result<()> {
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        // An empty file is a new database to SQLite.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for file in database_files(db) {
        let meta = match fs::metadata(&file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode & 0o700))?;
            tracing::info!(
                file = %file.display(),
                was = format!("{mode:o}"),
                now = format!("{:o}", mode & 0o700),
                "the database file could be read by group or others; it is now its owner's only"
            );
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn make_private(_db: &Path) -> io::Result<()> {
    Ok(())
}
