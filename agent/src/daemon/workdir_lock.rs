//! One agent per work dir. Two agents sharing one would deliver each
//! other's spools and remove each other's session directories at start, so
//! the second is refused before it registers.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "agent.lock";

/// Held for as long as the agent runs; the lock goes with the process,
/// however it ends.
pub struct WorkDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another tasuki agent{holder} is using the work dir {dir}; give each agent its own \
         `paths.work_dir`"
    )]
    Taken { dir: PathBuf, holder: String },
    #[error("cannot lock the work dir {dir} ({path}): {source}")]
    Io {
        dir: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn lock(work_dir: &Path) -> Result<WorkDirLock, LockError> {
    let path = work_dir.join(LOCK_FILE);
    let io = |source| LockError::Io {
        dir: work_dir.into(),
        path: path.clone(),
        source,
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!(" (pid {pid})"),
                Err(_) => String::new(),
            };
            return Err(LockError::Taken {
                dir: work_dir.into(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // For the message a second agent prints; the lock itself is the truth.
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(WorkDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = match lock(dir.path()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a second lock was granted"),
        };
        assert!(
            err.contains(&format!("(pid {})", std::process::id()))
                && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
        drop(held);
        lock(dir.path()).expect("free again once the first is dropped");
    }
}
