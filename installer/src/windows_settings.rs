//! What the Windows service control manager is given, worked out without
//! Windows so that it is tested everywhere: the command line, quoted the
//! way the SCM and the C runtime will split it, the account and the
//! recovery actions.

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::ServiceSpec;

/// Restarts after the first, second and later failures.
const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(60),
];
/// A day without failures starts the count again from the first delay.
const FAILURE_RESET_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// The service as the SCM will record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsServiceSettings {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub executable: PathBuf,
    pub launch_arguments: Vec<OsString>,
    /// The image path the SCM stores and runs: `executable` and
    /// `launch_arguments`, each quoted as needed.
    pub command_line: String,
    /// `None` is LocalSystem.
    pub account: Option<String>,
    pub start_type: WindowsStartType,
    pub recovery: Recovery,
    /// How long Windows waits for the drain when it shuts down (the
    /// service accepts the preshutdown notification).
    pub preshutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowsStartType {
    /// At boot, before anyone logs on.
    Automatic,
}

/// The SCM's failure actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// A restart after each failure, after these delays; the last one
    /// repeats for every later failure.
    pub restart_delays: Vec<Duration>,
    /// After this long without a failure the count starts again.
    pub reset_period: Duration,
    /// Also when the service stops with a non-zero exit code, not only
    /// when the process dies without reporting.
    pub on_error_exit: bool,
}

pub fn windows_service_settings(spec: &ServiceSpec) -> WindowsServiceSettings {
    let arguments = std::iter::once(spec.program.as_os_str())
        .chain(spec.args.iter().map(|a| a.as_os_str()))
        .map(|a| quote_argument(&a.to_string_lossy()).into_owned())
        .collect::<Vec<_>>();
    WindowsServiceSettings {
        name: spec.name.clone(),
        display_name: one_line(&spec.display_name),
        description: one_line(&spec.description),
        executable: spec.program.clone(),
        launch_arguments: spec.args.clone(),
        command_line: arguments.join(" "),
        account: spec
            .service_user
            .clone()
            .filter(|account| !is_local_system(account)),
        start_type: WindowsStartType::Automatic,
        recovery: Recovery {
            restart_delays: RESTART_DELAYS.to_vec(),
            reset_period: FAILURE_RESET_PERIOD,
            on_error_exit: true,
        },
        preshutdown_timeout: spec.stop_timeout,
    }
}

