//! What the workflow and template targets share.

use std::sync::OnceLock;

use tasuki_actions::{Registry, Workflow};

/// The registry with every built-in action, made once per process.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::builtin)
}

/// The workflow minus its warnings, whose lines depend on the format.
pub fn without_warnings(workflow: &Workflow) -> Workflow {
    Workflow {
        warnings: Default::default(),
        ..workflow.clone()
    }
}
