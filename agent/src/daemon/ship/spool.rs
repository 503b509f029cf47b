//! A session's log lines between the executor and the hub, and the one
//! order they leave in: **what is on disk first, then what is only in
//! memory.**
//!
//! The executor's lines enter memory ([`Lines::push`]) and are moved to the
//! spool file in whole lines ([`Lines::write_out`]: when 64 KB are waiting,
//! and on the session's flush timer), so that a restarted agent finds them.
//! When the disk refuses (full, failing), the file is cut back to its last
//! whole line and the lines stay in memory, in order after the file's;
//! writing is tried again at most once a [`DISK_RETRY`], and the trouble
//! is logged once when it starts, then at most once a [`TROUBLE_LOG_EVERY`].
//! While the disk refuses lines, those the hub has acknowledged leave
//! memory without ever reaching it, so memory holds at most what is both
//! unsent and unwritable, up to [`MEMORY_LIMIT`] bytes (past it the spool
//! is full: [`Lines::full`]); otherwise every line goes to the file.
//!
//! The sender reads with a [`Reader`]: the file's whole lines up to what
//! was written, and only once it has read all of those, the lines still in
//! memory. A line taken from memory that later reaches the file is skipped
//! there by its `seq`, so nothing is sent twice and nothing overtakes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tasuki_protocol::LogLine;

use crate::daemon::health::Metrics;

/// Lines waiting in memory before they are written out unasked.
const WRITE_OUT_AT: usize = 64 * 1024;
/// How long after a failed write the disk is tried again.
pub const DISK_RETRY: Duration = Duration::from_secs(1);
/// How often a disk that keeps failing is mentioned in the agent's log.
const TROUBLE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Bytes of lines a session may hold in memory while the disk refuses
/// them and the hub has not taken them.
pub const MEMORY_LIMIT: usize = 32 * 1024 * 1024;
/// How much of the file the reader takes at once (a longer line is read
/// whole anyway).
const READ_CHUNK: usize = 1024 * 1024;

/// A line as JSON, and its `seq`: what the file holds and what a batch
/// carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    pub seq: u64,
    pub json: String,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl Spooled {
    pub fn from_line(line: &LogLine) -> Option<Spooled> {
        Some(Spooled {
            seq: line.seq,
            json: serde_json::to_string(line).ok()?,
        })
    }

    fn from_json(json: &str) -> Result<Spooled, serde_json::Error> {
        let seq = serde_json::from_str::<SeqOnly>(json)?.seq;
        Ok(Spooled {
            seq,
            json: json.to_string(),
        })
    }
}

/// A live session's lines: the spool file and what is not in it yet.
pub struct Lines {
    file: Option<File>,
    /// Bytes of the file that hold whole lines, all written.
    disk_len: u64,
    /// Lines not in the file, in order; every one comes after the file's.
    memory: VecDeque<Spooled>,
    memory_bytes: usize,
    /// The last `seq` the executor emitted.
    emitted_seq: u64,
    trouble: Option<DiskTrouble>,
    metrics: Arc<Metrics>,
}

/// A write-out under way, outside the lock.
struct PendingWrite {
    file: File,
    /// Where the lines go: the end of the file's whole lines.
    at: u64,
    buf: Vec<u8>,
    upto_seq: u64,
}

/// Moves the lines in memory to the file. Blocking (disk I/O), so called
/// on the blocking pool; the lock is not held while the disk works, so
/// the executor and the sender are never held up by a slow disk.
pub fn write_out(lines: &std::sync::Mutex<Lines>) {
    let Some(mut w) = super::lock(lines).start_write() else {
        return;
    };
    let written = w
        .file
        .seek(SeekFrom::Start(w.at))
        .and_then(|_| w.file.write_all(&w.buf));
    if written.is_err() {
        // A torn line would stop a restarted agent's reading: cut it off
        // (if the disk lets us; the reader never reads past the whole
        // lines either way, and the next write starts there).
        let _ = w.file.set_len(w.at);
    }
    super::lock(lines).end_write(w, written);
}

/// The disk refused a write.
struct DiskTrouble {
    retry_at: Instant,
    logged_at: Instant,
    /// Failed writes since the last mention.
    unlogged: u64,
}

impl Lines {
    /// `file` is the spool's log file, empty and open for writing.
    pub fn new(file: File, metrics: Arc<Metrics>) -> Lines {
        Lines {
            file: Some(file),
            disk_len: 0,
            memory: VecDeque::new(),
            memory_bytes: 0,
            emitted_seq: 0,
            trouble: None,
            metrics,
        }
    }

