//! The systemd unit, rendered here rather than by service-manager, which
//! neither quotes arguments nor escapes `%` and `$` (systemd.syntax(7)).

use std::path::Path;

use crate::spec::whole_seconds;
use crate::{Level, ServiceSpec};

/// How long systemd waits before restarting a crashed agent.
const RESTART_SEC: u32 = 5;
/// Under memory pressure the kernel picks a supervised job (a browser, a
/// shell step) before the agent that would report its failure.
const OOM_SCORE_ADJUST: i32 = -500;
/// The exit code with which the agent says that restarting it cannot help
/// (its robot was given to another key or machine): the unit's
/// `RestartPreventExitStatus=`.
pub const EXIT_DO_NOT_RESTART: u8 = 3;
/// Where `ProtectHome=yes` hides everything.
const HOME_TREES: [&str; 3] = ["/home", "/root", "/run/user"];

/// The unit file for `spec`. Values are written as given: call this on a
/// spec that `plan_install` accepted (no control characters, valid
/// Unicode), or the escapes below keep the file well-formed but the
/// service may not find what it was given.
pub fn render_systemd_unit(spec: &ServiceSpec) -> String {
    let system = spec.level == Level::System;
    let mut lines: Vec<String> = vec![
        "# The Tasuki agent as a systemd service, as `tasuki service install` renders".into(),
        "# it (`--print` shows it). Nothing secret belongs here; the config names the".into(),
        "# credentials file. Settings go in the config, not here.".into(),
        "[Unit]".into(),
        format!("Description={}", description(&spec.description)),
    ];
    if system {
        // The user manager has no network-online.target to order against.
        lines.push("After=network-online.target".into());
        lines.push("Wants=network-online.target".into());
    }

    lines.push(String::new());
    lines.push("[Service]".into());
    // `exec`, not `simple`: `systemctl start` fails when the binary cannot
    // be executed, instead of reporting a start that never happened.
    lines.push("Type=exec".into());
    lines.push(format!("ExecStart={}", exec_start(spec)));
    if system {
        let account = spec.unix_account();
        lines.push(format!("User={account}"));
        lines.push(format!("Group={account}"));
    }
    lines.push("Restart=on-failure".into());
    lines.push(format!("RestartSec={RESTART_SEC}"));
    lines.push(format!("RestartPreventExitStatus={EXIT_DO_NOT_RESTART}"));
    lines.push(format!(
        "TimeoutStopSec={}",
        whole_seconds(spec.stop_timeout)
    ));
    lines.push("# SIGTERM reaches the agent alone, so it drains and ends its sessions'".into());
    lines.push("# processes itself; whatever is left at TimeoutStopSec is killed.".into());
    lines.push("KillMode=mixed".into());
    lines.push("NoNewPrivileges=yes".into());
    if system {
        // Lowering the score needs privileges a user manager lacks: there
        // the process would fail to start.
        lines.push(format!("OOMScoreAdjust={OOM_SCORE_ADJUST}"));
        lines.push("ProtectSystem=strict".into());
        if !spec.read_write_paths.is_empty() {
            let paths: Vec<String> = spec
                .read_write_paths
                .iter()
                .map(|p| path_word(&p.to_string_lossy()))
                .collect();
            lines.push(format!("ReadWritePaths={}", paths.join(" ")));
        }
        lines.push("PrivateTmp=yes".into());
        if needs_home_trees(spec) {
            lines.push("# The program, its config or a writable directory is under a home".into());
            lines.push("# directory, so homes stay visible (read-only).".into());
            lines.push("ProtectHome=read-only".into());
        } else {
            lines.push("ProtectHome=yes".into());
        }
    }

    lines.push(String::new());
    lines.push("[Install]".into());
    lines.push(format!(
        "WantedBy={}",
        if system {
            "multi-user.target"
        } else {
            "default.target"
        }
    ));

    let mut unit = lines.join("\n");
    unit.push('\n');
    unit
}

