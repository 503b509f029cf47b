//! The agent's config file (TOML) and its credentials file.
//!
//! The config holds nothing secret. The credentials file holds the access
//! key and the robot's instance id, is written with mode 0600, and is
//! refused when anyone but its owner can read it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub control_plane: ControlPlane,
    pub credentials: CredentialsRef,
    #[serde(default)]
    pub paths: Paths,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// The hub's base URL, such as `https://hub.example.com`.
    pub url: String,
    /// The robot's name on the hub.
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// The `iss` and `aud` of the tokens the agent signs.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    #[serde(default = "default_audience")]
    pub audience: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsRef {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Sessions' working directories, artifacts and the log spool live here.
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            work_dir: default_work_dir(),
        }
    }
}

fn default_concurrency() -> u32 {
    1
}
fn default_issuer() -> String {
    "tasuki".into()
}
fn default_audience() -> String {
    "tasuki-hub".into()
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        nix::unistd::geteuid().is_root()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `/etc/tasuki/agent.toml` for a system install (root),
/// `%ProgramData%\Tasuki\agent.toml` on Windows, and
/// `~/.config/tasuki/agent.toml` otherwise.
pub fn default_config_path() -> PathBuf {
    if cfg!(windows) {
        let base = std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
        return base.join("Tasuki").join("agent.toml");
    }
    if is_root() {
        return PathBuf::from("/etc/tasuki/agent.toml");
    }
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tasuki").join("agent.toml"),
        None => home()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".config/tasuki/agent.toml"),
    }
}

fn default_work_dir() -> PathBuf {
    if cfg!(windows) {
        let base = std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
        return base.join("Tasuki").join("work");
    }
    if is_root() {
        return PathBuf::from("/var/lib/tasuki");
    }
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tasuki"),
        None => home()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/tasuki"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the config file {path}: {source}; register the robot first with `tasuki register`, or pass --config"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            message: toml_error(&text, &e),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), String> {
        let url = &self.control_plane.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "control_plane.url: `{url}` is not an http:// or https:// URL"
            ));
        }
        tasuki_protocol::robot::check_robot_name(&self.control_plane.name)
            .map_err(|e| format!("control_plane.name: {e}"))?;
        for (i, l) in self.control_plane.labels.iter().enumerate() {
            tasuki_protocol::robot::check_label(l)
                .map_err(|e| format!("control_plane.labels[{i}]: {e}"))?;
        }
        if !(1..=256).contains(&self.control_plane.max_concurrency) {
            return Err(format!(
                "control_plane.max_concurrency: from 1 to 256, not {}",
                self.control_plane.max_concurrency
            ));
        }
        Ok(())
    }

    /// Writes the config, creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# The Tasuki agent's config, written by `tasuki register`.\n\
             # Secrets are not kept here but in the credentials file (mode 0600).\n\n{text}"
        );
        write_file(path, text.as_bytes(), 0o644)
    }
}

/// A toml error with its line and column, which toml's message already
/// carries, folded onto one line.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().to_string();
    match e.span() {
        Some(span) => {
            // A byte offset; `get` keeps a bad one from panicking.
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            match key_at(text, line) {
                Some(key) if !message.contains(&key) => {
                    format!("line {line}, column {column}: `{key}`: {message}")
                }
                _ => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message,
    }
}

/// The dotted key set on line `line` (1-based), such as
/// `control_plane.max_concurrency`: the table header above it and the key
/// before its `=`. Only for simple `key = value` lines.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// What the credentials file holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    #[serde(with = "secret_string")]
    pub secret_access_key: SecretString,
    /// Tells this machine's registration from another that took the same
    /// name.
    pub instance_id: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

mod secret_string {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::from(String::deserialize(d)?))
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, ConfigError> {
        let shown = path.display().to_string();
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let creds: Credentials = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            // Never echo the file, nor toml's message, which may quote a
            // value: the file holds the secret.
            message: {
                let line = e.span().map(|span| {
                    let before = text.get(..span.start).unwrap_or(&text);
                    before.matches('\n').count() + 1
                });
                format!(
                    "{}not a valid credentials file: it holds access_key_id, \
                     secret_access_key and instance_id, each a quoted string",
                    line.map(|l| format!("line {l}: ")).unwrap_or_default()
                )
            },
        })?;
        if creds.secret_access_key.expose_secret().is_empty() {
            return Err(ConfigError::Invalid {
                path: shown,
                message: "secret_access_key is empty".into(),
            });
        }
        Ok(creds)
    }

    /// Writes the file with mode 0600 from the start: it never exists
    /// with wider permissions, not even for a moment.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_file(path, text.as_bytes(), 0o600)
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::Invalid {
            path: path.display().to_string(),
            message: format!(
                "the credentials file has mode {mode:o}, so others can read the secret; run \
                 `chmod 600 {}`",
                path.display()
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

/// Writes `path` whole: to a temporary file beside it (created with
/// `mode`), then renamed into place.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let err = |source| ConfigError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tasuki-");
    // On Windows the file inherits the directory's ACL instead.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
