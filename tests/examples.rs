//! Every shipped example runs as shipped, and so does `tasuki demo`.

mod support;

use support::{Scratch, repo_root, require_browser, start_server};

#[test]
fn every_shipped_example_succeeds() {
    require_browser();
    let server = start_server();
    let base_url = server.url("/site");
    let mut examples: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "json"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 3,
        "expected the shipped examples, found {examples:?}"
    );
    let mut failures = Vec::new();
    for example in &examples {
        let text = std::fs::read_to_string(example).unwrap();
        let scratch = Scratch::new();
        let mut args = vec![
            "--work-dir".to_string(),
            scratch.path().display().to_string(),
            "--artifacts".to_string(),
            scratch.path().join("artifacts").display().to_string(),
        ];
        // Examples that use action packs find them in the repository's
        // packs/ (the excel pack needs Python 3 with openpyxl, which
        // ./test.sh installs).
        args.push("--packs".into());
        args.push(repo_root().join("packs").display().to_string());
        // The example with an approval names its step `sign_off`; with no
        // terminal here, the flag answers it.
        if text.contains("action: approval") {
            args.push("--approve".into());
            args.push("sign_off".into());
        }
        // Examples that talk to the demo shop take its address as base_url.
        if text.contains("base_url:") {
            args.push("--param".into());
            args.push(format!("base_url={base_url}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = support::run_json(&repo_root(), example, &args);
        if r.code != 0 || r.report["status"] != "success" {
            failures.push(format!(
                "{}: exit {}\n{}",
                example.display(),
                r.code,
                r.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn demo_runs_the_built_in_quickstart_against_the_built_in_shop() {
    require_browser();
    let scratch = Scratch::new();
    let artifacts = scratch.path().join("artifacts");
    let out = support::tasuki()
        .current_dir(scratch.path())
        .args([
            "demo",
            "--output",
            "json",
            "--artifacts",
            artifacts.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let r = support::result(out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["status"], "success");
    assert_eq!(r.report["steps"]["fetch_orders"]["output"]["status"], 200);
    assert_eq!(
        r.report["steps"]["summary"]["output"]["stdout"],
        "Tasuki demo shop had 3 orders over HTTP and shows 4 in the browser now"
    );
    assert_eq!(
        r.report["steps"]["confirmation"]["output"]["text"],
        "Thank you, Tasuki robot! Order A-1004 is placed."
    );
    assert!(
        std::fs::read(artifacts.join("quickstart.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
    // The demo's secret param is masked like any other.
    assert_eq!(r.report["params"]["api_token"], "***");
    assert!(!r.stderr.contains("demo-token-4f2a9c"));
}
