//! Binding a workflow's params from defaults, a params file, `--param`
//! flags and a secrets file, in that order of precedence.

use serde_json::{Map, Value};

use super::model::{Workflow, is_identifier};
use super::problem::{Problems, join};
use super::template::describe;

#[derive(Debug, Default, Clone)]
pub struct ParamInputs {
    /// `--param KEY=VALUE`, as typed.
    pub flags: Vec<(String, String)>,
    /// `--params-file`, already parsed.
    pub file: Map<String, Value>,
    /// Values from a secrets file. They are always treated as secret.
    pub secrets: Map<String, Value>,
}

#[derive(Debug, Clone, Default)]
pub struct BoundParams {
    pub values: Map<String, Value>,
    /// The text of every secret value, for masking.
    pub secret_values: Vec<String>,
    pub secret_names: Vec<String>,
    /// `{name: {field: text}}`: the credentials the workflow reads
    /// (`credentials.rs`), never part of the report's params.
    pub credentials: Map<String, Value>,
}

impl BoundParams {
    /// Adds the session's credentials: readable as `${credentials...}`,
    /// and every value masked like a secret param's.
    pub fn with_credentials(mut self, bound: super::credentials::BoundCredentials) -> Self {
        self.secret_values.extend(bound.secret_values);
        self.credentials = bound.values;
        self
    }

    /// The values with secrets replaced by `***`, for reports.
    pub fn masked(&self) -> Value {
        let mut out = self.values.clone();
        for name in &self.secret_names {
            if let Some(v) = out.get_mut(name) {
                *v = Value::String(crate::runtime::mask::MASK.into());
            }
        }
        Value::Object(out)
    }
}

pub fn bind_params(workflow: &Workflow, inputs: &ParamInputs) -> Result<BoundParams, Problems> {
    let mut problems = Problems::default();
    let declared: Vec<&str> = workflow.params.iter().map(|p| p.name.as_str()).collect();
    // An undeclared name is refused, unless the workflow takes undeclared
    // params: then it is bound as given, if a template can name it.
    let undeclared = |name: &str, origin: &str, problems: &mut Problems| -> bool {
        if workflow.accept_undeclared_params {
            if is_identifier(name) {
                return true;
            }
            problems.add(
                join("params", name),
                format!(
                    "the param name `{name}` from {origin} is not an identifier (letters, \
                     digits, `_` and `-`, at most 64, not starting with a digit), so \
                     `${{params.NAME}}` could not read it"
                ),
            );
            return false;
        }
        problems.add(
            format!("params.{name}"),
            format!(
                "unknown param `{name}` from {origin}; the workflow declares: {} (a workflow \
                 that says `accept_undeclared_params: true` takes others too)",
                if declared.is_empty() {
                    "no params".to_string()
                } else {
                    declared.join(", ")
                }
            ),
        );
        false
    };

    let mut values = Map::new();
    for spec in &workflow.params {
        if let Some(d) = &spec.default {
            values.insert(spec.name.clone(), d.clone());
        }
    }
    for (name, value) in &inputs.file {
        match workflow.param(name) {
            None => {
                if undeclared(name, "the params file", &mut problems) {
                    values.insert(name.clone(), value.clone());
                }
            }
            Some(spec) => match mismatch(value, spec.default.as_ref()) {
                Some(expected) => problems.add(
                    format!("params.{name}"),
                    format!(
                        "the params file gives {}, but the default is {expected}",
                        describe(value)
                    ),
                ),
                None => {
                    values.insert(name.clone(), value.clone());
                }
            },
        }
    }
    for (name, text) in &inputs.flags {
        match workflow.param(name) {
            // Without a declared default to take the type of, a string,
            // as for a declared param without a default.
            None => {
                if undeclared(name, "--param", &mut problems) {
                    values.insert(name.clone(), Value::String(text.clone()));
                }
            }
            Some(spec) => match coerce(text, spec.default.as_ref()) {
                Ok(v) => {
                    values.insert(name.clone(), v);
                }
                Err(e) => {
                    // The value of a secret param must not be echoed back.
                    let e = if spec.secret && !text.is_empty() {
                        e.replace(text.as_str(), "***")
                    } else {
                        e
                    };
                    problems.add(format!("params.{name}"), format!("--param {name}: {e}"))
                }
            },
        }
    }
    let mut secret_names: Vec<String> = workflow
        .params
        .iter()
        .filter(|p| p.secret)
        .map(|p| p.name.clone())
        .collect();
    for (name, value) in &inputs.secrets {
        if workflow.param(name).is_some() || undeclared(name, "the secrets file", &mut problems) {
            values.insert(name.clone(), value.clone());
            if !secret_names.contains(name) {
                secret_names.push(name.clone());
            }
        }
    }
    for spec in &workflow.params {
        if !values.contains_key(&spec.name) {
            let how = if spec.secret {
                format!(
                    "put it in a secrets file passed with --secrets-file, as {{\"{}\": \"...\"}}",
                    spec.name
                )
            } else {
                format!("pass it with --param {}=VALUE", spec.name)
            };
            problems.add(
                format!("params.{}", spec.name),
                format!("param `{}` has no default and no value; {how}", spec.name),
            );
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let secret_values = secret_names
        .iter()
        .filter_map(|n| values.get(n))
        .flat_map(secret_texts)
        .collect();
    Ok(BoundParams {
        values,
        secret_values,
        secret_names,
        credentials: Map::new(),
    })
}

/// The strings to mask for one secret value: the value itself, or each
/// string inside a structured one.
fn secret_texts(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Null => vec![],
        Value::Array(items) => items.iter().flat_map(secret_texts).collect(),
        Value::Object(map) => map.values().flat_map(secret_texts).collect(),
        other => vec![other.to_string()],
    }
}

/// A `--param` value takes the type of the param's default, so that
/// `--param count=3` stays a number where the workflow expects one.
fn coerce(text: &str, default: Option<&Value>) -> Result<Value, String> {
    match default {
        None | Some(Value::String(_)) | Some(Value::Null) => Ok(Value::String(text.to_string())),
        Some(Value::Bool(_)) => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, found `{text}`")),
        },
        Some(Value::Number(d)) => {
            let parsed: Result<serde_json::Number, _> = text.trim().parse();
            match parsed {
                Ok(n) if d.is_f64() || !n.is_f64() => Ok(Value::Number(n)),
                _ => Err(format!(
                    "expected a number like the default `{d}`, found `{text}`"
                )),
            }
        }
        Some(d @ (Value::Array(_) | Value::Object(_))) => {
            let v: Value = serde_json::from_str(text).map_err(|e| {
                format!(
                    "expected {} in JSON, like the default, but: {e}",
                    describe(d)
                )
            })?;
            if std::mem::discriminant(&v) == std::mem::discriminant(d) {
                Ok(v)
            } else {
                Err(format!(
                    "expected {} like the default, found {}",
                    describe(d),
                    describe(&v)
                ))
            }
        }
    }
}

