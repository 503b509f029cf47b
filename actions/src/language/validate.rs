//! Semantic checks on a lowered workflow: unique ids, known actions, typed
//! arguments, and that every `${...}` reference can be resolved from what
//! runs before it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::LoadOptions;
use super::argcheck;
use super::credentials::{self, CredentialSpec};
use super::model::{
    CONTROL_ACTIONS, CONTROL_CALL, CONTROL_FOR_EACH, CONTROL_PARALLEL, CONTROL_SET, CONTROL_TRY,
    Step, Workflow, check_variable_name, edit_distance, wait_kind,
};
use super::problem::{Problems, join, under};
use super::template::{PathExpr, Segment, Template, paths};
use crate::builtin::browser;
use crate::runtime::registry::Registry;
use crate::runtime::wait::{self, WaitKind};

const SHELL_RUN: &str = "shell.run";
const STEP_FIELDS_READABLE: &[&str] = &["output", "status", "error"];

/// The problems, and the warnings (see [`Workflow::warnings`]).
pub fn validate(
    workflow: &Workflow,
    registry: &Registry,
    options: &LoadOptions,
) -> (Problems, Problems) {
    let mut v = Validator {
        registry,
        options,
        problems: Problems::default(),
        warnings: Problems::default(),
        secret_params: workflow
            .params
            .iter()
            .filter(|p| p.secret)
            .map(|p| p.name.clone())
            .collect(),
        ids: HashMap::new(),
        all_ids: workflow.all_steps().iter().map(|s| s.id.clone()).collect(),
        params: workflow.params.iter().map(|p| p.name.clone()).collect(),
        credentials: &workflow.credentials,
        accept_undeclared_params: workflow.accept_undeclared_params,
        done: HashSet::new(),
        vars: HashSet::new(),
        in_error: false,
        may_wait: false,
        events: HashMap::new(),
    };
    // `finally` runs whatever became of the steps: a variable they set
    // (`set`, `save_as`) may never have been bound.
    let vars_at_start = v.vars.clone();
    // Waiting steps only between the top-level steps (`runtime/wait.rs`).
    v.may_wait = true;
    v.steps(&workflow.steps);
    v.may_wait = false;
    // Rendered once the steps have run (on success).
    for (name, value) in &workflow.outputs {
        v.templates_in(value, &join("outputs", name));
    }
    v.in_error = true;
    v.steps(&workflow.on_error);
    // After the steps and on_error, whichever of them ran: `error` is not
    // bound (a session that succeeded has none), nor are their variables.
    v.in_error = false;
    v.vars = vars_at_start;
    v.steps(&workflow.finally);
    (v.problems, v.warnings)
}

struct Validator<'a> {
    registry: &'a Registry,
    options: &'a LoadOptions,
    problems: Problems,
    warnings: Problems,
    secret_params: HashSet<String>,
    ids: HashMap<String, String>,
    all_ids: HashSet<String>,
    params: HashSet<String>,
    /// `credentials:`, which `${credentials.NAME.FIELD}` must name.
    credentials: &'a [CredentialSpec],
    /// The workflow takes undeclared params: a reference to one is
    /// resolved (or fails its step) only when the session runs.
    accept_undeclared_params: bool,
    /// Steps that have run before the one being checked.
    done: HashSet<String>,
    /// Variables defined before the step being checked.
    vars: HashSet<String>,
    /// Inside `on_error` or `catch`, where `${error}` is bound.
    in_error: bool,
    /// Checking the workflow's top-level `steps`, the only place a step
    /// may wait (`runtime/wait.rs` says why).
    may_wait: bool,
    /// Event names waited for, and where: one wait per name, so a
    /// delivery is never ambiguous.
    events: HashMap<String, String>,
}

