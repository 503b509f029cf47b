//! `call` steps: a workflow running another inline, on the same robot,
//! with params, its outputs the step's output.
//!
//! A called workflow is found by name in a [`Library`]: for `tasuki run`,
//! the file `NAME.yaml` (`.yml`, `.json`) beside the calling one; on a
//! robot, the sources its hub put in the lease; for the hub, its own
//! workflows. Every call is resolved when the workflow is loaded, so a
//! missing workflow, a cycle, a depth past `limits.subworkflow_depth`, or
//! params the called workflow does not take are refused before anything
//! runs, at the `call` step's field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::model::{
    CONTROL_CALL, DEFAULT_SUBWORKFLOW_DEPTH, Step, Workflow, is_identifier, nested, wait_kind,
};
use super::problem::{Problems, join};
use super::{LoadOptions, parse_workflow};
use crate::runtime::registry::Registry;

/// A called workflow's text, and the name its problems are reported under
/// (a file name, or `workflow NAME`).
pub struct Source {
    pub text: String,
    pub origin: String,
}

/// Where called workflows are found, by name.
pub trait Library: Send + Sync {
    /// The workflow named `name`, or why it cannot be had.
    fn find(&self, name: &str) -> Result<Source, String>;
}

/// A library of files: `NAME.yaml`, `.yml` or `.json` in one folder.
pub struct Folder(pub PathBuf);

impl Library for Folder {
    fn find(&self, name: &str) -> Result<Source, String> {
        for ext in ["yaml", "yml", "json"] {
            let path = self.0.join(format!("{name}.{ext}"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(Source {
                    text,
                    origin: path.display().to_string(),
                });
            }
        }
        Err(format!(
            "there is no {name}.yaml, {name}.yml or {name}.json in {}",
            self.0.display()
        ))
    }
}

/// A library of sources given by name (a lease's, or a hub's lookups).
#[derive(Default)]
pub struct Sources(pub BTreeMap<String, Source>);

impl Library for Sources {
    fn find(&self, name: &str) -> Result<Source, String> {
        self.0
            .get(name)
            .map(|s| Source {
                text: s.text.clone(),
                origin: s.origin.clone(),
            })
            .ok_or_else(|| format!("there is no workflow named `{name}`"))
    }
}

/// How `call` steps are resolved while loading: the library, and the
/// calls on the way to the workflow being loaded (for cycles and depth).
#[derive(Clone)]
pub struct Calls {
    pub library: Arc<dyn Library>,
    /// The names of the workflows calling the one being loaded, outermost
    /// first.
    pub stack: Vec<String>,
    /// The outermost workflow's `limits.subworkflow_depth`.
    pub depth: u64,
    /// Workflows loaded so far in this load, by name, with the depth of
    /// the calls below them: each is read and checked once, however many
    /// steps call it.
    loaded: Arc<Mutex<Loaded>>,
}

/// Workflows loaded for calls, by name, with how deep the calls below
/// each go.
type Loaded = BTreeMap<String, (Arc<Workflow>, u64)>;

/// The most workflows one load reads for its calls.
pub const MAX_CALLED_WORKFLOWS: usize = 100;
/// The most steps a session reports, its called workflows' included (a
/// robot's report is refused past it).
pub const MAX_REPORTED_STEPS: u64 = 10_000;

impl Calls {
    pub fn new(library: Arc<dyn Library>) -> Calls {
        Calls {
            library,
            stack: Vec::new(),
            depth: DEFAULT_SUBWORKFLOW_DEPTH,
            loaded: Arc::default(),
        }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How deep the calls below `workflow` go (0: it calls nothing).
fn height(workflow: &Workflow, loaded: &Loaded) -> u64 {
    workflow
        .called
        .keys()
        .map(|name| loaded.get(name).map_or(1, |(_, h)| h + 1))
        .max()
        .unwrap_or(0)
}

/// How many steps a session of `workflow` reports, its calls' expanded,
/// counted once per called workflow (`memo`), stopping past `cap`.
fn reported_steps(workflow: &Workflow, memo: &mut BTreeMap<String, u64>, cap: u64) -> u64 {
    let mut total = 0u64;
    for step in workflow.all_steps() {
        total = total.saturating_add(1);
        if step.action == CONTROL_CALL
            && let Some(name) = called_name(step)
            && let Some(called) = workflow.called.get(name)
        {
            let inner = match memo.get(name) {
                Some(n) => *n,
                None => {
                    let n = reported_steps(called, memo, cap);
                    memo.insert(name.to_string(), n);
                    n
                }
            };
            total = total.saturating_add(inner);
        }
        if total > cap {
            return total;
        }
    }
    total
}

impl fmt::Debug for Calls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calls")
            .field("stack", &self.stack)
            .field("depth", &self.depth)
            .finish()
    }
}

/// The name a `call` step calls, when it is a literal name.
pub fn called_name(step: &Step) -> Option<&str> {
    step.with.get("workflow").and_then(Value::as_str)
}

/// The `call` steps' argument shapes: `workflow` (a literal name) and
/// `params` (a mapping). (field under `with`, message)
pub fn check_args(step: &Step) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for key in step.with.keys() {
        if key != "workflow" && key != "params" {
            problems.push((
                key.clone(),
                format!("unknown argument `{key}`; `call` takes `workflow` and `params`"),
            ));
        }
    }
    match step.with.get("workflow") {
        None => problems.push((
            "workflow".into(),
            "missing required argument `workflow`: the name of the workflow to run".into(),
        )),
        Some(Value::String(name)) if is_identifier(name) => {}
        Some(Value::String(name)) => problems.push((
            "workflow".into(),
            format!(
                "`{name}` is not a workflow name: letters, digits, `_` and `-`, written out \
                 (a call is resolved before anything runs, so no templates)"
            ),
        )),
        Some(other) => problems.push((
            "workflow".into(),
            format!(
                "expected a workflow's name, found {}",
                super::template::describe(other)
            ),
        )),
    }
    match step.with.get("params") {
        None | Some(Value::Object(_)) => {}
        Some(other) => problems.push((
            "params".into(),
            format!(
                "expected a mapping of param names to values, found {}",
                super::template::describe(other)
            ),
        )),
    }
    problems
}

