//! The hub's request parsing, `hub/src/api/{error,body,body_deadline,query,search,params}.rs`
//! compiled in unchanged (the hub is a binary crate). They reach each other
//! through `super::`, and the database only through the three items that
//! `db.rs` stands in for.

#[allow(dead_code)]
#[path = "../../hub/src/api/error.rs"]
pub mod error;

#[allow(dead_code)]
#[path = "../../hub/src/api/body.rs"]
pub mod body;

#[allow(dead_code)]
#[path = "../../hub/src/api/body_deadline.rs"]
pub mod body_deadline;

#[allow(dead_code)]
#[path = "../../hub/src/api/query.rs"]
pub mod query;

#[allow(dead_code)]
#[path = "../../hub/src/api/search.rs"]
pub mod search;

#[allow(dead_code)]
#[path = "../../hub/src/api/params.rs"]
pub mod params;
