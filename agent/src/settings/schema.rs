//! Every setting the agent reads: its key, its kind, and what it is for.
//! The file's keys, the `TASUKI_*` variables and the `--set` keys are all
//! derived from this one table.

/// How a setting's text is read and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// An `http://` or `https://` URL. Any `user:password@` in it is
    /// masked wherever it is shown.
    Url,
    /// A list of URLs, each checked as [`Kind::Url`] and masked as it is;
    /// from the environment or a flag, comma-separated.
    UrlList,
    RobotName,
    /// Robot labels: a list, each checked by the protocol's rules.
    Labels,
    /// A list of strings; from the environment or a flag, comma-separated.
    List,
    Path,
    Count {
        min: u64,
        max: u64,
    },
    Bool,
    /// Such as `10m` or `5s`.
    Duration,
    /// A socket address such as `127.0.0.1:9464`.
    Addr,
    /// `WIDTHxHEIGHT`.
    WindowSize,
    Choice(&'static [&'static str]),
}

pub struct Key {
    /// `table.key`, as in the file.
    pub name: &'static str,
    pub kind: Kind,
    /// Whether the value must be set (there is no default).
    pub required: bool,
    pub help: &'static str,
}

const fn key(name: &'static str, kind: Kind, help: &'static str) -> Key {
    Key {
        name,
        kind,
        required: false,
        help,
    }
}

const fn required(name: &'static str, kind: Kind, help: &'static str) -> Key {
    Key {
        name,
        kind,
        required: true,
        help,
    }
}

pub const LOG_FORMATS: &[&str] = &["plain", "json"];

pub const KEYS: &[Key] = &[
    required("control_plane.url", Kind::Url, "the hub's base URL"),
    key(
        "control_plane.fallback_urls",
        Kind::UrlList,
        "further URLs of hubs on the same database, tried in order after control_plane.url \
         when the hub in use stops answering",
    ),
    required(
        "control_plane.name",
        Kind::RobotName,
        "the robot's name on the hub",
    ),
    key(
        "control_plane.labels",
        Kind::Labels,
        "labels the hub shows for the robot",
    ),
    key(
        "control_plane.max_concurrency",
        Kind::Count { min: 1, max: 256 },
        "sessions run at once",
    ),
    key(
        "control_plane.issuer",
        Kind::Text,
        "the `iss` of the tokens the agent signs",
    ),
    key(
        "control_plane.audience",
        Kind::Text,
        "the `aud` of the tokens the agent signs",
    ),
    key(
        "control_plane.ca_file",
        Kind::Path,
        "a PEM file of the private CA that signed the hub's TLS certificate, trusted beside \
         the system's roots",
    ),
    key(
        "credentials.file",
        Kind::Path,
        "the credentials file (mode 0600) that `tasuki register` wrote",
    ),
    key(
        "browser.chromium",
        Kind::Path,
        "the Chromium binary; found on PATH when unset",
    ),
    key(
        "browser.chromedriver",
        Kind::Path,
        "the chromedriver binary; found on PATH when unset",
    ),
    key(
        "browser.remote_webdriver",
        Kind::Url,
        "a remote WebDriver (Selenium Grid) to use instead of a local driver",
    ),
    key(
        "browser.headless",
        Kind::Bool,
        "run the browser without a window",
    ),
    key(
        "browser.window_size",
        Kind::WindowSize,
        "the browser window's size",
    ),
    key(
        "browser.warm",
        Kind::Bool,
        "keep a headless browser started ahead while the robot has a free slot, for the next \
         session's first browser step (holds memory while idle)",
    ),
    key(
        "browser.allow_file_urls",
        Kind::Bool,
        "let browser steps open file: and view-source: URLs (local files)",
    ),
    key(
        "browser.unexpected_dialog",
        Kind::Choice(tasuki_actions::runtime::context::DialogPolicy::NAMES),
        "a dialog no step handles: fail the step, or accept or dismiss it with a warning",
    ),
    key(
        "paths.work_dir",
        Kind::Path,
        "sessions' working directories and the log spool",
    ),
    key(
        "paths.artifacts_dir",
        Kind::Path,
        "where sessions write screenshots and downloads",
    ),
    key(
        "paths.action_packs",
        Kind::List,
        "folders of action packs (docs/action-packs.md); beside the config file and in the data folder by default",
    ),
    key(
        "paths.log_dir",
        Kind::Path,
        "rolling daily log files; unset means standard error only",
    ),
    key(
        "paths.log_retention",
        Kind::Count { min: 1, max: 3650 },
        "daily log files kept",
    ),
    key(
        "paths.log_format",
        Kind::Choice(LOG_FORMATS),
        "log file lines: plain or json",
    ),
    key(
        "behaviour.allowed_actions",
        Kind::List,
        "action families this robot runs, such as [\"browser.*\", \"http.*\"]",
    ),
    key(
        "behaviour.env_allow",
        Kind::List,
        "environment variables workflows may read as ${env.NAME}",
    ),
    key(
        "behaviour.env_pass",
        Kind::List,
        "environment variables (names or globs such as \"LC_*\") passed on to steps' processes beyond PATH, HOME, LANG and the like",
    ),
    key(
        "behaviour.drain_grace",
        Kind::Duration,
        "how long a drain waits for running sessions",
    ),
    key(
        "behaviour.cancel_grace",
        Kind::Duration,
        "how long a cancelled process tree gets before it is killed",
    ),
    key(
        "metrics.listen",
        Kind::Addr,
        "the health and metrics listener: a port (on loopback) or address:port; off when unset",
    ),
];

pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// `control_plane.url` → `TASUKI_CONTROL_PLANE_URL`.
pub fn env_name(key: &str) -> String {
    format!("TASUKI_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The tables of the file, in order.
pub fn tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let table = k.name.split_once('.').map_or(k.name, |(t, _)| t);
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    tables
}

/// The closest known key, for "did you mean".
pub fn closest(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| {
            (
                tasuki_actions::language::model::edit_distance(name, k.name),
                k.name,
            )
        })
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_table_dot_name_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in KEYS {
            let (table, name) = k.name.split_once('.').expect("table.key");
            assert!(!table.is_empty() && !name.is_empty() && !name.contains('.'));
            assert!(seen.insert(k.name), "{} twice", k.name);
        }
        assert_eq!(
            env_name("control_plane.max_concurrency"),
            "TASUKI_CONTROL_PLANE_MAX_CONCURRENCY"
        );
    }
}
