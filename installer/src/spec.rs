//! What to install: the service's description, and the checks that make
//! sure it can be written into a unit file, a plist or the SCM's registry
//! without being changed on the way.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::InstallError;

/// The account a system-level service runs as on Linux and macOS when
/// [`ServiceSpec::service_user`] is `None` (the .deb creates it).
pub const DEFAULT_SERVICE_USER: &str = "tasuki";

/// Whether the service belongs to the machine or to the user installing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Starts at boot under its own unprivileged account; installing it
    /// needs root (or an elevated prompt on Windows).
    System,
    /// `systemctl --user` or a LaunchAgent: runs as the installing user,
    /// while that user's service manager runs. Not available on Windows.
    User,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::System => "system",
            Level::User => "user",
        })
    }
}

/// Everything the installers need to know about the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The unit name (`<name>.service`), the launchd label (`com.<name>.agent`)
    /// and the Windows service name. Letters, digits, `-` and `_`.
    pub name: String,
    /// The Windows service's display name.
    pub display_name: String,
    /// One line: the unit's `Description=` and the Windows description.
    pub description: String,
    /// The absolute path of the `tasuki` binary.
    pub program: PathBuf,
    /// The arguments the service manager passes to `program`.
    pub args: Vec<OsString>,
    pub level: Level,
    /// System level only. Linux and macOS: the unprivileged account
    /// (default [`DEFAULT_SERVICE_USER`]). Windows: an account that needs no
    /// password, such as `NT SERVICE\tasuki` or `NT AUTHORITY\LocalService`;
    /// `None` is LocalSystem.
    pub service_user: Option<String>,
    /// Directories the service writes (work, logs, artifacts): the only
    /// writable places under systemd's `ProtectSystem=strict`.
    pub read_write_paths: Vec<PathBuf>,
    /// How long a stop may take before the service manager kills the
    /// agent: its drain grace plus a margin.
    pub stop_timeout: Duration,
}

impl ServiceSpec {
    /// The account of a system-level service on Linux and macOS.
    pub(crate) fn unix_account(&self) -> &str {
        self.service_user.as_deref().unwrap_or(DEFAULT_SERVICE_USER)
    }

    /// Refuses what a unit file, a plist or a Windows command line could
    /// not carry faithfully, so the renderers never have to.
    pub(crate) fn validate(&self) -> Result<(), InstallError> {
        validate_name(&self.name)?;
        check_path("the program", &self.program)?;
        for arg in &self.args {
            check_text("an argument", arg)?;
        }
        for path in &self.read_write_paths {
            check_path("a writable directory", path)?;
        }
        if self.level == Level::System
            && let Some(user) = &self.service_user
        {
            validate_account(user)?;
        }
        Ok(())
    }
}

/// Service names end up in file names, launchd labels and registry keys.
pub(crate) fn validate_name(name: &str) -> Result<(), InstallError> {
    let usable = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if usable {
        Ok(())
    } else {
        Err(InstallError::InvalidName {
            name: name.to_string(),
        })
    }
}

fn check_path(what: &'static str, path: &Path) -> Result<(), InstallError> {
    check_text(what, path.as_os_str())?;
    if path.is_absolute() {
        Ok(())
    } else {
        Err(InstallError::NotAbsolute {
            what,
            path: path.to_path_buf(),
        })
    }
}

fn check_text(what: &'static str, value: &OsStr) -> Result<(), InstallError> {
    let Some(text) = value.to_str() else {
        return Err(InstallError::Unrepresentable {
            what,
            value: value.to_string_lossy().into_owned(),
            problem: "it is not valid Unicode",
        });
    };
    if text.chars().any(char::is_control) {
        return Err(InstallError::Unrepresentable {
            what,
            value: text.to_string(),
            problem: "it contains a control character (such as a line break)",
        });
    }
    Ok(())
}

#[cfg(not(windows))]
fn validate_account(user: &str) -> Result<(), InstallError> {
    // The portable POSIX user name set, which systemd's User= accepts too.
    let usable = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if usable {
        Ok(())
    } else {
        Err(InstallError::InvalidAccount {
            account: user.to_string(),
            hint: "use a plain account name such as `tasuki`",
        })
    }
}

#[cfg(windows)]
fn validate_account(user: &str) -> Result<(), InstallError> {
    // Tasuki stores no password, so only accounts that need none work, and
    // those are always written with their domain (`NT SERVICE\x`,
    // `NT AUTHORITY\LocalService`) or as a gMSA (`DOMAIN\name$`).
    if crate::windows_settings::is_local_system(user) || user.contains('\\') || user.contains('@') {
        Ok(())
    } else {
        Err(InstallError::InvalidAccount {
            account: user.to_string(),
            hint: "a Windows service account needs its domain, such as `NT SERVICE\\tasuki` or \
                   `NT AUTHORITY\\LocalService`; leave it out to run as LocalSystem",
        })
    }
}

/// Whole seconds, rounded up, and at least one: systemd reads
/// `TimeoutStopSec=0` as "wait forever".
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
pub(crate) fn example_spec(level: Level) -> ServiceSpec {
    ServiceSpec {
        name: "tasuki".into(),
        display_name: "Tasuki robot agent".into(),
        description: "Tasuki robot agent".into(),
        program: "/usr/bin/tasuki".into(),
        args: vec![
            "agent".into(),
            "--config".into(),
            "/etc/tasuki/agent.toml".into(),
        ],
        level,
        service_user: None,
        read_write_paths: vec!["/var/lib/tasuki".into(), "/var/log/tasuki".into()],
        stop_timeout: Duration::from_secs(630),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_limited_to_what_every_service_manager_takes() {
        for good in ["tasuki", "tasuki-2", "robot_1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "a.b", "tásuki", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn validation_refuses_what_a_unit_file_cannot_carry() {
        use std::os::unix::ffi::OsStringExt;

        assert!(example_spec(Level::System).validate().is_ok());

        let mut relative = example_spec(Level::System);
        relative.program = "tasuki".into();
        let e = relative.validate().unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");

        let mut line_break = example_spec(Level::System);
        line_break.args.push("a\nb".into());
        let e = line_break.validate().unwrap_err().to_string();
        assert!(
            e.contains("control character") && e.contains(r"a\nb"),
            "{e}"
        );

        let mut not_unicode = example_spec(Level::System);
        not_unicode.read_write_paths = vec![OsString::from_vec(b"/var/\xff".to_vec()).into()];
        let e = not_unicode.validate().unwrap_err().to_string();
        assert!(e.contains("not valid Unicode"), "{e}");

        let mut bad_user = example_spec(Level::System);
        bad_user.service_user = Some("root; rm".into());
        assert!(bad_user.validate().is_err());
    }

    #[test]
    fn stop_timeouts_round_up_and_never_reach_zero() {
        assert_eq!(whole_seconds(Duration::from_secs(630)), 630);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