/// Loads every workflow `workflow`'s `call` steps name, recursively, into
/// `workflow.called`; problems at the calling step's fields.
pub fn resolve(
    workflow: &mut Workflow,
    calls: &Calls,
    registry: &Registry,
    options: &LoadOptions,
) -> Problems {
    let mut problems = Problems::default();
    let mut calls = calls.clone();
    if calls.stack.is_empty() {
        calls.depth = workflow
            .limits
            .subworkflow_depth
            .unwrap_or(DEFAULT_SUBWORKFLOW_DEPTH);
    }
    let steps: Vec<Step> = [&workflow.steps, &workflow.on_error, &workflow.finally]
        .into_iter()
        .flat_map(|s| nested(s))
        .filter(|s| s.action == CONTROL_CALL)
        .cloned()
        .collect();
    for step in steps {
        let Some(name) = called_name(&step) else {
            continue; // reported by check_args
        };
        let at = join(&join(&step.path, "with"), "workflow");
        if let Some(called) = workflow.called.get(name) {
            check_params(&step, called, &mut problems);
            continue;
        }
        let cached = calls.loaded().get(name).cloned();
        if let Some((called, below)) = cached {
            // Read already in this load: its calls are known to be no
            // cycle back through it; only the depth here is new.
            if calls.stack.len() as u64 + 1 + below > calls.depth {
                problems.add(
                    at,
                    format!(
                        "calling `{name}` here nests calls {} deep, past limits.subworkflow_depth \
                         ({}) of `{}`",
                        calls.stack.len() as u64 + 1 + below,
                        calls.depth,
                        calls.stack.first().unwrap_or(&workflow.name)
                    ),
                );
            } else {
                check_params(&step, &called, &mut problems);
                workflow.called.insert(name.to_string(), called);
            }
            continue;
        }
        if name == workflow.name || calls.stack.iter().any(|s| s == name) {
            let mut chain = calls.stack.clone();
            chain.push(workflow.name.clone());
            chain.push(name.to_string());
            problems.add(at, format!("`{name}` calls itself: {}", chain.join(" → ")));
            continue;
        }
        if calls.stack.len() as u64 + 1 > calls.depth {
            problems.add(
                at,
                format!(
                    "calling `{name}` here nests calls {} deep, past limits.subworkflow_depth ({}) \
                     of `{}`",
                    calls.stack.len() + 1,
                    calls.depth,
                    calls.stack.first().unwrap_or(&workflow.name)
                ),
            );
            continue;
        }
        if calls.loaded().len() >= MAX_CALLED_WORKFLOWS {
            problems.add(
                at,
                format!("the calls reach more than {MAX_CALLED_WORKFLOWS} workflows; call fewer"),
            );
            continue;
        }
        let source = match calls.library.find(name) {
            Ok(source) => source,
            Err(why) => {
                problems.add(at, format!("cannot find the workflow `{name}`: {why}"));
                continue;
            }
        };
        let mut deeper = calls.clone();
        deeper.stack.push(workflow.name.clone());
        let inner = LoadOptions {
            calls: Some(deeper),
            ..options.clone()
        };
        match parse_workflow(&source.text, &source.origin, registry, &inner) {
            Ok(called) => {
                if let Some(waiting) = called.steps.iter().find(|s| wait_kind(&s.action).is_some())
                {
                    problems.add(
                        at,
                        format!(
                            "`{name}` waits (its step `{}`); a called workflow may not wait, \
                             only the session's own steps",
                            waiting.id
                        ),
                    );
                    continue;
                }
                if !called.credentials.is_empty() {
                    problems.add(
                        at,
                        format!(
                            "`{name}` declares credentials; a called workflow reads none of its \
                             own: pass what it needs as params"
                        ),
                    );
                    continue;
                }
                check_params(&step, &called, &mut problems);
                let called = Arc::new(called);
                let below = height(&called, &calls.loaded());
                calls
                    .loaded()
                    .insert(name.to_string(), (called.clone(), below));
                workflow.called.insert(name.to_string(), called);
            }
            Err(inner_problems) => {
                problems.add(
                    at,
                    format!(
                        "the workflow `{name}` ({}) has problems: {}",
                        source.origin, inner_problems
                    ),
                );
            }
        }
    }
    if calls.stack.is_empty() && problems.is_empty() {
        let reported = reported_steps(workflow, &mut BTreeMap::new(), MAX_REPORTED_STEPS);
        if reported > MAX_REPORTED_STEPS {
            problems.add(
                "steps",
                format!(
                    "with the workflows it calls, a session would report more than \
                     {MAX_REPORTED_STEPS} steps; call fewer, or fewer times"
                ),
            );
        }
    }
    problems
}

