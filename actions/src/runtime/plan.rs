//! The dry-run plan: every step with the templates that can be resolved
//! before running (params and env) filled in, and the rest left as written.
//! Building a plan runs nothing.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use super::mask::{MASK, Masker};
use super::registry::Registry;
use crate::language::model::{Step, Workflow};
use crate::language::params::BoundParams;
use crate::language::template::{PathExpr, Scope, Template};

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub path: String,
    pub id: String,
    pub action: String,
    /// Nesting depth: 0 for top-level steps.
    pub depth: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
    pub with: Value,
}

struct StaticScope {
    params: Value,
    env: Value,
}

impl Scope for StaticScope {
    fn root(&self, path: &PathExpr) -> Result<Cow<'_, Value>, String> {
        match path.root.as_str() {
            "params" => Ok(Cow::Borrowed(&self.params)),
            "env" => Ok(Cow::Borrowed(&self.env)),
            _ => Err("resolved at run time".into()),
        }
    }
}

pub fn plan(
    workflow: &Workflow,
    params: &BoundParams,
    env_allow: &[String],
    registry: &Registry,
) -> Vec<PlannedStep> {
    let env = env_allow
        .iter()
        .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), Value::String(v))))
        .collect();
    let scope = StaticScope {
        params: Value::Object(params.values.clone()),
        env: Value::Object(env),
    };
    let masker = Masker::new(&params.secret_values);
    let mut out = Vec::new();
    let walker = Walker {
        scope: &scope,
        masker: &masker,
        registry,
    };
    walker.walk(&workflow.steps, 0, &mut out);
    walker.walk(&workflow.on_error, 0, &mut out);
    walker.walk(&workflow.finally, 0, &mut out);
    out
}

struct Walker<'a> {
    scope: &'a StaticScope,
    masker: &'a Masker,
    registry: &'a Registry,
}

impl Walker<'_> {
    fn walk(&self, steps: &[Step], depth: usize, out: &mut Vec<PlannedStep>) {
        for step in steps {
            let mut with = resolve(&Value::Object(step.with.clone()), self.scope);
            self.masker.mask_value(&mut with);
            // An action's secret arguments are masked whatever they hold.
            if let (Some(action), Value::Object(map)) = (self.registry.get(&step.action), &mut with)
            {
                for name in action.secret_args() {
                    if let Some(value) = map.get_mut(&name) {
                        *value = Value::String(MASK.into());
                    }
                }
            }
            let condition = step.condition.as_ref().map(|c| {
                let mut v = resolve(&Value::String(c.clone()), self.scope);
                self.masker.mask_value(&mut v);
                v
            });
            out.push(PlannedStep {
                path: step.path.clone(),
                id: step.id.clone(),
                action: step.action.clone(),
                depth,
                condition,
                with,
            });
            self.walk(&step.steps, depth + 1, out);
            self.walk(&step.catch, depth + 1, out);
            self.walk(&step.finally, depth + 1, out);
            for branch in &step.branches {
                self.walk(&branch.steps, depth + 1, out);
            }
        }
    }
}

/// Resolves what it can; a template that needs run-time values stays as text.
fn resolve(value: &Value, scope: &StaticScope) -> Value {
    match value {
        Value::String(s) if s.contains("${") => Template::parse(s)
            .map(|t| t.render_partial(scope))
            .unwrap_or_else(|_| value.clone()),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, scope)).collect()),
        Value::Object(map) => {
            let m: Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), resolve(v, scope)))
                .collect();
            Value::Object(m)
        }
        other => other.clone(),
    }
}
