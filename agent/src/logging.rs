//! The daemon's logs: always on standard error (journald, a console), and
//! with `paths.log_dir` set, also in daily files `tasuki.YYYY-MM-DD.log`,
//! plain or JSON, never with terminal colours. Control and bidi characters
//! in every line are escaped on the way out (`log_escape.rs`).
//!
//! Old files are pruned here, by the date in their names, rather than by
//! tracing-appender's `max_log_files`: that one sorts by file creation
//! time, which some filesystems do not record (the files are then never
//! pruned) and which a restored or copied file gets wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::log_escape::{Escaping, Style};
use crate::settings::Settings;

const PREFIX: &str = "tasuki";
const SUFFIX: &str = "log";
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Keeps the file writer flushing; dropping it flushes what is left.
pub struct LogFiles {
    _guard: Option<WorkerGuard>,
}

/// Where today's log file is, when files are on.
pub fn current_file(dir: &Path) -> PathBuf {
    let today = jiff::Zoned::now().date();
    dir.join(format!("{PREFIX}.{today}.{SUFFIX}"))
}

pub fn init(settings: &Settings) -> Result<LogFiles, String> {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| Escaping::new(std::io::stderr(), Style::Plain))
        .with_ansi(false)
        .with_target(false)
        .boxed();
    let Some(dir) = &settings.log_dir else {
        let _ = tracing_subscriber::registry()
            .with(stderr.with_filter(filter))
            .try_init();
        return Ok(LogFiles { _guard: None });
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the log dir {}: {e}", dir.display()))?;
    prune(dir, settings.log_retention);
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(PREFIX)
        .filename_suffix(SUFFIX)
        .build(dir)
        .map_err(|e| format!("cannot open a log file in {}: {e}", dir.display()))?;
    // Not lossy: a log line is worth a moment's wait on a slow disk.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(appender);
    let file: Box<dyn Layer<Registry> + Send + Sync> = if settings.log_json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || Escaping::new(writer.clone(), Style::Json))
            .with_ansi(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(move || Escaping::new(writer.clone(), Style::Plain))
            .with_ansi(false)
            .with_target(false)
            .boxed()
    };
    let both = stderr.and_then(file).with_filter(filter);
    let _ = tracing_subscriber::registry().with(both).try_init();
    let (dir, keep) = (dir.clone(), settings.log_retention);
    let _ = std::thread::Builder::new()
        .name("log-prune".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PRUNE_EVERY);
                prune(&dir, keep);
            }
        });
    Ok(LogFiles {
        _guard: Some(guard),
    })
}

/// Deletes all but the `keep` newest daily files, newest by the date in
/// the name. Files that are not ours are left alone.
pub fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dated: Vec<(jiff::civil::Date, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let date = name
                .strip_prefix(&format!("{PREFIX}."))?
                .strip_suffix(&format!(".{SUFFIX}"))?
                .parse::<jiff::civil::Date>()
                .ok()?;
            Some((date, e.path()))
        })
        .collect();
    dated.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, path) in dated.into_iter().skip(keep) {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove an old log file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_by_the_date_in_the_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Written newest first, so creation and modification times say
        // the opposite of the names.
        let names = [
            "tasuki.2026-11-22.log",
            "tasuki.2026-11-21.log",
            "tasuki.2026-11-20.log",
            "tasuki.2026-10-31.log",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), n).expect("write");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(dir.path().join("notes.txt"), "keep me").expect("write");
        std::fs::write(dir.path().join("tasuki.garbage.log"), "keep me").expect("write");
        prune(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "notes.txt",
                "tasuki.2026-11-21.log",
                "tasuki.2026-11-22.log",
                "tasuki.garbage.log"
            ]
        );
    }
}
