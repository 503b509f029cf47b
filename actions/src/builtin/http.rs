//! `http.request`: one HTTP call, with a size-capped response whose body is
//! parsed JSON when the server says it is JSON.
//!
//! Redirects are followed here rather than by reqwest, so that what a
//! redirect carries is explicit: a redirect to another origin (scheme, host
//! or port) gets none of the step's headers, which may hold credentials,
//! and no request ever sends `Referer`, which may carry secret query
//! parameters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::args::{DurationArg, Text};
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed before the call fails, as browsers and reqwest do.
const MAX_REDIRECTS: usize = 10;

pub struct HttpRequest;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpArgs {
    /// GET by default.
    method: Option<HttpMethod>,
    /// An http:// or https:// URL.
    url: String,
    headers: Option<BTreeMap<String, Text>>,
    /// Query parameters appended to the URL.
    query: Option<BTreeMap<String, Text>>,
    /// A JSON body; sets `Content-Type: application/json`.
    json: Option<Value>,
    /// A text body, sent as it is.
    body: Option<String>,
    /// 30s by default.
    timeout: Option<DurationArg>,
    /// The statuses that count as success: one or a list. Without it, any
    /// status below 400 does.
    expect_status: Option<ExpectStatus>,
    /// A lower response size cap for this call; the robot's cap still applies.
    max_response_bytes: Option<u64>,
    /// Whether to follow redirects (true by default). A redirect to another
    /// origin is sent without the step's headers.
    follow_redirects: Option<bool>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "UPPERCASE")]
enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
enum ExpectStatus {
    One(u16),
    Many(Vec<u16>),
}

impl TypedAction for HttpRequest {
    type Args = HttpArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if args.contains_key("json") && args.contains_key("body") {
            problems.push((
                "body".into(),
                "give either `json` or `body`, not both".into(),
            ));
        }
        if let Some(Value::String(url)) = args.get("url")
            && !url.contains("${")
            && let Err(e) = parse_url(url)
        {
            problems.push(("url".into(), e));
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: HttpArgs) -> Result<Value, ActionError> {
        let mut url = parse_url(&args.url)
            .map_err(|e| ActionError::new(codes::INVALID_ARGS, format!("with.url: {e}")))?;
        if let Some(query) = &args.query {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, &v.0);
            }
        }
        let method = match args.method.unwrap_or(HttpMethod::Get) {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
            HttpMethod::Patch => Method::PATCH,
            HttpMethod::Delete => Method::DELETE,
            HttpMethod::Head => Method::HEAD,
            HttpMethod::Options => Method::OPTIONS,
        };
        let client = ctx
            .http_client()
            .map_err(|e| ActionError::new(codes::HTTP, e))?;
        let mut headers = header_map(args.headers.as_ref())?;
        // A body's type travels with the body (a redirect may drop the body,
        // or the headers but not the body); the step's own type wins.
        let body = if let Some(json) = &args.json {
            let bytes = serde_json::to_vec(json)
                .map_err(|e| ActionError::new(codes::INVALID_ARGS, format!("with.json: {e}")))?;
            let content_type = headers
                .remove(CONTENT_TYPE)
                .unwrap_or(HeaderValue::from_static("application/json"));
            Some(Body {
                bytes,
                content_type: Some(content_type),
            })
        } else {
            args.body.map(|text| Body {
                bytes: text.into_bytes(),
                content_type: headers.remove(CONTENT_TYPE),
            })
        };
        let request = Hop {
            method: method.clone(),
            url: url.clone(),
            headers,
            body,
        };
        let timeout = args.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
        let follow = args.follow_redirects.unwrap_or(true);

        let started = Instant::now();
        let robot_limit = ctx.options().max_response_bytes;
        let limit = args
            .max_response_bytes
            .map_or(robot_limit, |n| robot_limit.min(n as usize));
        let call = async {
            let (response, method, url) =
                send_following(ctx, client, request, timeout, follow).await?;
            let status = response.status();
            let headers: Map<String, Value> = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    )
                })
                .collect();
            let is_json = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("json"));
            if response
                .content_length()
                .is_some_and(|n| n as usize > limit)
            {
                return Err(too_large(&url, limit));
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| describe_error(&method, &url, e))?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large(&url, limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((method, url, status, headers, is_json, body))
        };
        let (method, url, status, headers, is_json, body) = tokio::select! {
            r = call => r?,
            _ = ctx.cancel.cancelled() => return Err(ActionError::new(codes::CANCELLED, format!("{method} {url} was cancelled"))),
        };

        let size = body.len();
        let body = if is_json {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&body).into_owned())
        };
        ctx.log(
            LogLevel::Info,
            &format!(
                "{method} {url} -> {} ({} ms, {size} bytes)",
                status.as_u16(),
                started.elapsed().as_millis()
            ),
        );

        let code = status.as_u16();
        let ok = match &args.expect_status {
            None => code < 400,
            Some(ExpectStatus::One(s)) => code == *s,
            Some(ExpectStatus::Many(list)) => list.contains(&code),
        };
        if !ok {
            let expected = match &args.expect_status {
                None => "a status below 400".to_string(),
                Some(ExpectStatus::One(s)) => s.to_string(),
                Some(ExpectStatus::Many(l)) => l
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            let text = match &body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let excerpt = if text.len() > 300 {
                let cut = (0..=300)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                // Masked before the cut, so that a secret across it does
                // not leave its start behind.
                format!("{}…", ctx.mask_cut(text.as_bytes(), cut))
            } else {
                text
            };
            return Err(ActionError::new(
                codes::HTTP_STATUS,
                format!("{method} {url} returned {status} (expected {expected}); body: {excerpt}"),
            ));
        }
        Ok(json!({ "status": code, "headers": headers, "body": body }))
    }
}

