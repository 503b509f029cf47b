//! A pack's manifest, `tasuki-pack.yaml` (docs/action-packs.md): read,
//! checked field by field, every problem named with its file, line and
//! field path, and `{pack_dir}` expanded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::language::argcheck;
use crate::language::problem::{Problem, Problems, index, join};
use crate::language::source::{self, Format};

pub const MANIFEST_FILE: &str = "tasuki-pack.yaml";
/// The one manifest format there is.
const MANIFEST_VERSION: u64 = 1;
/// Manifests are small; a bigger file is a mistake, not a pack.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
const PACK_DIR: &str = "{pack_dir}";

/// Families the runtime itself owns; a pack named like one would shadow or
/// be shadowed by built-in actions.
const RESERVED_NAMES: &[&str] = &[
    "browser", "http", "shell", "log", "sleep", "fail", "set", "for_each", "try", "control",
];

const TOP_LEVEL: &[&str] = &[
    "manifest",
    "name",
    "version",
    "description",
    "command",
    "env",
    "actions",
    "self_test",
];
const ACTION_FIELDS: &[&str] = &["description", "args", "output", "secrets"];

/// A checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    /// The pack's folder, absolute.
    pub dir: PathBuf,
    /// The manifest file, for messages.
    pub file: PathBuf,
    /// Program and arguments, `{pack_dir}` expanded.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub actions: BTreeMap<String, ActionSpec>,
    pub self_test: Vec<SelfTest>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    pub description: Option<String>,
    pub args: Value,
    pub output: Option<Value>,
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelfTest {
    pub action: String,
    pub with: Map<String, Value>,
}

/// Reads and checks the manifest in `dir`. Problems name the manifest file.
pub fn load(dir: &Path) -> Result<Manifest, Problems> {
    let file = dir.join(MANIFEST_FILE);
    let origin = file.display().to_string();
    let whole = |message: String| {
        Problems(vec![Problem {
            file: Some(origin.clone()),
            ..Problem::new("", message)
        }])
    };
    let dir =
        std::path::absolute(dir).map_err(|e| whole(format!("cannot resolve the folder: {e}")))?;
    let text = read_limited(&file).map_err(whole)?;
    parse(&text, &dir, &file)
}

/// Checks manifest text as if read from `file` in the folder `dir`
/// (absolute). Problems name `file`, with lines where the text has them.
pub fn parse(text: &str, dir: &Path, file: &Path) -> Result<Manifest, Problems> {
    let origin = file.display().to_string();
    let located = source::parse(text, Format::Yaml)
        .map_err(|p| crate::language::locate(Problems(vec![p]), &origin, None))?;
    let mut problems = Problems::default();
    let manifest = lower(&located.value, dir, file, &mut problems);
    match manifest {
        Some(m) if problems.is_empty() => Ok(m),
        _ => Err(crate::language::locate(problems, &origin, Some(&located))),
    }
}