fn exec_start(spec: &ServiceSpec) -> String {
    // The program path takes specifiers but no variables: systemd expands
    // `$` in the arguments only, when it starts the process.
    std::iter::once(path_word(&spec.program.to_string_lossy()))
        .chain(
            spec.args
                .iter()
                .map(|a| exec_argument(&a.to_string_lossy())),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// One argument of a command line: systemd expands `%` specifiers and `$`
/// variables there, and splits on unquoted whitespace.
fn exec_argument(s: &str) -> String {
    // A lone `;` separates commands.
    if s == ";" {
        return r"\;".into();
    }
    word(s, true)
}

/// A path: the program's, or one of a path list (`ReadWritePaths=`).
/// Specifiers are expanded there, variables are not.
fn path_word(s: &str) -> String {
    word(s, false)
}

fn word(s: &str, expands_variables: bool) -> String {
    let quoted = s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    let mut out = String::with_capacity(s.len() + 2);
    if quoted {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '%' => out.push_str("%%"),
            '$' if expands_variables => out.push_str("$$"),
            '\n' => out.push_str(r"\n"),
            '\t' => out.push_str(r"\t"),
            // Never a raw line break or other control character: it would
            // end the directive and start another.
            c if c.is_control() => out.push_str(&format!(r"\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    out
}

/// `Description=` is free text up to the end of the line: specifiers are
/// expanded, and a trailing backslash would continue the line.
fn description(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line
        .trim()
        .trim_end_matches('\\')
        .trim_end()
        .replace('%', "%%")
}

/// Whether the service needs to see a home directory: then it gets
/// `ProtectHome=read-only`, which still lets `ReadWritePaths=` inside a
/// home through, where `yes` would hide them.
fn needs_home_trees(spec: &ServiceSpec) -> bool {
    let under_home = |p: &Path| HOME_TREES.iter().any(|home| p.starts_with(home));
    // `/home/…` as well as `--config=/home/…`
    let arg_under_home = |a: &str| {
        under_home(Path::new(a))
            || a.split_once('=')
                .is_some_and(|(_, value)| under_home(Path::new(value)))
    };
    under_home(&spec.program)
        || spec.read_write_paths.iter().any(|p| under_home(p))
        || spec
            .args
            .iter()
            .any(|a| a.to_str().is_some_and(arg_under_home))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::spec::example_spec;

    fn has_line(unit: &str, line: &str) -> bool {
        unit.lines().any(|l| l == line)
    }

    #[test]
    fn a_system_unit_is_hardened_and_drains_on_stop() {
        let unit = render_systemd_unit(&example_spec(Level::System));
        for line in [
            "[Unit]",
            "Description=Tasuki robot agent",
            "After=network-online.target",
            "Wants=network-online.target",
            "[Service]",
            "Type=exec",
            "ExecStart=/usr/bin/tasuki agent --config /etc/tasuki/agent.toml",
            "User=tasuki",
            "Group=tasuki",
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=3",
            "TimeoutStopSec=630",
            "KillMode=mixed",
            "OOMScoreAdjust=-500",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/tasuki /var/log/tasuki",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            "[Install]",
            "WantedBy=multi-user.target",
        ] {
            assert!(has_line(&unit, line), "missing {line:?} in\n{unit}");
        }
        assert!(!unit.contains("Environment"), "{unit}");
        assert!(unit.ends_with("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn the_service_user_names_both_user_and_group() {
        let mut spec = example_spec(Level::System);
        spec.service_user = Some("robot".into());
        let unit = render_systemd_unit(&spec);
        assert!(has_line(&unit, "User=robot") && has_line(&unit, "Group=robot"));
    }

    #[test]
    fn a_user_unit_drops_what_needs_privileges() {
        let mut spec = example_spec(Level::User);
        spec.service_user = Some("ignored".into());
        let unit = render_systemd_unit(&spec);
        for line in [
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=3",
            "TimeoutStopSec=630",
            "KillMode=mixed",
            "NoNewPrivileges=yes",
            "WantedBy=default.target",
        ] {
            assert!(has_line(&unit, line), "missing {line:?} in\n{unit}");
        }
        for gone in [
            "User=",
            "Group=",
            "OOMScoreAdjust=",
            "ProtectSystem=",
            "ProtectHome=",
            "PrivateTmp=",
            "ReadWritePaths=",
            "network-online",
            "multi-user",
        ] {
            assert!(!unit.contains(gone), "unexpected {gone:?} in\n{unit}");
        }
    }

    #[test]
    fn command_lines_are_quoted_and_escaped_per_systemd_syntax() {
        let mut spec = example_spec(Level::System);
        spec.program = "/opt/my tools/100% $HOME/tasuki".into();
        spec.args = vec![
            "agent".into(),
            "--config".into(),
            "/etc/tasuki conf/50%off $USER.toml".into(),
            r#"say "hi" \ bye"#.into(),
            "".into(),
            ";".into(),
            "it's".into(),
            "a\nb".into(),
        ];
        let unit = render_systemd_unit(&spec);
        let expected = concat!(
            r#"ExecStart="/opt/my tools/100%% $HOME/tasuki" agent --config "#,
            r#""/etc/tasuki conf/50%%off $$USER.toml" "say \"hi\" \\ bye" "" \; "it's" "a\nb""#
        );
        assert!(has_line(&unit, expected), "{unit}");
        // The line break stayed an escape: no directive was injected.
        assert_eq!(
            unit.lines().filter(|l| l.starts_with("ExecStart=")).count(),
            1
        );
    }

    #[test]
    fn writable_paths_are_quoted_but_dollars_stay_literal() {
        let mut spec = example_spec(Level::System);
        spec.read_write_paths = vec![
            "/srv/work dir".into(),
            "/srv/100%/$cash".into(),
            "/plain".into(),
        ];
        let unit = render_systemd_unit(&spec);
        assert!(
            has_line(
                &unit,
                r#"ReadWritePaths="/srv/work dir" /srv/100%%/$cash /plain"#
            ),
            "{unit}"
        );
    }

    #[test]
    fn descriptions_stay_on_one_line_and_expand_nothing() {
        let mut spec = example_spec(Level::System);
        spec.description = "Robot `r1` at 100%\nUser=root \\".into();
        let unit = render_systemd_unit(&spec);
        assert!(
            has_line(&unit, "Description=Robot `r1` at 100%% User=root"),
            "{unit}"
        );
        assert!(!has_line(&unit, "User=root"));
    }

    #[test]
    fn stop_timeout_is_whole_seconds_rounded_up() {
        let mut spec = example_spec(Level::System);
        spec.stop_timeout = std::time::Duration::from_millis(90_001);
        assert!(has_line(&render_systemd_unit(&spec), "TimeoutStopSec=91"));
    }

    #[test]
    fn homes_stay_readable_when_the_service_needs_them() {
        let mut spec = example_spec(Level::System);
        spec.args = vec!["agent".into(), "--config=/home/ops/agent.toml".into()];
        assert!(has_line(
            &render_systemd_unit(&spec),
            "ProtectHome=read-only"
        ));

        let mut spec = example_spec(Level::System);
        spec.read_write_paths.push("/root/tasuki".into());
        assert!(has_line(
            &render_systemd_unit(&spec),
            "ProtectHome=read-only"
        ));

        let mut spec = example_spec(Level::System);
        spec.args.push("/homeless/not-a-home".into());
        assert!(has_line(&render_systemd_unit(&spec), "ProtectHome=yes"));
    }

    /// systemd's own parser on a rendered unit: an unquoted space, or a
    /// `%` or `$` escaped the wrong way in the program path, would each
    /// make it look for a program that does not exist.
    #[test]
    fn systemd_analyze_accepts_the_rendered_units() {
        // Not on PATH is a failure, not a skip: ./test.sh installs it
        // (scripts/need-test-tools.sh).
        if let Err(e) = Command::new("systemd-analyze").arg("--version").output() {
            panic!("systemd-analyze cannot run ({e}); install it: sudo apt-get install -y systemd");
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let odd = dir.path().join("odd dir 100% $HOME");
        std::fs::create_dir_all(&odd).expect("create the odd directory");
        let program = odd.join("tasuki %n");
        std::fs::copy("/bin/true", &program).expect("copy /bin/true");

        for level in [Level::System, Level::User] {
            let mut spec = example_spec(level);
            spec.program = program.clone();
            spec.args = vec![
                "agent".into(),
                "--config".into(),
                odd.join("agent 50% $X.toml").into(),
            ];
            spec.read_write_paths = vec![odd.clone(), PathBuf::from("/var/lib/tasuki")];
            let unit_dir = dir.path().join(format!("{level}"));
            std::fs::create_dir_all(&unit_dir).expect("create the unit directory");
            let unit_path = unit_dir.join("tasuki-test.service");
            std::fs::write(&unit_path, render_systemd_unit(&spec)).expect("write the unit");

            let runtime_dir = dir.path().join("runtime");
            std::fs::create_dir_all(&runtime_dir).expect("create the runtime directory");
            let mut verify = Command::new("systemd-analyze");
            if level == Level::User {
                // The user manager's runtime directory, which verify needs
                // even though it starts nothing.
                verify.arg("--user").env("XDG_RUNTIME_DIR", &runtime_dir);
            }
            let output = verify
                .arg("verify")
                .arg(&unit_path)
                .current_dir(&unit_dir)
                .output()
                .expect("run systemd-analyze");
            assert!(
                output.status.success(),
                "systemd-analyze verify rejected the {level} unit:\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(&unit_path).unwrap_or_default()
            );
        }
    }
}
