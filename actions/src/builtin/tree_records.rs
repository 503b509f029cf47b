//! Records of the process trees a session started, so that an agent that
//! was killed (SIGKILL, a crash, a power cut that spared the disk) can end
//! them when it starts again instead of leaving them running.
//!
//! Each tree gets a random marker, set in its environment as
//! [`MARKER_VAR`] and inherited by everything it starts, and a record file
//! named after the marker in the session's private directory: written
//! before the spawn (so no tree runs unrecorded), completed with the
//! group's id and its leader's start time after it, and removed when the
//! tree is gone. At start, [`end_recorded_trees`] kills each recorded group
//! whose leader still has the recorded start time (a reused process id
//! never matches), then every process whose environment carries a recorded
//! marker: that finds what double-forked out of the group (`setsid cmd &`),
//! which a process group cannot. A process that clears its own environment
//! and leaves its group escapes this; a cgroup would not let it, but needs
//! a delegated cgroup subtree that an agent running as an ordinary account
//! seldom has.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that marks every process of a tree.
pub const MARKER_VAR: &str = "TASUKI_TREE_MARKER";

const RECORDS_DIR: &str = "trees";

/// A new marker: unique on this machine, not secret.
pub fn new_marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A tree's record on disk; dropping it removes the file.
pub struct Record {
    path: PathBuf,
    marker: String,
    /// The group and its leader's start time, once spawned.
    group: Option<(i32, u64)>,
    /// Temporary directories of the tree's (a browser profile), removed
    /// with its processes by a restarted agent; see [`removable`].
    temp_dirs: Vec<PathBuf>,
}

/// The prefix of the temporary directories a restarted agent removes.
const TEMP_PREFIX: &str = "tasuki-";

impl Record {
    /// Records `marker` in `private_dir`, before the tree is spawned.
    pub fn create(private_dir: &Path, marker: &str) -> std::io::Result<Record> {
        let dir = private_dir.join(RECORDS_DIR);
        super::process::private_dir_all(&dir)?;
        let record = Record {
            path: dir.join(marker),
            marker: marker.to_string(),
            group: None,
            temp_dirs: Vec::new(),
        };
        record.write()?;
        Ok(record)
    }

    /// `marker [pgid start]`, then a `dir PATH` line for each temporary
    /// directory.
    fn write(&self) -> std::io::Result<()> {
        let mut text = self.marker.clone();
        if let Some((pgid, start)) = self.group {
            text.push_str(&format!(" {pgid} {start}"));
        }
        text.push('\n');
        for dir in &self.temp_dirs {
            text.push_str(&format!("dir {}\n", dir.display()));
        }
        super::process::write_private_file(&self.path, &text)
    }

    /// Adds the group and its leader's start time, once spawned.
    pub fn set_group(&mut self, pgid: i32) {
        if let Some(start) = start_time(pgid) {
            self.group = Some((pgid, start));
            let _ = self.write();
        }
    }

    /// Adds a temporary directory the tree uses, for a restarted agent to
    /// remove once the tree is ended: only one directly in the system's
    /// temporary directory and named `tasuki-...` (see [`removable`]).
    pub fn add_temp_dir(&mut self, dir: &Path) {
        self.temp_dirs.push(dir.to_path_buf());
        let _ = self.write();
    }
}

/// Whether a recorded temporary directory may be removed: directly in the
/// system's temporary directory and named `tasuki-...`, so that a record a
/// step forged cannot have the agent remove anything else.
fn removable(dir: &Path) -> bool {
    dir.is_absolute()
        && dir.parent() == Some(std::env::temp_dir().as_path())
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TEMP_PREFIX) && n.len() > TEMP_PREFIX.len())
}

/// What a record says: the marker, the group and its leader's start time
/// when known, and the temporary directories.
type Parsed = (String, Option<(i32, u64)>, Vec<PathBuf>);

fn parse(text: &str) -> Option<Parsed> {
    let mut lines = text.lines();
    let mut fields = lines.next()?.split_whitespace();
    let marker = fields.next()?.to_string();
    let group = fields.next().and_then(|g| g.parse::<i32>().ok());
    let start = fields.next().and_then(|s| s.parse::<u64>().ok());
    let dirs = lines
        .filter_map(|l| l.strip_prefix("dir "))
        .map(PathBuf::from)
        .collect();
    Some((marker, group.zip(start), dirs))
}