/// The params a `call` step gives: each one the called workflow takes,
/// and every param it requires.
fn check_params(step: &Step, called: &Workflow, problems: &mut Problems) {
    let with = join(&step.path, "with");
    let given = match step.with.get("params") {
        Some(Value::Object(map)) => map.clone(),
        _ => Default::default(),
    };
    for (name, value) in &given {
        // A value written out (no template in it) is checked now, as the
        // run would check it.
        if let Some(spec) = called.param(name)
            && !value.to_string().contains("${")
            && let Err(e) = spec.check_value(value)
        {
            problems.add(
                join(&join(&with, "params"), name),
                format!(
                    "`{}` does not take this value for `{name}`: {e}",
                    called.name
                ),
            );
        }
        if !called.accept_undeclared_params && !called.params.iter().any(|p| &p.name == name) {
            let declared: Vec<&str> = called.params.iter().map(|p| p.name.as_str()).collect();
            problems.add(
                join(&join(&with, "params"), name),
                format!(
                    "`{}` takes no param `{name}`; it takes: {}",
                    called.name,
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
        }
    }
    for p in &called.params {
        if p.default.is_none() && !given.contains_key(&p.name) {
            problems.add(
                join(&with, "params"),
                format!("`{}` requires the param `{}`", called.name, p.name),
            );
        }
    }
}
