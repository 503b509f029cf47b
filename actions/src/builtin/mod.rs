//! The actions that ship with Tasuki.

mod args;
pub mod browser;
pub mod confine;
mod control;
mod http;
#[cfg(windows)]
mod job_object;
pub(crate) mod process;
mod shell;
mod step_env;
pub mod tree_records;

pub use args::DurationArg;
pub use process::kill_all_trees;

use crate::runtime::registry::Registry;

impl Registry {
    /// A registry with every built-in action.
    pub fn builtin() -> Registry {
        let mut r = Registry::new();
        r.register("log", control::Log);
        r.register("sleep", control::Sleep);
        r.register("fail", control::Fail);
        r.register("shell.run", shell::ShellRun);
        r.register("http.request", http::HttpRequest);
        browser::register(&mut r);
        r
    }
}
