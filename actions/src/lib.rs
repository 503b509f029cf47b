//! The Tasuki workflow language and action runtime.
//!
//! This crate knows nothing of control planes. It turns a workflow file into a
//! validated [`Workflow`], and runs it through an [`Executor`] that reports
//! what happens as a stream of [`Event`]s.
//!
//! - [`language`]: the file format: loading, the model, templates, validation.
//! - [`runtime`]: the `Action` trait, the registry, the executor and its events.
//! - [`builtin`]: the actions that ship with Tasuki (shell, http, log, sleep, fail).

pub mod builtin;
pub mod language;
pub mod packs;
pub mod runtime;

pub use language::model::{ParamSpec, Step, Workflow};
pub use language::problem::{Problem, Problems};
pub use language::{LoadOptions, load_workflow, parse_workflow};
pub use runtime::event::{Event, EventSink, LogLevel, LogLine, LogRoom};
pub use runtime::executor::{ExecOptions, Executor};
pub use runtime::registry::Registry;
pub use runtime::report::{ErrorInfo, SessionReport, SessionStatus, StepRecord, StepStatus};
