//! Stand-ins for the three items of the hub's `db` module that its parsing
//! code (`api.rs`) names, so that no SQLite is built into the fuzzers. They
//! have the hub's shapes; if the hub's change in a way that parsing code
//! relies on, this crate stops compiling, which the CI's fuzz step shows.

/// `hub/src/db/mod.rs`'s error; parsing never produces one.
#[derive(Debug, thiserror::Error)]
pub enum DbError {}

impl DbError {
    pub fn is_the_database(&self) -> bool {
        match *self {}
    }
}

pub mod sessions {
    use tasuki_protocol::SessionStatus;

    /// `hub/src/db/sessions.rs`'s `Filter`.
    #[derive(Debug, Default, Clone, PartialEq)]
    pub struct Filter {
        pub before: Option<i64>,
        pub after: Option<i64>,
        pub statuses: Vec<SessionStatus>,
    }
}

pub mod workflows {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use tasuki_actions::language::params::ParamType;

    /// `hub/src/db/workflows.rs`'s `StoredParam`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct StoredParam {
        pub name: String,
        /// `Some(null)` is a default of `null` (the param is optional), not
        /// the absence of a default.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "present"
        )]
        pub default: Option<Value>,
        #[serde(default)]
        pub secret: bool,
        #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
        pub declared_type: Option<ParamType>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub choices: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
    }

    /// A field that is there, `null` included, is `Some`.
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        <Value as serde::Deserialize>::deserialize(d).map(Some)
    }
}
