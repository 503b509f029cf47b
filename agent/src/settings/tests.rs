use std::collections::HashMap;

use super::*;

const GOOD: &str = r#"# a robot
[control_plane]
url = "http://127.0.0.1:8080"
name = "robot-1"
max_concurrency = 2

[paths]
work_dir = "work"
"#;

struct Case {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    flags: Vec<String>,
}

impl Case {
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("agent.toml"), config).expect("write config");
        Case {
            dir,
            env: HashMap::new(),
            flags: Vec::new(),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Case {
        self.env.insert(k.into(), v.into());
        self
    }

    fn flag(mut self, f: &str) -> Case {
        self.flags.push(f.into());
        self
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn load(&self) -> Result<Effective, SettingsError> {
        let env = |name: &str| self.env.get(name).cloned();
        let path = self.path();
        Effective::load(&Sources {
            config_path: &path,
            env: &env,
            flags: &self.flags,
        })
    }

    fn problems(&self) -> Vec<String> {
        match self.load() {
            Ok(_) => panic!("expected the settings to be refused"),
            Err(SettingsError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let case = Case::new(GOOD)
        .env("TASUKI_CONTROL_PLANE_MAX_CONCURRENCY", "3")
        .env("TASUKI_CONTROL_PLANE_NAME", "from-env")
        .flag("control_plane.max_concurrency=4");
    let eff = case.load().expect("valid");
    let s = eff.settings();
    assert_eq!(s.control_plane.max_concurrency, 4);
    assert_eq!(s.control_plane.name, "from-env");
    assert_eq!(s.control_plane.url, "http://127.0.0.1:8080");
    assert_eq!(
        eff.get("control_plane.max_concurrency")
            .map(|(_, o)| o.clone()),
        Some(Origin::Flag)
    );
    assert_eq!(
        eff.get("control_plane.name").map(|(_, o)| o.clone()),
        Some(Origin::Env("TASUKI_CONTROL_PLANE_NAME".into()))
    );
    assert_eq!(
        eff.get("control_plane.url").map(|(_, o)| o.clone()),
        Some(Origin::File {
            path: case.path(),
            line: 3
        })
    );
    assert_eq!(
        eff.get("behaviour.drain_grace").map(|(_, o)| o.clone()),
        Some(Origin::Default)
    );
}

#[test]
fn defaults_fill_the_rest_and_follow_each_other() {
    let case = Case::new(GOOD);
    let eff = case.load().expect("valid");
    let s = eff.settings();
    let allowed = eff
        .allowed_actions(&tasuki_actions::Registry::builtin())
        .expect("valid patterns");
    assert!(allowed.allows("shell.run") && allowed.allows("browser.open"));
    // Relative paths in the file are relative to the file.
    assert_eq!(s.work_dir, case.dir.path().join("work"));
    assert_eq!(
        s.artifacts_dir,
        case.dir.path().join("work").join("artifacts")
    );
    assert_eq!(s.credentials_file, case.dir.path().join("credentials.toml"));
    assert_eq!(s.drain_grace, Duration::from_secs(600));
    assert_eq!(s.cancel_grace, Duration::from_secs(5));
    assert_eq!(s.log_dir, None);
    assert_eq!(s.log_retention, 14);
    assert!(!s.log_json);
    assert!(s.headless);
    assert_eq!(
        s.unexpected_dialog,
        tasuki_actions::runtime::context::DialogPolicy::Fail
    );
    assert_eq!(s.window_size, (1280, 800));
    assert_eq!(s.metrics_listen, None);
}

#[test]
fn every_kind_reads_from_the_environment_and_flags() {
    let case = Case::new(GOOD)
        .env("TASUKI_BEHAVIOUR_ALLOWED_ACTIONS", "browser.*, http.*")
        .env("TASUKI_BROWSER_HEADLESS", "false")
        .env("TASUKI_BEHAVIOUR_DRAIN_GRACE", "90s")
        .flag("metrics.listen=127.0.0.1:9464")
        .flag("browser.window_size=800x600")
        .flag("paths.log_format=json")
        .flag("browser.unexpected_dialog=dismiss")
        .flag("control_plane.labels=a,b");
    let eff = case.load().expect("valid");
    let s = eff.settings();
    let allowed = eff
        .allowed_actions(&tasuki_actions::Registry::builtin())
        .expect("valid patterns");
    assert!(allowed.allows("http.request") && !allowed.allows("shell.run"));
    assert!(!s.headless);
    assert_eq!(s.drain_grace, Duration::from_secs(90));
    assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(s.window_size, (800, 600));
    assert!(s.log_json);
    assert_eq!(
        s.unexpected_dialog,
        tasuki_actions::runtime::context::DialogPolicy::Dismiss
    );
    assert_eq!(s.control_plane.labels, vec!["a", "b"]);
    // A bare port listens on loopback.
    let case = Case::new(&format!("{GOOD}\n[metrics]\nlisten = \"9464\"\n"));
    let s = case.load().expect("valid").settings();
    assert_eq!(s.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn an_unknown_key_names_its_line_and_the_closest_key() {
    let case = Case::new(&format!("{GOOD}wrok_dir = \"x\"\n"));
    let p = case.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].ends_with(
            "agent.toml:9: `paths.wrok_dir`: unknown key; did you mean `paths.work_dir`?"
        ),
        "{p:?}"
    );
}

#[test]
fn an_unknown_table_and_a_key_outside_any_table_are_refused_with_lines() {
    let case = Case::new(&format!("stray = 1\n{GOOD}[pahts]\nx = 1\n"));
    let p = case.problems().join("\n");
    assert!(
        p.contains("agent.toml:1: `stray`: settings live in tables"),
        "{p}"
    );
    assert!(
        p.contains("agent.toml:10: `pahts`: unknown table [pahts]; did you mean [paths]?"),
        "{p}"
    );
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let case = Case::new(
        "[control_plane]\nurl = \"http://h\"\nname = \"r\"\nmax_concurrency = \"two\"\nlabels = \"a\"\n[browser]\nheadless = \"yes\"\n",
    );
    let p = case.problems().join("\n");
    assert!(
        p.contains(
            ":4: `control_plane.max_concurrency`: must be a whole number, not a string `\"two\"`"
        ),
        "{p}"
    );
    assert!(
        p.contains(":5: `control_plane.labels`: must be a list of strings"),
        "{p}"
    );
    assert!(
        p.contains(":7: `browser.headless`: must be true or false"),
        "{p}"
    );
}

#[test]
fn bad_values_are_refused_with_what_would_be_right() {
    let case = Case::new(
        "[control_plane]\nurl = \"ftp://h\"\nname = \"bad name!\"\nmax_concurrency = 0\n\
         [behaviour]\ndrain_grace = \"10\"\n[metrics]\nlisten = \"localhost\"\n\
         [browser]\nwindow_size = \"big\"\nunexpected_dialog = \"ignore\"\n\
         [paths]\nlog_format = \"xml\"\n",
    );
    let p = case.problems().join("\n");
    for want in [
        ":2: `control_plane.url`: `ftp://h` is not an http:// or https:// URL",
        ":3: `control_plane.name`:",
        ":4: `control_plane.max_concurrency`: must be from 1 to 256, not 0",
        ":6: `behaviour.drain_grace`:",
        ":8: `metrics.listen`: must be a port (on loopback) or an IP address and port",
        ":10: `browser.window_size`: must be WIDTHxHEIGHT",
        ":11: `browser.unexpected_dialog`: must be one of `fail`, `accept`, `dismiss`, not `ignore`",
        ":13: `paths.log_format`: must be one of `plain`, `json`, not `xml`",
    ] {
        assert!(p.contains(want), "missing {want:?} in:\n{p}");
    }
}

#[test]
fn a_syntax_error_names_its_line() {
    let case = Case::new("[control_plane]\nurl = \"http://h\"\nname = \n");
    let p = case.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("agent.toml:3:"), "{p:?}");
}

#[test]
fn bad_environment_values_and_flags_are_named() {
    let case = Case::new(GOOD)
        .env("TASUKI_CONTROL_PLANE_MAX_CONCURRENCY", "many")
        .flag("control_plane.nmae=x")
        .flag("no-equals-sign");
    let p = case.problems().join("\n");
    assert!(p.contains("env TASUKI_CONTROL_PLANE_MAX_CONCURRENCY: `control_plane.max_concurrency`: must be a whole number, not `many`"), "{p}");
    assert!(
        p.contains(
            "flag --set: `control_plane.nmae`: unknown key; did you mean `control_plane.name`?"
        ),
        "{p}"
    );
    assert!(
        p.contains("flag --set: `no-equals-sign` is not `table.key=value`"),
        "{p}"
    );
}

#[test]
fn a_missing_required_setting_says_how_to_set_it() {
    let case = Case::new("[control_plane]\nurl = \"http://h\"\n");
    let p = case.problems().join("\n");
    assert!(p.contains("`control_plane.name`: not set; set it in the file, in TASUKI_CONTROL_PLANE_NAME or with --set control_plane.name=..."), "{p}");
    // …and the environment can supply it.
    let ok =
        Case::new("[control_plane]\nurl = \"http://h\"\n").env("TASUKI_CONTROL_PLANE_NAME", "r");
    assert_eq!(ok.load().expect("valid").settings().control_plane.name, "r");
}

#[test]
fn a_missing_file_says_to_register_first() {
    let case = Case::new(GOOD);
    std::fs::remove_file(case.path()).unwrap();
    let e = case.load().unwrap_err().to_string();
    assert!(
        e.contains("cannot read the config file") && e.contains("tasuki register"),
        "{e}"
    );
}

#[test]
fn show_masks_credentials_and_says_where_each_value_came_from() {
    let case = Case::new(GOOD)
        .flag("browser.remote_webdriver=https://user:hunter2@grid.example:4444/wd/hub")
        .env("TASUKI_PATHS_LOG_RETENTION", "3");
    let shown = case.load().expect("valid").show();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("browser.remote_webdriver = \"https://***@grid.example:4444/wd/hub\""),
        "{shown}"
    );
    assert!(shown.contains("# flag --set"), "{shown}");
    assert!(
        shown.contains("# env TASUKI_PATHS_LOG_RETENTION"),
        "{shown}"
    );
    assert!(shown.contains("agent.toml:4"), "{shown}");
    assert!(shown.contains("metrics.listen = (unset)"), "{shown}");
}

#[test]
fn show_masks_the_password_in_the_hub_url() {
    let case = Case::new(&GOOD.replace(
        "http://127.0.0.1:8080",
        "https://robot:hunter2@hub.example:8443/base",
    ));
    let shown = case.load().expect("valid").show();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("robot:"), "{shown}");
    assert!(
        shown.contains("control_plane.url = \"https://***@hub.example:8443/base\""),
        "{shown}"
    );
}

/// A self-signed CA certificate (EC P-256, valid until 2126), for
/// `control_plane.ca_file`.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBrDCCAVGgAwIBAgIUfR/PK8VaPdiXWcEPRsmjUPe+HMkwCgYIKoZIzj0EAwIw\nIjEgMB4GA1UEAwwXVGFzdWtpIHNldHRpbmdzIHRlc3QgQ0EwIBcNMjYxMjA0MTQy\nMzI2WhgPMjEyNjExMTAxNDIzMjZaMCIxIDAeBgNVBAMMF1Rhc3VraSBzZXR0aW5n\ncyB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAES4JWkmsKrNERkuab\nCEORTFq/BsGAb7cW1En0em//AE08+yNH0f8LieYlTS0pRhXhoEFhstGpNMrbdsd/\nIyoXqqNjMGEwHQYDVR0OBBYEFIfrR1TvnEUJDnXaKpe1NDy4q8AWMB8GA1UdIwQY\nMBaAFIfrR1TvnEUJDnXaKpe1NDy4q8AWMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0P\nAQH/BAQDAgEGMAoGCCqGSM49BAMCA0kAMEYCIQDas1xPyWnq0C0u07q0YAbfl7qc\ngzUCUFEzr8GKW4zSfgIhAI09FTfDWEwhZUcWIuMajKc9uuTP6569xjqJ0mUMPSAB\n-----END CERTIFICATE-----\n";

#[test]
fn a_ca_file_is_read_and_a_bad_one_is_refused_where_it_was_set() {
    let case = Case::new(GOOD);
    std::fs::write(case.dir.path().join("ca.pem"), CA_PEM).expect("write the CA");
    std::fs::write(case.dir.path().join("not-a-ca.pem"), "hello\n").expect("write");
    std::fs::write(
        case.dir.path().join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let with = |file: &str| {
        let config = GOOD.replace(
            "name = \"robot-1\"",
            &format!("name = \"robot-1\"\nca_file = \"{file}\""),
        );
        std::fs::write(case.path(), config).expect("write config");
    };

    // Relative to the config file, like every path in it.
    with("ca.pem");
    let settings = case.load().expect("a good CA file").settings();
    assert_eq!(settings.ca_file, Some(case.dir.path().join("ca.pem")));
    // `ca_file` is on line 5, after `name`.
    for (file, says) in [
        ("not-a-ca.pem", "holds no certificate"),
        ("broken.pem", "broken.pem"),
        ("missing.pem", "cannot read"),
    ] {
        with(file);
        let problems = case.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.contains("agent.toml:5: `control_plane.ca_file`") && p.contains(file),
            "{p}"
        );
        assert!(p.contains(says), "{p}");
    }
}

#[test]
fn an_allow_list_pattern_that_matches_nothing_names_where_it_was_set() {
    let case = Case::new(&format!(
        "{GOOD}\n[behaviour]\nallowed_actions = [\"brwoser.*\"]\n"
    ));
    let eff = case.load().expect("each value is well-formed");
    let e = eff
        .allowed_actions(&tasuki_actions::Registry::builtin())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agent.toml:11: `behaviour.allowed_actions`: `brwoser.*` matches no action"),
        "{e}"
    );
}