fn read_limited(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read the manifest: {e}"))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
            meta.len()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read the manifest: {e}"))?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the manifest is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn lower(value: &Value, dir: &Path, file: &Path, problems: &mut Problems) -> Option<Manifest> {
    let Value::Object(map) = value else {
        problems.add(
            "",
            "a manifest is a mapping of fields (name, version, command, actions)",
        );
        return None;
    };
    for key in map.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            problems.add(
                key.as_str(),
                format!(
                    "unknown field `{key}`; expected one of: {}",
                    TOP_LEVEL.join(", ")
                ),
            );
        }
    }
    match map.get("manifest") {
        Some(Value::Number(n)) if n.as_u64() == Some(MANIFEST_VERSION) => {}
        Some(other) => problems.add(
            "manifest",
            format!("this Tasuki reads manifest format {MANIFEST_VERSION}, not {other}"),
        ),
        None => problems.add("manifest", "missing field `manifest` (write `manifest: 1`)"),
    }
    let name = required_string(map, "name", problems);
    if let Some(name) = &name {
        if let Err(e) = check_name(name) {
            problems.add("name", e);
        } else if RESERVED_NAMES.contains(&name.as_str()) {
            problems.add(
                "name",
                format!("`{name}` is a built-in family of actions; choose another name"),
            );
        }
    }
    let version = required_string(map, "version", problems);
    if let Some(v) = &version
        && (v.trim().is_empty() || v.len() > 64)
    {
        problems.add(
            "version",
            "a version is 1 to 64 characters, such as `1.2.0`",
        );
    }
    let description = optional_string(map, "description", problems);
    let expand = |s: &str| s.replace(PACK_DIR, &dir.display().to_string());

    let command = match map.get("command") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::String(s) if !(i == 0 && s.trim().is_empty()) => Some(expand(s)),
                _ => {
                    problems.add(index("command", i), "expected a non-empty string");
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.add(
                "command",
                "expected a non-empty list: the program and its arguments, such as [python3, \"{pack_dir}/pack.py\"]",
            );
            Vec::new()
        }
        None => {
            problems.add(
                "command",
                "missing field `command`: the program that serves the pack",
            );
            Vec::new()
        }
    };

    let mut env = BTreeMap::new();
    match map.get("env") {
        None => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                let valid_name = !k.is_empty()
                    && !k.contains('=')
                    && !k.contains('\0')
                    && !k.starts_with("TASUKI_");
                match v {
                    Value::String(s) if valid_name => {
                        env.insert(k.clone(), expand(s));
                    }
                    Value::String(_) => problems.add(
                        join("env", k),
                        "a variable name is non-empty, without `=`, and not `TASUKI_…` (the runtime's own)",
                    ),
                    _ => problems.add(join("env", k), "expected a string value"),
                }
            }
        }
        Some(_) => problems.add("env", "expected a mapping of variable names to values"),
    }

    let mut actions = BTreeMap::new();
    match map.get("actions") {
        Some(Value::Object(specs)) if !specs.is_empty() => {
            for (action, spec) in specs {
                let path = join("actions", action);
                if let Err(e) = check_name(action) {
                    problems.add(path.as_str(), format!("action name: {e}"));
                    continue;
                }
                if let Some(spec) = lower_action(spec, &path, problems) {
                    actions.insert(action.clone(), spec);
                }
            }
        }
        Some(_) => problems.add("actions", "expected a mapping with at least one action"),
        None => problems.add("actions", "missing field `actions`"),
    }

    let self_test = lower_self_test(map.get("self_test"), &actions, problems);
    Some(Manifest {
        name: name?,
        version: version?,
        description,
        dir: dir.to_path_buf(),
        file: file.to_path_buf(),
        command,
        env,
        actions,
        self_test,
    })
}

fn lower_action(spec: &Value, path: &str, problems: &mut Problems) -> Option<ActionSpec> {
    let Value::Object(spec) = spec else {
        problems.add(path, "expected a mapping with `args` (a JSON Schema)");
        return None;
    };
    for key in spec.keys() {
        if !ACTION_FIELDS.contains(&key.as_str()) {
            problems.add(
                join(path, key),
                format!(
                    "unknown field `{key}`; expected one of: {}",
                    ACTION_FIELDS.join(", ")
                ),
            );
        }
    }
    let description = optional_string(spec, "description", &mut Problems::default());
    if spec.get("description").is_some_and(|d| !d.is_string()) {
        problems.add(join(path, "description"), "expected a string");
    }
    let args_path = join(path, "args");
    let args = match spec.get("args") {
        Some(schema) => {
            check_schema(schema, &args_path, problems);
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                problems.add(
                    join(&args_path, "type"),
                    "the arguments' schema describes a mapping: `type: object`",
                );
            }
            schema.clone()
        }
        None => {
            problems.add(
                args_path.as_str(),
                "missing field `args`: the JSON Schema of `with`",
            );
            Value::Null
        }
    };
    let output = spec.get("output").map(|schema| {
        check_schema(schema, &join(path, "output"), problems);
        schema.clone()
    });
    let properties = args.get("properties").and_then(Value::as_object);
    let mut secrets = Vec::new();
    match spec.get("secrets") {
        None => {}
        Some(Value::Array(names)) => {
            for (i, name) in names.iter().enumerate() {
                match name.as_str() {
                    Some(n) if properties.is_some_and(|p| p.contains_key(n)) => {
                        secrets.push(n.to_string())
                    }
                    Some(n) => problems.add(
                        index(&join(path, "secrets"), i),
                        format!("`{n}` is not an argument in `args.properties`"),
                    ),
                    None => problems.add(
                        index(&join(path, "secrets"), i),
                        "expected an argument's name",
                    ),
                }
            }
        }
        Some(_) => problems.add(join(path, "secrets"), "expected a list of argument names"),
    }
    Some(ActionSpec {
        description,
        args,
        output,
        secrets,
    })
}

