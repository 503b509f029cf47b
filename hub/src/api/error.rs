//! Every error the API returns: a status, a stable code, a message that
//! says what is wrong, and for inputs with several problems, all of them.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tasuki_protocol::{ErrorBody, ErrorDetail, ProblemItem};

use crate::db::DbError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub problems: Vec<ProblemItem>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A field of the request body that is present but wrong.
    pub fn invalid_field(path: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            problems: vec![ProblemItem {
                path: path.into(),
                line: None,
                column: None,
                message: message.clone(),
            }],
            ..ApiError::unprocessable("invalid_field", format!("`{path}`: {message}"))
        }
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the hub failed to handle this request; its log says why",
        )
    }

    pub fn with_problems(mut self, problems: Vec<ProblemItem>) -> ApiError {
        self.problems = problems;
        self
    }
}

/// The code of an error that the database caused: a page of the console
/// says so rather than "the hub failed".
pub const DATABASE: &str = "database";

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        tracing::error!(error = %e, "database");
        if e.is_the_database() {
            // What failed stays in the log: it can name the database's
            // address.
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                DATABASE,
                "the hub cannot reach its database, or the database failed this request; the \
                 hub's log says why",
            )
        } else {
            ApiError::internal()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                problems: self.problems,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