impl Record {
    /// Moves the record into `private_dir`'s records, where the tree's new
    /// owner keeps them: a warm browser handed to a session (see
    /// `browser/warm.rs`).
    pub fn move_into(&mut self, private_dir: &Path) -> std::io::Result<()> {
        let dir = private_dir.join(RECORDS_DIR);
        super::process::private_dir_all(&dir)?;
        let path = dir.join(&self.marker);
        std::fs::rename(&self.path, &path)?;
        self.path = path;
        Ok(())
    }
}

/// The records in `private_dir` whose group is still led by the recorded
/// process: `(group, marker)` of each live recorded tree.
pub fn live_recorded_groups(private_dir: &Path) -> Vec<(i32, String)> {
    let Ok(records) = std::fs::read_dir(private_dir.join(RECORDS_DIR)) else {
        return Vec::new();
    };
    let mut live = Vec::new();
    for record in records.flatten() {
        let Ok(text) = std::fs::read_to_string(record.path()) else {
            continue;
        };
        if let Some((marker, Some((pgid, start)), _)) = parse(&text)
            && pgid > 1
            && start_time(pgid) == Some(start)
        {
            live.push((pgid, marker));
        }
    }
    live
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Ends the trees recorded in the private directories directly under
/// `root` (an earlier run's sessions), and returns how many processes it
/// killed. Records are left for their directories' owner to remove.
pub fn end_recorded_trees(root: &Path) -> usize {
    let Ok(sessions) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut markers = Vec::new();
    let mut groups = Vec::new();
    let mut temp_dirs = Vec::new();
    for session in sessions.flatten() {
        // Only the sessions' private directories hold records; a work dir
        // beside them is the steps' to write in.
        if !session.file_name().to_string_lossy().ends_with(".private") {
            continue;
        }
        let Ok(records) = std::fs::read_dir(session.path().join(RECORDS_DIR)) else {
            continue;
        };
        for record in records.flatten() {
            let Ok(text) = std::fs::read_to_string(record.path()) else {
                continue;
            };
            let Some((marker, group, dirs)) = parse(&text) else {
                continue;
            };
            if let Some((pgid, start)) = group {
                groups.push((pgid, start, marker.clone()));
            }
            markers.push(marker);
            temp_dirs.extend(dirs.into_iter().filter(|d| removable(d)));
        }
    }
    let killed = end(&groups, &markers);
    // Its processes are gone: what they kept there (cookies, say) goes too.
    for dir in temp_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    killed
}

#[cfg(target_os = "linux")]
fn end(groups: &[(i32, u64, String)], markers: &[String]) -> usize {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let mut killed = 0;
    for (pgid, start, marker) in groups {
        // Only the group whose leader is the one recorded: a process id
        // reused since has another start time, and a record a step forged
        // for someone else's group fails the marker, which only the
        // agent's own trees carry in their environment.
        let marked = [format!("{MARKER_VAR}={marker}").into_bytes()];
        if *pgid > 1
            && start_time(*pgid) == Some(*start)
            && carries_marker(*pgid, &marked)
            && killpg(Pid::from_raw(*pgid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    if markers.is_empty() {
        return killed;
    }
    let wanted: Vec<Vec<u8>> = markers
        .iter()
        .map(|m| format!("{MARKER_VAR}={m}").into_bytes())
        .collect();
    let me = std::process::id() as i32;
    // A marked process may fork between the look and the kill: look again
    // until nothing marked is left.
    for _ in 0..20 {
        let marked: Vec<i32> = pids()
            .filter(|pid| *pid != me && carries_marker(*pid, &wanted))
            .collect();
        if marked.is_empty() {
            break;
        }
        for pid in marked {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed
}

/// Elsewhere a tree's processes end with it only while the agent lives: on
/// Windows the job dies with the agent's handle (kill on close), which
/// covers a crash too.
#[cfg(not(target_os = "linux"))]
fn end(_groups: &[(i32, u64, String)], _markers: &[String]) -> usize {
    0
}

#[cfg(target_os = "linux")]
fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
}

/// Whether `pid`'s environment holds one of the `wanted` entries. A zombie
/// has an empty environment, and is already gone anyway.
#[cfg(target_os = "linux")]
fn carries_marker(pid: i32, wanted: &[Vec<u8>]) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    environ
        .split(|b| *b == 0)
        .any(|entry| wanted.iter().any(|w| w.as_slice() == entry))
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// /proc/PID/stat); `None` when it is gone or this is not Linux.
#[cfg(target_os = "linux")]
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold anything; fields start after
    // it with field 3 (the state), so field 22 is the 20th.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
pub fn start_time(_pid: i32) -> Option<u64> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_read_and_stays_the_same() {
        let me = std::process::id() as i32;
        let first = start_time(me).expect("our own start time");
        assert_eq!(start_time(me), Some(first));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn only_tasukis_own_temporary_directories_are_removed() {
        let tmp = std::env::temp_dir();
        assert!(removable(&tmp.join("tasuki-profile-abc")));
        for other in [
            tmp.join("tasuki-"),
            tmp.join("other"),
            tmp.join("x").join("tasuki-profile-abc"),
            PathBuf::from("tasuki-profile-abc"),
            PathBuf::from("/etc/tasuki-x"),
        ] {
            assert!(!removable(&other), "{}", other.display());
        }
        let (marker, group, dirs) = parse("m1 42 7\ndir /tmp/tasuki-profile-a\n").unwrap();
        assert_eq!((marker.as_str(), group), ("m1", Some((42, 7))));
        assert_eq!(dirs, [PathBuf::from("/tmp/tasuki-profile-a")]);
        assert_eq!(parse("m2\n").unwrap().1, None);
    }

    #[test]
    fn a_record_with_a_stale_start_time_kills_nothing() {
        let root = tempfile::tempdir().unwrap();
        let private = root.path().join("s.private");
        let me = std::process::id() as i32;
        let record = Record::create(&private, "m1").unwrap();
        // Our own group, with a start time that is not its leader's.
        let pgid = nix::unistd::getpgrp().as_raw();
        let stale = start_time(pgid).unwrap_or(0) + 1;
        std::fs::write(&record.path, format!("m1 {pgid} {stale}\n")).unwrap();
        assert_eq!(end_recorded_trees(root.path()), 0);
        assert!(start_time(me).is_some(), "still alive");
        drop(record);
        assert!(!private.join(RECORDS_DIR).join("m1").exists());
    }

    /// A step could write a record naming someone else's process group
    /// with its leader's real start time: without the marker in the
    /// leader's environment it is left alone; with it, it is ended.
    #[test]
    fn only_a_group_whose_leader_carries_the_recorded_marker_is_killed() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().unwrap();
        let spawn = |marker: Option<&str>| {
            let mut command = std::process::Command::new("sleep");
            command.arg("30").process_group(0);
            if let Some(m) = marker {
                command.env(MARKER_VAR, m);
            }
            let child = command.spawn().unwrap();
            // `spawn` returns once the child has begun its exec, which sets
            // up the new environment a moment later: until then
            // /proc/PID/environ reads empty.
            let pid = child.id() as i32;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.is_empty())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            child
        };
        let mut stranger = spawn(None);
        let mut ours = spawn(Some("m-ours"));
        let record = |dir: &str, marker: &str, pid: u32| {
            let trees = root.path().join(dir).join(RECORDS_DIR);
            std::fs::create_dir_all(&trees).unwrap();
            let pid = pid as i32;
            let start = start_time(pid).expect("alive");
            std::fs::write(trees.join(marker), format!("{marker} {pid} {start}\n")).unwrap();
        };
        record("s.private", "m-forged", stranger.id());
        // A record outside a private directory is not read at all.
        record("s-work", "m-ours", ours.id());
        assert_eq!(end_recorded_trees(root.path()), 0);
        assert!(stranger.try_wait().unwrap().is_none(), "the stranger lives");
        assert!(
            ours.try_wait().unwrap().is_none(),
            "not read from a work dir"
        );

        record("s.private", "m-ours", ours.id());
        assert!(end_recorded_trees(root.path()) >= 1);
        assert!(ours.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "the stranger still lives"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}