fn lower_self_test(
    value: Option<&Value>,
    actions: &BTreeMap<String, ActionSpec>,
    problems: &mut Problems,
) -> Vec<SelfTest> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Value::Array(items) = value else {
        problems.add("self_test", "expected a list of requests: {action, with}");
        return Vec::new();
    };
    let mut tests = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index("self_test", i);
        let Some(map) = item.as_object() else {
            problems.add(path.as_str(), "expected a mapping: {action, with}");
            continue;
        };
        let Some(action) = map.get("action").and_then(Value::as_str) else {
            problems.add(
                join(&path, "action"),
                "expected the name of one of the pack's actions",
            );
            continue;
        };
        let with = match map.get("with") {
            None => Map::new(),
            Some(Value::Object(w)) => w.clone(),
            Some(_) => {
                problems.add(join(&path, "with"), "expected a mapping of arguments");
                continue;
            }
        };
        match actions.get(action) {
            Some(spec) => argcheck::check(
                &Value::Object(with.clone()),
                &spec.args,
                &join(&path, "with"),
                problems,
            ),
            None => problems.add(
                join(&path, "action"),
                format!(
                    "`{action}` is not an action of this pack; it has: {}",
                    actions.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
        }
        tests.push(SelfTest {
            action: action.to_string(),
            with,
        });
    }
    tests
}

/// The subset of JSON Schema that [`argcheck`] enforces, checked for
/// shape, so that a typo (`type: strng`) is named at load rather than
/// refusing every step.
fn check_schema(schema: &Value, path: &str, problems: &mut Problems) {
    let map = match schema {
        Value::Bool(_) => return,
        Value::Object(map) => map,
        _ => {
            problems.add(path, "a JSON Schema is a mapping (or true/false)");
            return;
        }
    };
    const TYPES: &[&str] = &[
        "null", "boolean", "string", "number", "integer", "array", "object",
    ];
    if let Some(t) = map.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(ts) => ts.iter().collect(),
            other => vec![other],
        };
        for name in names {
            if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                problems.add(
                    join(path, "type"),
                    format!("unknown type {name}; expected one of: {}", TYPES.join(", ")),
                );
            }
        }
    }
    if let Some(props) = map.get("properties") {
        match props {
            Value::Object(props) => {
                for (k, sub) in props {
                    check_schema(sub, &join(&join(path, "properties"), k), problems);
                }
            }
            _ => problems.add(
                join(path, "properties"),
                "expected a mapping of names to schemas",
            ),
        }
    }
    if let Some(required) = map.get("required")
        && !required
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
    {
        problems.add(join(path, "required"), "expected a list of property names");
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = map.get(key) {
            check_schema(sub, &join(path, key), problems);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = map.get(key) {
            match branches.as_array() {
                Some(branches) => {
                    for (i, b) in branches.iter().enumerate() {
                        check_schema(b, &index(&join(path, key), i), problems);
                    }
                }
                None => problems.add(join(path, key), "expected a list of schemas"),
            }
        }
    }
    if map.get("enum").is_some_and(|e| !e.is_array()) {
        problems.add(join(path, "enum"), "expected a list of values");
    }
    for key in ["minimum", "maximum"] {
        if map.get(key).is_some_and(|m| !m.is_number()) {
            problems.add(join(path, key), "expected a number");
        }
    }
}

