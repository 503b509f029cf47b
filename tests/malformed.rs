//! Malformed input: every file in `tests/corpus/` is a broken workflow, and
//! `tasuki validate` must refuse each one with exit code 2, point at the
//! right field (or, for a document that does not parse, at a line and
//! column), and never panic. Inputs too big to commit (huge, deep, many
//! steps, not UTF-8) are generated here, and a table of bad params checks
//! `tasuki run`.
//!
//! A YAML corpus file says what it expects in its first line,
//! `# expect: steps[0].with.url`; a JSON file, which cannot hold comments,
//! in a sidecar `NAME.json.expect`. `<document>` means a problem with the
//! document as a whole, reported with a line and column.

mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Scratch, repo_root, tasuki};

const DOCUMENT: &str = "<document>";
const MIN_CORPUS: usize = 45;
const MIN_JSON: usize = 5;
/// No single validation may take longer; a hang is a bug too.
const TIME_LIMIT: Duration = Duration::from_secs(60);

// ---- running the binary ----------------------------------------------------

struct Outcome {
    /// `None` when the process was killed by a signal (a crash) or timed out.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    timed_out: bool,
}

/// Runs `tasuki ARGS...`, killing it after `TIME_LIMIT`.
fn run_tasuki(args: &[&OsStr], cwd: &Path) -> Outcome {
    let started = Instant::now();
    let mut child = tasuki()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tasuki");
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tasuki") {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for the killed tasuki");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_reader.join().expect("read stdout");
    let stderr = err_reader.join().expect("read stderr");
    Outcome {
        code: if timed_out { None } else { status.code() },
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
        timed_out,
    }
}

fn validate(file: &Path) -> Outcome {
    run_tasuki(&["validate".as_ref(), file.as_os_str()], &repo_root())
}

fn run_dry(cwd: &Path, file: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<&OsStr> = vec!["run".as_ref(), file.as_os_str(), "--dry-run".as_ref()];
    args.extend(extra.iter().map(OsStr::new));
    run_tasuki(&args, cwd)
}

// ---- reading problem lines -------------------------------------------------

/// One `FILE[:LINE:COL]: REST` line.
struct ProblemLine<'a> {
    location: Option<(u64, u64)>,
    rest: &'a str,
}

fn parse_problem_line<'a>(line: &'a str, file: &str) -> Option<ProblemLine<'a>> {
    let after = line.strip_prefix(file)?;
    if let Some(rest) = after.strip_prefix(": ") {
        return Some(ProblemLine {
            location: None,
            rest,
        });
    }
    let after = after.strip_prefix(':')?;
    let (line_no, after) = after.split_once(':')?;
    let (col_no, rest) = after.split_once(": ")?;
    Some(ProblemLine {
        location: Some((line_no.parse().ok()?, col_no.parse().ok()?)),
        rest,
    })
}

/// `N problem(s) found`, the summary that ends the report.
fn is_summary(line: &str) -> bool {
    let mut words = line.split(' ');
    words.next().is_some_and(|n| n.parse::<usize>().is_ok())
        && matches!(words.next(), Some("problem" | "problems"))
        && words.next() == Some("found")
        && words.next().is_none()
}

