//! Checks an action's `with` arguments against the JSON Schema that
//! schemars derives from the action's argument struct.
//!
//! Only the subset of JSON Schema that our argument structs produce is
//! understood: `type`, `properties`, `required`, `additionalProperties`,
//! `items`, `enum`, `const`, `oneOf`/`anyOf`, `minimum`/`maximum` and
//! `format: duration`. A string that is a whole `${...}` template is
//! accepted for any type, because its type is only known at run time, when
//! the rendered value is checked again by serde.

use serde_json::Value;

use super::duration::parse_duration;
use super::problem::{Problems, index, join};
use super::template::{Template, describe};

pub fn check(value: &Value, schema: &Value, path: &str, problems: &mut Problems) {
    if is_whole_template(value) {
        return;
    }
    let Value::Object(schema) = schema else {
        // `true` accepts anything; `false` nothing.
        if schema == &Value::Bool(false) {
            problems.add(path, "no value is allowed here");
        }
        return;
    };
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            let mut best: Option<Problems> = None;
            for branch in branches {
                let mut p = Problems::default();
                check(value, branch, path, &mut p);
                if p.is_empty() {
                    return;
                }
                if best.as_ref().is_none_or(|b| p.len() < b.len()) {
                    best = Some(p);
                }
            }
            if let Some(best) = best {
                problems.extend(best);
            }
            return;
        }
    }
    if let Some(expected) = schema.get("const") {
        if value != expected {
            problems.add(path, format!("expected {expected}, found {value}"));
        }
        return;
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            // `null` is how schemars marks an optional field; it is not a
            // value anyone should be told to write.
            let list: Vec<String> = options
                .iter()
                .filter(|o| !o.is_null())
                .map(|o| o.to_string())
                .collect();
            problems.add(
                path,
                format!("expected one of {}, found {value}", list.join(", ")),
            );
        }
        return;
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| type_matches(t, value)) {
            if schema.get("format").and_then(Value::as_str) == Some("duration")
                && let Value::Number(n) = value
            {
                problems.add(path, format!("duration `{n}` has no unit; write `{n}s` for seconds or `{n}ms` for milliseconds"));
                return;
            }
            let wanted: Vec<String> = allowed
                .iter()
                .filter(|t| **t != "null")
                .map(|t| article(t))
                .collect();
            problems.add(
                path,
                format!(
                    "expected {}, found {}",
                    wanted.join(" or "),
                    describe(value)
                ),
            );
            return;
        }
    }
    match value {
        Value::String(s) => {
            if schema.get("format").and_then(Value::as_str) == Some("duration")
                && !s.contains("${")
                && let Err(e) = parse_duration(s)
            {
                problems.add(path, e);
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(x)) =
                (schema.get("minimum").and_then(Value::as_f64), n.as_f64())
                && x < min
            {
                problems.add(path, format!("must be at least {min}, found {n}"));
            }
            if let (Some(max), Some(x)) =
                (schema.get("maximum").and_then(Value::as_f64), n.as_f64())
                && x > max
            {
                problems.add(path, format!("must be at most {max}, found {n}"));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item, item_schema, &index(path, i), problems);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(required)) = schema.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        problems.add(
                            join(path, name),
                            format!("missing required argument `{name}`"),
                        );
                    }
                }
            }
            for (key, item) in map {
                let sub = join(path, key);
                match properties.and_then(|p| p.get(key)) {
                    Some(prop) => check(item, prop, &sub, problems),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            let known: Vec<&str> = properties
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            problems.add(
                                sub,
                                format!(
                                    "unknown argument `{key}`; expected one of: {}",
                                    known.join(", ")
                                ),
                            );
                        }
                        Some(extra) => check(item, extra, &sub, problems),
                        None => {}
                    },
                }
            }
        }
        _ => {}
    }
}

fn is_whole_template(value: &Value) -> bool {
    let Value::String(s) = value else {
        return false;
    };
    // Exactly the executor's rule: nothing around the one `${...}`, not
    // even spaces, or the result is a string.
    let t = s.as_str();
    t.starts_with("${")
        && t.ends_with('}')
        && Template::parse(t).is_ok_and(|tpl| {
            tpl.expressions().count() == 1 && !tpl.is_literal() && {
                // `${a} and ${b}` also starts and ends right but is a string.
                t.matches("${").count() == 1
            }
        })
}

fn type_matches(t: &str, value: &Value) -> bool {
    match (t, value) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("string", Value::String(_)) => true,
        ("array", Value::Array(_))
        | ("object", Value::Object(_))
        | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

fn article(t: &str) -> String {
    match t {
        "null" => "null".into(),
        "boolean" => "true or false".into(),
        "string" => "a string".into(),
        "array" => "a list".into(),
        "object" => "a mapping".into(),
        "integer" => "a whole number".into(),
        "number" => "a number".into(),
        other => other.into(),
    }
}
