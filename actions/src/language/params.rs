//! Binding a workflow's params from defaults, a params file, `--param`
//! flags and a secrets file, in that order of precedence.

use serde_json::{Map, Value};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::model::{ParamSpec, Workflow, is_identifier};
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
            Some(spec) => match spec.check_value(value) {
                Err(e) => problems.add(
                    format!("params.{name}"),
                    format!("the params file gives a value the param does not take: {e}"),
                ),
                Ok(value) => {
                    values.insert(name.clone(), value);
                }
            },
        }
    }
    for (name, text) in &inputs.flags {
        match workflow.param(name) {
            // Undeclared: a string, as for a declared param of no type.
            None => {
                if undeclared(name, "--param", &mut problems) {
                    values.insert(name.clone(), Value::String(text.clone()));
                }
            }
            Some(spec) => match spec.read_text(text) {
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
        let value =
            match workflow.param(name) {
                // The error names the param and never the value.
                Some(spec) => match spec.check_value(value) {
                    Ok(value) => value,
                    Err(_) => {
                        problems.add(
                        format!("params.{name}"),
                        format!(
                            "the secrets file gives a value the param does not take (it wants {})",
                            spec.value_type().map(ParamType::wanted).unwrap_or("any value")
                        ),
                    );
                        continue;
                    }
                },
                None if undeclared(name, "the secrets file", &mut problems) => value.clone(),
                None => continue,
            };
        values.insert(name.clone(), value);
        if !secret_names.contains(name) {
            secret_names.push(name.clone());
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

/// `type:` of a param: the JSON type every value of it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Number,
    /// A number without a fraction.
    Integer,
    Boolean,
    Object,
    Array,
}

impl ParamType {
    pub const NAMES: &'static [&'static str] =
        &["string", "number", "integer", "boolean", "object", "array"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "boolean" => Self::Boolean,
            "object" => Self::Object,
            "array" => Self::Array,
            _ => return None,
        })
    }

    /// The name meant by another language's word for a type (`int`,
    /// `bool`, `list`), for a hint.
    pub fn alias(name: &str) -> Option<&'static str> {
        Some(match name.to_ascii_lowercase().as_str() {
            "int" | "long" | "i64" | "u64" => "integer",
            "float" | "double" | "decimal" => "number",
            "bool" => "boolean",
            "str" | "text" => "string",
            "list" | "sequence" => "array",
            "dict" | "map" | "mapping" => "object",
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }

    /// The type a default (or a choice) gives a param that declares none.
    /// A number gives `number`, whole or not: a default of `0` may be a
    /// ratio, and workflows stored before `type` existed took any number
    /// there. `type: integer` asks for whole numbers.
    pub fn of(value: &Value) -> Option<Self> {
        Some(match value {
            Value::Null => return None,
            Value::String(_) => Self::String,
            Value::Number(_) => Self::Number,
            Value::Bool(_) => Self::Boolean,
            Value::Object(_) => Self::Object,
            Value::Array(_) => Self::Array,
        })
    }

    /// What a value of it is, for a message: "an integer".
    pub fn wanted(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Number => "a number",
            Self::Integer => "an integer",
            Self::Boolean => "true or false",
            Self::Object => "an object",
            Self::Array => "a list",
        }
    }

    /// Whether `value` is of this type; the error says what was expected.
    /// A whole number written with a fraction (`3.0`, as some JSON
    /// writers send it) is an integer.
    pub fn check(self, value: &Value) -> Result<(), String> {
        let fits = match (self, value) {
            (Self::String, Value::String(_))
            | (Self::Number, Value::Number(_))
            | (Self::Boolean, Value::Bool(_))
            | (Self::Object, Value::Object(_))
            | (Self::Array, Value::Array(_)) => true,
            (Self::Integer, Value::Number(n)) => whole(n).is_some(),
            _ => false,
        };
        if fits {
            return Ok(());
        }
        let found = match value {
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                "a whole number too large for an integer (at most 2^63 in size)"
            }
            Value::Number(_) => "a number with a fraction",
            other => describe(other),
        };
        Err(format!("expected {}, found {found}", self.wanted()))
    }

    /// A value typed as text (a `--param` flag, a console field): a string
    /// as it is, a number or boolean as written, an object or list in JSON.
    pub fn read(self, text: &str) -> Result<Value, String> {
        let value = match self {
            Self::String => return Ok(Value::String(text.to_string())),
            Self::Boolean => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("expected true or false, found `{text}`")),
            },
            Self::Number | Self::Integer => text
                .trim()
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .map_err(|_| format!("expected {}, found `{text}`", self.wanted()))?,
            Self::Object | Self::Array => serde_json::from_str(text)
                .map_err(|e| format!("expected {} in JSON, but: {e}", self.wanted()))?,
        };
        self.check(&value).map(|()| value)
    }
}