/// Everything wrong with one rejection of `file`; empty when it is right.
/// `expect` is a field path, or `DOCUMENT` for a problem with the document
/// or file as a whole. With `require_location`, the expected problem must
/// carry a line and column.
fn check_rejection(
    out: &Outcome,
    file: &Path,
    expect: &str,
    require_location: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    let shown = file.display().to_string();
    if out.timed_out {
        failures.push(format!("did not finish within {TIME_LIMIT:?}"));
        return failures;
    }
    if out.code != Some(2) {
        failures.push(format!("exit code {:?}, expected 2", out.code));
    }
    for (stream, text) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        if text.contains("panicked") || text.contains("RUST_BACKTRACE") {
            failures.push(format!("{stream} shows a panic"));
        }
    }
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (problems, summary) = match lines.split_last() {
        Some((last, rest)) if is_summary(last) => (rest, Some(*last)),
        _ => (&lines[..], None),
    };
    match summary {
        None => failures.push("stderr does not end with `N problem(s) found`".into()),
        Some(s) => {
            let n: usize = s
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if n != problems.len() {
                failures.push(format!(
                    "the summary says {n} problem(s) but stderr has {} problem line(s)",
                    problems.len()
                ));
            }
        }
    }
    if problems.is_empty() {
        failures.push("no problem was reported".into());
    }
    let mut parsed = Vec::new();
    for line in problems {
        match parse_problem_line(line, &shown) {
            Some(p) => parsed.push(p),
            None => failures.push(format!(
                "problem line does not start with `{shown}[:LINE:COL]: `: {line}"
            )),
        }
    }
    let located = |p: &&ProblemLine| p.location.is_some() || !require_location;
    let found = if expect == DOCUMENT {
        parsed.iter().any(|p| located(&p))
    } else {
        let prefix = format!("{expect}: ");
        parsed
            .iter()
            .any(|p| p.rest.starts_with(&prefix) && located(&p))
    };
    if !found && !problems.is_empty() {
        failures.push(if expect == DOCUMENT {
            "no problem names a line and column".to_string()
        } else if require_location {
            format!("no problem names `{expect}` with a line and column")
        } else {
            format!("no problem names `{expect}`")
        });
    }
    failures
}

fn report(what: &str, failures: &[(String, Vec<String>, String)]) -> String {
    let mut text = format!("{} {what} failed:\n", failures.len());
    for (name, why, stderr) in failures {
        text.push_str(&format!("\n== {name}\n"));
        for w in why {
            text.push_str(&format!("   - {w}\n"));
        }
        text.push_str("   stderr:\n");
        for line in stderr.lines().take(12) {
            text.push_str(&format!("     | {line}\n"));
        }
    }
    text
}

// ---- the corpus ------------------------------------------------------------

struct Case {
    file: PathBuf,
    name: String,
    /// The expected field path or `DOCUMENT`, or why it could not be read.
    expect: Result<String, String>,
}

fn corpus_dir() -> PathBuf {
    repo_root().join("tests").join("corpus")
}

fn corpus() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read tests/corpus")
        .map(|e| e.expect("read a tests/corpus entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let name = file
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let expect = expectation(&file);
            Case { file, name, expect }
        })
        .collect()
}

fn expectation(file: &Path) -> Result<String, String> {
    let text = if file.extension().is_some_and(|e| e == "json") {
        let sidecar = PathBuf::from(format!("{}.expect", file.display()));
        std::fs::read_to_string(&sidecar)
            .map_err(|e| format!("cannot read {}: {e}", sidecar.display()))?
    } else {
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
        let first = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        first
            .strip_prefix("# expect:")
            .map(str::to_string)
            .ok_or("the first line is not `# expect: <field path>`")?
    };
    let expect = text.trim().to_string();
    if expect.is_empty() {
        Err("the expectation is empty".into())
    } else {
        Ok(expect)
    }
}

#[test]
fn the_corpus_is_large_enough() {
    let cases = corpus();
    let json = cases.iter().filter(|c| c.name.ends_with(".json")).count();
    let document = cases
        .iter()
        .filter(|c| c.expect.as_deref() == Ok(DOCUMENT))
        .count();
    assert!(
        cases.len() >= MIN_CORPUS,
        "tests/corpus has {} inputs; at least {MIN_CORPUS} expected",
        cases.len()
    );
    assert!(
        json >= MIN_JSON,
        "tests/corpus has {json} JSON inputs; at least {MIN_JSON} expected"
    );
    assert!(
        document >= 5,
        "tests/corpus has {document} document-level (syntax) inputs; at least 5 expected"
    );
    // Every sidecar belongs to a JSON file.
    for entry in std::fs::read_dir(corpus_dir()).expect("read tests/corpus") {
        let path = entry.expect("an entry").path();
        let name = path.display().to_string();
        if let Some(json) = name.strip_suffix(".expect") {
            assert!(
                Path::new(json).is_file(),
                "{name} has no JSON file next to it"
            );
        }
    }
}

