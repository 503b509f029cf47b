//! Workflows this robot has already checked. The sessions of one workflow
//! arrive with the same source every time, and checking it (parse, lower,
//! validate) costs more than everything else between a lease arriving and
//! its first step running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tasuki_actions::language::model::Workflow;
use tasuki_protocol::LeasedWorkflow;

/// Checked workflows kept at most; past that the memory starts over.
const KEPT: usize = 64;

#[derive(Default)]
pub struct CheckedWorkflows {
    by_id: Mutex<HashMap<i64, Checked>>,
}

struct Checked {
    format: String,
    source: String,
    called: Vec<tasuki_protocol::robot::CalledWorkflow>,
    workflow: Arc<Workflow>,
}

impl CheckedWorkflows {
    /// The checked form of `leased`: remembered when this exact source was
    /// checked before, otherwise `check`ed now. A workflow that fails its
    /// check is not remembered, so its error is always the current one.
    pub fn get_or_check<E>(
        &self,
        leased: &LeasedWorkflow,
        check: impl FnOnce() -> Result<Workflow, E>,
    ) -> Result<Arc<Workflow>, E> {
        if let Some(known) = self.lock().get(&leased.id)
            && known.source == leased.source
            && known.format == leased.format
            && known.called == leased.called
        {
            return Ok(known.workflow.clone());
        }
        let workflow = Arc::new(check()?);
        let mut by_id = self.lock();
        if by_id.len() >= KEPT && !by_id.contains_key(&leased.id) {
            by_id.clear();
        }
        by_id.insert(
            leased.id,
            Checked {
                format: leased.format.clone(),
                source: leased.source.clone(),
                called: leased.called.clone(),
                workflow: workflow.clone(),
            },
        );
        Ok(workflow)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Checked>> {
        // Each change is one insert or clear: a poisoned map is consistent.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(id: i64, source: &str) -> LeasedWorkflow {
        LeasedWorkflow {
            id,
            name: "w".into(),
            single_process_mode: false,
            format: "yaml".into(),
            source: source.into(),
            called: Vec::new(),
        }
    }

    fn parse(source: &str) -> Result<Workflow, String> {
        let registry = tasuki_actions::Registry::builtin();
        tasuki_actions::parse_workflow(
            source,
            "w.yaml",
            &registry,
            &tasuki_actions::LoadOptions::default(),
        )
        .map_err(|p| p.to_string())
    }

    const A: &str =
        "version: 1\nname: a\nsteps:\n  - id: one\n    action: log\n    with: {message: a}\n";
    const B: &str =
        "version: 1\nname: b\nsteps:\n  - id: two\n    action: log\n    with: {message: b}\n";

    #[test]
    fn the_same_source_is_checked_once_and_a_changed_one_again() {
        let checked = CheckedWorkflows::default();
        let mut checks = 0;
        let mut get = |id, source: &str| {
            checked
                .get_or_check(&leased(id, source), || {
                    checks += 1;
                    parse(source)
                })
                .unwrap()
        };
        let first = get(1, A);
        let again = get(1, A);
        assert!(Arc::ptr_eq(&first, &again));
        let changed = get(1, B);
        assert_eq!(changed.steps[0].id, "two");
        assert_eq!(checks, 2);
    }

    #[test]
    fn a_failed_check_is_not_remembered() {
        let checked = CheckedWorkflows::default();
        let bad = "version: 1\nsteps: 3\n";
        for _ in 0..2 {
            let mut ran = false;
            let r = checked.get_or_check(&leased(7, bad), || {
                ran = true;
                parse(bad)
            });
            assert!(r.is_err() && ran);
        }
    }

    #[test]
    fn memory_is_bounded() {
        let checked = CheckedWorkflows::default();
        for id in 0..(KEPT as i64 * 3) {
            checked.get_or_check(&leased(id, A), || parse(A)).unwrap();
        }
        assert!(checked.lock().len() <= KEPT);
    }
}