/// A value from a params file must have the JSON type of the default, when
/// there is one, just as `--param` values are read as that type.
fn mismatch(value: &Value, default: Option<&Value>) -> Option<&'static str> {
    let default = default?;
    let same = matches!(
        (value, default),
        (Value::String(_), Value::String(_))
            | (Value::Number(_), Value::Number(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Object(_), Value::Object(_))
    );
    (!same && !default.is_null()).then(|| describe(default))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::language::{LoadOptions, parse_workflow};
    use crate::runtime::registry::Registry;

    fn workflow(opt_in: bool) -> Workflow {
        let text = format!(
            "version: 1\nname: w\naccept_undeclared_params: {opt_in}\nparams:\n  who: world\nsteps:\n  - {{id: a, action: log, with: {{message: hi}}}}\n"
        );
        parse_workflow(
            &text,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .expect("valid")
    }

    fn file(v: Value) -> ParamInputs {
        ParamInputs {
            file: v.as_object().cloned().unwrap_or_default(),
            ..ParamInputs::default()
        }
    }

    #[test]
    fn undeclared_params_are_refused_without_the_opt_in() {
        let problems = bind_params(&workflow(false), &file(json!({"var1": "x"}))).unwrap_err();
        assert_eq!(problems.0[0].path, "params.var1");
        assert!(
            problems.0[0].message.contains("unknown param `var1`")
                && problems.0[0].message.contains("accept_undeclared_params"),
            "{problems:?}"
        );
    }

    #[test]
    fn undeclared_params_are_bound_as_given_with_the_opt_in() {
        let w = workflow(true);
        let bound = bind_params(
            &w,
            &file(json!({"var1": "this is string", "var2": ["this", "is", "array"], "n": 3, "o": {"a": 1}})),
        )
        .expect("bound");
        assert_eq!(bound.values["var2"], json!(["this", "is", "array"]));
        assert_eq!(bound.values["n"], json!(3));
        assert_eq!(bound.values["o"], json!({"a": 1}));
        assert_eq!(bound.values["who"], json!("world"));
        // --param gives a string, as for a declared param without a default.
        let flags = ParamInputs {
            flags: vec![("count".into(), "3".into())],
            ..ParamInputs::default()
        };
        assert_eq!(
            bind_params(&w, &flags).expect("bound").values["count"],
            json!("3")
        );
        // A secrets file's undeclared name is secret, like any of its names.
        let secrets = ParamInputs {
            secrets: json!({"token": "s3cret"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..ParamInputs::default()
        };
        let bound = bind_params(&w, &secrets).expect("bound");
        assert_eq!(bound.secret_names, vec!["token"]);
        assert_eq!(bound.masked()["token"], json!("***"));
    }

    #[test]
    fn an_undeclared_name_must_be_readable_by_a_template() {
        let problems = bind_params(&workflow(true), &file(json!({"a b": 1, "9x": 2}))).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.0[0].message.contains("is not an identifier"),
            "{problems:?}"
        );
    }
}
