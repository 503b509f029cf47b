//! One setting's value: read from the file's TOML or from text (an
//! environment variable or a flag), and checked for its kind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::schema::Kind;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    List(Vec<String>),
    Count(u64),
    Bool(bool),
    /// The duration and the text it was written as.
    Duration(Duration, String),
    Path(PathBuf),
    Addr(SocketAddr),
    Size(u32, u32),
}

/// From the file. Relative paths are relative to the file's directory.
pub fn from_toml(kind: Kind, value: &toml::Value, base: &Path) -> Result<Value, String> {
    let wrong = |want: &str| {
        Err(format!(
            "must be {want}, not {} `{value}`",
            article(value.type_str())
        ))
    };
    match kind {
        Kind::Labels | Kind::List | Kind::UrlList => {
            let Some(items) = value.as_array() else {
                return wrong("a list of strings, such as [\"a\", \"b\"]");
            };
            let mut list = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => list.push(s.to_string()),
                    None => return Err(format!("item {i} must be a string, not `{item}`")),
                }
            }
            check(kind, Value::List(list))
        }
        Kind::Count { .. } => match value.as_integer() {
            Some(n) if n >= 0 => check(kind, Value::Count(n as u64)),
            Some(n) => Err(format!("must not be negative, not {n}")),
            None => wrong("a whole number"),
        },
        Kind::Bool => match value.as_bool() {
            Some(b) => Ok(Value::Bool(b)),
            None => wrong("true or false"),
        },
        _ => match value.as_str() {
            Some(s) => from_text(kind, s, base),
            None => wrong("a string"),
        },
    }
}

/// From an environment variable or a flag. Lists are comma-separated;
/// relative paths are relative to `base` (the current directory).
pub fn from_text(kind: Kind, text: &str, base: &Path) -> Result<Value, String> {
    let value = match kind {
        Kind::Text | Kind::Url | Kind::RobotName | Kind::Choice(_) => Value::Text(text.to_string()),
        Kind::Labels | Kind::List | Kind::UrlList => Value::List(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        ),
        Kind::Path => {
            if text.is_empty() {
                return Err("must not be empty".into());
            }
            Value::Path(base.join(text))
        }
        Kind::Count { .. } => Value::Count(
            text.trim()
                .parse()
                .map_err(|_| format!("must be a whole number, not `{text}`"))?,
        ),
        Kind::Bool => match text.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("must be true or false, not `{text}`")),
        },
        Kind::Duration => {
            let d = tasuki_actions::language::duration::parse_duration(text)?;
            Value::Duration(d, text.trim().to_string())
        }
        // A bare port listens on loopback: reaching it from elsewhere
        // takes naming the address.
        Kind::Addr => Value::Addr(match text.trim().parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => text.trim().parse().map_err(|_| {
                format!(
                    "must be a port (on loopback) or an IP address and port, such as `9464` or \
                     `127.0.0.1:9464`, not `{text}`"
                )
            })?,
        }),
        Kind::WindowSize => {
            let size = text.split_once('x').and_then(|(w, h)| {
                Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?))
            });
            match size {
                Some((w, h)) if (100..=10_000).contains(&w) && (100..=10_000).contains(&h) => {
                    Value::Size(w, h)
                }
                _ => {
                    return Err(format!(
                        "must be WIDTHxHEIGHT in pixels (100 to 10000 each), such as `1280x800`, not `{text}`"
                    ));
                }
            }
        }
    };
    check(kind, value)
}

fn check(kind: Kind, value: Value) -> Result<Value, String> {
    match (&kind, &value) {
        (Kind::Url, Value::Text(url)) => check_url(url)?,
        (Kind::UrlList, Value::List(urls)) => {
            for (i, url) in urls.iter().enumerate() {
                check_url(url).map_err(|e| format!("item {i}: {e}"))?;
            }
        }
        (Kind::RobotName, Value::Text(name)) => {
            tasuki_protocol::robot::check_robot_name(name).map_err(|e| e.to_string())?;
        }
        (Kind::Labels, Value::List(labels)) => {
            for (i, l) in labels.iter().enumerate() {
                tasuki_protocol::robot::check_label(l).map_err(|e| format!("label {i}: {e}"))?;
            }
        }
        (Kind::Count { min, max }, Value::Count(n)) if n < min || n > max => {
            return Err(format!("must be from {min} to {max}, not {n}"));
        }
        (Kind::Choice(choices), Value::Text(s)) if !choices.contains(&s.as_str()) => {
            return Err(format!(
                "must be one of {}, not `{s}`",
                choices
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        (Kind::Text, Value::Text(s)) if s.is_empty() => return Err("must not be empty".into()),
        _ => {}
    }
    Ok(value)
}

fn check_url(url: &str) -> Result<(), String> {
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
        return Err(format!(
            "`{}` is not an http:// or https:// URL",
            masked_url(url)
        ));
    }
    Ok(())
}

impl Value {
    /// As `tasuki config show` prints it: TOML-like, credentials in every
    /// URL masked (the hub's URL as much as a WebDriver's).
    pub fn shown(&self, kind: Kind) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        match self {
            Value::Text(s) if kind == Kind::Url => quote(&masked_url(s)),
            Value::Text(s) => quote(s),
            Value::List(l) if kind == Kind::UrlList => format!(
                "[{}]",
                l.iter()
                    .map(|s| quote(&masked_url(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::List(l) => format!(
                "[{}]",
                l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
            Value::Count(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Duration(_, text) => quote(text),
            Value::Path(p) => quote(&p.display().to_string()),
            Value::Addr(a) => quote(&a.to_string()),
            Value::Size(w, h) => quote(&format!("{w}x{h}")),
        }
    }
}

/// The URL with any `user:password@` replaced by `***@`.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}
