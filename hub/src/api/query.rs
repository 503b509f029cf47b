//! Query-string parameters: each read once by name, anything left over
//! refused, and every bad value named in the error.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use super::error::ApiError;

pub struct QueryParams {
    values: HashMap<String, String>,
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(|e| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("the query string does not parse: {e}"),
                )
            })?;
        let mut values = HashMap::new();
        for (name, value) in pairs {
            if values.contains_key(&name) {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("the query parameter `{name}` is given more than once"),
                ));
            }
            values.insert(name, value);
        }
        Ok(QueryParams { values })
    }
}

impl QueryParams {
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub fn int(&mut self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(default);
        };
        match text.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "the query parameter `{name}` must be a whole number from {min} to {max}, not `{}`",
                    shorten(&text)
                ),
            )),
        }
    }

    /// Refuses whatever was not read: a misspelt parameter must not
    /// silently mean its default.
    pub fn finish(self) -> Result<(), ApiError> {
        let mut left: Vec<String> = self.values.into_keys().collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        Err(ApiError::bad_request(
            "unknown_parameter",
            format!(
                "unknown query parameter{} {}",
                if left.len() > 1 { "s" } else { "" },
                left.iter()
                    .map(|n| format!("`{}`", shorten(n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// A call that takes no query parameters: any given is refused by name,
/// as the calls that take some refuse those they do not know. Without it
/// axum would ignore the query string, and `?wait=30s` sent to the wrong
/// call would silently mean nothing.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        QueryParams::from_request_parts(parts, state)
            .await?
            .finish()?;
        Ok(NoQuery)
    }
}

/// `page` and `per_page`, as LIMIT and OFFSET.
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// Pages count from 1. The cap on `page` only keeps OFFSET in range.
pub fn page(
    q: &mut QueryParams,
    default_per_page: i64,
    max_per_page: i64,
) -> Result<Page, ApiError> {
    let page = q.int("page", 1, 1, 1_000_000_000)?;
    let per_page = q.int("per_page", default_per_page, 1, max_per_page)?;
    Ok(Page {
        limit: per_page,
        offset: (page - 1) * per_page,
    })
}

/// A positive id from the URL path.
/// The id in a route's `{id}`, a `what` id.
pub fn id_in(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    what: &str,
) -> Result<i64, ApiError> {
    let axum::extract::Path(text) =
        path.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    path_id(what, &text)
}

pub fn path_id(what: &str, text: &str) -> Result<i64, ApiError> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(
            "invalid_id",
            format!(
                "a {what} id is a positive whole number, not `{}`",
                shorten(text)
            ),
        )),
    }
}

/// Echoes caller-supplied text in an error without echoing a megabyte.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
