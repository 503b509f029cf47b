//! The environment of the processes that steps start: not the agent's
//! whole environment (which may hold a proxy password, a cloud token or the
//! settings of the agent itself), but the variables a program needs to run
//! as the account it runs under, plus those the robot's settings pass on
//! (`behaviour.env_pass`, `tasuki run --pass-env`) and the step's own `env:`.

use std::ffi::OsString;

/// What every process gets, when the agent has it. `TERM` is left out:
/// steps have no terminal. The display variables are for a browser or a
/// desktop program with a window.
#[cfg(unix)]
const BASE: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "XDG_RUNTIME_DIR",
];

/// The variables Windows programs expect; names are case-insensitive there.
#[cfg(windows)]
const BASE: &[&str] = &[
    "PATH",
    "PATHEXT",
    "SYSTEMROOT",
    "SYSTEMDRIVE",
    "WINDIR",
    "COMSPEC",
    "TEMP",
    "TMP",
    "USERNAME",
    "USERDOMAIN",
    "USERPROFILE",
    "HOMEDRIVE",
    "HOMEPATH",
    "APPDATA",
    "LOCALAPPDATA",
    "PROGRAMDATA",
    "ALLUSERSPROFILE",
    "PUBLIC",
    "PROGRAMFILES",
    "PROGRAMFILES(X86)",
    "PROGRAMW6432",
    "COMMONPROGRAMFILES",
    "COMMONPROGRAMFILES(X86)",
    "COMMONPROGRAMW6432",
    "COMPUTERNAME",
    "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
    "OS",
    "PSMODULEPATH",
];

/// Clears `command`'s environment and gives it the base set and the
/// variables `pass` names (names, or globs where `*` stands for any run of
/// characters), taken from this process's environment.
pub fn apply(command: &mut tokio::process::Command, pass: &[String]) {
    command.env_clear();
    command.envs(std::env::vars_os().filter(|(name, _)| {
        BASE.iter().any(|p| matches(p, name)) || pass.iter().any(|p| matches(p, name))
    }));
}

/// Whether `name` matches `pattern`.
fn matches(pattern: &str, name: &OsString) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if cfg!(windows) {
        glob(&pattern.to_ascii_uppercase(), &name.to_ascii_uppercase())
    } else {
        glob(pattern, name)
    }
}

/// `*` matches any run of characters, everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob("LC_*", "LC_ALL"));
        assert!(glob("LC_*", "LC_"));
        assert!(!glob("LC_*", "LANG"));
        assert!(glob("*_PROXY", "HTTPS_PROXY"));
        assert!(glob("A*B*C", "AxxBxC"));
        assert!(!glob("A*B*C", "AxxBx"));
        assert!(glob("PATH", "PATH"));
        assert!(!glob("PATH", "PATHEXT"));
        assert!(glob("*", "anything"));
    }

    #[test]
    fn windows_names_match_whatever_their_case() {
        let name = OsString::from("Path");
        assert_eq!(matches("PATH", &name), cfg!(windows));
        assert!(matches("Path", &name));
    }
}