/// LocalSystem is what the SCM uses when no account is given.
pub(crate) fn is_local_system(account: &str) -> bool {
    let bare = account.strip_prefix(r".\").unwrap_or(account);
    bare.eq_ignore_ascii_case("LocalSystem")
}

impl WindowsServiceSettings {
    /// The registry key where the SCM keeps the service: what `--print`
    /// shows in place of a file.
    pub fn registry_key(&self) -> PathBuf {
        PathBuf::from(format!(
            r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\{}",
            self.name
        ))
    }

    /// A readable account of the settings, for `--print`.
    pub fn describe(&self) -> String {
        let delays: Vec<String> = self
            .recovery
            .restart_delays
            .iter()
            .map(|d| format!("{} s", d.as_secs()))
            .collect();
        let start = match self.start_type {
            WindowsStartType::Automatic => "automatic",
        };
        [
            format!("Service name:  {}", self.name),
            format!("Display name:  {}", self.display_name),
            format!("Description:   {}", self.description),
            format!("Command line:  {}", self.command_line),
            format!(
                "Account:       {}",
                self.account.as_deref().unwrap_or("LocalSystem")
            ),
            format!("Start type:    {start}"),
            format!(
                "On failure:    restart after {}, the last delay repeating; the count resets \
                 after {} h without a failure{}",
                delays.join(", then "),
                self.recovery.reset_period.as_secs() / 3600,
                if self.recovery.on_error_exit {
                    "; an exit with an error code counts as a failure"
                } else {
                    ""
                }
            ),
            format!(
                "Stop:          a stop or shutdown drains first; Windows waits up to {} s at \
                 shutdown",
                crate::spec::whole_seconds(self.preshutdown_timeout)
            ),
        ]
        .join("\n")
            + "\n"
    }
}

/// One argument as `CommandLineToArgvW` and the C runtime split it:
/// quoted when it is empty or holds whitespace or a quote; inside quotes,
/// backslashes are literal except before a quote (and before the closing
/// quote), where they are doubled.
pub(crate) fn quote_argument(arg: &str) -> Cow<'_, str> {
    let plain = !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\u{b}', '"']);
    if plain {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    Cow::Owned(out)
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Level;
    use crate::spec::example_spec;

    fn windows_spec() -> ServiceSpec {
        let mut spec = example_spec(Level::System);
        spec.program = r"C:\Program Files\Tasuki\tasuki.exe".into();
        spec.args = vec![
            "agent".into(),
            "--config".into(),
            r"C:\ProgramData\Tasuki\agent.toml".into(),
            "--windows-service".into(),
        ];
        spec
    }

    #[test]
    fn the_command_line_quotes_a_program_path_with_spaces() {
        let settings = windows_service_settings(&windows_spec());
        assert_eq!(
            settings.command_line,
            r#""C:\Program Files\Tasuki\tasuki.exe" agent --config C:\ProgramData\Tasuki\agent.toml --windows-service"#
        );
        assert_eq!(
            settings.executable,
            PathBuf::from(r"C:\Program Files\Tasuki\tasuki.exe")
        );
        assert_eq!(settings.launch_arguments, windows_spec().args);
    }

    #[test]
    fn arguments_are_quoted_per_the_c_runtime_rules() {
        for (arg, quoted) in [
            ("plain", "plain"),
            (r"C:\no\spaces\", r"C:\no\spaces\"),
            ("", r#""""#),
            ("two words", r#""two words""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"C:\Tasuki Data\", r#""C:\Tasuki Data\\""#),
            (r#"a\"b c"#, r#""a\\\"b c""#),
            (r"a\\b c", r#""a\\b c""#),
            ("tab\there", "\"tab\there\""),
            ("100% $HOME", r#""100% $HOME""#),
        ] {
            assert_eq!(quote_argument(arg), quoted, "{arg}");
        }
    }

    #[test]
    fn recovery_restarts_three_times_and_resets_after_a_day() {
        let settings = windows_service_settings(&windows_spec());
        assert_eq!(
            settings.recovery,
            Recovery {
                restart_delays: vec![
                    Duration::from_secs(5),
                    Duration::from_secs(30),
                    Duration::from_secs(60)
                ],
                reset_period: Duration::from_secs(86_400),
                on_error_exit: true,
            }
        );
        assert_eq!(settings.start_type, WindowsStartType::Automatic);
        assert_eq!(settings.preshutdown_timeout, Duration::from_secs(630));
    }

    #[test]
    fn the_account_defaults_to_local_system() {
        let mut spec = windows_spec();
        spec.service_user = None;
        assert_eq!(windows_service_settings(&spec).account, None);
        spec.service_user = Some(r".\LocalSystem".into());
        assert_eq!(windows_service_settings(&spec).account, None);
        spec.service_user = Some(r"NT SERVICE\tasuki".into());
        assert_eq!(
            windows_service_settings(&spec).account.as_deref(),
            Some(r"NT SERVICE\tasuki")
        );
    }

    #[test]
    fn the_description_for_print_names_everything_the_scm_gets() {
        let mut spec = windows_spec();
        spec.description = "Tasuki robot agent\nfor hub".into();
        let settings = windows_service_settings(&spec);
        let text = settings.describe();
        for part in [
            "Service name:  tasuki",
            "Description:   Tasuki robot agent for hub",
            r#"Command line:  "C:\Program Files\Tasuki\tasuki.exe" agent"#,
            "Account:       LocalSystem",
            "Start type:    automatic",
            "restart after 5 s, then 30 s, then 60 s",
            "resets after 24 h",
            "up to 630 s at shutdown",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
        assert_eq!(
            settings.registry_key(),
            PathBuf::from(r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\tasuki")
        );
    }
}
