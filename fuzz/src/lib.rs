//! Shared pieces of the fuzz targets (fuzz_targets/*.rs), and the agent's
//! and the hub's parsing code, which live in binary crates: their source
//! files are compiled in here unchanged with `#[path]`, so that the fuzzers
//! run exactly the code the binaries run (see fuzz/README.md).
//!
//! `api` and `db` keep the hub's module names because its files name each
//! other as `super::...` and `crate::db::...`.

pub mod agent_settings;
pub mod api;
pub mod db;
pub mod workflow;
