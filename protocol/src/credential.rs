//! Named credentials on the hub (hub/README.md, "Credentials"): values go
//! in, metadata comes out. No type the hub sends carries a value; the
//! types a client sends show none in `Debug`.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which robots may receive a credential: by name, or by any one label.
/// Both empty allows no robot. `workflows`, when given, allows only the
/// sessions of the workflows of those names registered by the access key
/// that owns the name; absent, any workflow that declares it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialAllow {
    #[serde(default)]
    pub robots: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<Vec<String>>,
}

/// `POST /v1/credentials`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    pub name: String,
    /// `username_password`, `token` or `file`.
    pub kind: String,
    /// The kind's fields, each text: `{username, password}`, `{token}`,
    /// `{content}`.
    pub fields: Map<String, Value>,
    pub allow: CredentialAllow,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PUT /v1/credentials/{name}`: what is given changes, the rest stays.
/// New `fields` (all of the kind's) rotate the credential.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AllowChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A new `allow` in an update: `robots` and `labels` replace the stored
/// ones; `workflows` stays as stored unless given, so that a change of
/// robots never widens a credential to every workflow by leaving it out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowChange {
    #[serde(default)]
    pub robots: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Absent: kept. `null`: any workflow. A list: those.
    #[serde(
        default,
        deserialize_with = "given",
        skip_serializing_if = "Option::is_none"
    )]
    pub workflows: Option<Option<Vec<String>>>,
}

impl AllowChange {
    /// The allow lists once applied to `stored`.
    pub fn applied_to(&self, stored: &CredentialAllow) -> CredentialAllow {
        CredentialAllow {
            robots: self.robots.clone(),
            labels: self.labels.clone(),
            workflows: match &self.workflows {
                Some(given) => given.clone(),
                None => stored.workflows.clone(),
            },
        }
    }
}

/// A field that is present, `null` included, is `Some`.
fn given<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Values never reach a log through `{:?}`.
fn fields_debug(fields: &Map<String, Value>) -> Vec<&str> {
    fields.keys().map(String::as_str).collect()
}

impl fmt::Debug for CreateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateCredential")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fields", &fields_debug(&self.fields))
            .field("allow", &self.allow)
            .field("description", &self.description)
            .finish()
    }
}

impl fmt::Debug for UpdateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateCredential")
            .field("fields", &self.fields.as_ref().map(fields_debug))
            .field("allow", &self.allow)
            .field("description", &self.description)
            .finish()
    }
}

/// A credential as the API shows it: never a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub name: String,
    pub kind: String,
    /// The names of its fields.
    pub fields: Vec<String>,
    pub allow: CredentialAllow,
    pub description: String,
    /// 1 when made; one more at each rotation of its fields.
    pub version: i64,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
    pub created_by: String,
    #[serde(with = "crate::time::millis")]
    pub updated_at: Timestamp,
    pub updated_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialList {
    pub credentials: Vec<Credential>,
}
