//! Named credentials: a workflow declares the ones it uses under
//! `credentials:` (name → kind), reads their fields as
//! `${credentials.NAME.FIELD}`, and receives their values from whoever
//! runs it (a robot's lease, `tasuki run --credentials-file`). Declaring
//! the kind, not just the name, lets a workflow be validated field by
//! field without any value at hand (`tasuki validate`, a hub's upload).
//! Every value is a secret: [`BoundCredentials::secret_values`] feeds the
//! masker.

use serde_json::{Map, Value};

use super::model::is_identifier;
use super::problem::{Problems, join};
use super::template::describe;

/// The template root credentials are read under.
pub const ROOT: &str = "credentials";

/// The most a `file` credential's content may hold.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// The most any other field may hold.
pub const MAX_FIELD_BYTES: usize = 4 * 1024;
/// A `file` credential's lines shorter than this are not masked on their
/// own (a lone `}` or `-----` would mask every line that has one); the
/// content as a whole always is.
const MIN_MASKED_LINE: usize = 8;
/// A credential name's longest form (names are identifiers).
pub const MAX_NAME_CHARS: usize = 64;

/// What a credential holds, and so which fields a template may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    UsernamePassword,
    Token,
    File,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 3] = [
        CredentialKind::UsernamePassword,
        CredentialKind::Token,
        CredentialKind::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::UsernamePassword => "username_password",
            CredentialKind::Token => "token",
            CredentialKind::File => "file",
        }
    }

    pub fn parse(name: &str) -> Option<CredentialKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kinds' names, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// The fields a credential of this kind has, every one required.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            CredentialKind::UsernamePassword => &["username", "password"],
            CredentialKind::Token => &["token"],
            CredentialKind::File => &["content"],
        }
    }

    /// The fields a template may read: the stored ones, and a `file`'s
    /// `path`, the private file the runner writes its content to.
    pub fn readable_fields(self) -> &'static [&'static str] {
        match self {
            CredentialKind::File => &["content", "path"],
            other => other.fields(),
        }
    }

    /// The most one field may hold, in bytes.
    pub fn max_field_bytes(self) -> usize {
        match self {
            CredentialKind::File => MAX_FILE_BYTES,
            _ => MAX_FIELD_BYTES,
        }
    }
}

/// One credential a workflow declares.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSpec {
    pub name: String,
    pub kind: CredentialKind,
}