/// An integer's value: a whole number, including one written `3.0`, that
/// fits in 64 bits.
fn whole(n: &serde_json::Number) -> Option<Value> {
    if n.is_i64() || n.is_u64() {
        return Some(Value::Number(n.clone()));
    }
    let f = n.as_f64()?;
    // 2^63: beyond it an f64 no longer names one integer.
    (f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18).then(|| Value::from(f as i64))
}

/// Whether two values are the same value: numbers by their value (`1` and
/// `1.0`), anything else as JSON.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            x.as_f64() == y.as_f64()
        }
        _ => a == b,
    }
}

impl ParamSpec {
    /// Its type: the declared one, else its default's, else its first
    /// choice's; `None` takes any value.
    pub fn value_type(&self) -> Option<ParamType> {
        self.declared_type
            .or_else(|| self.default.as_ref().and_then(ParamType::of))
            .or_else(|| self.choices.iter().find_map(ParamType::of))
    }

    /// `value` as this param takes it: of its type (an integer written
    /// `3.0` made `3`), and one of its choices if it lists them. `null`
    /// where the default is `null` stands for the default. The error never
    /// repeats the value.
    pub fn check_value(&self, value: &Value) -> Result<Value, String> {
        if value.is_null() && self.default == Some(Value::Null) {
            return Ok(Value::Null);
        }
        let value = match (self.value_type(), value) {
            (Some(ParamType::Integer), Value::Number(n)) => {
                whole(n).ok_or_else(|| ParamType::Integer.check(value).unwrap_err())?
            }
            (Some(ty), _) => {
                ty.check(value)?;
                value.clone()
            }
            (None, _) => value.clone(),
        };
        if !self.choices.is_empty() && !self.choices.iter().any(|c| same_value(c, &value)) {
            let listed: Vec<String> = self.choices.iter().map(Value::to_string).collect();
            return Err(format!("not one of the choices: {}", listed.join(", ")));
        }
        Ok(value)
    }

    /// A value typed as text, read as its type (a string when it has
    /// none) and checked.
    pub fn read_text(&self, text: &str) -> Result<Value, String> {
        let value = match self.value_type() {
            Some(ty) => ty.read(text)?,
            None => Value::String(text.to_string()),
        };
        self.check_value(&value)
    }
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