impl Validator<'_> {
    /// A literal URL the browser would be sent to is checked now; one
    /// from a template is checked when the step runs.
    fn navigation(&mut self, step: &Step, with_path: &str) {
        if browser::NAVIGATING_ACTIONS.contains(&step.action.as_str())
            && let Some(Value::String(url)) = step.with.get("url")
            && !url.contains("${")
            && let Err(message) = browser::check_navigation(url, self.options.allow_file_urls)
        {
            self.problems.add(join(with_path, "url"), message);
        }
    }

    /// A secret param in a command line is readable by every local user
    /// (`ps`, `/proc/PID/cmdline`) while the process runs; `env` and
    /// `script` (a private file) are not.
    fn secrets_in_argv(&mut self, value: &Value, path: &str) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.secrets_in_argv(item, &super::problem::index(path, i));
                }
            }
            Value::String(text) if text.contains("${") => {
                let Ok(template) = Template::parse(text) else {
                    return; // reported as a problem already
                };
                let mut found = Vec::new();
                for (expr, _) in template.expressions() {
                    paths(expr, &mut found);
                }
                let mut named: Vec<&str> = Vec::new();
                for p in &found {
                    if p.root == credentials::ROOT {
                        if let Some(Segment::Key(name)) = p.segments.first() {
                            self.warnings.add(
                                path,
                                format!(
                                    "credential `{name}` is passed in `argv`, where every user \
                                     of the machine can read it while the process runs; pass \
                                     it in `env` or use it in a `script`"
                                ),
                            );
                        }
                        continue;
                    }
                    if p.root != "params" {
                        continue;
                    }
                    match p.segments.first() {
                        Some(Segment::Key(name)) if self.secret_params.contains(name) => {
                            named.push(name)
                        }
                        None => named.extend(self.secret_params.iter().map(String::as_str)),
                        _ => {}
                    }
                }
                named.sort_unstable();
                named.dedup();
                for name in named {
                    self.warnings.add(
                        path,
                        format!(
                            "secret param `{name}` is passed in `argv`, where every user of the \
                             machine can read it while the process runs (ps, /proc/PID/cmdline); \
                             pass it in `env` (such as `env: {{SECRET: \"${{params.{name}}}\"}}`) \
                             or use it in a `script`"
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn steps(&mut self, steps: &[Step]) {
        for step in steps {
            self.step(step);
        }
    }

    fn step(&mut self, step: &Step) {
        let id_path = join(&step.path, "id");
        if step.id.is_empty() {
            // Missing or malformed; already reported while lowering.
        } else if let Some(first) = self.ids.get(&step.id) {
            self.problems.add(
                &id_path,
                format!(
                    "duplicate step id `{}`; it is already used at {first}",
                    step.id
                ),
            );
        } else {
            self.ids.insert(step.id.clone(), step.path.clone());
        }

        if let Some(cond) = &step.condition {
            self.template(cond, &join(&step.path, "if"));
        }

        let with_path = join(&step.path, "with");
        let action = step.action.as_str();
        let is_control = CONTROL_ACTIONS.contains(&action);
        if !is_control && !action.is_empty() && self.registry.get(action).is_none() {
            let known: Vec<&str> = self
                .registry
                .names()
                .chain(CONTROL_ACTIONS.iter().copied())
                .collect();
            let close = known
                .iter()
                .map(|k| (edit_distance(action, k), *k))
                .filter(|(d, _)| *d <= 3)
                .min_by_key(|(d, _)| *d)
                .map(|(_, k)| k);
            let message = match (&self.options.fleet_offers, close) {
                (Some(offers), Some(k)) => format!(
                    "no robot of this hub offers `{action}` (did you mean `{k}`?); {offers}"
                ),
                (Some(offers), None) => format!("no robot of this hub offers `{action}`; {offers}"),
                (None, Some(k)) => format!("unknown action `{action}`; did you mean `{k}`?"),
                (None, None) => format!(
                    "unknown action `{action}`; known actions: {}",
                    known.join(", ")
                ),
            };
            self.problems.add(join(&step.path, "action"), message);
        } else if !is_control
            && let Some(allowed) = &self.options.allowed_actions
            && !allowed.allows(action)
        {
            self.problems.add(
                join(&step.path, "action"),
                format!(
                    "this robot refuses `{action}`: its allowed_actions are {allowed}; run the \
                     workflow on a robot that allows it, or ask the robot's operator"
                ),
            );
        }
        if !step.steps.is_empty() && action != CONTROL_FOR_EACH && action != CONTROL_TRY {
            self.problems.add(
                join(&step.path, "steps"),
                format!("only `for_each` and `try` steps have nested `steps`, not `{action}`"),
            );
        }
        if is_control {
            // The executor applies these per attempt of an action; a
            // control step has no attempt to bound or repeat.
            if step.timeout.is_some() {
                self.problems.add(join(&step.path, "timeout"), format!("`timeout` applies to actions, not to `{action}`; set it on the steps inside, or on the workflow"));
            }
            if step.retry.is_some() {
                self.problems.add(
                    join(&step.path, "retry"),
                    format!(
                        "`retry` applies to actions, not to `{action}`; set it on the steps inside"
                    ),
                );
            }
        }
        if !step.branches.is_empty() && action != CONTROL_PARALLEL {
            self.problems.add(
                join(&step.path, "branches"),
                format!("only `parallel` steps have `branches`, not `{action}`"),
            );
        }
        for (field, steps) in [("catch", &step.catch), ("finally", &step.finally)] {
            if !steps.is_empty() && action != CONTROL_TRY {
                self.problems.add(
                    join(&step.path, field),
                    format!("only `try` steps have `{field}`, not `{action}`"),
                );
            }
        }

        // Arguments are rendered before the step runs, in the outer scope.
        self.templates_in(&Value::Object(step.with.clone()), &with_path);

        let may_wait = std::mem::replace(&mut self.may_wait, false);
        match action {
            CONTROL_SET => {
                if step.with.is_empty() {
                    self.problems.add(&with_path, "`set` needs at least one variable under `with`, such as `with: {count: 0}`");
                }
                for key in step.with.keys() {
                    check_variable_name(key, &join(&with_path, key), &mut self.problems);
                }
            }
            CONTROL_FOR_EACH => self.for_each(step, &with_path),
            CONTROL_PARALLEL => self.parallel(step, &with_path),
            CONTROL_TRY => {
                if !step.with.is_empty() {
                    self.problems.add(
                        &with_path,
                        "`try` takes no arguments; put the guarded steps under `steps`",
                    );
                }
                if step.steps.is_empty() {
                    self.problems.add(
                        join(&step.path, "steps"),
                        "`try` needs the steps it guards under `steps`",
                    );
                }
                let vars_before = self.vars.clone();
                self.steps(&step.steps);
                let was = std::mem::replace(&mut self.in_error, true);
                self.steps(&step.catch);
                self.in_error = was;
                // The steps' and catch's variables may never have been
                // bound when the cleanup runs.
                let vars_after = std::mem::replace(&mut self.vars, vars_before);
                self.steps(&step.finally);
                self.vars = vars_after;
            }
            CONTROL_CALL => {
                for (field, message) in super::calls::check_args(step) {
                    self.problems.add(join(&with_path, &field), message);
                }
            }
            _ if let Some(kind) = wait_kind(action) => {
                if !may_wait {
                    self.problems.add(
                        join(&step.path, "action"),
                        format!(
                            "`{action}` may only be a step of the workflow's own `steps`, not \
                             inside `try`, `for_each`, `parallel`, `on_error` or `finally`: a \
                             session stops and starts again between top-level steps while it \
                             waits"
                        ),
                    );
                }
                if let Err(problems) = wait::parse(&step.id, kind, &step.with) {
                    for (path, message) in problems {
                        self.problems.add(under(&with_path, &path), message);
                    }
                }
                if let Some(Value::String(secret)) = step.with.get("secret")
                    && !secret.contains("${")
                {
                    self.problems.add(
                        join(&with_path, "secret"),
                        "give the signing key as a secret param or a credential \
                         (`${params.NAME}`, `${credentials.NAME.FIELD}`), not written in the file",
                    );
                }
                if kind == WaitKind::Event
                    && let Some(Value::String(name)) = step.with.get("event")
                    && let Some(first) = self.events.insert(name.clone(), step.path.clone())
                {
                    self.problems.add(
                        join(&with_path, "event"),
                        format!("the event `{name}` is waited for at {first} already; give each wait its own name"),
                    );
                }
            }
            _ => {
                if let (Some(schema), Some(action_impl)) =
                    (self.registry.schema(action), self.registry.get(action))
                {
                    argcheck::check(
                        &Value::Object(step.with.clone()),
                        schema,
                        &with_path,
                        &mut self.problems,
                    );
                    for (sub, message) in action_impl.check_args(&step.with) {
                        // An empty sub-path is about `with` as a whole; one
                        // with `.` or `[` is a path below it (`keys[1]`,
                        // `target.selector`).
                        let at = if sub.is_empty() {
                            with_path.clone()
                        } else if sub.contains(['.', '[']) {
                            format!("{with_path}.{sub}")
                        } else {
                            join(&with_path, &sub)
                        };
                        self.problems.add(at, message);
                    }
                }
                self.navigation(step, &with_path);
                if action == SHELL_RUN
                    && let Some(argv) = step.with.get("argv")
                {
                    self.secrets_in_argv(argv, &join(&with_path, "argv"));
                }
            }
        }

        self.may_wait = may_wait;
        self.done.insert(step.id.clone());
        if let Some(name) = &step.save_as {
            self.vars.insert(name.clone());
        }
        if action == CONTROL_SET {
            self.vars.extend(step.with.keys().cloned());
        }
    }

    /// Each branch sees what ran before the `parallel` step and its own
    /// steps, never another branch's (which may not have run yet); after
    /// it, every branch's steps have run. Variables set in a branch stay
    /// in it.
    fn parallel(&mut self, step: &Step, with_path: &str) {
        for (key, value) in &step.with {
            let at = join(with_path, key);
            match (key.as_str(), value) {
                ("max_parallel", Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
                ("max_parallel", Value::String(s)) if s.contains("${") => {}
                ("max_parallel", other) => self.problems.add(
                    at,
                    format!(
                        "expected a whole number of branches from 1, found {}",
                        super::template::describe(other)
                    ),
                ),
                ("on_failure", Value::String(s))
                    if s == "cancel_siblings" || s == "finish_siblings" => {}
                ("on_failure", other) => self.problems.add(
                    at,
                    format!(
                        "expected `cancel_siblings` or `finish_siblings`, found {}",
                        super::template::describe(other)
                    ),
                ),
                _ => self.problems.add(
                    at,
                    format!(
                        "unknown argument `{key}`; `parallel` takes `max_parallel` and `on_failure`"
                    ),
                ),
            }
        }
        if step.branches.is_empty() {
            self.problems.add(
                join(&step.path, "branches"),
                "`parallel` needs its branches under `branches`, a mapping of names to steps",
            );
        }
        if !step.steps.is_empty() {
            self.problems.add(
                join(&step.path, "steps"),
                "`parallel` runs `branches`, not `steps`",
            );
        }
        let (done, vars) = (self.done.clone(), self.vars.clone());
        let mut after = done.clone();
        for branch in &step.branches {
            self.done = done.clone();
            self.vars = vars.clone();
            self.steps(&branch.steps);
            after.extend(self.done.iter().cloned());
        }
        self.done = after;
        self.vars = vars;
    }

    fn for_each(&mut self, step: &Step, with_path: &str) {
        let mut names = Vec::new();
        for key in step.with.keys() {
            if !["items", "as", "index_as"].contains(&key.as_str()) {
                self.problems.add(
                    join(with_path, key),
                    format!(
                        "unknown argument `{key}`; `for_each` takes `items`, `as` and `index_as`"
                    ),
                );
            }
        }
        match step.with.get("items") {
            None => self.problems.add(
                join(with_path, "items"),
                "missing required argument `items`, the list to loop over",
            ),
            Some(Value::Array(_)) => {}
            Some(Value::String(s)) if s.contains("${") => {}
            Some(other) => self.problems.add(
                join(with_path, "items"),
                format!(
                    "expected a list or a `${{...}}` that gives one, found {}",
                    super::template::describe(other)
                ),
            ),
        }
        for (key, default) in [("as", "item"), ("index_as", "index")] {
            match step.with.get(key) {
                None => names.push(default.to_string()),
                Some(Value::String(s)) => {
                    check_variable_name(s, &join(with_path, key), &mut self.problems);
                    names.push(s.clone());
                }
                Some(other) => self.problems.add(
                    join(with_path, key),
                    format!(
                        "expected a variable name, found {}",
                        super::template::describe(other)
                    ),
                ),
            }
        }
        if step.steps.is_empty() {
            self.problems.add(
                join(&step.path, "steps"),
                "`for_each` needs the steps to repeat under `steps`",
            );
        }
        let added: Vec<String> = names
            .into_iter()
            .filter(|n| self.vars.insert(n.clone()))
            .collect();
        self.steps(&step.steps);
        for n in added {
            self.vars.remove(&n);
        }
    }

    fn templates_in(&mut self, value: &Value, path: &str) {
        match value {
            Value::String(s) => self.template(s, path),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.templates_in(item, &super::problem::index(path, i));
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    self.templates_in(item, &join(path, k));
                }
            }
            _ => {}
        }
    }

    fn template(&mut self, text: &str, path: &str) {
        if !text.contains('$') {
            return;
        }
        let template = match Template::parse(text) {
            Ok(t) => t,
            Err(e) => {
                self.problems.add(path, format!("template error: {e}"));
                return;
            }
        };
        let mut found = Vec::new();
        for (expr, _) in template.expressions() {
            paths(expr, &mut found);
        }
        for p in found {
            if let Err(message) = self.reference(&p) {
                self.problems.add(path, format!("`${{{p}}}`: {message}"));
            }
        }
    }

    fn reference(&self, p: &PathExpr) -> Result<(), String> {
        let first = match p.segments.first() {
            Some(Segment::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        match p.root.as_str() {
            "params" => match first {
                None => Ok(()),
                Some(name) if self.params.contains(name) => Ok(()),
                Some(_) if self.accept_undeclared_params => Ok(()),
                Some(name) => Err(format!(
                    "no param named `{name}` is declared under `params` (declare it, or let \
                     the workflow take undeclared params with `accept_undeclared_params: true`)"
                )),
            },
            "steps" => {
                let Some(id) = first else {
                    return Err("write `steps.<id>.output`".into());
                };
                if !self.done.contains(id) {
                    return Err(if self.all_ids.contains(id) {
                        format!("step `{id}` does not run before this point")
                    } else {
                        format!("there is no step with id `{id}`")
                    });
                }
                match p.segments.get(1) {
                    None => Ok(()),
                    Some(Segment::Key(f)) if STEP_FIELDS_READABLE.contains(&f.as_str()) => Ok(()),
                    Some(_) => Err(format!(
                        "a step has `output`, `status` and `error`; write `steps.{id}.output...`"
                    )),
                }
            }
            "env" => {
                let Some(name) = first else {
                    return Err("write `env.NAME`".into());
                };
                match &self.options.env_allow {
                    Some(allowed) if !allowed.iter().any(|a| a == name) => Err(format!(
                        "environment variable `{name}` is not in the allow-list; allow it with `--allow-env {name}`"
                    )),
                    _ => Ok(()),
                }
            }
            credentials::ROOT => credentials::check_reference(self.credentials, &p.segments),
            "error" if self.in_error => Ok(()),
            "error" => Err("`error` is only bound inside `on_error` and `catch`".into()),
            var if self.vars.contains(var) => Ok(()),
            var if self.params.contains(var) => Err(format!(
                "`{var}` is not defined; the param is written `params.{var}`"
            )),
            var => Err(format!(
                "`{var}` is not defined before this step (define it with `set`, `save_as` or `for_each`)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::language::{LoadOptions, parse_workflow};
    use crate::runtime::registry::Registry;

    const USES: &str = "version: 1\nname: w\nsteps:\n  - id: a\n    action: excel.read_sheet\n  - id: b\n    action: shel.run\n";

    fn problems(options: &LoadOptions) -> Vec<(String, String)> {
        parse_workflow(USES, "w.yaml", &Registry::builtin(), options)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn a_robot_calls_a_missing_action_unknown() {
        let p = problems(&LoadOptions::default());
        assert_eq!(p[0].0, "steps[0].action");
        assert!(
            p[0].1
                .starts_with("unknown action `excel.read_sheet`; known actions: "),
            "{p:?}"
        );
        assert_eq!(
            p[1].1,
            "unknown action `shel.run`; did you mean `shell.run`?"
        );
    }

    #[test]
    fn a_hub_says_no_robot_offers_it_and_what_the_fleet_offers() {
        let options = LoadOptions {
            fleet_offers: Some("no robot of this hub offers any action pack".into()),
            ..LoadOptions::default()
        };
        let p = problems(&options);
        assert_eq!(
            p[0].1,
            "no robot of this hub offers `excel.read_sheet`; no robot of this hub offers any action pack"
        );
        assert_eq!(
            p[1].1,
            "no robot of this hub offers `shel.run` (did you mean `shell.run`?); no robot of \
             this hub offers any action pack"
        );
    }

    const READS_VAR1: &str = "version: 1\nname: w\nsteps:\n  - id: a\n    action: log\n    with: {message: \"${params.var1}\"}\n";

    #[test]
    fn a_reference_to_an_undeclared_param_is_refused_without_the_opt_in() {
        let p = parse_workflow(
            READS_VAR1,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert_eq!(p.0.len(), 1, "{p:?}");
        assert!(
            p.0[0].message.contains("no param named `var1` is declared")
                && p.0[0].message.contains("accept_undeclared_params: true"),
            "{p:?}"
        );
    }

    #[test]
    fn a_workflow_that_takes_undeclared_params_may_refer_to_them() {
        let text = format!("accept_undeclared_params: true\n{READS_VAR1}");
        let w = parse_workflow(
            &text,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .expect("valid");
        assert!(w.accept_undeclared_params);
        // Other references are checked as ever.
        let text = format!(
            "{text}  - id: b\n    action: log\n    with: {{message: \"${{steps.zz.output}}\"}}\n"
        );
        assert!(
            parse_workflow(
                &text,
                "w.yaml",
                &Registry::builtin(),
                &LoadOptions::default()
            )
            .is_err()
        );
    }

    #[test]
    fn the_opt_in_is_a_boolean() {
        let text = format!("accept_undeclared_params: yes\n{READS_VAR1}");
        let p = parse_workflow(
            &text,
            "w.yaml",
            &Registry::builtin(),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(
            p.0.iter().any(|p| p.path == "accept_undeclared_params"),
            "{p:?}"
        );
    }
}
