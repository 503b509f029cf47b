//! The agent's settings, from three layers: the TOML config file, then
//! `TASUKI_*` environment variables, then `--set table.key=value` flags;
//! a later layer wins. Every effective value remembers where it came from,
//! which `tasuki config show` prints and every error names.
//!
//! - `schema.rs`: the one table of keys all three layers are derived from.
//! - `file.rs`: reading the file with the line of every key.
//! - `value.rs`: reading and checking one value of a kind.

mod file;
pub mod schema;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tasuki_actions::runtime::context::DialogPolicy;

pub use value::{Value, masked_url};

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag => write!(f, "flag --set"),
        }
    }
}

/// One thing wrong with the settings, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line`, `env NAME` or `flag --set`.
    pub place: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: `{key}`: {}", self.place, self.message),
            None => write!(f, "{}: {}", self.place, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "cannot read the config file {path}: {source}; register the robot first with `tasuki \
         register --config {path} ...`, or pass --config"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// The command-line side of the settings, shared by every command that
/// reads them.
#[derive(clap::Args, Clone, Default, Debug)]
pub struct SettingsArgs {
    /// The config file [default: /etc/tasuki/agent.toml as root,
    /// %ProgramData%\Tasuki\agent.toml on Windows, ~/.config/tasuki/agent.toml
    /// otherwise]
    #[arg(long, value_name = "PATH", env = "TASUKI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set a setting, over the file and TASUKI_* variables (repeatable):
    /// `--set control_plane.max_concurrency=2`. `tasuki config show` lists
    /// the keys.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl SettingsArgs {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(crate::daemon::default_config_path)
    }

    pub fn load(&self) -> Result<Effective, SettingsError> {
        let path = self.config_path();
        Effective::load(&Sources {
            config_path: &path,
            env: &Sources::process_env,
            flags: &self.set,
        })
    }
}

/// What the layers are read from; the environment is passed in so that
/// tests need not change the process's own.
pub struct Sources<'a> {
    pub config_path: &'a Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `table.key=value`, in order; a later one wins.
    pub flags: &'a [String],
}

impl Sources<'_> {
    pub fn process_env(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Every setting's effective value and origin.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config_path: PathBuf,
    values: BTreeMap<&'static str, (Value, Origin)>,
}

