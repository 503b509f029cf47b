//! The launchd property list (launchd.plist(5)), rendered here so that the
//! program arguments are escaped and the stop timeout is set.

use crate::spec::whole_seconds;
use crate::{Level, ServiceSpec};

/// launchd's restart delay (`ThrottleInterval`), like systemd's `RestartSec`.
const THROTTLE_INTERVAL_SECS: u32 = 5;

/// The job's label, which also names its plist file: `com.<name>.agent`.
pub(crate) fn launchd_label(name: &str) -> String {
    format!("com.{name}.agent")
}

/// The plist for `spec`. As with the systemd unit, call it on a spec that
/// `plan_install` accepted; control characters, which XML 1.0 cannot
/// carry, become U+FFFD.
pub fn render_launchd_plist(spec: &ServiceSpec) -> String {
    let mut lines: Vec<String> = vec![
        r#"<?xml version="1.0" encoding="UTF-8"?>"#.into(),
        r#"<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">"#.into(),
        r#"<plist version="1.0">"#.into(),
        "<dict>".into(),
    ];
    let mut key = |k: &str, value: &[String]| {
        lines.push(format!("\t<key>{k}</key>"));
        lines.extend(value.iter().map(|v| format!("\t{v}")));
    };

    key("Label", &[string(&launchd_label(&spec.name))]);

    let mut arguments = vec!["<array>".to_string()];
    arguments.extend(
        std::iter::once(spec.program.as_os_str())
            .chain(spec.args.iter().map(|a| a.as_os_str()))
            .map(|a| format!("\t{}", string(&a.to_string_lossy()))),
    );
    arguments.push("</array>".into());
    key("ProgramArguments", &arguments);

    key("RunAtLoad", &["<true/>".into()]);
    // Restarted after a crash or a failing exit; a drained stop exits 0
    // and stays stopped.
    key(
        "KeepAlive",
        &[
            "<dict>".into(),
            "\t<key>SuccessfulExit</key>".into(),
            "\t<false/>".into(),
            "</dict>".into(),
        ],
    );
    key(
        "ThrottleInterval",
        &[format!("<integer>{THROTTLE_INTERVAL_SECS}</integer>")],
    );
    // SIGTERM, then SIGKILL after this long.
    key(
        "ExitTimeOut",
        &[format!(
            "<integer>{}</integer>",
            whole_seconds(spec.stop_timeout)
        )],
    );
    if spec.level == Level::System {
        key("UserName", &[string(spec.unix_account())]);
    }
    // Loading the plist at install does not start the job; service-manager's
    // start removes this key. Like the systemd unit: enabled at install,
    // started by `tasuki service start`.
    key("Disabled", &["<true/>".into()]);

    lines.push("</dict>".into());
    lines.push("</plist>".into());
    let mut plist = lines.join("\n");
    plist.push('\n');
    plist
}

fn string(text: &str) -> String {
    format!("<string>{}</string>", xml_text(text))
}

/// Text content: the markup characters as entities, and what XML 1.0 does
/// not allow at all replaced.
pub(crate) fn xml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::example_spec;

    fn parse(plist: &str) -> plist::Dictionary {
        plist::from_bytes::<plist::Value>(plist.as_bytes())
            .expect("a well-formed plist")
            .into_dictionary()
            .expect("a dictionary at the top")
    }

    fn program_arguments(dict: &plist::Dictionary) -> Vec<&str> {
        dict.get("ProgramArguments")
            .and_then(|v| v.as_array())
            .expect("ProgramArguments")
            .iter()
            .filter_map(|v| v.as_string())
            .collect()
    }

    #[test]
    fn a_system_job_restarts_after_a_crash_and_runs_as_the_service_user() {
        let plist = render_launchd_plist(&example_spec(Level::System));
        let dict = parse(&plist);
        assert_eq!(
            dict.get("Label").and_then(|v| v.as_string()),
            Some("com.tasuki.agent")
        );
        assert_eq!(
            program_arguments(&dict),
            [
                "/usr/bin/tasuki",
                "agent",
                "--config",
                "/etc/tasuki/agent.toml"
            ]
        );
        assert_eq!(
            dict.get("RunAtLoad").and_then(|v| v.as_boolean()),
            Some(true)
        );
        let keep_alive = dict
            .get("KeepAlive")
            .and_then(|v| v.as_dictionary())
            .expect("KeepAlive");
        assert_eq!(
            keep_alive
                .get("SuccessfulExit")
                .and_then(|v| v.as_boolean()),
            Some(false)
        );
        assert_eq!(
            dict.get("ExitTimeOut")
                .and_then(|v| v.as_unsigned_integer()),
            Some(630)
        );
        assert_eq!(
            dict.get("ThrottleInterval")
                .and_then(|v| v.as_unsigned_integer()),
            Some(5)
        );
        assert_eq!(
            dict.get("UserName").and_then(|v| v.as_string()),
            Some("tasuki")
        );
        assert!(!plist.contains("EnvironmentVariables"));
    }

    #[test]
    fn a_user_job_runs_as_the_user_who_installed_it() {
        let mut spec = example_spec(Level::User);
        spec.service_user = Some("ignored".into());
        assert!(!parse(&render_launchd_plist(&spec)).contains_key("UserName"));
    }

    #[test]
    fn arguments_are_xml_escaped_and_survive_a_round_trip() {
        let mut spec = example_spec(Level::System);
        spec.program = "/Applications/R&D <tools>/tasuki".into();
        spec.args = vec![
            "--config".into(),
            r#"/Users/o'neil/"quoted" & <tagged>.toml"#.into(),
            "</string><string>injected".into(),
            "".into(),
        ];
        let plist = render_launchd_plist(&spec);
        assert!(
            plist.contains("<string>/Applications/R&amp;D &lt;tools&gt;/tasuki</string>"),
            "{plist}"
        );
        assert!(
            plist.contains(
                "<string>/Users/o&apos;neil/&quot;quoted&quot; &amp; &lt;tagged&gt;.toml</string>"
            ),
            "{plist}"
        );
        let dict = parse(&plist);
        assert_eq!(
            program_arguments(&dict),
            [
                "/Applications/R&D <tools>/tasuki",
                "--config",
                r#"/Users/o'neil/"quoted" & <tagged>.toml"#,
                "</string><string>injected",
                "",
            ]
        );
    }

    #[test]
    fn control_characters_cannot_break_the_xml() {
        assert_eq!(xml_text("a\u{1}b\u{7f}"), "a\u{fffd}b\u{fffd}");
        let mut spec = example_spec(Level::User);
        spec.args = vec!["bell\u{7}".into()];
        parse(&render_launchd_plist(&spec));
    }
}
