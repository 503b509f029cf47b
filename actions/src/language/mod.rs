//! The workflow language: loading a file, the model, templates and
//! validation. Nothing here runs anything.

pub mod allowed;
pub mod argcheck;
pub mod calls;
pub mod credentials;
pub mod duration;
pub mod model;
pub mod params;
pub mod problem;
pub mod schema;
pub mod source;
pub mod template;
mod validate;

use std::path::Path;

use model::Workflow;
use problem::{Problem, Problems};
use source::{Format, Located};

use crate::runtime::registry::Registry;

/// What the loader needs to know beyond the file itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The environment variables `${env.NAME}` may read. `None` when the
    /// caller cannot know (the hub validating for some robot), in which
    /// case the robot checks again when it runs the session.
    pub env_allow: Option<Vec<String>>,
    /// The action families this robot runs (see [`allowed::Allowed`]);
    /// `None` allows every action.
    pub allowed_actions: Option<allowed::Allowed>,
    /// Whether this robot's browser may open local files (see
    /// `builtin/browser/navigation.rs`); `None` when the caller cannot
    /// know, as with `env_allow`.
    pub allow_file_urls: Option<bool>,
    /// Set by a hub, which knows pack actions only from what its robots
    /// offer: an action missing from the registry is then reported as one
    /// that no robot of the hub offers, followed by this text (what the
    /// fleet does offer). `None` (a robot, `tasuki validate`): it is an
    /// unknown action.
    pub fleet_offers: Option<String>,
    /// Where `call` steps find the workflows they run (`calls.rs`);
    /// `None`: a workflow with one is refused, at the step.
    pub calls: Option<calls::Calls>,
}

/// Parses and validates workflow text. `origin` names the file in every
/// problem and picks the format (`.json` is JSON, anything else YAML).
pub fn parse_workflow(
    text: &str,
    origin: &str,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Workflow, Problems> {
    let located = source::parse(text, Format::from_file_name(origin))
        .map_err(|p| locate(Problems(vec![p]), origin, None))?;
    let mut workflow = check_document(&located, registry, options)
        .map_err(|problems| locate(problems, origin, Some(&located)))?;
    workflow.warnings = locate(
        std::mem::take(&mut workflow.warnings),
        origin,
        Some(&located),
    );
    Ok(workflow)
}

/// The params a workflow's text declares, read as the loader reads them
/// but without validating the steps; `None` for text that does not parse
/// or lower without a problem. For a hub that stored the text validated,
/// and must read its params again (`tasuki-hub`'s start).
pub fn declared_params(text: &str, origin: &str) -> Option<Vec<model::ParamSpec>> {
    let located = source::parse(text, Format::from_file_name(origin)).ok()?;
    match model::lower(&located.value) {
        (Some(workflow), problems) if problems.is_empty() => Some(workflow.params),
        _ => None,
    }
}

/// Validates an already-parsed document, such as a JSON body the hub received.
pub fn check_value(
    value: serde_json::Value,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Workflow, Problems> {
    check_document(&Located::from_value(value), registry, options)
}

fn check_document(
    located: &Located,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Workflow, Problems> {
    let (workflow, mut problems) = model::lower(&located.value);
    let Some(mut workflow) = workflow else {
        return Err(problems);
    };
    let (errors, warnings) = validate::validate(&workflow, registry, options);
    problems.extend(errors);
    workflow.warnings.extend(warnings);
    if problems.is_empty() {
        match &options.calls {
            Some(calls) => problems.extend(calls::resolve(&mut workflow, calls, registry, options)),
            None => {
                for step in workflow.all_steps() {
                    if step.action == model::CONTROL_CALL {
                        problems.add(
                            problem::join(&step.path, "action"),
                            "`call` runs a workflow found by name, and nothing here can find one",
                        );
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(workflow)
    } else {
        Err(problems)
    }
}

/// Reads and validates a workflow file.
pub fn load_workflow(
    path: &Path,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Workflow, Problems> {
    let origin = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| {
        Problems(vec![Problem {
            file: Some(origin.clone()),
            ..Problem::new("", format!("cannot read the workflow file: {e}"))
        }])
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        Problems(vec![Problem {
            file: Some(origin.clone()),
            ..Problem::new(
                "",
                format!(
                    "the file is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        }])
    })?;
    parse_workflow(&text, &origin, registry, options)
}

pub(crate) fn locate(mut problems: Problems, origin: &str, located: Option<&Located>) -> Problems {
    for p in &mut problems.0 {
        p.file = Some(origin.to_string());
        if p.line.is_none()
            && let Some((line, col)) = located.and_then(|l| l.position(&p.path))
        {
            p.line = Some(line);
            p.column = Some(col);
        }
    }
    // Document order reads best; problems without a line go first.
    problems.0.sort_by_key(|p| (p.line, p.column));
    problems
}