impl Effective {
    pub fn load(sources: &Sources<'_>) -> Result<Effective, SettingsError> {
        let path = sources.config_path;
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: shown.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut values: BTreeMap<&'static str, (Value, Origin)> = BTreeMap::new();
        let mut problems = Vec::new();
        let at = |line: Option<usize>| match line {
            Some(l) => format!("{shown}:{l}"),
            None => shown.clone(),
        };

        match file::read(&text) {
            Ok(entries) => {
                for e in entries {
                    let key = schema::find(e.key).expect("file::read returns known keys");
                    match value::from_toml(key.kind, &e.value, base) {
                        Ok(v) => {
                            let origin = Origin::File {
                                path: path.to_path_buf(),
                                line: e.line,
                            };
                            values.insert(key.name, (v, origin));
                        }
                        Err(message) => problems.push(Problem {
                            place: at(Some(e.line)),
                            key: Some(key.name.into()),
                            message,
                        }),
                    }
                }
            }
            Err(found) => problems.extend(found.into_iter().map(|p| Problem {
                place: at(p.line),
                key: p.key,
                message: p.message,
            })),
        }

        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        for key in schema::KEYS {
            let name = schema::env_name(key.name);
            if let Some(text) = (sources.env)(&name) {
                match value::from_text(key.kind, &text, &cwd) {
                    Ok(v) => {
                        values.insert(key.name, (v, Origin::Env(name)));
                    }
                    Err(message) => problems.push(Problem {
                        place: format!("env {name}"),
                        key: Some(key.name.into()),
                        message,
                    }),
                }
            }
        }

        for flag in sources.flags {
            let Some((name, text)) = flag.split_once('=') else {
                problems.push(Problem {
                    place: "flag --set".into(),
                    key: None,
                    message: format!("`{flag}` is not `table.key=value`"),
                });
                continue;
            };
            let name = name.trim();
            let Some(key) = schema::find(name) else {
                problems.push(Problem {
                    place: "flag --set".into(),
                    key: Some(name.into()),
                    message: format!(
                        "unknown key{}",
                        schema::closest(name)
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default()
                    ),
                });
                continue;
            };
            match value::from_text(key.kind, text, &cwd) {
                Ok(v) => {
                    values.insert(key.name, (v, Origin::Flag));
                }
                Err(message) => problems.push(Problem {
                    place: "flag --set".into(),
                    key: Some(key.name.into()),
                    message,
                }),
            }
        }

        // A key whose value was refused is not also "not set".
        let refused = !problems.is_empty();
        for key in schema::KEYS {
            if values.contains_key(key.name) {
                continue;
            }
            match defaults::value(key.name, &values, base) {
                Some(v) => {
                    values.insert(key.name, (v, Origin::Default));
                }
                None if key.required && !refused => problems.push(Problem {
                    place: shown.clone(),
                    key: Some(key.name.into()),
                    message: format!(
                        "not set; set it in the file, in {} or with --set {}=...",
                        schema::env_name(key.name),
                        key.name
                    ),
                }),
                None => {}
            }
        }
        // Read now, so that a wrong file is refused where it was named.
        if let Some((Value::Path(ca), origin)) = values.get("control_plane.ca_file")
            && let Err(message) = crate::daemon::read_ca_file(ca)
        {
            problems.push(Problem {
                place: origin.to_string(),
                key: Some("control_plane.ca_file".into()),
                message,
            });
        }
        if problems.is_empty() {
            Ok(Effective {
                config_path: path.to_path_buf(),
                values,
            })
        } else {
            Err(SettingsError::Invalid(problems))
        }
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&(Value, Origin)> {
        self.values.get(key)
    }

    /// A problem with a value that passed its own checks but not a later
    /// one, placed where the value came from.
    pub fn problem(&self, key: &str, message: String) -> SettingsError {
        let place = match self.values.get(key) {
            Some((_, Origin::Default)) | None => self.config_path.display().to_string(),
            Some((_, origin)) => origin.to_string(),
        };
        SettingsError::Invalid(vec![Problem {
            place,
            key: Some(key.to_string()),
            message,
        }])
    }

    /// `behaviour.allowed_actions`, checked against the actions the agent
    /// has.
    pub fn allowed_actions(
        &self,
        registry: &tasuki_actions::Registry,
    ) -> Result<tasuki_actions::language::allowed::Allowed, SettingsError> {
        let patterns = self.list("behaviour.allowed_actions");
        tasuki_actions::language::allowed::Allowed::new(&patterns, registry).map_err(|bad| {
            let messages: Vec<String> = bad.into_iter().map(|(_, m)| m).collect();
            self.problem("behaviour.allowed_actions", messages.join("; "))
        })
    }

    /// Each key with its value (secrets masked) and origin, for
    /// `tasuki config show`; unset keys included.
    pub fn show(&self) -> String {
        let mut out = format!(
            "# Effective settings: the file {}, then TASUKI_* variables, then --set flags.\n",
            self.config_path.display()
        );
        let mut table = "";
        for key in schema::KEYS {
            let this_table = key.name.split_once('.').map_or("", |(t, _)| t);
            if this_table != table {
                out.push('\n');
                table = this_table;
            }
            let (value, origin) = match self.values.get(key.name) {
                Some((v, o)) => (v.shown(key.kind), o.to_string()),
                None => ("(unset)".to_string(), "default".to_string()),
            };
            out.push_str(&format!(
                "{} = {value}  # {origin}; {}\n",
                key.name, key.help
            ));
        }
        out
    }

    fn text(&self, key: &str) -> String {
        match self.values.get(key) {
            Some((Value::Text(s), _)) => s.clone(),
            _ => String::new(),
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.values.get(key) {
            Some((Value::List(l), _)) => l.clone(),
            _ => Vec::new(),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        match self.values.get(key) {
            Some((Value::Path(p), _)) => Some(p.clone()),
            _ => None,
        }
    }

    fn count(&self, key: &str) -> u64 {
        match self.values.get(key) {
            Some((Value::Count(n), _)) => *n,
            _ => 0,
        }
    }

    fn duration(&self, key: &str) -> Duration {
        match self.values.get(key) {
            Some((Value::Duration(d, _), _)) => *d,
            _ => Duration::ZERO,
        }
    }

    /// The typed settings. `load` has checked every value, and defaults
    /// fill every key that has one.
    pub fn settings(&self) -> Settings {
        let window_size = match self.values.get("browser.window_size") {
            Some((Value::Size(w, h), _)) => (*w, *h),
            _ => (1280, 800),
        };
        Settings {
            control_plane: ControlPlane {
                url: self
                    .text("control_plane.url")
                    .trim_end_matches('/')
                    .to_string(),
                fallback_urls: self
                    .list("control_plane.fallback_urls")
                    .iter()
                    .map(|url| url.trim_end_matches('/').to_string())
                    .collect(),
                name: self.text("control_plane.name"),
                labels: self.list("control_plane.labels"),
                max_concurrency: self.count("control_plane.max_concurrency") as u32,
                issuer: self.text("control_plane.issuer"),
                audience: self.text("control_plane.audience"),
            },
            ca_file: self.path("control_plane.ca_file"),
            credentials_file: self.path("credentials.file").unwrap_or_default(),
            chromium: self.path("browser.chromium"),
            chromedriver: self.path("browser.chromedriver"),
            remote_webdriver: match self.values.get("browser.remote_webdriver") {
                Some((Value::Text(s), _)) => Some(s.clone()),
                _ => None,
            },
            headless: matches!(
                self.values.get("browser.headless"),
                Some((Value::Bool(true), _))
            ),
            window_size,
            browser_allow_file_urls: matches!(
                self.values.get("browser.allow_file_urls"),
                Some((Value::Bool(true), _))
            ),
            unexpected_dialog: DialogPolicy::parse(&self.text("browser.unexpected_dialog"))
                .unwrap_or_default(),
            browser_warm: matches!(
                self.values.get("browser.warm"),
                Some((Value::Bool(true), _))
            ),
            work_dir: self.path("paths.work_dir").unwrap_or_default(),
            artifacts_dir: self.path("paths.artifacts_dir").unwrap_or_default(),
            log_dir: self.path("paths.log_dir"),
            action_packs: self
                .list("paths.action_packs")
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            log_retention: self.count("paths.log_retention") as usize,
            log_json: self.text("paths.log_format") == "json",
            env_allow: self.list("behaviour.env_allow"),
            env_pass: self.list("behaviour.env_pass"),
            drain_grace: self.duration("behaviour.drain_grace"),
            cancel_grace: self.duration("behaviour.cancel_grace"),
            metrics_listen: match self.values.get("metrics.listen") {
                Some((Value::Addr(a), _)) => Some(*a),
                _ => None,
            },
        }
    }
}

/// Who the robot is to its hub: what `tasuki register` records.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub url: String,
    /// `control_plane.fallback_urls`: hubs of the same database, tried
    /// after `url` (see [`ControlPlane::hub_urls`]).
    pub fallback_urls: Vec<String>,
    pub name: String,
    pub labels: Vec<String>,
    pub max_concurrency: u32,
    pub issuer: String,
    pub audience: String,
}

impl ControlPlane {
    /// Every hub URL the robot may call, in the order they are tried:
    /// `url`, then `fallback_urls`, each once.
    pub fn hub_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::with_capacity(1 + self.fallback_urls.len());
        for url in std::iter::once(&self.url).chain(&self.fallback_urls) {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
        urls
    }
}

/// The agent's settings, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control_plane: ControlPlane,
    /// `control_plane.ca_file`: a private CA for the hub's TLS.
    pub ca_file: Option<PathBuf>,
    pub credentials_file: PathBuf,
    pub chromium: Option<PathBuf>,
    pub chromedriver: Option<PathBuf>,
    pub remote_webdriver: Option<String>,
    pub headless: bool,
    pub window_size: (u32, u32),
    pub browser_allow_file_urls: bool,
    pub unexpected_dialog: DialogPolicy,
    /// `browser.warm`: a browser started ahead (agent mode).
    pub browser_warm: bool,
    pub work_dir: PathBuf,
    pub artifacts_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    /// Folders of action packs.
    pub action_packs: Vec<PathBuf>,
    pub log_retention: usize,
    pub log_json: bool,
    pub env_allow: Vec<String>,
    pub env_pass: Vec<String>,
    pub drain_grace: Duration,
    pub cancel_grace: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

mod defaults {
    use super::*;

    /// The default of `key`, given the values set so far (some defaults
    /// follow others, such as the artifacts dir following the work dir).
    pub fn value(
        key: &str,
        set: &BTreeMap<&'static str, (Value, Origin)>,
        config_dir: &Path,
    ) -> Option<Value> {
        let text = |s: &str| Some(Value::Text(s.into()));
        Some(match key {
            "control_plane.labels"
            | "control_plane.fallback_urls"
            | "behaviour.env_allow"
            | "behaviour.env_pass" => Value::List(Vec::new()),
            "control_plane.max_concurrency" => Value::Count(1),
            "control_plane.issuer" => return text("tasuki"),
            "control_plane.audience" => return text("tasuki-hub"),
            "credentials.file" => Value::Path(config_dir.join("credentials.toml")),
            "browser.headless" => Value::Bool(true),
            "browser.window_size" => Value::Size(1280, 800),
            "browser.allow_file_urls" => Value::Bool(false),
            "browser.unexpected_dialog" => return text("fail"),
            "browser.warm" => Value::Bool(false),
            "paths.work_dir" => Value::Path(crate::daemon::default_work_dir()),
            "paths.artifacts_dir" => match set.get("paths.work_dir") {
                Some((Value::Path(w), _)) => Value::Path(w.join("artifacts")),
                _ => Value::Path(crate::daemon::default_work_dir().join("artifacts")),
            },
            "paths.action_packs" => Value::List(
                crate::packs::default_dirs(config_dir)
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect(),
            ),
            "paths.log_retention" => Value::Count(14),
            "paths.log_format" => return text("plain"),
            "behaviour.allowed_actions" => Value::List(vec!["*".into()]),
            "behaviour.drain_grace" => Value::Duration(Duration::from_secs(600), "10m".into()),
            "behaviour.cancel_grace" => Value::Duration(Duration::from_secs(5), "5s".into()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests;