    fn held(&mut self, bytes: usize) {
        let delta = bytes as i64 - self.memory_bytes as i64;
        self.metrics.spool_memory_bytes.inc_by(delta);
        self.memory_bytes = bytes;
    }

    /// Takes a line the executor emitted.
    pub fn push(&mut self, line: Spooled) {
        self.emitted_seq = line.seq;
        self.held(self.memory_bytes + line.json.len() + 1);
        self.memory.push_back(line);
    }

    /// Whether enough lines wait in memory to be written out now, rather
    /// than on the next tick of the flush timer.
    pub fn write_out_due(&self) -> bool {
        self.memory_bytes >= WRITE_OUT_AT && self.file.is_some()
    }

    pub fn emitted_seq(&self) -> u64 {
        self.emitted_seq
    }

    /// Whether memory holds as much as it may: the disk refuses lines and
    /// the hub has not taken them.
    pub fn full(&self) -> bool {
        self.memory_bytes >= MEMORY_LIMIT
    }

    /// Whether the disk is refusing lines now.
    #[cfg(test)]
    pub fn disk_failing(&self) -> bool {
        self.trouble.is_some()
    }

    /// Bytes of lines held only in memory.
    #[cfg(test)]
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// What a write-out needs, taken under the lock: the file and the
    /// bytes of the lines in memory; `None` when there is nothing to do
    /// (or another write-out is under way, or the disk failed less than
    /// [`DISK_RETRY`] ago).
    fn start_write(&mut self) -> Option<PendingWrite> {
        if self.memory.is_empty() {
            return None;
        }
        if let Some(t) = &self.trouble
            && Instant::now() < t.retry_at
        {
            return None;
        }
        let file = self.file.take()?;
        let mut buf = Vec::with_capacity(self.memory_bytes);
        for l in &self.memory {
            buf.extend_from_slice(l.json.as_bytes());
            buf.push(b'\n');
        }
        Some(PendingWrite {
            file,
            at: self.disk_len,
            buf,
            upto_seq: self.memory.back().map_or(0, |l| l.seq),
        })
    }

    fn end_write(&mut self, w: PendingWrite, written: std::io::Result<()>) {
        self.file = Some(w.file);
        match written {
            Ok(()) => {
                self.disk_len += w.buf.len() as u64;
                // Lines the hub took meanwhile have left memory already.
                let mut bytes = self.memory_bytes;
                while let Some(l) = self.memory.front()
                    && l.seq <= w.upto_seq
                {
                    bytes -= l.json.len() + 1;
                    self.memory.pop_front();
                }
                self.held(bytes);
                if let Some(t) = self.trouble.take() {
                    self.metrics.spool_disk_failing.dec();
                    tracing::warn!(
                        failed_writes = t.unlogged,
                        "the log spool is writable again"
                    );
                }
            }
            Err(e) => {
                let now = Instant::now();
                match self.trouble.as_mut() {
                    None => {
                        self.metrics.spool_disk_failing.inc();
                        tracing::error!(error = %e, lines_in_memory = self.memory.len(), "cannot write the log spool; keeping its lines in memory and trying again every second");
                        self.trouble = Some(DiskTrouble {
                            retry_at: now + DISK_RETRY,
                            logged_at: now,
                            unlogged: 0,
                        });
                    }
                    Some(t) => {
                        t.retry_at = now + DISK_RETRY;
                        t.unlogged += 1;
                        if now.duration_since(t.logged_at) >= TROUBLE_LOG_EVERY {
                            tracing::error!(error = %e, failed_writes = t.unlogged, lines_in_memory = self.memory.len(), "the log spool still cannot be written");
                            t.logged_at = now;
                            t.unlogged = 0;
                        }
                    }
                }
            }
        }
    }

    /// The hub has every line up to `high_seq`. While the disk refuses
    /// lines, those need not be kept in memory any more, which is what
    /// bounds memory; while it takes them they still go to the file, so
    /// that the file holds every line (a hub that loses lines it had, from
    /// a database restored mid-session, gets them again from there).
    pub fn acked(&mut self, high_seq: u64) {
        if self.trouble.is_none() {
            return;
        }
        while let Some(l) = self.memory.front()
            && l.seq <= high_seq
        {
            let bytes = self.memory_bytes - (l.json.len() + 1);
            self.memory.pop_front();
            self.held(bytes);
        }
    }

    /// Bytes of the file that hold whole lines.
    fn disk_len(&self) -> u64 {
        self.disk_len
    }

