//! The error body every Tasuki API returns with a 4xx or 5xx:
//! `{"error": {"code", "message", "problems"?}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `token_expired`.
    pub code: String,
    /// For people: says what is wrong and, where it can, what to do.
    pub message: String,
    /// Every problem found in an input, when there were several (an
    /// invalid workflow, invalid params).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemItem>,
}

/// One problem in an input: the field path (`steps[2].with.url`), and the
/// line and column where the parser knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemItem {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    pub message: String,
}