/// Pack and action names: 1 to 32 of `a-z`, `0-9` and `_`, starting with
/// a letter, so that `name.action` reads as one action everywhere.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 32 lowercase letters, digits or `_`, starting with a letter"
        ))
    }
}

fn required_string(map: &Map<String, Value>, key: &str, problems: &mut Problems) -> Option<String> {
    match map.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.add(key, "expected a string");
            None
        }
        None => {
            problems.add(key, format!("missing field `{key}`"));
            None
        }
    }
}

fn optional_string(map: &Map<String, Value>, key: &str, problems: &mut Problems) -> Option<String> {
    match map.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.add(key, "expected a string");
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Manifest, Problems> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
        load(dir.path())
    }

    const GOOD: &str = r#"
manifest: 1
name: excel
version: 1.0.0
command: [python3, "{pack_dir}/pack.py"]
actions:
  read:
    args:
      type: object
      properties: { path: { type: string }, password: { type: string } }
      required: [path]
    secrets: [password]
"#;

    #[test]
    fn a_good_manifest_expands_the_pack_dir() {
        let m = load_text(GOOD).unwrap();
        assert_eq!(m.name, "excel");
        assert_eq!(m.command[0], "python3");
        assert!(m.command[1].ends_with("/pack.py") && !m.command[1].contains("{pack_dir}"));
        assert_eq!(m.actions["read"].secrets, vec!["password".to_string()]);
    }

    #[test]
    fn problems_name_the_file_line_and_field() {
        let bad = GOOD.replace("type: string }, password", "type: strng }, password");
        let problems = load_text(&bad).unwrap_err();
        let text = problems.to_string();
        assert!(
            text.contains("tasuki-pack.yaml:")
                && text.contains("actions.read.args.properties.path.type")
                && text.contains("unknown type \"strng\""),
            "{text}"
        );
        assert!(problems.iter().all(|p| p.line.is_some()), "{problems:?}");
    }

    #[test]
    fn every_field_problem_is_reported_at_once() {
        let text = "manifest: 2\nname: Shell\nversion: ''\ncommand: []\nactions: {}\nextra: 1\n";
        let problems = load_text(text).unwrap_err().to_string();
        for expected in [
            "manifest format 1",
            "`Shell` must be 1 to 32 lowercase",
            "version",
            "command",
            "at least one action",
            "unknown field `extra`",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }

    #[test]
    fn a_reserved_name_or_an_unknown_secret_is_refused() {
        let text = GOOD
            .replace("name: excel", "name: browser")
            .replace("[password]", "[pasword]");
        let problems = load_text(&text).unwrap_err().to_string();
        assert!(problems.contains("built-in family"), "{problems}");
        assert!(
            problems.contains("`pasword` is not an argument"),
            "{problems}"
        );
    }

    #[test]
    fn a_self_test_is_checked_against_its_action() {
        let text = format!(
            "{GOOD}self_test:\n  - action: read\n    with: {{ path: 3 }}\n  - action: nope\n"
        );
        let problems = load_text(&text).unwrap_err().to_string();
        assert!(problems.contains("self_test[0].with.path"), "{problems}");
        assert!(
            problems.contains("`nope` is not an action of this pack"),
            "{problems}"
        );
    }

    #[test]
    fn a_missing_manifest_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let problems = load(dir.path()).unwrap_err().to_string();
        assert!(problems.contains("cannot read the manifest"), "{problems}");
    }
}
