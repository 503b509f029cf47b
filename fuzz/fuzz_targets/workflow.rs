//! The workflow loader on arbitrary text, read both as YAML and as JSON.
//!
//! Beyond "no panic": every problem names the file and says something,
//! and a problem in a document that parsed names its line; a YAML
//! workflow that loads, written out as JSON, loads to the same workflow,
//! both from text (`tasuki run x.json`) and from a value (the hub's
//! `check_value` on a JSON body).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tasuki_actions::language::source::{self, Format};
use tasuki_actions::{LoadOptions, Problems, Registry, Workflow, parse_workflow};
use tasuki_fuzz::workflow::{registry, without_warnings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = registry();
    let options = LoadOptions::default();
    for origin in ["fuzz.yaml", "fuzz.json"] {
        let loaded = parse_workflow(text, origin, registry, &options);
        check_problems(text, origin, &loaded);
        if origin == "fuzz.yaml"
            && let Ok(workflow) = &loaded
        {
            round_trip_through_json(text, workflow, registry, &options);
        }
    }
});

fn check_problems(text: &str, origin: &str, loaded: &Result<Workflow, Problems>) {
    let problems = match loaded {
        Ok(workflow) => &workflow.warnings,
        Err(problems) => {
            assert!(!problems.0.is_empty(), "an Err with no problem in it");
            problems
        }
    };
    let format = Format::from_file_name(origin);
    let parsed = source::parse(text, format).is_ok();
    for p in &problems.0 {
        assert_eq!(p.file.as_deref(), Some(origin), "{p:?}");
        assert!(
            !p.message.trim().is_empty(),
            "a problem with no message: {p:?}"
        );
        if parsed {
            assert!(
                p.line.is_some(),
                "no line for a problem in a parsed document: {p:?}"
            );
        }
    }
}

fn round_trip_through_json(
    text: &str,
    workflow: &Workflow,
    registry: &Registry,
    options: &LoadOptions,
) {
    let value = source::parse(text, Format::Yaml)
        .expect("a workflow that loaded parses")
        .value;
    let json = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
    let again = parse_workflow(&json, "again.json", registry, options)
        .unwrap_or_else(|p| panic!("loads as YAML, not as JSON:\n{json}\n{p:?}"));
    assert_eq!(
        without_warnings(workflow),
        without_warnings(&again),
        "{json}"
    );
    let from_value = tasuki_actions::language::check_value(value, registry, options)
        .unwrap_or_else(|p| panic!("loads from text, not from its value:\n{json}\n{p:?}"));
    assert_eq!(without_warnings(workflow), without_warnings(&from_value));
}
