//! The JSON request body extractor. Unlike axum's `Json`, every rejection
//! is a JSON error that names the problem: the field path of a wrong or
//! unknown field, the line and column of a syntax error, the size limit
//! (10 MB, or an endpoint's own), a body that did not arrive in time.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use tasuki_protocol::ProblemItem;

use super::body_deadline;
use super::error::ApiError;

/// Request bodies larger than this are refused with 413, as Autify does.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// A JSON body of at most `LIMIT` bytes. Past it the answer is 413; a body
/// that arrives too slowly (body_deadline.rs) gets 408.
pub struct JsonBody<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

impl<S, T, const LIMIT: usize> FromRequest<S> for JsonBody<T, LIMIT>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        check_content_type(&req)?;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than the limit of {LIMIT} bytes ({})",
                    shown_size(LIMIT)
                ),
            )
        };
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|e| {
                if let Some(slow) = body_deadline::too_slow(&e) {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        slow.to_string(),
                    )
                } else if is_length_limit(&e) {
                    too_large()
                } else {
                    ApiError::bad_request(
                        "unreadable_body",
                        format!("cannot read the request body: {e}"),
                    )
                }
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// `10 MB`, `4 KB`: how the limits are spoken of.
fn shown_size(bytes: usize) -> String {
    const MB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MB) {
        format!("{} MB", bytes / MB)
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A missing content type is taken as JSON (curl users forget it); any
/// other type is refused rather than guessed at.
fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the request body must be JSON, sent with `content-type: application/json`, \
                 not `{text}` (curl -d sends application/x-www-form-urlencoded unless told \
                 otherwise)"
            ),
        ))
    }
}

/// A JSON body that may be left out: none at all (no length, or a length
/// of 0) reads as `T::default()`; one that is there is read as
/// [`JsonBody`] reads it.
pub struct OptionalJsonBody<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers();
        let length = headers.get(axum::http::header::CONTENT_LENGTH);
        let chunked = headers.contains_key(axum::http::header::TRANSFER_ENCODING);
        if length.is_some_and(|l| l == "0") || (length.is_none() && !chunked) {
            return Ok(OptionalJsonBody(T::default()));
        }
        let JsonBody(body) = JsonBody::<T>::from_request(req, state).await?;
        Ok(OptionalJsonBody(body))
    }
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; send a JSON object",
        ));
    }
    // serde would also read a struct from an array of its fields in order;
    // every body of this API is an object.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(e) => Err(body_error(".", e)),
            Ok(_) => Err(ApiError::unprocessable(
                "invalid_body",
                "the request body must be a JSON object",
            )),
        };
    }
    // The fast path; the path-tracking one below only runs to word an
    // error (it costs about twice as much, which shows on log batches).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| {
            let path = e.path().to_string();
            body_error(&path, e.into_inner())
        })
        .and_then(|v| {
            de.end().map_err(|e| body_error(".", e))?;
            Ok(v)
        })?;
    Ok(value)
}

/// serde's "invalid type: string \"hunter2\", expected a map" without the
/// value it quotes: a body may be a secret's (a credential's fields, a
/// secret param), and an answer never repeats one.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some(at) = rest.rfind(", expected ") else {
            continue;
        };
        let (unexpected, expected) = rest.split_at(at);
        let what = unexpected.split(' ').next().unwrap_or(unexpected);
        // `string "..."`, `integer `5``, `floating point `1.5``: the kind
        // alone; `map`, `sequence`, `null` and `boolean` quote nothing.
        let what = match what {
            "floating" => "floating point",
            other => other,
        };
        return format!("{prefix}{what}{expected}");
    }
    message.to_string()
}

fn body_error(path: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        ),
        Category::Data => {
            // serde_json appends " at line L column C"; the path says more.
            let text = e.to_string();
            let message = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            let message = without_value(&message);
            let (code, path) = if path == "." {
                ("invalid_body", "body".to_string())
            } else {
                ("invalid_field", path.to_string())
            };
            let code = if message.starts_with("unknown field") {
                "unknown_field"
            } else {
                code
            };
            let mut err = ApiError::unprocessable(code, format!("`{path}`: {message}"));
            err.problems = vec![ProblemItem {
                path,
                line: Some(e.line() as u64),
                column: Some(e.column() as u64),
                message,
            }];
            err
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        workflow_id: i64,
        params: Option<serde_json::Map<String, serde_json::Value>>,
    }

    #[test]
    fn a_refused_value_is_not_repeated() {
        let e = parse::<Req>(br#"{"workflow_id": 1, "params": "hunter2"}"#).unwrap_err();
        assert_eq!(e.problems[0].path, "params");
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(
            e.message.contains("invalid type: string, expected a map"),
            "{}",
            e.message
        );
        let e = parse::<Req>(br#"{"workflow_id": 1.5}"#).unwrap_err();
        assert!(!e.message.contains("1.5"), "{}", e.message);
        assert!(
            e.message.contains("floating point, expected"),
            "{}",
            e.message
        );
    }

    #[test]
    fn names_the_problem() {
        let e = parse::<Req>(b"").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<Req>(b"{\"workflow_id\": 1,").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<Req>(br#"{"workflow_id": 1, "parms": {}}"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.contains("parms"), "{}", e.message);
        let e = parse::<Req>(br#"{"workflow_id": "1"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_field");
        assert_eq!(e.problems[0].path, "workflow_id");
        let e = parse::<Req>(br#"{"workflow_id": 1, "params": []}"#).unwrap_err();
        assert_eq!(e.problems[0].path, "params");
        let e = parse::<Req>(br#"[1]"#).unwrap_err();
        assert_eq!(e.code, "invalid_body");
        let e = parse::<Req>(br#"{"workflow_id": 1} x"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse::<Req>(br#"{}"#).unwrap_err();
        assert!(e.message.contains("workflow_id"), "{}", e.message);
    }

    #[test]
    fn reads_a_raw_workflow() {
        let r: tasuki_protocol::CreateWorkflow =
            parse(br#"{"workflow": {"name": "x"}, "workflow_robots": ["a"]}"#).unwrap();
        assert_eq!(r.workflow.unwrap().get(), r#"{"name": "x"}"#);
    }
}