/// One request of a call that may be redirected.
struct Hop {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Body>,
}

/// A request body, with the type that describes it (it goes where the body goes).
struct Body {
    bytes: Vec<u8>,
    content_type: Option<HeaderValue>,
}

fn header_map(headers: Option<&BTreeMap<String, Text>>) -> Result<HeaderMap, ActionError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers.into_iter().flatten() {
        let invalid = |why: String| {
            ActionError::new(codes::INVALID_ARGS, format!("with.headers.{name}: {why}"))
        };
        let key = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid("not a valid header name".into()))?;
        let value = HeaderValue::from_str(&value.0)
            .map_err(|_| invalid("the value holds characters a header cannot carry".into()))?;
        map.append(key, value);
    }
    Ok(map)
}

/// Sends `hop`, following redirects when `follow` is set, all within
/// `timeout`. Returns the last response with the method and URL that got it.
async fn send_following(
    ctx: &ActionContext,
    client: &reqwest::Client,
    mut hop: Hop,
    timeout: Duration,
    follow: bool,
) -> Result<(reqwest::Response, Method, Url), ActionError> {
    let deadline = Instant::now() + timeout;
    let mut redirects = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ActionError::new(
                codes::TIMEOUT,
                format!("{} {} timed out", hop.method, hop.url),
            ));
        }
        let mut request = client
            .request(hop.method.clone(), hop.url.clone())
            .timeout(left)
            .headers(hop.headers.clone());
        if let Some(body) = &hop.body {
            if let Some(ct) = &body.content_type {
                request = request.header(CONTENT_TYPE, ct);
            }
            request = request.body(body.bytes.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| describe_error(&hop.method, &hop.url, e))?;
        let location = response.headers().get(LOCATION);
        if !follow || !response.status().is_redirection() || location.is_none() {
            return Ok((response, hop.method, hop.url));
        }
        if redirects == MAX_REDIRECTS {
            return Err(ActionError::new(
                codes::HTTP,
                format!(
                    "{} {}: more than {MAX_REDIRECTS} redirects",
                    hop.method, hop.url
                ),
            ));
        }
        redirects += 1;
        let status = response.status();
        let target = location
            .and_then(|l| l.to_str().ok())
            .and_then(|l| hop.url.join(l).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                ActionError::new(
                    codes::HTTP,
                    format!(
                        "{} {} redirected ({status}) to a location that is not an http or https URL",
                        hop.method, hop.url
                    ),
                )
            })?;
        let other_origin = target.origin() != hop.url.origin();
        ctx.log(
            LogLevel::Info,
            &format!(
                "{} {} -> {} redirects to {target}{}",
                hop.method,
                hop.url,
                status.as_u16(),
                if other_origin {
                    " (another origin: the step's headers are not sent there)"
                } else {
                    ""
                }
            ),
        );
        hop = redirected(hop, status, target, other_origin)?;
    }
}

/// The request a redirect asks for. 303, and 301 or 302 after a POST,
/// become a GET without a body (as browsers do); 307 and 308 keep the
/// method and body, but only within the origin: the body may carry the
/// step's secrets, so a 307 or 308 to another origin (another host, or
/// https to http) is not followed. Another origin gets none of the step's
/// headers.
fn redirected(
    hop: Hop,
    status: StatusCode,
    target: Url,
    other_origin: bool,
) -> Result<Hop, ActionError> {
    let to_get = match status {
        StatusCode::SEE_OTHER => hop.method != Method::HEAD,
        StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => hop.method == Method::POST,
        _ => false,
    };
    if !to_get && other_origin && hop.body.is_some() {
        return Err(ActionError::new(
            codes::HTTP,
            format!(
                "{} {} redirected ({status}) to another origin, {target}, keeping the request's \
                 body; not followed, because the body may hold secrets. Send the request to \
                 {target} yourself, or set follow_redirects: false to get the redirect",
                hop.method, hop.url
            ),
        ));
    }
    let (method, body) = if to_get {
        (Method::GET, None)
    } else {
        (hop.method, hop.body)
    };
    let headers = if other_origin {
        HeaderMap::new()
    } else {
        hop.headers
    };
    Ok(Hop {
        method,
        url: target,
        headers,
        body,
    })
}

fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "`{text}` uses the `{other}` scheme; only http and https are supported"
        )),
    }
}

fn too_large(url: &Url, limit: usize) -> ActionError {
    ActionError::new(
        codes::RESPONSE_TOO_LARGE,
        format!("the response from {url} is larger than the {limit}-byte limit"),
    )
}

fn describe_error(method: &Method, url: &Url, e: reqwest::Error) -> ActionError {
    let why = if e.is_timeout() {
        return ActionError::new(codes::TIMEOUT, format!("{method} {url} timed out"));
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response body could not be read"
    } else {
        "the request failed"
    };
    // reqwest's source chain carries the useful detail (refused, DNS...).
    let mut detail = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    ActionError::new(codes::HTTP, format!("{method} {url}: {why}{detail}"))
}
