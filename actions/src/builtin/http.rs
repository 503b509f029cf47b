//! `http.request`: one HTTP call, with a size-capped response whose body is
//! parsed JSON when the server says it is JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, Url};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::args::{DurationArg, Text};
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
        let mut request = client
            .request(method.clone(), url.clone())
            .timeout(args.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT));
        for (k, v) in args.headers.iter().flatten() {
            request = request.header(k, &v.0);
        }
        if let Some(body) = &args.json {
            request = request.json(body);
        } else if let Some(body) = args.body {
            request = request.body(body);
        }

        let started = Instant::now();
        let robot_limit = ctx.options().max_response_bytes;
        let limit = args
            .max_response_bytes
            .map_or(robot_limit, |n| robot_limit.min(n as usize));
        let call = async {
            let response = request
                .send()
                .await
                .map_err(|e| describe_error(&method, &url, e))?;
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
            Ok((status, headers, is_json, body))
        };
        let (status, headers, is_json, body) = tokio::select! {
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
    } else if e.is_redirect() {
        "too many redirects"
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