    /// The lines in memory after `after`, at most `max`, but only when the
    /// reader has read the file up to `read_pos` = everything written:
    /// otherwise the file's unread lines come first, and nothing is
    /// returned.
    fn memory_after(&self, read_pos: u64, after: u64, max: usize) -> Vec<Spooled> {
        if read_pos != self.disk_len {
            return Vec::new();
        }
        self.memory
            .iter()
            .filter(|l| l.seq > after)
            .take(max)
            .cloned()
            .collect()
    }

    #[cfg(test)]
    fn break_file(&mut self, file: File) {
        self.file = Some(file);
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.held(0);
        if self.trouble.is_some() {
            self.metrics.spool_disk_failing.dec();
        }
    }
}

/// The sender's place in a session's lines.
pub struct Reader {
    file: Option<File>,
    /// Bytes of the file already read.
    read_pos: u64,
    /// The highest `seq` handed out: lines at or below it are not handed
    /// out again.
    queued_seq: u64,
    /// Whether the file may still grow (a live session).
    live: bool,
    /// The file's length of whole lines when it was last read.
    file_len: u64,
}

impl Reader {
    /// Reads `path`; a file that does not exist reads as empty.
    pub fn open(path: &Path, live: bool) -> Reader {
        let file = match File::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(path = %path.display(), error = %e, "cannot read the log spool");
                }
                None
            }
        };
        Reader {
            file,
            read_pos: 0,
            queued_seq: 0,
            live,
            file_len: 0,
        }
    }

    /// Starts again from the file's first line, handing out what comes
    /// after `high_seq` (the hub lacks lines it had acknowledged).
    pub fn rewind(&mut self, high_seq: u64) {
        self.read_pos = 0;
        self.queued_seq = high_seq;
    }

    /// Skips lines the hub already has.
    pub fn skip_to(&mut self, high_seq: u64) {
        self.queued_seq = self.queued_seq.max(high_seq);
    }

    /// Appends up to `max` lines after those handed out so far to `out`:
    /// the file's whole lines up to `lines`' written length, then, if the
    /// file is read to there, the lines in memory. With `lines` `None`
    /// (a recovered spool) the file is read to its end, and a torn last
    /// line (the crash) is dropped.
    pub fn take(
        &mut self,
        lines: Option<&std::sync::Mutex<Lines>>,
        out: &mut VecDeque<Spooled>,
        max: usize,
    ) {
        let end = match lines {
            Some(l) => super::lock(l).disk_len(),
            None => self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len()),
        };
        self.file_len = end;
        let before = out.len();
        self.read_file(end, out, max);
        if let Some(l) = lines {
            let room = max.saturating_sub(out.len() - before);
            self.take_from_memory(l, out, room);
        }
    }

    /// The lines in memory, without touching the disk: only when the file
    /// has been read to its end (then it is all this reader needs, and it
    /// can run on the daemon's thread). Returns whether it was.
    pub fn take_from_memory(
        &mut self,
        lines: &std::sync::Mutex<Lines>,
        out: &mut VecDeque<Spooled>,
        max: usize,
    ) -> bool {
        let lines = super::lock(lines);
        if self.read_pos != lines.disk_len() {
            return false;
        }
        let taken = lines.memory_after(self.read_pos, self.queued_seq, max);
        drop(lines);
        if let Some(last) = taken.last() {
            self.queued_seq = last.seq;
        }
        out.extend(taken);
        true
    }

    /// Whether every line of a recovered spool has been handed out (as of
    /// the last [`Reader::take`]).
    pub fn at_end(&self) -> bool {
        !self.live && self.read_pos >= self.file_len
    }

    fn read_file(&mut self, end: u64, out: &mut VecDeque<Spooled>, max: usize) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let mut taken = 0;
        let mut chunk = READ_CHUNK;
        while taken < max && self.read_pos < end {
            let want = (end - self.read_pos).min(chunk as u64) as usize;
            let mut buf = Vec::with_capacity(want);
            let read = file
                .seek(SeekFrom::Start(self.read_pos))
                .and_then(|_| Read::by_ref(file).take(want as u64).read_to_end(&mut buf));
            if let Err(e) = read {
                tracing::error!(error = %e, "cannot read the log spool");
                return;
            }
            let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') else {
                if buf.len() < want || self.read_pos + buf.len() as u64 >= end {
                    // The torn end of a crashed run's file.
                    if !self.live {
                        self.read_pos = end;
                    }
                    return;
                }
                // One line longer than the chunk: read it whole.
                chunk *= 2;
                continue;
            };
            let mut consumed = 0;
            for raw in buf[..=last_newline].split_inclusive(|&b| b == b'\n') {
                if taken >= max {
                    break;
                }
                consumed += raw.len();
                let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
                match Spooled::from_json(&text) {
                    Ok(l) if l.seq > self.queued_seq => {
                        self.queued_seq = l.seq;
                        out.push_back(l);
                        taken += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "a spooled log line does not read; skipping it")
                    }
                }
            }
            self.read_pos += consumed as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tasuki_protocol::LogLevel;

    fn line(seq: u64) -> Spooled {
        Spooled::from_line(&LogLine {
            seq,
            ts: jiff::Timestamp::UNIX_EPOCH,
            level: LogLevel::Info,
            step_id: Some("s".into()),
            message: format!("line {seq}"),
        })
        .unwrap()
    }

    fn seqs(q: &VecDeque<Spooled>) -> Vec<u64> {
        q.iter().map(|l| l.seq).collect()
    }

    /// The probe of issue 12 item 2: lines 1–10 reach the file, the file
    /// then becomes unwritable, lines 11–20 are emitted. The sender must
    /// hand out 1–20 in order, and a hub that then asks again from 0
    /// (it lost lines) still gets the memory lines.
    #[test]
    fn lines_on_disk_go_before_lines_only_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.jsonl");
        let lines = Mutex::new(Lines::new(File::create(&path).unwrap(), Arc::default()));
        for i in 1..=10 {
            lines.lock().unwrap().push(line(i));
        }
        write_out(&lines);
        // The file, from now on, refuses every write.
        lines.lock().unwrap().break_file(File::open(&path).unwrap());
        for i in 11..=20 {
            lines.lock().unwrap().push(line(i));
            write_out(&lines);
        }
        assert!(lines.lock().unwrap().disk_failing());
        let mut reader = Reader::open(&path, true);
        let mut out = VecDeque::new();
        reader.take(Some(&lines), &mut out, 7);
        assert_eq!(seqs(&out), (1..=7).collect::<Vec<_>>());
        reader.take(Some(&lines), &mut out, 100);
        assert_eq!(seqs(&out), (1..=20).collect::<Vec<_>>());
        reader.take(Some(&lines), &mut out, 100);
        assert_eq!(out.len(), 20, "nothing is handed out twice");

        // The hub has 1–5 only: read again from the file, then memory.
        out.clear();
        reader.rewind(5);
        reader.take(Some(&lines), &mut out, 100);
        assert_eq!(seqs(&out), (6..=20).collect::<Vec<_>>());

        // The disk works again: memory goes to the file, after its lines,
        // and what was handed out from memory is not handed out again.
        lines
            .lock()
            .unwrap()
            .break_file(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        lines.lock().unwrap().trouble.as_mut().unwrap().retry_at = Instant::now();
        lines.lock().unwrap().push(line(21));
        write_out(&lines);
        assert!(!lines.lock().unwrap().disk_failing());
        assert_eq!(lines.lock().unwrap().memory_bytes(), 0);
        reader.take(Some(&lines), &mut out, 100);
        assert_eq!(seqs(&out), (6..=21).collect::<Vec<_>>());
        let mut fresh = Reader::open(&path, false);
        let mut all = VecDeque::new();
        fresh.take(None, &mut all, 100);
        assert_eq!(seqs(&all), (1..=21).collect::<Vec<_>>());
        assert!(fresh.at_end());
    }

    #[test]
    fn acknowledged_lines_leave_memory_and_a_full_memory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.jsonl");
        let lines = Mutex::new(Lines::new(File::create(&path).unwrap(), Arc::default()));
        let mut lines_guard = lines.lock().unwrap();
        lines_guard.break_file(File::open(&path).unwrap());
        lines_guard.push(line(1));
        drop(lines_guard);
        write_out(&lines);
        let mut lines = lines.into_inner().unwrap();
        assert!(lines.disk_failing());
        let one = lines.memory_bytes();
        assert!(one > 0);
        lines.push(line(2));
        lines.acked(1);
        assert_eq!(lines.memory_bytes(), line(2).json.len() + 1);
        assert!(!lines.full());
        let big = Spooled {
            seq: 3,
            json: "x".repeat(MEMORY_LIMIT),
        };
        lines.push(big);
        assert!(lines.full());
    }

    #[test]
    fn a_torn_last_line_of_a_crashed_run_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.jsonl");
        let mut text = format!("{}\n{}\n", line(1).json, line(2).json);
        text.push_str(&line(3).json[..10]);
        std::fs::write(&path, text).unwrap();
        let mut reader = Reader::open(&path, false);
        let mut out = VecDeque::new();
        reader.take(None, &mut out, 100);
        assert_eq!(seqs(&out), vec![1, 2]);
        assert!(reader.at_end());
    }
}