    fn typed() -> Result<Workflow, Problems> {
        parse_workflow(
            "version: 1\nname: w\nparams:\n  count: {type: integer, default: 3}\n  ratio: 0.0\n  \
             mode: {choices: [fast, careful], default: fast}\n  tags: {type: array, default: []}\n  \
             when: {type: string}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
    }

    fn flags(pairs: &[(&str, &str)]) -> ParamInputs {
        ParamInputs {
            flags: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ParamInputs::default()
        }
    }

    #[test]
    fn typed_params_read_flags_as_their_type() {
        let w = typed().expect("valid");
        let bound = bind_params(
            &w,
            &flags(&[
                ("count", "12"),
                ("ratio", "0.25"),
                ("mode", "careful"),
                ("tags", "[\"a\"]"),
                ("when", "42"),
            ]),
        )
        .expect("bound");
        assert_eq!(
            Value::Object(bound.values),
            json!({"count": 12, "ratio": 0.25, "mode": "careful", "tags": ["a"], "when": "42"})
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_or_not_a_choice_is_refused_at_its_path() {
        let w = typed().expect("valid");
        let problems = bind_params(
            &w,
            &flags(&[("count", "2.5"), ("mode", "reckless"), ("when", "x")]),
        )
        .unwrap_err();
        let said: Vec<(String, String)> = problems
            .0
            .iter()
            .map(|p| (p.path.clone(), p.message.clone()))
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(said[0].0, "params.count");
        assert!(said[0].1.contains("expected an integer"), "{said:?}");
        assert_eq!(said[1].0, "params.mode");
        assert!(
            said[1]
                .1
                .contains("not one of the choices: \"fast\", \"careful\""),
            "{said:?}"
        );
        let problems =
            bind_params(&w, &file(json!({"count": "3", "tags": {}, "when": "now"}))).unwrap_err();
        let paths: Vec<&str> = problems.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["params.count", "params.tags"], "{problems:?}");
        assert!(
            problems.0[0]
                .message
                .contains("expected an integer, found a string")
        );
    }

    #[test]
    fn a_declaration_that_contradicts_itself_is_refused_at_its_field() {
        let load = |params: &str| {
            parse_workflow(
                &format!("version: 1\nname: w\nparams:\n{params}steps:\n  - {{id: a, action: log, with: {{message: hi}}}}\n"),
                "w.yaml",
                &Registry::builtin(),
                &LoadOptions::default(),
            )
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
        };
        let said = load("  n: {type: int, default: 3}\n");
        assert!(
            said[0]
                .starts_with("params.n.type: unknown param type \"int\"; did you mean `integer`?"),
            "{said:?}"
        );
        let said = load("  n: {type: integer, default: \"3\"}\n");
        assert!(
            said[0].starts_with(
                "params.n.default: the default is not the param's type: expected an integer"
            ),
            "{said:?}"
        );
        let said = load("  n: {type: integer, choices: [1, two]}\n");
        assert!(
            said[0].starts_with("params.n.choices[1]: a choice must be of the param's type"),
            "{said:?}"
        );
        let said = load("  n: {choices: [a, b], default: c}\n");
        assert!(
            said[0].starts_with("params.n.default: the default \"c\" is not one of the choices"),
            "{said:?}"
        );
        let said = load("  n: {secret: true, choices: [a, b]}\n");
        assert!(
            said[0].starts_with("params.n.choices: a secret param cannot list choices"),
            "{said:?}"
        );
        let said = load("  n: {choices: []}\n");
        assert!(
            said[0].starts_with("params.n.choices: an empty list of choices"),
            "{said:?}"
        );
    }

    #[test]
    fn whole_numbers_written_with_a_fraction_are_integers_and_choices_compare_by_value() {
        let w = parse_workflow(
            "version: 1\nname: w\nparams:\n  n: {type: integer, default: 1}\n  \
             level: {type: number, choices: [1, 2]}\n  pin: {secret: true, type: integer, default: 0}\n  \
             maybe: {type: integer, default: null}\n  whole: {type: integer, default: 3.0}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .expect("valid");
        let bound =
            bind_params(&w, &file(json!({"n": 3.0, "level": 1.0, "maybe": null}))).expect("bound");
        assert_eq!(bound.values["n"], json!(3));
        assert!(bound.values["n"].is_i64());
        assert_eq!(bound.values["level"], json!(1.0));
        assert!(bound.values["maybe"].is_null());
        assert!(bound.values["whole"].is_i64(), "{}", bound.values["whole"]);
        let problems = bind_params(&w, &file(json!({"n": 1e300}))).unwrap_err();
        assert!(
            problems.0[0].message.contains("too large for an integer"),
            "{problems:?}"
        );
        // A secrets file's value is checked too, and never echoed.
        let problems = bind_params(
            &w,
            &ParamInputs {
                secrets: json!({"pin": "sesame-1234"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..ParamInputs::default()
            },
        )
        .unwrap_err();
        assert_eq!(problems.0[0].path, "params.pin");
        assert!(problems.0[0].message.contains("an integer"), "{problems:?}");
        assert!(!problems.0[0].message.contains("sesame"), "{problems:?}");
    }

    #[test]
    fn a_mapping_with_a_type_that_names_no_type_is_still_an_object_default() {
        let w = parse_workflow(
            "version: 1\nname: w\nparams:\n  filter: {type: invoice, status: open}\n  kind: {type: invoice}\n  \
             typed: {type: string}\n  wrapped: {default: {type: invoice}}\n  cased: {type: String}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .expect("valid");
        let by_name = |n: &str| w.param(n).expect("declared").clone();
        let warned: Vec<String> = w
            .warnings
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        // `wrapped` says it means the mapping: no warning.
        assert_eq!(warned.len(), 3, "{warned:?}");
        assert!(
            warned[2].contains("did you mean `type: string`?"),
            "{warned:?}"
        );
        assert!(
            warned[1].starts_with(
                "params.kind: read as its default, a mapping: `type: \"invoice\"` names no type"
            ),
            "{warned:?}"
        );
        assert_eq!(
            by_name("filter").default,
            Some(json!({"type": "invoice", "status": "open"}))
        );
        assert_eq!(by_name("kind").default, Some(json!({"type": "invoice"})));
        assert_eq!(by_name("typed").declared_type, Some(ParamType::String));
        assert_eq!(by_name("typed").default, None);
    }

    #[test]
    fn the_warning_says_what_made_a_mapping_a_default_and_spares_ordinary_ones() {
        let w = parse_workflow(
            "version: 1\nname: w\nparams:\n  n: {tpye: integer}\n  m: {type: integer, required: true}\n  \
             o: {time: \"9:00\", top: 1}\n  q: {choices: a}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .expect("valid");
        let said: Vec<String> = w
            .warnings
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        // `o` is an ordinary mapping: no warning.
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].starts_with("params.n: ") && said[0].contains("`tpye` is not `type`"),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("params.m: ") && said[1].contains("`required` beside `type`"),
            "{said:?}"
        );
        assert!(
            said[2].starts_with("params.q: ") && said[2].contains("`choices` is not a list"),
            "{said:?}"
        );
    }
}
