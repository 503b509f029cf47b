//! Checking the params of a new session against its workflow's declared
//! params, with the rules `tasuki run --params-file` applies: only declared
//! names (others too when the workflow says `accept_undeclared_params:
//! true`, if a template can name them), and a value of the param's type
//! and among its choices (`ParamSpec::check_value`, by way of
//! `bind_params`). No value may hold a `${...}` literal, declared or not.

use serde_json::{Map, Value};
use tasuki_actions::Workflow;
use tasuki_actions::language::model::is_identifier;
use tasuki_actions::language::params::{ParamInputs, bind_params};
use tasuki_actions::language::problem::{index, join};
use tasuki_actions::{ParamSpec, Problems};
use tasuki_protocol::ProblemItem;

use crate::db::workflows::StoredParam;

/// Checks `given`; returns the names of the secret params, whose values the
/// API then shows as `***`.
pub fn check(
    workflow_name: &str,
    specs: &[StoredParam],
    accept_undeclared: bool,
    given: &Map<String, Value>,
) -> Result<Vec<String>, Vec<ProblemItem>> {
    let mut problems = Problems::default();
    // Declared names are identifiers of at most 64 characters; a longer one
    // is refused without being echoed back whole.
    if let Some(name) = given.keys().find(|n| n.chars().count() > MAX_NAME_CHARS) {
        problems.add(
            "params",
            format!(
                "a param name of {} characters (`{}…`) cannot be declared by any workflow",
                name.chars().count(),
                name.chars().take(32).collect::<String>()
            ),
        );
        return Err(items(problems));
    }
    for (name, value) in given {
        find_templates(&join("params", name), value, &mut problems);
        if !name.is_empty() && name.contains("${") {
            problems.add(join("params", name), "a param name cannot hold `${`");
        }
    }
    let declared: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in given.keys() {
        if declared.contains(&name.as_str()) {
            continue;
        }
        if !accept_undeclared {
            problems.add(
                join("params", name),
                format!(
                    "unknown param `{name}`; the workflow `{workflow_name}` declares {} \
                     (a workflow that says `accept_undeclared_params: true` takes others too)",
                    if declared.is_empty() {
                        "no params".to_string()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
        } else if !is_identifier(name) && !name.contains("${") {
            problems.add(
                join("params", name),
                format!(
                    "the param name `{name}` is not an identifier (letters, digits, `_` and \
                     `-`, not starting with a digit), so `${{params.NAME}}` could not read it"
                ),
            );
        }
    }
    for spec in specs {
        if spec.default.is_none() && !given.contains_key(&spec.name) {
            problems.add(
                join("params", &spec.name),
                format!(
                    "param `{}` has no default, so `params` must give it",
                    spec.name
                ),
            );
        }
    }
    // Type checks are bind_params's, so that the hub accepts exactly what
    // the agent's params file would.
    let workflow = params_only(workflow_name, specs);
    let inputs = ParamInputs {
        file: given
            .iter()
            .filter(|(name, _)| declared.contains(&name.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..ParamInputs::default()
    };
    if let Err(found) = bind_params(&workflow, &inputs) {
        for p in found.0 {
            if !problems.iter().any(|q| q.path == p.path) {
                // Its wording speaks of the command line's params file.
                let message = p.message.replace("the params file", "`params`");
                problems.add(p.path, message);
            }
        }
    }
    if !problems.is_empty() {
        return Err(items(problems));
    }
    Ok(specs
        .iter()
        .filter(|s| s.secret)
        .map(|s| s.name.clone())
        .collect())
}

const MAX_NAME_CHARS: usize = 64;

fn items(problems: Problems) -> Vec<ProblemItem> {
    problems
        .0
        .into_iter()
        .map(|p| ProblemItem {
            path: p.path,
            line: None,
            column: None,
            message: p.message,
        })
        .collect()
}

/// The AUTORO document warns that a `${...}` literal inside params
/// misbehaves; in Tasuki a param is a value and never a template, so one is
/// refused rather than passed to a robot that would not expand it.
fn find_templates(path: &str, value: &Value, problems: &mut Problems) {
    match value {
        Value::String(s) if s.contains("${") => problems.add(
            path,
            "a `${...}` literal is not allowed in params: params are plain values and are \
             never expanded as templates",
        ),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_templates(&index(path, i), item, problems);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                if k.contains("${") {
                    problems.add(join(path, k), "a `${...}` literal is not allowed in params");
                }
                find_templates(&join(path, k), v, problems);
            }
        }
        _ => {}
    }
}

/// The declaration a stored param came from.
pub fn spec_of(stored: &StoredParam) -> ParamSpec {
    ParamSpec {
        name: stored.name.clone(),
        default: stored.default.clone(),
        secret: stored.secret,
        description: stored.description.clone(),
        declared_type: stored.declared_type,
        choices: stored.choices.clone(),
    }
}

fn params_only(name: &str, specs: &[StoredParam]) -> Workflow {
    Workflow {
        name: name.into(),
        description: None,
        params: specs.iter().map(spec_of).collect(),
        // Undeclared names are checked above and not given to it.
        accept_undeclared_params: false,
        single_process_mode: false,
        timeout: None,
        steps: Vec::new(),
        on_error: Vec::new(),
        finally: Vec::new(),
        finally_timeout: tasuki_actions::language::model::DEFAULT_FINALLY_TIMEOUT,
        retry_on: Vec::new(),
        limits: Default::default(),
        browser: Default::default(),
        warnings: Default::default(),
        outputs: Default::default(),
        credentials: Vec::new(),
        called: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<StoredParam> {
        vec![
            StoredParam {
                name: "who".into(),
                default: Some(json!("world")),
                secret: false,
                ..Default::default()
            },
            StoredParam {
                name: "count".into(),
                default: Some(json!(3)),
                secret: false,
                ..Default::default()
            },
            StoredParam {
                name: "token".into(),
                default: None,
                secret: true,
                ..Default::default()
            },
        ]
    }

    fn given(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn accepts_declared_params_of_the_right_type() {
        let secrets = check(
            "w",
            &specs(),
            false,
            &given(json!({"who": "x", "token": "t"})),
        )
        .unwrap();
        assert_eq!(secrets, vec!["token"]);
    }

    #[test]
    fn names_every_problem() {
        let problems = check(
            "w",
            &specs(),
            false,
            &given(json!({"who": 1, "extra": true, "count": "${count}"})),
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"params.extra"), "{problems:?}");
        assert!(paths.contains(&"params.token"), "{problems:?}");
        assert!(paths.contains(&"params.who"), "{problems:?}");
        assert!(paths.contains(&"params.count"), "{problems:?}");
        let who = problems.iter().find(|p| p.path == "params.who").unwrap();
        assert!(!who.message.contains("params file"), "{}", who.message);
    }

    #[test]
    fn does_not_echo_a_huge_name() {
        let mut given = Map::new();
        given.insert("n".repeat(100_000), json!(1));
        let problems = check("w", &specs(), false, &given).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.len() < 200, "{}", problems[0].message);
    }

    #[test]
    fn finds_nested_template_literals() {
        let specs = vec![StoredParam {
            name: "list".into(),
            default: Some(json!([])),
            secret: false,
            ..Default::default()
        }];
        let problems = check(
            "w",
            &specs,
            false,
            &given(json!({"list": ["a", {"b": "${x}"}]})),
        )
        .unwrap_err();
        assert_eq!(problems[0].path, "params.list[1].b");
    }

    #[test]
    fn undeclared_params_need_the_workflow_s_opt_in() {
        let doc = given(json!({"var1": "this is string", "var2": ["this", "is", "array"]}));
        let problems = check(
            "w",
            &specs(),
            false,
            &given(json!({"var1": "x", "token": "t"})),
        )
        .unwrap_err();
        assert_eq!(problems[0].path, "params.var1");
        assert!(problems[0].message.contains("accept_undeclared_params"));
        let mut with_token = doc.clone();
        with_token.insert("token".into(), json!("t"));
        assert_eq!(
            check("w", &specs(), true, &with_token).unwrap(),
            vec!["token"]
        );
    }

    #[test]
    fn undeclared_params_are_checked_for_templates_and_names() {
        let problems = check(
            "w",
            &specs(),
            true,
            &given(
                json!({"token": "t", "var1": "this is ${var1}", "a b": 1, "o": {"k": ["${x}"]}}),
            ),
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"params.var1"), "{problems:?}");
        assert!(paths.contains(&"params.o.k[0]"), "{problems:?}");
        assert!(paths.contains(&"params[\"a b\"]"), "{problems:?}");
        // A declared param keeps its type check.
        let problems = check(
            "w",
            &specs(),
            true,
            &given(json!({"token": "t", "count": "3"})),
        )
        .unwrap_err();
        assert_eq!(problems[0].path, "params.count");
    }
}
