//! Writing the config file at registration (reading it is
//! `crate::settings`), and the credentials file.
//!
//! The config holds nothing secret. The credentials file holds the access
//! key and the robot's instance id, is written with mode 0600, and is
//! refused when anyone but its owner can read it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::settings::ControlPlane;

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

pub fn default_work_dir() -> PathBuf {
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

/// What `tasuki register` records in the config file.
pub struct Registration {
    pub control_plane: ControlPlane,
    pub credentials_file: PathBuf,
    pub work_dir: Option<PathBuf>,
    /// `control_plane.ca_file`, when given to `register`.
    pub ca_file: Option<PathBuf>,
}

const NEW_CONFIG_HEADER: &str = "# The Tasuki agent's config. `tasuki register` sets [control_plane] and\n\
     # [credentials]; everything else is yours (see `tasuki config show`).\n\
     # Secrets are not kept here but in the credentials file (mode 0600).\n";

/// Sets the registration's keys in the config file and keeps everything
/// else in it, comments included (a packaged config documents every
/// key). A new file is created; an existing one keeps its mode and owner.
pub fn write_registration(path: &Path, registration: &Registration) -> Result<(), ConfigError> {
    let r = &registration.control_plane;
    let shown = path.display().to_string();
    let (text, existing) = match std::fs::read_to_string(path) {
        Ok(text) => (text, std::fs::metadata(path).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (NEW_CONFIG_HEADER.to_string(), None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: shown,
                source,
            });
        }
    };
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Invalid {
                path: shown.clone(),
                message: format!("cannot update it, it is not valid TOML: {}", e.message()),
            })?;
    let labels: toml_edit::Array = r.labels.iter().map(String::as_str).collect();
    let set =
        |doc: &mut toml_edit::DocumentMut, table: &str, key: &str, value: toml_edit::Value| {
            let t = doc
                .entry(table)
                .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
            if let Some(t) = t.as_table_like_mut() {
                t.insert(key, toml_edit::Item::Value(value));
            }
        };
    set(&mut doc, "control_plane", "url", r.url.as_str().into());
    set(&mut doc, "control_plane", "name", r.name.as_str().into());
    set(&mut doc, "control_plane", "labels", labels.into());
    set(
        &mut doc,
        "control_plane",
        "max_concurrency",
        i64::from(r.max_concurrency).into(),
    );
    set(
        &mut doc,
        "control_plane",
        "issuer",
        r.issuer.as_str().into(),
    );
    set(
        &mut doc,
        "control_plane",
        "audience",
        r.audience.as_str().into(),
    );
    // Like ca_file, only when given: registering again (to rotate a key,
    // say) keeps the hubs the file lists.
    if !r.fallback_urls.is_empty() {
        let urls: toml_edit::Array = r.fallback_urls.iter().map(String::as_str).collect();
        set(&mut doc, "control_plane", "fallback_urls", urls.into());
    }
    if let Some(ca) = &registration.ca_file {
        let ca = ca.display().to_string();
        set(&mut doc, "control_plane", "ca_file", ca.as_str().into());
    }
    let creds = registration.credentials_file.display().to_string();
    set(&mut doc, "credentials", "file", creds.as_str().into());
    if let Some(w) = &registration.work_dir {
        set(
            &mut doc,
            "paths",
            "work_dir",
            w.display().to_string().as_str().into(),
        );
    }
    let mode = existing.as_ref().map_or(0o644, file_mode);
    write_file(path, doc.to_string().as_bytes(), mode)?;
    if let Some(meta) = &existing {
        keep_owner(path, meta);
    }
    Ok(())
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// A file rewritten by root keeps the owner it had (`root:tasuki`, say).
#[cfg(unix)]
fn keep_owner(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
}

#[cfg(not(unix))]
fn keep_owner(_path: &Path, _meta: &std::fs::Metadata) {}

/// Gives the credentials file to the account the service runs as, for a
/// system install registered by root.
#[cfg(unix)]
pub fn give_to(path: &Path, user: &str) -> Result<(), String> {
    let found = find_user(user)?;
    std::os::unix::fs::chown(path, Some(found.uid.as_raw()), Some(found.gid.as_raw()))
        .map_err(|e| format!("cannot give {} to `{user}`: {e}", path.display()))
}

/// The account `--owner` names.
#[cfg(unix)]
pub fn find_user(user: &str) -> Result<nix::unistd::User, String> {
    nix::unistd::User::from_name(user)
        .map_err(|e| format!("cannot look up the user `{user}`: {e}"))?
        .ok_or_else(|| format!("there is no user `{user}` on this machine"))
}

#[cfg(not(unix))]
pub fn give_to(_path: &Path, user: &str) -> Result<(), String> {
    find_user(user)
}

#[cfg(not(unix))]
pub fn find_user(_user: &str) -> Result<(), String> {
    Err("--owner is for Unix; on Windows the file inherits its folder's ACL".into())
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
    /// Writes the file with mode 0600. One that existed keeps its owner:
    /// registering again as root (to rotate a key, say) must not take the
    /// file away from the account the service runs as.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let existing = std::fs::metadata(path).ok();
        write_file(path, text.as_bytes(), 0o600)?;
        if let Some(meta) = &existing {
            keep_owner(path, meta);
        }
        Ok(())
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn credentials_saved_again_keep_their_owner_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        let creds = Credentials {
            access_key_id: "key".into(),
            secret_access_key: SecretString::from("secret"),
            instance_id: "instance".into(),
        };
        creds.save(&path).unwrap();
        // Another owner than the one writing: root can give the file to
        // anyone; anyone else to a group of their own, or to themselves.
        let me = nix::unistd::Uid::effective();
        let (uid, gid) = if me.is_root() {
            (65534, 65534)
        } else {
            let own = nix::unistd::getgid().as_raw();
            let other = nix::unistd::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw())
                .find(|&g| g != own)
                .unwrap_or(own);
            (me.as_raw(), other)
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        creds.save(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
