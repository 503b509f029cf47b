//! Reading the inputs of a local run: `--param` flags and the params and
//! secrets files. Every problem names the flag or file it came from.

use std::path::Path;

use serde_json::{Map, Value};
use tasuki_actions::language::params::ParamInputs;

pub fn parse_flags(flags: &[String]) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for flag in flags {
        match flag.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push((k.trim().to_string(), v.to_string())),
            _ => errors.push(format!(
                "--param {flag}: expected KEY=VALUE, such as --param user=alice"
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Reads a JSON or YAML mapping of values.
pub fn read_value_file(path: &Path, what: &str) -> Result<Map<String, Value>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{name}: cannot read the {what}: {e}"))?;
    let format = tasuki_actions::language::source::Format::from_file_name(&name.to_string());
    let doc = tasuki_actions::language::source::parse(&text, format).map_err(|p| {
        let at = p
            .line
            .map(|l| format!(":{l}:{}", p.column.unwrap_or(0)))
            .unwrap_or_default();
        format!("{name}{at}: {}", p.message)
    })?;
    match doc.value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "{name}: the {what} must be a mapping of param names to values, found {}",
            tasuki_actions::language::template::describe(&other)
        )),
    }
}

/// Warns when a secrets file can be read by others; it is not refused,
/// because a developer's laptop is not a robot.
#[cfg(unix)]
pub fn check_secrets_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "warning: {} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
pub fn check_secrets_permissions(_path: &Path) -> Option<String> {
    None
}

/// Reads `--credentials-file` (mode checked like the secrets file's). A
/// parse error is told without the text it quotes: that is a secret.
pub fn credentials(args: &crate::RunArgs) -> Result<Option<Map<String, Value>>, String> {
    let Some(p) = &args.credentials_file else {
        return Ok(None);
    };
    if let Some(w) = check_secrets_permissions(p) {
        eprintln!("{w}");
    }
    read_value_file(p, "credentials file")
        .map(Some)
        .map_err(|_| match std::fs::metadata(p) {
            Err(io) => format!("{}: cannot read the credentials file: {io}", p.display()),
            Ok(_) => format!(
                "{}: the credentials file is not a valid JSON or YAML mapping of credential \
                 names to their fields",
                p.display()
            ),
        })
}

pub fn gather(args: &crate::RunArgs) -> Result<ParamInputs, Vec<String>> {
    let mut errors = Vec::new();
    let flags = parse_flags(&args.params).unwrap_or_else(|e| {
        errors.extend(e);
        Vec::new()
    });
    let file = match &args.params_file {
        Some(p) => read_value_file(p, "params file").unwrap_or_else(|e| {
            errors.push(e);
            Map::new()
        }),
        None => Map::new(),
    };
    let secrets = match &args.secrets_file {
        Some(p) => {
            if let Some(w) = check_secrets_permissions(p) {
                eprintln!("{w}");
            }
            read_value_file(p, "secrets file").unwrap_or_else(|_| {
                // A parse error may quote the offending text, which is a
                // secret; a read error (a missing file) is safe to show.
                errors.push(match std::fs::metadata(p) {
                    Err(io) => format!("{}: cannot read the secrets file: {io}", p.display()),
                    Ok(_) => format!(
                        "{}: the secrets file is not a valid JSON or YAML mapping of names to values",
                        p.display()
                    ),
                });
                Map::new()
            })
        }
        None => Map::new(),
    };
    if errors.is_empty() {
        Ok(ParamInputs {
            flags,
            file,
            secrets,
        })
    } else {
        Err(errors)
    }
}
