//! Reading the config file: each setting with the line it is on, and every
//! unknown table or key reported with its line.

use super::schema;

pub struct Entry {
    pub key: &'static str,
    pub value: toml::Value,
    pub line: usize,
}

/// A problem at a line of the file.
pub struct LineProblem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

pub fn read(text: &str) -> Result<Vec<Entry>, Vec<LineProblem>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        vec![LineProblem {
            line: e.span().map(|s| line_of(text, s.start)),
            key: None,
            message: e.message().to_string(),
        }]
    })?;
    let lines = key_lines(text);
    let line = |key: &str| lines.iter().find(|(k, _)| k == key).map(|(_, l)| *l);
    let tables = schema::tables();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in &table {
        let Some(inner) = value.as_table() else {
            problems.push(LineProblem {
                line: line(name),
                key: Some(name.clone()),
                message: format!(
                    "settings live in tables ({}); `{name}` is not in one",
                    tables
                        .iter()
                        .map(|t| format!("[{t}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            continue;
        };
        if !tables.contains(&name.as_str()) {
            let hint = tables
                .iter()
                .find(|t| tasuki_actions::language::model::edit_distance(name, t) <= 3)
                .map(|t| format!("; did you mean [{t}]?"))
                .unwrap_or_else(|| format!("; the tables are {}", tables.join(", ")));
            problems.push(LineProblem {
                line: line(name),
                key: Some(name.clone()),
                message: format!("unknown table [{name}]{hint}"),
            });
            continue;
        }
        for (k, v) in inner {
            let full = format!("{name}.{k}");
            match schema::find(&full) {
                Some(key) => entries.push(Entry {
                    key: key.name,
                    value: v.clone(),
                    line: line(&full).unwrap_or(0),
                }),
                None => problems.push(LineProblem {
                    line: line(&full),
                    key: Some(full.clone()),
                    message: format!(
                        "unknown key{}",
                        schema::closest(&full)
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_else(|| format!(
                                "; [{name}] holds {}",
                                schema::KEYS
                                    .iter()
                                    .filter_map(|k| k.name.strip_prefix(&format!("{name}.")))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                    ),
                }),
            }
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The line of every key one or two levels deep (`table` and
/// `table.key`), from the parser's spans.
fn key_lines(text: &str) -> Vec<(String, usize)> {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in doc.get_ref().iter() {
        let name = k.get_ref().to_string();
        out.push((name.clone(), line_of(text, k.span().start)));
        if let toml::de::DeValue::Table(inner) = v.get_ref() {
            for (ik, _) in inner.iter() {
                out.push((
                    format!("{name}.{}", ik.get_ref()),
                    line_of(text, ik.span().start),
                ));
            }
        }
    }
    out
}