/// Lowers `credentials:` (a mapping of names to kinds).
pub(crate) fn lower(value: &Value, path: &str, problems: &mut Problems) -> Vec<CredentialSpec> {
    let map = match value {
        Value::Null => return Vec::new(),
        Value::Object(map) => map,
        other => {
            problems.add(
                path,
                format!(
                    "expected a mapping of credential names to kinds, such as \
                     `credentials: {{shop_login: username_password}}`, found {}",
                    describe(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut specs = Vec::new();
    for (name, kind) in map {
        let here = join(path, name);
        if !is_identifier(name) {
            problems.add(
                &here,
                format!(
                    "credential name `{name}` must start with a letter or `_` and contain only \
                     letters, digits, `_` and `-` (at most {MAX_NAME_CHARS} characters)"
                ),
            );
            continue;
        }
        match kind {
            Value::String(k) => match CredentialKind::parse(k) {
                Some(kind) => specs.push(CredentialSpec {
                    name: name.clone(),
                    kind,
                }),
                None => problems.add(
                    &here,
                    format!(
                        "unknown credential kind `{k}`; expected one of: {}",
                        CredentialKind::names()
                    ),
                ),
            },
            other => problems.add(
                &here,
                format!(
                    "expected a credential kind ({}), found {}",
                    CredentialKind::names(),
                    describe(other)
                ),
            ),
        }
    }
    specs
}

/// Checks a `${credentials...}` reference against the declared ones:
/// `credentials.NAME.FIELD`, nothing shorter (a whole credential would
/// put every field in one value) and nothing longer (fields are text).
pub(crate) fn check_reference(
    declared: &[CredentialSpec],
    segments: &[super::template::Segment],
) -> Result<(), String> {
    use super::template::Segment;
    let declared_names = || {
        if declared.is_empty() {
            "the workflow declares none under `credentials:`".to_string()
        } else {
            format!(
                "the workflow declares: {}",
                declared
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let Some(Segment::Key(name)) = segments.first() else {
        return Err("write `credentials.NAME.FIELD`".into());
    };
    let Some(spec) = declared.iter().find(|c| &c.name == name) else {
        return Err(format!(
            "no credential named `{name}` is declared under `credentials`; {}",
            declared_names()
        ));
    };
    let fields = spec.kind.readable_fields();
    match segments.get(1) {
        Some(Segment::Key(field)) if fields.contains(&field.as_str()) => {}
        Some(Segment::Key(field)) => {
            return Err(format!(
                "a `{}` credential has no field `{field}`; its fields are {}",
                spec.kind.as_str(),
                fields.join(", ")
            ));
        }
        _ => {
            return Err(format!(
                "write `credentials.{name}.FIELD`, where FIELD is one of {}",
                fields.join(", ")
            ));
        }
    }
    if segments.len() > 2 {
        return Err(format!(
            "`credentials.{name}.{}` is text; nothing can be read below it",
            fields
                .iter()
                .find(|f| matches!(segments.get(1), Some(Segment::Key(k)) if k == *f))
                .unwrap_or(&"")
        ));
    }
    Ok(())
}

/// Values given for credentials: name → field → text.
pub type CredentialValues = Map<String, Value>;

/// The credentials a session reads, checked against its workflow.
#[derive(Debug, Clone, Default)]
pub struct BoundCredentials {
    /// `{name: {field: text}}`, as templates read it.
    pub values: Map<String, Value>,
    /// Every field's text, for the masker.
    pub secret_values: Vec<String>,
}

/// Binds the credentials the workflow declares from `given`. Every
/// declared one must be given, with exactly its kind's fields as text;
/// credentials given but not declared are left out (a credentials file
/// may serve several workflows). Problems name the credential and field,
/// never a value.
pub fn bind_credentials(
    declared: &[CredentialSpec],
    given: &CredentialValues,
    origin: &str,
) -> Result<BoundCredentials, Problems> {
    let mut problems = Problems::default();
    let mut bound = BoundCredentials::default();
    for spec in declared {
        let at = join(ROOT, &spec.name);
        let Some(value) = given.get(&spec.name) else {
            problems.add(
                &at,
                format!(
                    "the workflow uses the `{}` credential `{}`, and {origin} has none of that name",
                    spec.kind.as_str(),
                    spec.name
                ),
            );
            continue;
        };
        let Value::Object(fields) = value else {
            problems.add(
                &at,
                format!(
                    "expected a mapping of fields ({}), found {}",
                    spec.kind.fields().join(", "),
                    kind_of(value)
                ),
            );
            continue;
        };
        let mut out = Map::new();
        for field in spec.kind.fields() {
            match fields.get(*field) {
                Some(Value::String(text)) if text.len() <= spec.kind.max_field_bytes() => {
                    bound.secret_values.push(text.clone());
                    if spec.kind == CredentialKind::File {
                        // Logs are lines: a file's lines are masked one
                        // by one too.
                        bound.secret_values.extend(
                            text.lines()
                                .map(str::trim)
                                .filter(|l| l.len() >= MIN_MASKED_LINE)
                                .map(String::from),
                        );
                    }
                    out.insert((*field).to_string(), Value::String(text.clone()));
                }
                Some(Value::String(text)) => problems.add(
                    join(&at, field),
                    format!(
                        "{} bytes; a `{}` credential's field holds at most {}",
                        text.len(),
                        spec.kind.as_str(),
                        spec.kind.max_field_bytes()
                    ),
                ),
                Some(other) => problems.add(
                    join(&at, field),
                    format!("expected text, found {}", kind_of(other)),
                ),
                None => problems.add(
                    join(&at, field),
                    format!(
                        "missing field `{field}` of the `{}` credential `{}` (from {origin})",
                        spec.kind.as_str(),
                        spec.name
                    ),
                ),
            }
        }
        for key in fields.keys() {
            if !spec.kind.fields().contains(&key.as_str()) {
                problems.add(
                    join(&at, key),
                    format!(
                        "a `{}` credential has no field `{key}`; its fields are {}",
                        spec.kind.as_str(),
                        spec.kind.fields().join(", ")
                    ),
                );
            }
        }
        bound.values.insert(spec.name.clone(), Value::Object(out));
    }
    if problems.is_empty() {
        Ok(bound)
    } else {
        Err(problems)
    }
}

/// The private files of a session's `file` credentials, removed when
/// dropped (the session's end).
#[derive(Debug, Default)]
pub struct CredentialFiles {
    dir: Option<std::path::PathBuf>,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for CredentialFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes each `file` credential's content to a file only its owner can
/// read, in `private_dir`'s `credentials` folder (0700; a robot's session
/// has one, removed with it) or else in a private temporary folder, and
/// sets its `path` field in `values` to it. Nothing is written for a
/// workflow without `file` credentials.
pub fn write_files(
    declared: &[CredentialSpec],
    values: &mut Map<String, Value>,
    private_dir: Option<&std::path::Path>,
) -> std::io::Result<CredentialFiles> {
    let files: Vec<&CredentialSpec> = declared
        .iter()
        .filter(|c| c.kind == CredentialKind::File && values.contains_key(&c.name))
        .collect();
    if files.is_empty() {
        return Ok(CredentialFiles::default());
    }
    let (dir, temp) = match private_dir {
        Some(p) => {
            let dir = p.join("credentials");
            crate::builtin::process::private_dir_all(&dir)?;
            (dir, None)
        }
        None => {
            // tempfile makes the folder 0700 on Unix.
            let temp = tempfile::Builder::new()
                .prefix("tasuki-credentials-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let guard = CredentialFiles {
        dir: Some(dir.clone()),
        _temp: temp,
    };
    for spec in files {
        let Some(Value::Object(fields)) = values.get_mut(&spec.name) else {
            continue;
        };
        let content = fields
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let path = dir.join(&spec.name);
        crate::builtin::process::write_private_file(&path, &content)?;
        fields.insert("path".into(), Value::String(path.display().to_string()));
    }
    Ok(guard)
}

/// A value's type, never the value: what is described here is secret.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<CredentialSpec> {
        vec![CredentialSpec {
            name: "site".into(),
            kind: CredentialKind::UsernamePassword,
        }]
    }

    #[test]
    fn binds_declared_credentials_and_collects_their_values_for_masking() {
        let given = json!({"site": {"username": "ann", "password": "hunter2"},
                           "other": {"token": "t"}});
        let bound = bind_credentials(&specs(), given.as_object().unwrap(), "the file").unwrap();
        assert_eq!(
            Value::Object(bound.values),
            json!({"site": {"username": "ann", "password": "hunter2"}})
        );
        assert_eq!(bound.secret_values, ["ann", "hunter2"]);
    }

    #[test]
    fn problems_name_the_field_and_never_the_value() {
        let given = json!({"site": {"username": 7, "pasword": "hunter2"}});
        let problems = bind_credentials(&specs(), given.as_object().unwrap(), "the file")
            .unwrap_err()
            .0;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "credentials.site.username",
                "credentials.site.password",
                "credentials.site.pasword"
            ]
        );
        assert!(problems.iter().all(|p| !p.message.contains("hunter2")));
        let missing = bind_credentials(&specs(), &Map::new(), "the file")
            .unwrap_err()
            .0;
        assert_eq!(missing[0].path, "credentials.site");
    }
}

#[cfg(test)]
mod validation_tests {
    use crate::language::{LoadOptions, parse_workflow};
    use crate::runtime::registry::Registry;

    fn problems(text: &str) -> Vec<(String, String)> {
        parse_workflow(
            text,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .unwrap_err()
        .0
        .into_iter()
        .map(|p| (p.path, p.message))
        .collect()
    }

    const HEAD: &str =
        "version: 1\nname: w\ncredentials:\n  site: username_password\n  api: token\nsteps:\n";

    #[test]
    fn declared_credentials_and_their_fields_validate() {
        let text = format!(
            "{HEAD}  - id: a\n    action: log\n    with: {{message: \"${{credentials.site.username}} ${{credentials.api.token}}\"}}\n"
        );
        let w = parse_workflow(
            &text,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(w.credentials.len(), 2);
    }

    #[test]
    fn an_unknown_credential_or_field_is_refused_at_its_field_path() {
        let text = format!(
            "{HEAD}  - id: a\n    action: log\n    with: {{message: \"${{credentials.shop.username}}\"}}\n  - id: b\n    action: log\n    with: {{message: \"${{credentials.site.token}}\"}}\n  - id: c\n    action: log\n    with: {{message: \"${{credentials.site}}\"}}\n"
        );
        let p = problems(&text);
        assert_eq!(p[0].0, "steps[0].with.message");
        assert!(
            p[0].1
                .contains("no credential named `shop` is declared under `credentials`; the workflow declares: site, api"),
            "{p:?}"
        );
        assert_eq!(p[1].0, "steps[1].with.message");
        assert!(
            p[1].1
                .contains("a `username_password` credential has no field `token`; its fields are username, password"),
            "{p:?}"
        );
        assert_eq!(p[2].0, "steps[2].with.message");
        assert!(p[2].1.contains("write `credentials.site.FIELD`"), "{p:?}");
    }

    #[test]
    fn the_declaration_is_checked() {
        let p = problems(
            "version: 1\nname: w\ncredentials:\n  site: password\n  9x: token\n  ok: [1]\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n",
        );
        let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            ["credentials.site", "credentials.9x", "credentials.ok"],
            "{p:?}"
        );
        assert!(
            p[0].1.contains("unknown credential kind `password`"),
            "{p:?}"
        );
        // `credentials` is a root, not a variable name.
        let p = problems(
            "version: 1\nname: w\nsteps:\n  - id: a\n    action: set\n    with: {credentials: 1}\n",
        );
        assert_eq!(p[0].0, "steps[0].with.credentials", "{p:?}");
    }
}
