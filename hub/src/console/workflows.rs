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
use tokio::sync::Semaphore;

use super::auth::{CSRF_FIELD, Operator};
use super::layout::{self, PageError};
use super::session::{Fields, field};
use tasuki_actions::language::params::{ParamType, same_value};
use tasuki_actions::{Problem, Problems};

use crate::api::Hub;
use crate::api::params::spec_of;
use crate::api::sessions::{checked_session, queue as queue_session};
use crate::api::workflows::check_with_calls;
use crate::db::robots;
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
    let check = check_again(&hub, &source).await;
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
        @match &check {
            Checked::Refused(problems) => {
                section aria-labelledby="problems-h" class="problems" id="problems" {
                    h2 id="problems-h" { "Problems " span class="sub" { "(a robot would refuse it today)" } }
                    ul { @for p in problems.iter() { li { (problem_text(p)) } } }
                }
            }
            Checked::Accepted(warnings) if !warnings.is_empty() => {
                section aria-labelledby="warnings-h" id="warnings" {
                    h2 id="warnings-h" { "Warnings" }
                    ul { @for p in warnings.iter() { li { (problem_text(p)) } } }
                }
            }
            Checked::Accepted(_) => {}
            Checked::NotNow(why) => { p class="note" id="not-checked" { "Not checked again now: " (why) "." } }
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

/// What checking a stored workflow again found.
enum Checked {
    /// A robot would load it, with these warnings.
    Accepted(Problems),
    Refused(Problems),
    /// The check did not run to its end; the reason.
    NotNow(&'static str),
}

/// Checks at once on this hub: a page view must not make the hub parse
/// without bound (a workflow and all it calls is up to a few MiB).
static CHECKS: Semaphore = Semaphore::const_new(2);

/// The stored source checked again as a robot of today's fleet would load
/// it: a called workflow may have changed since, or the robots offering an
/// action gone.
async fn check_again(hub: &Arc<Hub>, source: &workflows::Source) -> Checked {
    let Ok(turn) = CHECKS.try_acquire() else {
        return Checked::NotNow("the hub is checking other workflows");
    };
    let origin = if source.format == "json" {
        "workflow.json"
    } else {
        "workflow.yaml"
    };
    let (hub, text) = (hub.clone(), source.text.clone());
    // A task of its own, holding the turn to its end: a browser that
    // leaves the page does not free the turn while the parse goes on.
    let check = tokio::spawn(async move {
        let _turn = turn;
        let Ok(fleet) = hub.db.call(robots::fleet_catalog).await else {
            return Checked::NotNow("the hub cannot reach its database");
        };
        match check_with_calls(&hub, Arc::new(fleet), text, origin).await {
            Ok(Ok((workflow, _))) => Checked::Accepted(workflow.warnings),
            Ok(Err(problems)) => Checked::Refused(problems),
            Err(_) => Checked::NotNow("the check failed"),
        }
    });
    check.await.unwrap_or(Checked::NotNow("the check failed"))
}

/// Where a problem is, then what it is.
fn problem_text(p: &Problem) -> Markup {
    html! {
        @if let Some(file) = &p.file { (file) " " }
        @if let Some(line) = p.line { "line " (line) ": " }
        @if !p.path.is_empty() { code { (p.path) } ": " }
        (p.message)
    }
}

/// A param's field, by its type: a list of its choices, true/false, a
/// number, JSON for an object or a list, else text. A secret's is a
/// password field never filled in, not even with the workflow's default.
fn param_field(stored: &StoredParam) -> Markup {
    let p = spec_of(stored);
    let name = format!("param.{}", p.name);
    let field_id = format!("param-{}", p.name);
    let help_id = format!("param-{}-help", p.name);
    let required = p.default.is_none();
    // `default: null`: left as it is, the workflow's default applies.
    let no_default = p.default == Some(Value::Null);
    let default_text = match &p.default {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    html! {
        div class="field" {
            label for=(field_id) {
                code { (p.name) }
                @if let Some(ty) = p.value_type() { " " span class="type" { (ty.as_str()) } }
                @if p.secret { " (secret)" }
                @if required { " (required)" }
            }
            @if let Some(text) = &p.description { p class="help" id=(help_id) { (text) } }
            @let described = p.description.as_ref().map(|_| help_id.as_str());
            @if p.secret {
                input type="password" id=(field_id) name=(name) autocomplete="off" required[required]
                    aria-describedby=[described]
                    placeholder=[p.default.is_some().then_some("empty: the workflow's default")];
            } @else if !p.choices.is_empty() {
                select id=(field_id) name=(name) required[required] aria-describedby=[described] {
                    @if required { option value="" { "choose one" } }
                    @if no_default { option value="" selected { "(the workflow's default)" } }
                    @for c in &p.choices {
                        @let text = match c { Value::String(s) => s.clone(), other => other.to_string() };
                        option value=(text) selected[p.default.as_ref().is_some_and(|d| same_value(c, d))] { (text) }
                    }
                }
            } @else {
                @match p.value_type() {
                    Some(ParamType::Boolean) => {
                        @let on = p.default == Some(Value::Bool(true));
                        select id=(field_id) name=(name) required[required] aria-describedby=[described] {
                            @if required { option value="" { "choose one" } }
                            @if no_default { option value="" selected { "(the workflow's default)" } }
                            option value="true" selected[on] { "true" }
                            option value="false" selected[!on && !required && !no_default] { "false" }
                        }
                    }
                    Some(ty @ (ParamType::Number | ParamType::Integer)) => {
                        input type="number" step=(if ty == ParamType::Integer { "1" } else { "any" })
                            id=(field_id) name=(name) required[required] aria-describedby=[described]
                            value=(default_text);
                    }
                    Some(ParamType::Object | ParamType::Array) => {
                        textarea id=(field_id) name=(name) rows="3" required[required] aria-describedby=[described] {
                            (default_text)
                        }
                    }
                    Some(ParamType::String) | None => {
                        input type="text" id=(field_id) name=(name) required[required]
                            aria-describedby=[described] value=(default_text);
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
        params.insert(p.name.clone(), read_field(p, text)?);
    }
    let new = checked_session(&hub, id, params, None).await?;
    let session = queue_session(&hub, new).await?;
    tracing::info!(session_queue_id = session.id, workflow_id = id, key_id = %op.caller.key_id, "session queued (console)");
    Ok(Redirect::to(&format!("/ui/sessions/{}", session.id)).into_response())
}

/// A field's text as the param's value, read as its type. The error
/// names the param and, for a secret, never the text.
pub fn read_field(stored: &StoredParam, text: &str) -> Result<Value, PageError> {
    let p = spec_of(stored);
    p.read_text(text).map_err(|e| {
        let why = if p.secret {
            format!(
                "it wants {}",
                p.value_type().map(ParamType::wanted).unwrap_or("any value")
            )
        } else {
            e
        };
        PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Params refused",
            format!("the param `{}`: {why}", p.name),
        )
    })
}
