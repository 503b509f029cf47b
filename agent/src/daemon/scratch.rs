//! Directories for sessions that have not arrived yet. A session needs a
//! spool directory with its log file, a work directory and an artifacts
//! directory: a handful of metadata writes, which on a busy or virtual
//! disk cost more than everything else between a lease arriving and its
//! first step. So they are made ahead, on the blocking pool while the robot
//! waits, and a lease takes a set that is ready.
//!
//! Sets are named `scratch-<token>-<n>`, where the token is this process's
//! own; the session id is in the spool's `lease.json`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::private_fs;
use super::ship::LOGS_FILE;

const PREFIX: &str = "scratch-";

/// One session's directories, made and empty.
pub struct Scratch {
    pub spool_dir: PathBuf,
    /// The spool's log file, created and open.
    pub logs: File,
    pub work_dir: PathBuf,
    pub artifacts_dir: PathBuf,
}

pub struct ScratchPool {
    spool_root: PathBuf,
    work_root: PathBuf,
    artifacts_root: PathBuf,
    /// Sets kept ready: one per slot the robot has.
    want: usize,
    ready: Mutex<Vec<Scratch>>,
    token: String,
    next: AtomicU64,
    refilling: AtomicBool,
}

impl ScratchPool {
    pub fn new(
        spool_root: PathBuf,
        work_root: PathBuf,
        artifacts_root: PathBuf,
        want: usize,
    ) -> Arc<ScratchPool> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Arc::new(ScratchPool {
            spool_root,
            work_root,
            artifacts_root,
            want: want.max(1),
            ready: Mutex::new(Vec::new()),
            token: format!("{started:x}{:x}", std::process::id()),
            next: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
        })
    }

    /// A ready set, or one made now when none is (a burst of leases).
    /// The caller [`refill`](Self::refill)s when it suits it.
    /// A set made ahead; when none is ready, one is made on the blocking
    /// pool (a full or slow disk must not hold up the daemon's thread).
    pub async fn take(self: &Arc<Self>) -> io::Result<Scratch> {
        let ready = self.lock().pop();
        match ready {
            Some(s) => Ok(s),
            None => {
                let pool = self.clone();
                tokio::task::spawn_blocking(move || pool.make())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            }
        }
    }

    /// Tops the pool up, on the blocking pool.
    pub fn refill(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            loop {
                while pool.lock().len() < pool.want {
                    match pool.make() {
                        Ok(s) => pool.lock().push(s),
                        Err(e) => {
                            tracing::warn!(error = %e, dir = %pool.spool_root.display(), "cannot prepare a session's directories ahead; they will be made when it starts");
                            pool.refilling.store(false, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                pool.refilling.store(false, Ordering::SeqCst);
                // A set taken between the count and the flag would
                // otherwise wait for the next take to be replaced.
                if pool.lock().len() >= pool.want || pool.refilling.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    /// Removes the sets still ready (the agent is exiting).
    pub fn clear(&self) {
        let ready = std::mem::take(&mut *self.lock());
        for s in ready {
            s.remove();
        }
    }

    fn make(&self) -> io::Result<Scratch> {
        loop {
            let name = format!(
                "{PREFIX}{}-{}",
                self.token,
                self.next.fetch_add(1, Ordering::Relaxed)
            );
            let spool_dir = self.spool_root.join(&name);
            match private_fs::create_dir(&spool_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    private_fs::create_dir_all(&spool_dir)?;
                }
                Err(e) => return Err(e),
            }
            let work_dir = self.work_root.join(&name);
            let artifacts_dir = self.artifacts_root.join(&name);
            let made = private_fs::create_file(&spool_dir.join(LOGS_FILE)).and_then(|logs| {
                private_fs::create_dir_all(&work_dir)?;
                private_fs::create_dir_all(&artifacts_dir)?;
                Ok(logs)
            });
            return match made {
                Ok(logs) => Ok(Scratch {
                    spool_dir,
                    logs,
                    work_dir,
                    artifacts_dir,
                }),
                Err(e) => {
                    let _ = fs::remove_dir_all(&spool_dir);
                    let _ = fs::remove_dir_all(&work_dir);
                    let _ = fs::remove_dir_all(&artifacts_dir);
                    Err(e)
                }
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Scratch>> {
        // Each change is one push or pop: a poisoned list is consistent.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Scratch {
    fn remove(self) {
        drop(self.logs);
        let _ = fs::remove_dir_all(&self.spool_dir);
        let _ = fs::remove_dir_all(&self.work_dir);
        let _ = fs::remove_dir_all(&self.artifacts_dir);
    }
}

/// Removes what sessions of an earlier run left in the work and artifacts
/// directories: a session is never resumed, so its files are of no use.
/// Only `scratch-` entries are touched in the artifacts directory, which
/// an operator may share; the work directory's `sessions` is the agent's.
pub fn remove_leftovers(work_root: &Path, artifacts_root: &Path) {
    if let Ok(entries) = fs::read_dir(work_root) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    if let Ok(entries) = fs::read_dir(artifacts_root) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(root: &Path, want: usize) -> Arc<ScratchPool> {
        ScratchPool::new(
            root.join("spool"),
            root.join("sessions"),
            root.join("artifacts"),
            want,
        )
    }

    #[tokio::test]
    async fn a_taken_set_exists_and_the_pool_is_topped_up_ahead() {
        let root = tempfile::tempdir().unwrap();
        let pool = pool(root.path(), 2);
        let first = pool.take().await.unwrap();
        pool.refill();
        assert!(first.spool_dir.join(LOGS_FILE).is_file());
        assert!(first.work_dir.is_dir() && first.artifacts_dir.is_dir());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.lock().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "never refilled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second = pool.take().await.unwrap();
        assert_ne!(first.spool_dir, second.spool_dir);
        assert_ne!(first.work_dir, second.work_dir);
    }

    #[tokio::test]
    async fn clearing_removes_the_ready_sets_and_leftovers_are_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let pool = pool(root.path(), 1);
        let taken = pool.take().await.unwrap();
        pool.refill();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never refilled");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        pool.clear();
        let spools: Vec<_> = fs::read_dir(root.path().join("spool")).unwrap().collect();
        assert_eq!(spools.len(), 1, "only the taken set's spool stays");

        let foreign = root.path().join("artifacts").join("reports");
        fs::create_dir_all(&foreign).unwrap();
        remove_leftovers(
            &root.path().join("sessions"),
            &root.path().join("artifacts"),
        );
        assert!(!taken.work_dir.exists() && !taken.artifacts_dir.exists());
        assert!(foreign.is_dir(), "an operator's own folder is left alone");
    }
}
