//! Reads a YAML or JSON document into a `serde_json::Value`, together with
//! an index from field paths to the line and column where each node starts.
//!
//! The model is built from the plain value so that validation can report
//! every problem at once (serde derive stops at the first one); the index
//! lets each problem point back into the file.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::problem::{self, Problem};

/// Documents larger than this are refused before parsing. Workflows are
/// hand-written; a multi-megabyte one is a mistake or an attack.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting accepted, in YAML and JSON alike.
pub const MAX_DEPTH: usize = 64;

/// Most values in a YAML document, counting each use of an alias.
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// JSON when the name says so; YAML otherwise (YAML is also a superset).
    pub fn from_file_name(name: &str) -> Format {
        if name.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// A parsed document and where each of its nodes came from.
#[derive(Debug, Default)]
pub struct Located {
    pub value: Value,
    positions: HashMap<String, (u64, u64)>,
}

impl Located {
    /// The position of `path`, or of its nearest ancestor that has one
    /// (a missing field is reported at the object that lacks it).
    pub fn position(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent_path(p);
        }
    }

    pub fn from_value(value: Value) -> Located {
        Located {
            value,
            positions: HashMap::new(),
        }
    }
}

fn parent_path(path: &str) -> &str {
    // Quoted keys (`a["x.y"]`) are rare; cutting at the last separator is
    // good enough for locating, which is best-effort by nature.
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

pub fn parse(text: &str, format: Format) -> Result<Located, Problem> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Problem::new(
            "",
            format!(
                "document is {} bytes; the limit is {} bytes",
                text.len(),
                MAX_DOCUMENT_BYTES
            ),
        ));
    }
    match format {
        Format::Yaml => parse_yaml(text),
        Format::Json => parse_json(text),
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut budget = options.budget.clone().unwrap_or_default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    options.budget = Some(budget);
    options
}

fn parse_yaml(text: &str) -> Result<Located, Problem> {
    let root: Spanned<Node> =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
            let problem = Problem::new("", format!("invalid YAML: {}", yaml_message(&e)));
            match e.location() {
                Some(loc) if loc.line() > 0 => problem.at(loc.line(), loc.column()),
                _ => problem,
            }
        })?;
    let mut positions = HashMap::new();
    let value = flatten(root, String::new(), &mut positions);
    Ok(Located { value, positions })
}

/// The parser's message for a user: without the location (the problem
/// carries it), without hints about the library's own options, and with
/// the limits said in the same words as for JSON.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach;
    let mut inner = e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = inner
    {
        inner = error;
    }
    match inner {
        serde_saphyr::Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } => too_deep(),
        serde_saphyr::Error::Budget {
            breach: BudgetBreach::Nodes { .. },
            ..
        } => {
            format!("document has more than {MAX_NODES} values (each use of an alias counts)")
        }
        _ => {
            let message = first_line(&serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                e,
            ));
            if message == "recursion limit exceeded" {
                too_deep()
            } else {
                message
            }
        }
    }
}

fn too_deep() -> String {
    format!("document is nested deeper than {MAX_DEPTH} levels")
}

fn parse_json(text: &str) -> Result<Located, Problem> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let value = StrictJson { depth: 0 }
        .deserialize(&mut reader)
        .and_then(|value| reader.end().map(|()| value))
        .map_err(|e| {
            Problem::new("", format!("invalid JSON: {e}")).at(e.line() as u64, e.column() as u64)
        })?;
    // JSON is YAML, so the YAML reader can tell where each node is; if it
    // disagrees with the JSON (it should not), locations are simply absent.
    // JSON allows characters in strings that YAML refuses (DEL, C1
    // controls); a space in their place moves no line or column.
    let yaml_safe: String = text
        .chars()
        .map(|c| if yaml_printable(c) { c } else { ' ' })
        .collect();
    let positions = parse_yaml(&yaml_safe)
        .map(|l| l.positions)
        .unwrap_or_default();
    Ok(Located { value, positions })
}

/// YAML 1.2's printable characters (its `c-printable`).
fn yaml_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}'
}

/// Reads a JSON value the way the YAML reader reads YAML: a duplicate key
/// is refused (`serde_json::Value` would silently keep the last one), and
/// so is nesting deeper than `MAX_DEPTH`, each at the line and column where
/// it happens.
#[derive(Clone, Copy)]
struct StrictJson {
    /// How many lists and objects enclose the value being read.
    depth: usize,
}

impl StrictJson {
    fn nested<E: de::Error>(self) -> Result<StrictJson, E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom(too_deep()))
        } else {
            Ok(StrictJson {
                depth: self.depth + 1,
            })
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictJson {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictJson {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn flatten(
    node: Spanned<Node>,
    path: String,
    positions: &mut HashMap<String, (u64, u64)>,
) -> Value {
    let loc = node.referenced;
    if loc.line() > 0 {
        positions.insert(path.clone(), (loc.line(), loc.column()));
    }
    match node.value {
        Node::Scalar(v) => v,
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, problem::index(&path, i), positions))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (key, item) in entries {
                let child = flatten(item, problem::join(&path, &key), positions);
                map.insert(key, child);
            }
            Value::Object(map)
        }
    }
}

/// One YAML node. Children are `Spanned` so that every node carries its
/// location; serde-saphyr fills those in as it deserializes.
enum Node {
    Scalar(Value),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| Node::Scalar(Value::from(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(|v| Node::Scalar(Value::from(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Node::Scalar(Value::Number(n)))
            .ok_or_else(|| E::custom(format!("number {v} cannot be represented in JSON")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            if entries.iter().any(|(k, _)| *k == key.0) {
                return Err(de::Error::custom(format!("duplicate key `{}`", key.0)));
            }
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key.0, value));
        }
        Ok(Node::Map(entries))
    }
}

/// Mapping keys: YAML allows any scalar, JSON objects need strings.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_positions_point_at_nodes() {
        let text = "name: x\nsteps:\n  - id: a\n    with:\n      url: 5\n";
        let doc = parse(text, Format::Yaml).unwrap();
        assert_eq!(doc.value["steps"][0]["with"]["url"], 5);
        assert_eq!(doc.position("steps[0].with.url").map(|p| p.0), Some(5));
        assert_eq!(doc.position("steps[0].with.missing").map(|p| p.0), Some(5));
    }

    #[test]
    fn json_positions_come_from_the_yaml_reader() {
        let text = "{\n  \"name\": \"x\",\n  \"steps\": [\n    {\"id\": \"a\"}\n  ]\n}";
        let doc = parse(text, Format::Json).unwrap();
        assert_eq!(doc.position("steps[0].id").map(|p| p.0), Some(4));
    }

    /// Found by the `workflow` fuzz target: a DEL in a string left every
    /// problem of a JSON workflow without a line.
    #[test]
    fn json_positions_survive_characters_yaml_refuses() {
        let text =
            "{\n  \"name\": \"a\u{7f}\u{9f}b\",\n  \"steps\": [\n    {\"i\": \"log\"}\n  ]\n}";
        let doc = parse(text, Format::Json).unwrap();
        assert_eq!(doc.value["name"], "a\u{7f}\u{9f}b");
        assert_eq!(doc.position("steps[0].i").map(|p| p.0), Some(4));
    }

    #[test]
    fn strict_booleans_keep_yes_a_string() {
        let doc = parse("flag: yes\nother: true\n", Format::Yaml).unwrap();
        assert_eq!(doc.value["flag"], "yes");
        assert_eq!(doc.value["other"], true);
    }
}
