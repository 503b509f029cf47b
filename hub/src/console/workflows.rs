//! `/ui/workflows`: the stored workflows; one workflow's source and a form
//! that queues a session of it with its declared params. A secret param's
//! field is a password field that is never filled in: a secret given here
//! goes to the database sealed (`db/secret_params.rs`) and is shown on no
//! page afterwards.

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::Value;
use tasuki_protocol::Scope;

use super::auth::{CSRF_FIELD, Operator};
use super::layout::{self, PageError};
use super::session::{Fields, field};
use crate::api::Hub;
use crate::api::sessions::{checked_session, queue as queue_session};
use crate::db::workflows::{self, StoredParam};

const LIST_LIMIT: i64 = 1_000;

pub async fn list(State(hub): State<Arc<Hub>>, op: Operator) -> Result<Markup, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let (items, total) = hub
        .db
        .call(|conn| workflows::list(conn, LIST_LIMIT, 0))
        .await?;
    let body = html! {
        h1 { "Workflows" }
        p class="count" { (total) " stored" @if total as i64 > LIST_LIMIT { ", the first " (LIST_LIMIT) " shown" } }
        @if items.is_empty() {
            p class="none" { "No workflow is stored. Upload one with " code { "POST /v1/workflows" } "." }
        } @else {
            div class="scroll" {
                table class="workflows" id="workflows" {
                    thead { tr { th scope="col" { "Id" } th scope="col" { "Name" } th scope="col" { "Description" } th scope="col" { "Robots" } } }
                    tbody {
                        @for w in &items {
                            tr {
                                td { (w.id) }
                                td { a href={ "/ui/workflows/" (w.id) } { (w.name) } }
                                td { (w.description) }
                                td {
                                    @if w.workflow_robots.is_empty() && w.robot_labels.is_empty() { "any" }
                                    @for r in &w.workflow_robots { code { (r) } " " }
                                    @for l in &w.robot_labels { span class="label" { (l) } " " }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&op, "Workflows", "workflows", body))
}

/// How a param's field is shown and read: by the type of its default (the
/// workflow language declares no other type).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Bool,
    Json,
}

fn kind_of(p: &StoredParam) -> Kind {
    match &p.default {
        Some(Value::Number(_)) => Kind::Number,
        Some(Value::Bool(_)) => Kind::Bool,
        Some(Value::Array(_)) | Some(Value::Object(_)) => Kind::Json,
        _ => Kind::Text,
    }
}

fn parse_id(id: &str) -> Result<i64, PageError> {
    layout::page_id(id, "workflow")
}

pub async fn page(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let id = parse_id(&id)?;
    let found = hub
        .db
        .call(move |conn| {
            let source = workflows::source_of(conn, id)?;
            let params = workflows::params_of(conn, id)?;
            Ok(source.zip(params))
        })
        .await?;
    let Some((source, params)) = found else {
        return Err(PageError::not_found(format!("there is no workflow {id}")));
    };
    let body = html! {
        h1 { "Workflow " span class="sub" { (source.name) } }
        @if !source.description.is_empty() { p { (source.description) } }
        p { a href={ "/ui/sessions?workflow=" (id) } { "Its sessions" } }
        section aria-labelledby="queue-h" {
            h2 id="queue-h" { "Queue a session" }
            form method="post" action={ "/ui/workflows/" (id) "/queue" } class="queue" id="queue-form" {
                input type="hidden" name=(CSRF_FIELD) value=(op.csrf);
                @if params.params.is_empty() { p class="none" { "This workflow declares no params." } }
                @for p in &params.params { (param_field(p)) }
                button type="submit" id="queue" { "Queue session" }
                @if !op.may(Scope::SessionQueueWrite) { span class="note" { " (your key lacks session_queue.write)" } }
            }
        }
        section aria-labelledby="source-h" {
            h2 id="source-h" { "Source " span class="sub" { "(" (source.format) ")" } }
            pre class="source" id="source" tabindex="0" { (source.text) }
        }
    };
    Ok(layout::page(
        &op,
        &format!("Workflow {}", source.name),
        "workflows",
        body,
    ))
}

fn param_field(p: &StoredParam) -> Markup {
    let name = format!("param.{}", p.name);
    let field_id = format!("param-{}", p.name);
    let required = p.default.is_none();
    html! {
        div class="field" {
            label for=(field_id) {
                code { (p.name) }
                @if p.secret { " (secret)" }
                @if required { " (required)" }
            }
            @if p.secret {
                // Never filled in, not even with the workflow's default.
                input type="password" id=(field_id) name=(name) autocomplete="off" required[required]
                    placeholder=[p.default.is_some().then_some("empty: the workflow's default")];
            } @else {
                @match kind_of(p) {
                    Kind::Bool => {
                        @let on = p.default == Some(Value::Bool(true));
                        select id=(field_id) name=(name) {
                            option value="true" selected[on] { "true" }
                            option value="false" selected[!on] { "false" }
                        }
                    }
                    Kind::Number => {
                        input type="number" step="any" id=(field_id) name=(name)
                            value=(p.default.as_ref().map(Value::to_string).unwrap_or_default());
                    }
                    Kind::Json => {
                        textarea id=(field_id) name=(name) rows="3" {
                            (p.default.as_ref().map(Value::to_string).unwrap_or_default())
                        }
                    }
                    Kind::Text => {
                        input type="text" id=(field_id) name=(name) required[required]
                            value=(match &p.default { Some(Value::String(s)) => s.clone(), Some(other) => other.to_string(), None => String::new() });
                    }
                }
            }
        }
    }
}

pub async fn queue(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    op.check_csrf(field(&fields, CSRF_FIELD))?;
    op.require(Scope::SessionQueueWrite)?;
    let id = parse_id(&id)?;
    let Some(declared) = hub
        .db
        .call(move |conn| workflows::params_of(conn, id))
        .await?
    else {
        return Err(PageError::not_found(format!("there is no workflow {id}")));
    };
    let mut params = serde_json::Map::new();
    for p in &declared.params {
        let Some(text) = field(&fields, &format!("param.{}", p.name)) else {
            continue;
        };
        // Empty: the workflow's default, or the check below names it as
        // required.
        if text.is_empty() {
            continue;
        }
        params.insert(p.name.clone(), read_value(p, text)?);
    }
    let new = checked_session(&hub, id, params, None).await?;
    let session = queue_session(&hub, new).await?;
    tracing::info!(session_queue_id = session.id, workflow_id = id, key_id = %op.caller.key_id, "session queued (console)");
    Ok(Redirect::to(&format!("/ui/sessions/{}", session.id)).into_response())
}

/// A field's text as the param's value. The error never repeats a secret.
fn read_value(p: &StoredParam, text: &str) -> Result<Value, PageError> {
    if p.secret {
        return Ok(Value::String(text.to_string()));
    }
    let bad = |what: &str| {
        PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Params refused",
            format!("the param `{}` must be {what}", p.name),
        )
    };
    match kind_of(p) {
        Kind::Text => Ok(Value::String(text.to_string())),
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad("true or false")),
        },
        Kind::Number => text
            .trim()
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| bad("a number")),
        Kind::Json => serde_json::from_str(text).map_err(|_| bad("JSON (as its default is)")),
    }
}