#[test]
fn fallback_hub_urls_come_after_the_hub_url_from_the_file_or_the_environment() {
    let case = Case::new(&GOOD.replace(
        "name = \"robot-1\"",
        "name = \"robot-1\"\nfallback_urls = [\"http://10.0.0.2:8080/\", \"https://hub-c.example\"]",
    ));
    let s = case.load().expect("valid").settings();
    assert_eq!(
        s.control_plane.hub_urls(),
        vec![
            "http://127.0.0.1:8080",
            "http://10.0.0.2:8080",
            "https://hub-c.example"
        ]
    );
    // Comma-separated in a variable, as every list; unset is none.
    let case = Case::new(GOOD).env(
        "TASUKI_CONTROL_PLANE_FALLBACK_URLS",
        "http://10.0.0.2:8080, http://10.0.0.3:8080",
    );
    let s = case.load().expect("valid").settings();
    assert_eq!(
        s.control_plane.fallback_urls,
        vec!["http://10.0.0.2:8080", "http://10.0.0.3:8080"]
    );
    let s = Case::new(GOOD).load().expect("valid").settings();
    assert_eq!(s.control_plane.hub_urls(), vec!["http://127.0.0.1:8080"]);
}

#[test]
fn a_bad_fallback_url_is_refused_naming_its_item_and_line() {
    let case = Case::new(&GOOD.replace(
        "name = \"robot-1\"",
        "name = \"robot-1\"\nfallback_urls = [\"http://h2\", \"ftp://robot:hunter2@h3\"]",
    ));
    let p = case.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].ends_with(
            "agent.toml:5: `control_plane.fallback_urls`: item 1: `ftp://***@h3` is not an \
             http:// or https:// URL"
        ),
        "{p:?}"
    );
    let p = Case::new(GOOD)
        .flag("control_plane.fallback_urls=http://h2,h3")
        .problems()
        .join("\n");
    assert!(
        p.contains(
            "flag --set: `control_plane.fallback_urls`: item 1: `h3` is not an http:// or \
             https:// URL"
        ),
        "{p}"
    );
    let p = Case::new(&GOOD.replace(
        "name = \"robot-1\"",
        "name = \"robot-1\"\nfallback_urls = \"http://h2\"",
    ))
    .problems()
    .join("\n");
    assert!(
        p.contains(":5: `control_plane.fallback_urls`: must be a list of strings"),
        "{p}"
    );
}

#[test]
fn show_masks_the_password_in_every_fallback_hub_url() {
    let case = Case::new(GOOD).flag(
        "control_plane.fallback_urls=https://robot:hunter2@hub-b.example,https://hub-c.example",
    );
    let shown = case.load().expect("valid").show();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains(
            "control_plane.fallback_urls = [\"https://***@hub-b.example\", \"https://hub-c.example\"]"
        ),
        "{shown}"
    );
}
