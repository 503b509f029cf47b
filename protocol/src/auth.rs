//! JWT claims and the token endpoint.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The claims of every API token, as in the AUTORO document. `scopes` is a
/// space-separated string (parse it with [`crate::Scopes`]). `nbf` and
/// `exp` are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The access key id.
    pub sub: String,
    pub aud: String,
    pub nbf: i64,
    pub exp: i64,
    pub scopes: String,
}

/// Token lifetime the token endpoint gives when the request names none.
pub const DEFAULT_TOKEN_SECONDS: i64 = 600;

/// `POST /v1/token`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Lifetime in seconds; [`DEFAULT_TOKEN_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

// By hand, so that the secret never reaches a log line through `{:?}`.
impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("expires", &self.expires)
            .finish()
    }
}

#[derive(Clone, Deserialize, Serialize)]
pub struct TokenResponse {
    pub token: String,
    #[serde(with = "crate::time::millis")]
    pub expires_at: Timestamp,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let req = TokenRequest {
            access_key_id: "AK".into(),
            secret_access_key: "s3cr3t".into(),
            expires: None,
        };
        assert!(!format!("{req:?}").contains("s3cr3t"));
    }

    #[test]
    fn reads_the_seed_payload() {
        let claims: Claims = serde_json::from_str(
            r#"{"iss": "console.autoro.io","sub": "IjoiIiwiZ3JhbnRzIjp7Im","aud": "https://api.autoro.io/","nbf": 1450471147,"exp": 1450473747,"scopes": "session_queue.write session_queue.read access_token.create"}"#,
        )
        .unwrap();
        assert_eq!(claims.exp - claims.nbf, 2600);
    }
}