#[test]
fn every_corpus_file_is_rejected_with_its_field_path() {
    let cases = corpus();
    assert!(!cases.is_empty(), "tests/corpus is empty");
    let mut failures = Vec::new();
    for case in &cases {
        let expect = match &case.expect {
            Ok(e) => e,
            Err(why) => {
                failures.push((case.name.clone(), vec![why.clone()], String::new()));
                continue;
            }
        };
        let out = validate(&case.file);
        let why = check_rejection(&out, &case.file, expect, true);
        if !why.is_empty() {
            failures.push((format!("{} (expects {expect})", case.name), why, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report(&format!("of {} corpus files", cases.len()), &failures)
    );
}

/// `tasuki run` loads workflows through the same checks, and must refuse
/// the same inputs the same way, before running anything.
#[test]
fn run_refuses_every_corpus_file_too() {
    let scratch = Scratch::new();
    let mut failures = Vec::new();
    for case in corpus() {
        let Ok(expect) = &case.expect else { continue };
        let out = run_dry(scratch.path(), &case.file, &[]);
        let why = check_rejection(&out, &case.file, expect, true);
        if !why.is_empty() {
            failures.push((format!("{} (expects {expect})", case.name), why, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report("`tasuki run --dry-run` checks", &failures)
    );
}

// ---- generated inputs ------------------------------------------------------

/// Checks one generated input and returns its stderr for further checks.
fn rejected(file: &Path, expect: &str, require_location: bool) -> String {
    let out = validate(file);
    let why = check_rejection(&out, file, expect, require_location);
    assert!(
        why.is_empty(),
        "{}",
        report(
            "generated input",
            &[(file.display().to_string(), why, out.stderr.clone())]
        )
    );
    out.stderr
}

#[test]
fn a_huge_document_is_refused_before_parsing() {
    let scratch = Scratch::new();
    let big = "x".repeat(5 * 1024 * 1024);
    let yaml = scratch.write(
        "huge.yaml",
        &format!("version: 1\nname: huge\nsteps:\n  - id: hello\n    action: log\n    with: {{message: \"{big}\"}}\n"),
    );
    let json = scratch.write(
        "huge.json",
        &format!(r#"{{"version": 1, "name": "huge", "steps": [{{"id": "hello", "action": "log", "with": {{"message": "{big}"}}}}]}}"#),
    );
    for file in [yaml, json] {
        assert!(std::fs::metadata(&file).expect("stat").len() > 4 * 1024 * 1024);
        let stderr = rejected(&file, DOCUMENT, false);
        assert!(
            stderr.contains("the limit is 4194304 bytes"),
            "{}: the message should give the limit:\n{stderr}",
            file.display()
        );
        assert!(
            stderr.len() < 4096,
            "{}: the report should not echo the document ({} bytes of stderr)",
            file.display(),
            stderr.len()
        );
    }
}

#[test]
fn deeply_nested_documents_are_refused_without_crashing() {
    let scratch = Scratch::new();
    let flow = |n: usize| {
        format!(
            "version: 1\nname: deep\nsteps: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let block = |n: usize| format!("version: 1\nname: deep\nsteps:\n{}x\n", "- ".repeat(n));
    let maps = |n: usize| {
        format!(
            "version: 1\nname: deep\nsteps: {}1{}\n",
            "{a: ".repeat(n),
            "}".repeat(n)
        )
    };
    let json = |n: usize| {
        format!(
            r#"{{"version": 1, "name": "deep", "steps": {}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let inputs = [
        ("lists-200.yaml", flow(200)),
        ("block-lists-200.yaml", block(200)),
        ("mappings-200.yaml", maps(200)),
        ("lists-200.json", json(200)),
        ("lists-100.json", json(100)),
        // Far past any limit: this must not overflow the stack.
        ("lists-100000.yaml", flow(100_000)),
        ("block-lists-100000.yaml", block(100_000)),
        ("lists-100000.json", json(100_000)),
    ];
    let mut failures = Vec::new();
    for (name, text) in inputs {
        let file = scratch.write(name, &text);
        let out = validate(&file);
        let mut why = check_rejection(&out, &file, DOCUMENT, true);
        if !out.stderr.contains("nested deeper than 64 levels") {
            why.push(
                "the message does not say the document is nested deeper than 64 levels".into(),
            );
        }
        if !why.is_empty() {
            failures.push((name.to_string(), why, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report("deeply nested inputs", &failures)
    );
}

#[test]
fn steps_nested_deeper_than_the_limit_are_refused() {
    // 2 YAML levels per step level, so 20 step levels stay within the
    // document's depth limit and meet the step nesting limit (16).
    let scratch = Scratch::new();
    let mut text = String::from("version: 1\nname: nested\nsteps:\n");
    let mut indent = String::from("  ");
    for level in 0..20 {
        text.push_str(&format!(
            "{indent}- id: level{level}\n{indent}  action: try\n{indent}  steps:\n"
        ));
        indent.push_str("    ");
    }
    text.push_str(&format!(
        "{indent}- id: leaf\n{indent}  action: log\n{indent}  with: {{message: deep}}\n"
    ));
    let file = scratch.write("nested.yaml", &text);
    let stderr = rejected(
        &file,
        &format!("steps[0]{}.steps", ".steps[0]".repeat(16)),
        true,
    );
    assert!(stderr.contains("nested deeper than 16 levels"), "{stderr}");
}

#[test]
fn more_than_ten_thousand_steps_are_refused() {
    let scratch = Scratch::new();
    let step = |i: usize| format!("  - {{id: s{i}, action: log, with: {{message: hi}}}}\n");
    let flat: String = (0..10_001).map(step).collect();
    let flat = scratch.write(
        "flat.yaml",
        &format!("version: 1\nname: many\nsteps:\n{flat}"),
    );
    // The limit counts every step: nested ones and those in on_error too.
    let mut split = String::from(
        "version: 1\nname: many\nsteps:\n  - id: loop\n    action: for_each\n    with: {items: [1]}\n    steps:\n",
    );
    for i in 0..6_000 {
        split.push_str(&format!(
            "      - {{id: s{i}, action: log, with: {{message: hi}}}}\n"
        ));
    }
    split.push_str("on_error:\n");
    for i in 6_000..10_500 {
        split.push_str(&step(i));
    }
    let split = scratch.write("split.yaml", &split);
    for file in [flat, split] {
        let out = validate(&file);
        let why = check_rejection(&out, &file, "steps", false);
        assert!(
            why.is_empty(),
            "{}",
            report(
                "many-step inputs",
                &[(file.display().to_string(), why, out.stderr.clone())]
            )
        );
        assert!(
            out.stderr.contains("the limit is 10000"),
            "{}: {}",
            file.display(),
            out.stderr
        );
        assert!(
            out.elapsed < Duration::from_secs(20),
            "{}: validation took {:?}",
            file.display(),
            out.elapsed
        );
        assert!(
            out.stderr.lines().count() < 20,
            "{}: one problem, not one per step:\n{}",
            file.display(),
            out.stderr
        );
    }
}

#[test]
fn a_file_that_is_not_utf8_is_refused() {
    let scratch = Scratch::new();
    let mut failures = Vec::new();
    let latin1 = b"version: 1\nname: caf\xe9\nsteps:\n  - id: hello\n    action: log\n    with: {message: hi}\n".to_vec();
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "{\"version\": 1}".encode_utf16() {
        utf16.extend(unit.to_le_bytes());
    }
    for (name, bytes) in [
        ("latin1.yaml", latin1),
        ("utf16.json", utf16),
        ("binary.yaml", vec![0x80, 0x00, 0xFF, 0xC3]),
    ] {
        let file = scratch.path().join(name);
        std::fs::write(&file, &bytes).expect("write a test file");
        let out = validate(&file);
        let mut why = check_rejection(&out, &file, DOCUMENT, false);
        if !out.stderr.contains("not UTF-8") {
            why.push("the message does not say the file is not UTF-8".into());
        }
        if !why.is_empty() {
            failures.push((name.to_string(), why, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report("non-UTF-8 inputs", &failures)
    );
}

#[test]
fn a_missing_file_is_invalid_input() {
    let scratch = Scratch::new();
    let file = scratch.path().join("absent.yaml");
    let out = validate(&file);
    let why = check_rejection(&out, &file, DOCUMENT, false);
    assert!(
        why.is_empty(),
        "{}",
        report(
            "missing file",
            &[("absent.yaml".into(), why, out.stderr.clone())]
        )
    );
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}

// ---- params ----------------------------------------------------------------

const PARAMS_WORKFLOW: &str = r#"version: 1
name: params
params:
  count: 3
  ratio: 0.5
  enabled: true
  tags: [a, b]
  user: alice
  target:
    description: required, no default
  token:
    secret: true
    default: s3cret
  mode: {choices: [fast, careful], default: fast}
  limit: {type: integer, default: 10}
steps:
  - id: hello
    action: log
    with:
      message: "${params.user} ${params.count} ${params.target}"
"#;

struct ParamCase {
    name: &'static str,
    args: &'static [&'static str],
    /// Extra files written next to the workflow: (file name, content).
    files: &'static [(&'static str, &'static str)],
    /// Text that must appear in stderr: the param path or the file.
    expect: &'static [&'static str],
}

const REQUIRED: &str = "--param=target=x";

const PARAM_CASES: &[ParamCase] = &[
    ParamCase {
        name: "flag without =",
        args: &["--param", "count", REQUIRED],
        files: &[],
        expect: &["--param count"],
    },
    ParamCase {
        name: "flag with an empty name",
        args: &["--param", "=3", REQUIRED],
        files: &[],
        expect: &["--param =3"],
    },
    ParamCase {
        name: "unknown flag name",
        args: &["--param", "cuont=3", REQUIRED],
        files: &[],
        expect: &["params.cuont: "],
    },
    ParamCase {
        name: "not a number",
        args: &["--param", "count=three", REQUIRED],
        files: &[],
        expect: &["params.count: "],
    },
    ParamCase {
        name: "a fraction for a declared integer",
        args: &["--param", "limit=2.5", REQUIRED],
        files: &[],
        expect: &["params.limit: ", "expected an integer"],
    },
    ParamCase {
        name: "not a number for a fraction",
        args: &["--param", "ratio=half", REQUIRED],
        files: &[],
        expect: &["params.ratio: "],
    },
    ParamCase {
        name: "yes for a boolean",
        args: &["--param", "enabled=yes", REQUIRED],
        files: &[],
        expect: &["params.enabled: "],
    },
    ParamCase {
        name: "1 for a boolean",
        args: &["--param", "enabled=1", REQUIRED],
        files: &[],
        expect: &["params.enabled: "],
    },
    ParamCase {
        name: "invalid JSON for a list",
        args: &["--param", "tags=[a", REQUIRED],
        files: &[],
        expect: &["params.tags: "],
    },
    ParamCase {
        name: "an object for a list",
        args: &["--param", r#"tags={"a": 1}"#, REQUIRED],
        files: &[],
        expect: &["params.tags: "],
    },
    ParamCase {
        name: "a params file value of the wrong type",
        args: &["--params-file", "params.json", REQUIRED],
        files: &[("params.json", r#"{"count": "three"}"#)],
        expect: &["params.count: ", "params file"],
    },
    ParamCase {
        name: "a value not among the choices",
        args: &["--param", "mode=reckless", REQUIRED],
        files: &[],
        expect: &["params.mode: ", "not one of the choices"],
    },
    ParamCase {
        name: "a params file string for a declared integer",
        args: &["--params-file", "params.json", REQUIRED],
        files: &[("params.json", r#"{"limit": "ten"}"#)],
        expect: &["params.limit: ", "expected an integer"],
    },
    ParamCase {
        name: "required param missing",
        args: &[],
        files: &[],
        expect: &["params.target: "],
    },
    ParamCase {
        name: "every flag problem at once",
        args: &["--param", "count=x", "--param", "enabled=maybe"],
        files: &[],
        expect: &["params.count: ", "params.enabled: ", "params.target: "],
    },
    ParamCase {
        name: "params file is a list",
        args: &["--params-file", "list.yaml", REQUIRED],
        files: &[("list.yaml", "- count\n- 3\n")],
        expect: &["list.yaml: "],
    },
    ParamCase {
        name: "params file is a scalar",
        args: &["--params-file", "scalar.json", REQUIRED],
        files: &[("scalar.json", "42\n")],
        expect: &["scalar.json: "],
    },
    ParamCase {
        name: "params file with a YAML syntax error",
        args: &["--params-file", "broken.yaml", REQUIRED],
        files: &[("broken.yaml", "count: 3\nuser: [alice\n")],
        expect: &["broken.yaml:2:"],
    },
    ParamCase {
        name: "params file with a JSON syntax error",
        args: &["--params-file", "broken.json", REQUIRED],
        files: &[("broken.json", "{\"count\": 3,}\n")],
        expect: &["broken.json:1:"],
    },
    ParamCase {
        name: "params file with duplicate keys",
        args: &["--params-file", "dup.yaml", REQUIRED],
        files: &[("dup.yaml", "count: 3\ncount: 4\n")],
        expect: &["dup.yaml:2:"],
    },
    ParamCase {
        name: "params file with an unknown key",
        args: &["--params-file", "unknown.yaml", REQUIRED],
        files: &[("unknown.yaml", "count: 3\ncuont: 4\n")],
        expect: &["params.cuont: "],
    },
    ParamCase {
        name: "params file missing",
        args: &["--params-file", "absent.yaml", REQUIRED],
        files: &[],
        expect: &["absent.yaml: "],
    },
    ParamCase {
        name: "secrets file with an unknown key",
        args: &["--secrets-file", "secrets.yaml", REQUIRED],
        files: &[("secrets.yaml", "tokn: abc\n")],
        expect: &["params.tokn: "],
    },
    ParamCase {
        name: "secrets file is not a mapping",
        args: &["--secrets-file", "secrets-list.yaml", REQUIRED],
        files: &[("secrets-list.yaml", "- hunter2\n")],
        expect: &["secrets-list.yaml: "],
    },
];

#[test]
fn bad_params_are_invalid_input_naming_the_param_or_file() {
    let mut failures = Vec::new();
    for case in PARAM_CASES {
        let scratch = Scratch::new();
        let flow = scratch.write("flow.yaml", PARAMS_WORKFLOW);
        for (name, text) in case.files {
            scratch.write(name, text);
        }
        let out = run_dry(scratch.path(), &flow, case.args);
        let mut why = Vec::new();
        if out.timed_out {
            why.push(format!("did not finish within {TIME_LIMIT:?}"));
        }
        if out.code != Some(2) {
            why.push(format!("exit code {:?}, expected 2", out.code));
        }
        if out.stderr.contains("panicked") {
            why.push("stderr shows a panic".into());
        }
        for e in case.expect {
            if !out.stderr.contains(e) {
                why.push(format!("stderr does not mention `{e}`"));
            }
        }
        // A secret must never be echoed back, even in an error.
        if out.stderr.contains("hunter2") || out.stdout.contains("hunter2") {
            why.push("the output shows the secret `hunter2`".into());
        }
        if !out.stdout.trim().is_empty() {
            why.push(format!(
                "nothing should be planned or printed on stdout, found: {}",
                out.stdout.trim()
            ));
        }
        if !why.is_empty() {
            failures.push((
                format!("{} ({})", case.name, case.args.join(" ")),
                why,
                out.stderr,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}",
        report(&format!("of {} params cases", PARAM_CASES.len()), &failures)
    );
}

/// The table above is only meaningful if the workflow and the required
/// param are fine on their own.
#[test]
fn the_params_workflow_is_valid_with_its_required_param() {
    let scratch = Scratch::new();
    let flow = scratch.write("flow.yaml", PARAMS_WORKFLOW);
    let out = run_dry(scratch.path(), &flow, &[REQUIRED]);
    assert_eq!(
        out.code,
        Some(0),
        "stderr:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout
    );
}
