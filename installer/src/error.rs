//! Every way installing or controlling the service can fail, each message
//! ending with what the user can do about it.

use std::io;
use std::path::PathBuf;

use crate::Level;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error(
        "the service name {name:?} is not usable: use 1 to 64 letters, digits, `-` and `_`, \
         not starting with `-`"
    )]
    InvalidName { name: String },

    #[error("{what} must be an absolute path, but it is {}; pass the full path", path.display())]
    NotAbsolute { what: &'static str, path: PathBuf },

    #[error(
        "{what} {value:?} cannot be written into a service definition: {problem}; \
         use a path or value without it"
    )]
    Unrepresentable {
        what: &'static str,
        value: String,
        problem: &'static str,
    },

    #[error("the service account {account:?} is not usable: {hint}")]
    InvalidAccount { account: String, hint: &'static str },

    #[error(
        "{action} a system service needs root; run it with sudo, or pass --user for a \
         per-user service"
    )]
    NeedsRoot { action: &'static str },

    #[error(
        "{action} a Windows service needs administrator rights; run it from an elevated prompt \
         (Run as administrator)"
    )]
    NeedsAdministrator { action: &'static str },

    #[error(
        "Windows has no per-user services; leave out --user and run it from an elevated \
         prompt (Run as administrator)"
    )]
    UserLevelUnsupported,

    #[error(
        "installing Tasuki as a service is supported with systemd (Linux), launchd (macOS) and \
         the Windows service control manager only; on this system, start `tasuki agent` \
         from its own init system"
    )]
    UnsupportedPlatform,

    #[error("`{tool}` was not found on PATH: {hint}")]
    ServiceManagerMissing {
        tool: &'static str,
        hint: &'static str,
    },

    #[error(
        "cannot find your home directory, where per-user services are installed; set HOME, \
         or install a system service (without --user)"
    )]
    NoHomeDirectory,

    #[error(
        "the service account {account:?} does not exist; create it (on Debian: sudo useradd \
         --system --home-dir /var/lib/tasuki --shell /usr/sbin/nologin {account}), or name \
         another with --service-user"
    )]
    MissingAccount { account: String },

    #[error(
        "the writable directory {} does not exist, and the service cannot create it because \
         everything else is read-only for it; create it for the service account first: \
         sudo install -d -o {account} -g {account} -m 0750 {}",
        path.display(),
        sh_quote(&path.to_string_lossy())
    )]
    MissingDirectory { path: PathBuf, account: String },

    #[error(
        "{name} is not installed as a {level} service; install it first with \
         `tasuki service install{}`",
        if *level == Level::User { " --user" } else { "" }
    )]
    NotInstalled { name: String, level: Level },

    #[error(
        "there is no {} to remove: {name} was not installed as a {level} service by `tasuki \
         service install` (a service that came with a package goes with the package)",
        path.display()
    )]
    NothingToRemove {
        name: String,
        level: Level,
        path: PathBuf,
    },

    #[error("could not {action}: {detail}{hint}")]
    ServiceManager {
        action: String,
        detail: String,
        hint: &'static str,
    },

    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "this process was not started by the Windows service control manager; run \
         `tasuki service start` to start the installed service, or run `tasuki agent` \
         without --windows-service in a console"
    )]
    NotUnderScm,
}

/// A POSIX shell word, for the commands the messages suggest.
fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_commands_quote_paths_for_the_shell() {
        assert_eq!(sh_quote("/var/lib/tasuki"), "/var/lib/tasuki");
        assert_eq!(sh_quote("/srv/my work"), "'/srv/my work'");
        assert_eq!(sh_quote("/srv/it's"), r"'/srv/it'\''s'");
        let e = InstallError::MissingDirectory {
            path: "/srv/my work".into(),
            account: "tasuki".into(),
        };
        assert!(
            e.to_string()
                .ends_with("sudo install -d -o tasuki -g tasuki -m 0750 '/srv/my work'"),
            "{e}"
        );
    }
}
