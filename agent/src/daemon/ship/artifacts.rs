//! A session's artifacts: the files its steps left in its artifacts
//! directory, each uploaded once (again only if it changes), streamed from
//! the disk rather than read whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tasuki_protocol::HeldLease;
use tokio_util::sync::CancellationToken;

use crate::daemon::client::{CallError, HubClient};

/// What was uploaded: each artifact's length and modification time.
#[derive(Default)]
pub(super) struct Uploaded(HashMap<String, (u64, SystemTime)>);

impl Uploaded {
    /// Uploads the regular files in `dir` that are new or changed. The
    /// listing is made on the blocking pool. A file the hub refuses (too
    /// large) is logged and not offered again unless it changes; the
    /// others still go.
    pub(super) async fn upload_new(
        &mut self,
        client: &HubClient,
        lease: &HeldLease,
        dir: &Path,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let listed = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || list_files(&dir)).await
        };
        let Ok(listed) = listed else {
            return Ok(());
        };
        let mut files: Vec<_> = listed
            .into_iter()
            .filter(|(name, _, len, modified)| self.0.get(name) != Some(&(*len, *modified)))
            .collect();
        files.sort();
        for (name, path, len, modified) in files {
            match client
                .artifact(lease.session_id, &lease.lease_id, &name, &path, len, stop)
                .await
            {
                Ok(()) => {}
                Err(CallError::Rejected {
                    status, message, ..
                }) => {
                    tracing::error!(artifact = %name, status, %message, "the hub refused an artifact");
                }
                Err(e) => return Err(e),
            }
            self.0.insert(name, (len, modified));
        }
        Ok(())
    }
}

/// The regular files in `dir`: (artifact name, path, length, modified).
fn list_files(dir: &Path) -> Vec<(String, PathBuf, u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    artifact_name(&entry.file_name().to_string_lossy()),
                    entry.path(),
                    meta.len(),
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                )
            })
        })
        .collect()
}

/// A file name the hub accepts: plain characters, at most 128 of them.
fn artifact_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'a');
    }
    name.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_made_plain() {
        assert_eq!(artifact_name("shot 1.png"), "shot_1.png");
        assert_eq!(artifact_name(".hidden"), "a.hidden");
        assert_eq!(artifact_name(&"x".repeat(200)).len(), 128);
    }
}
