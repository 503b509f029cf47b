//! The agent's config-file reader, `agent/src/settings/{schema,file,value}.rs`
//! compiled in unchanged (the agent is a binary crate; these three files
//! use nothing of it but each other, through `super::`).

#[allow(dead_code)]
#[path = "../../agent/src/settings/schema.rs"]
pub mod schema;

#[allow(dead_code)]
#[path = "../../agent/src/settings/file.rs"]
pub mod file;

#[allow(dead_code)]
#[path = "../../agent/src/settings/value.rs"]
pub mod value;
