//! `/ui/sessions/{id}`: one session. Its steps as a timeline, its params
//! (secret ones masked, as the API shows them), its artifacts (screenshots
//! inline), its log, streamed live over Server-Sent Events while it runs,
//! and the Cancel and Re-run forms.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::stream::{self, Stream};
use maud::{Markup, html};
use serde::Deserialize;
use tasuki_protocol::session::{Decide, Decision, SessionWait, WaitKind, may_decide};
use tasuki_protocol::{LogLine, Scope, SessionOrigin, SessionQueue, SessionStatus, StepStatus};

use super::auth::{CSRF_FIELD, Operator};
use super::layout::{self, PageError};
use crate::api::Hub;
use crate::api::sessions::{cancel_session, explain_wait, rerun_session, session_not_found};
use crate::db::{artifacts, logs, sessions, workflows};

/// Log lines rendered with the page: the last ones (the stream sends
/// what comes after them; `log.txt` has them all).
const PAGE_LINES: i64 = 5_000;
/// Log lines a page keeps while it streams; older ones leave the page
/// (a browser stays quick with a step printing thousands a second).
const LIVE_LINES: u32 = 10_000;
/// Lines read from the database at a time by the stream.
const STREAM_BATCH: i64 = 1_000;
/// How often the stream looks for new lines while none are stored here.
const STREAM_POLL: Duration = Duration::from_millis(250);
/// Shown inline; anything else is a download. Not SVG: it can carry script.
const INLINE_IMAGES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

fn parse_id(id: &str) -> Result<i64, PageError> {
    layout::page_id(id, "session")
}

fn shorten(text: &str) -> String {
    crate::api::query::shorten(text).to_string()
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
            let Some(mut session) = sessions::get(conn, id)? else {
                return Ok(None);
            };
            explain_wait(conn, &mut session)?;
            let from = (logs::high_seq(conn, id)? as i64 - PAGE_LINES).max(0);
            let lines = logs::after(conn, id, from, PAGE_LINES)?
                .map(|(lines, _)| lines)
                .unwrap_or_default();
            let files = artifacts::list(conn, id)?;
            let secret: Vec<String> = workflows::params_of(conn, session.workflow.id)?
                .map(|w| {
                    w.params
                        .into_iter()
                        .filter(|p| p.secret)
                        .map(|p| p.name)
                        .collect()
                })
                .unwrap_or_default();
            Ok(Some((session, lines, files, secret)))
        })
        .await?;
    let Some((s, lines, files, secret)) = found else {
        return Err(session_not_found(id).into());
    };
    let last_seq = lines.last().map(|l| l.seq).unwrap_or(0);
    let first_seq = lines.first().map(|l| l.seq).unwrap_or(1);
    let live = !s.status.is_terminal();
    let title = format!("Session {} · {}", s.id, s.workflow.name);
    let body = html! {
        h1 { "Session #" (s.id) " " span class="sub" { (s.workflow.name) } }
        section class="summary" aria-label="Summary" {
            dl {
                dt { "Status" } dd id="session-status" { (layout::status(s.status)) }
                dt { "Workflow" } dd { a href={ "/ui/workflows/" (s.workflow.id) } { (s.workflow.name) } }
                dt { "Robot" } dd { @match &s.robot { Some(r) => (r.name), None => span class="none" { "not taken yet" } } }
                dt { "Queued" } dd { (layout::time(Some(s.created_at))) }
                dt { "Started" } dd { (layout::time(s.started_at)) }
                dt { "Ended" } dd { (layout::time(s.ended_at)) }
                dt { "Duration" } dd { (layout::duration_between(s.started_at, s.ended_at)) }
                @if let Some(origin) = &s.origin { dt { "Origin" } dd { (origin_text(origin)) } }
                @if let Some(t) = s.cancel_requested_at { dt { "Cancel requested" } dd { (layout::time(Some(t))) } }
                @if let Some(w) = &s.wait { (wait_summary(w)) }
            }
            @if let Some(reason) = &s.queued_reason { p class="note" { (reason) } }
            @if let Some(e) = &s.error {
                p class="problem" id="session-error" {
                    strong { "Error " code { (e.code) } } @if let Some(step) = &e.step_id { " in step " code { (step) } } ": " (e.message)
                }
            }
        }
        (actions(&op, &s, &secret))
        section aria-labelledby="artifacts-h" {
            h2 id="artifacts-h" { "Artifacts" }
            @if files.is_empty() {
                p class="none" { "None." }
            } @else {
                ul class="artifacts" id="artifacts" {
                    @for (name, size, _) in &files {
                        @let url = format!("/ui/sessions/{}/artifacts/{}", s.id, layout::encode_segment(name));
                        li {
                            @if looks_like_image(name) {
                                figure {
                                    a href=(url) { img src=(url) alt={ "Screenshot " (name) } loading="lazy"; }
                                    figcaption { (name) " (" (layout::bytes(*size)) ")" }
                                }
                            } @else {
                                a href=(url) download { (name) } " (" (layout::bytes(*size)) ")"
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="steps-h" {
            h2 id="steps-h" { "Steps" }
            @match &s.steps {
                Some(steps) if !steps.is_empty() => {
                    ol class="timeline" id="steps" {
                        @for step in steps {
                            li class={ "step step-" (step_status(step.status)) } {
                                div class="step-head" {
                                    code { (step.id) }
                                    span class={ "status status-" (step_status(step.status)) } { (step_status(step.status)) }
                                    span class="dur" { (step.duration_ms.map(layout::duration_ms).unwrap_or_else(|| layout::duration_between(step.started_at, step.ended_at))) }
                                }
                                @if !step.output.is_null() {
                                    details { summary { "Output" } pre { (pretty(&step.output)) } }
                                }
                                @if let Some(e) = &step.error {
                                    p class="problem" { code { (e.code) } ": " (e.message) }
                                }
                            }
                        }
                    }
                }
                _ => { p class="none" { "No step has run yet." } }
            }
        }
        section aria-labelledby="log-h" {
            h2 id="log-h" { "Log" }
            p {
                a id="log-text" href={ "/ui/sessions/" (s.id) "/log.txt" } { "The whole log as text" }
            }
            @if live {
                p class="note" id="log-live" { "Streaming while the session runs." }
            }
            p class="note" id="log-trimmed" hidden[first_seq == 1] {
                "Lines before " (first_seq) " are not shown here."
            }
            pre class="log" id="log" tabindex="0"
                data-stream=[live.then(|| format!("/ui/sessions/{}/log/stream?after={last_seq}", s.id))]
                data-keep=(LIVE_LINES)
                data-status=(s.status.as_str()) {
                @for line in &lines { (log_line(line)) }
            }
        }
        section aria-labelledby="params-h" {
            h2 id="params-h" { "Params" }
            @if s.params.is_empty() {
                p class="none" { "None." }
            } @else {
                table class="kv" {
                    @for (name, value) in &s.params {
                        tr { th scope="row" { (name) } td { code { (compact(value)) } } }
                    }
                }
            }
            @if let Some(outputs) = &s.outputs {
                h3 { "Outputs" }
                pre { (pretty(outputs)) }
            }
        }
    };
    Ok(layout::page(&op, &title, "sessions", body))
}

/// What the session waits, or waited, for, and how it was answered.
fn wait_summary(w: &SessionWait) -> Markup {
    html! {
        dt { "Waits for" }
        dd id="session-wait" {
            @match w.kind {
                WaitKind::Approval => { "an approval at step " code { (w.step_id) } }
                WaitKind::Event => { "the event " code { (w.event.as_deref().unwrap_or_default()) } " at step " code { (w.step_id) } }
            }
            @if let Some(m) = &w.message { ": " q { (m) } }
        }
        @if !w.approvers.is_empty() {
            dt { "Approvers" }
            dd id="session-approvers" {
                @for (i, key) in w.approvers.iter().enumerate() {
                    @if i > 0 { ", " }
                    code { (key) }
                }
            }
        }
        @match &w.outcome {
            None => { dt { "Until" } dd { (layout::time(Some(w.deadline))) } }
            Some(outcome) => {
                dt { "Answer" }
                dd id="session-answer" {
                    (outcome)
                    @if let Some(by) = &w.decided_by { " by " code { (by) } }
                    @if let Some(at) = w.decided_at { ", " (layout::time(Some(at))) }
                    @if let Some(c) = &w.comment { ": " q { (c) } }
                }
            }
        }
    }
}

fn actions(op: &Operator, s: &SessionQueue, secret: &[String]) -> Markup {
    let deciding = s.status == SessionStatus::Waiting
        && s.wait
            .as_ref()
            .is_some_and(|w| w.kind == WaitKind::Approval && w.outcome.is_none());
    let may_approve = s
        .wait
        .as_ref()
        .is_none_or(|w| may_decide(&w.approvers, &op.caller.key_id));
    html! {
        section class="actions" aria-label="Actions" {
            @if deciding {
                form method="post" action={ "/ui/sessions/" (s.id) "/approval" } id="approval" {
                    input type="hidden" name=(CSRF_FIELD) value=(op.csrf);
                    label { "Comment " input type="text" name="comment" maxlength="4096" autocomplete="off"; }
                    " "
                    button type="submit" name="decision" value="approve" id="approve" disabled[!may_approve] { "Approve" }
                    " "
                    button type="submit" name="decision" value="reject" id="reject" class="danger" disabled[!may_approve] { "Reject" }
                    @if !op.may(Scope::SessionQueueWrite) { span class="note" { " (your key lacks session_queue.write)" } }
                    @else if !may_approve { span class="note" { " (your key is not among the approvers)" } }
                }
            }
            @if !s.status.is_terminal() {
                form method="post" action={ "/ui/sessions/" (s.id) "/cancel" } {
                    input type="hidden" name=(CSRF_FIELD) value=(op.csrf);
                    button type="submit" id="cancel" class="danger" { "Cancel session" }
                    @if !op.may(Scope::SessionQueueDelete) { span class="note" { " (your key lacks session_queue.delete)" } }
                }
            } @else {
                form method="post" action={ "/ui/sessions/" (s.id) "/rerun" } {
                    input type="hidden" name=(CSRF_FIELD) value=(op.csrf);
                    @for name in secret {
                        label { "Secret param " code { (name) } " "
                            input type="password" name={ "secret." (name) } autocomplete="off" required;
                        }
                    }
                    button type="submit" id="rerun" { "Re-run" }
                    @if !op.may(Scope::SessionQueueWrite) { span class="note" { " (your key lacks session_queue.write)" } }
                }
            }
        }
    }
}

fn origin_text(origin: &SessionOrigin) -> Markup {
    match origin {
        SessionOrigin::Schedule {
            schedule_id,
            due_at,
        } => {
            html! { "schedule " (schedule_id) ", due " (layout::time(Some(*due_at))) }
        }
        SessionOrigin::Rerun { session_id } => {
            html! { "re-run of " a href={ "/ui/sessions/" (session_id) } { "#" (session_id) } }
        }
        SessionOrigin::ErrorHandler { session_id } => {
            html! { "error handler of " a href={ "/ui/sessions/" (session_id) } { "#" (session_id) } }
        }
        SessionOrigin::Trigger { trigger_id } => html! { "trigger " (trigger_id) },
    }
}

fn step_status(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Success => "success",
        StepStatus::Error => "error",
        StepStatus::Skipped => "skipped",
        StepStatus::Cancelled => "cancelled",
    }
}

fn log_line(l: &LogLine) -> Markup {
    html! {
        span class={ "line level-" (l.level.as_str()) } data-seq=(l.seq) {
            (l.ts.strftime("%H:%M:%S")) " " (l.level.as_str()) " "
            @if let Some(step) = &l.step_id { "[" (step) "] " }
            (l.message) "\n"
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn looks_like_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".gif", ".webp"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

#[derive(Deserialize)]
pub struct StreamQuery {
    after: Option<u64>,
}

/// `GET /ui/sessions/{id}/log/stream`: the lines after `?after=` (or the
/// `Last-Event-ID` a reconnecting browser sends), each an event with
/// `id: <seq>`, then the lines as they arrive, until the session has
/// ended and every line is sent. A `status` event tells each change of
/// status; `end` closes the stream. It looks for new lines as soon as a
/// robot's batch is stored on this hub, and every 250 ms (a batch sent
/// through another hub of the database, a change of status).
pub async fn log_stream(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let id = parse_id(&id)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = resume.or(q.ok().and_then(|Query(q)| q.after)).unwrap_or(0);
    let tail = Tail {
        closing: hub.closing.subscribe(),
        logs_stored: hub.logs_stored.subscribe(),
        hub,
        id,
        seq: after,
        status: None,
        buffered: VecDeque::new(),
        done: false,
    };
    Ok(Sse::new(stream::unfold(tail, next_event)).keep_alive(KeepAlive::default()))
}

struct Tail {
    hub: Arc<Hub>,
    closing: tokio::sync::watch::Receiver<bool>,
    logs_stored: tokio::sync::watch::Receiver<Option<i64>>,
    id: i64,
    seq: u64,
    status: Option<SessionStatus>,
    buffered: VecDeque<LogLine>,
    done: bool,
}

async fn next_event(mut t: Tail) -> Option<(Result<Event, Infallible>, Tail)> {
    loop {
        // A hub shutting down ends the stream without an `end` event: the
        // browser reconnects from its last event id.
        if t.done || *t.closing.borrow() {
            return None;
        }
        if let Some(line) = t.buffered.pop_front() {
            return Some((Ok(line_event(&line)), t));
        }
        let (id, after) = (t.id, t.seq as i64);
        // Lines stored from here on wake the wait below.
        t.logs_stored.borrow_and_update();
        let read = t
            .hub
            .db
            .call(move |conn| logs::after(conn, id, after, STREAM_BATCH))
            .await;
        let (lines, status) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                t.done = true;
                return Some((Ok(Event::default().event("end").data("gone")), t));
            }
            Err(e) => {
                tracing::warn!(session_queue_id = id, error = %e, "console log stream");
                t.done = true;
                let event = Event::default()
                    .event("problem")
                    .data("the hub cannot reach its database");
                return Some((Ok(event), t));
            }
        };
        let had_lines = !lines.is_empty();
        if let Some(last) = lines.last() {
            t.seq = last.seq;
        }
        t.buffered.extend(lines);
        // Every line stored first: a page reloads when the status changes,
        // and would drop the lines still on their way.
        if had_lines {
            continue;
        }
        if t.status != Some(status) {
            t.status = Some(status);
            return Some((
                Ok(Event::default().event("status").data(status.as_str())),
                t,
            ));
        }
        if status.is_terminal() {
            t.done = true;
            return Some((Ok(Event::default().event("end").data(status.as_str())), t));
        }
        let poll = tokio::time::sleep(STREAM_POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = &mut poll => break,
                // Another session's batch is no news here; when two come
                // close together only the last is seen, and the poll finds
                // the first.
                stored = t.logs_stored.changed() => {
                    if stored.is_err() || *t.logs_stored.borrow_and_update() == Some(t.id) {
                        break;
                    }
                }
                _ = t.closing.changed() => break,
            }
        }
    }
}

fn line_event(l: &LogLine) -> Event {
    // JSON: a message's line breaks stay inside one `data:` line, and the
    // page sets it as text, never as markup.
    let data = serde_json::json!({
        "seq": l.seq,
        "time": l.ts.strftime("%H:%M:%S").to_string(),
        "level": l.level.as_str(),
        "step": l.step_id,
        "message": l.message,
    });
    Event::default()
        .id(l.seq.to_string())
        .event("line")
        .data(data.to_string())
}

/// `GET /ui/sessions/{id}/log.txt`: every line of the log as plain text,
/// read from the database a batch at a time as it is sent.
pub async fn log_text(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let id = parse_id(&id)?;
    let read = move |hub: Arc<Hub>, after: i64| async move {
        hub.db
            .call(move |conn| logs::after(conn, id, after, STREAM_BATCH))
            .await
    };
    let Some((first, _)) = read(hub.clone(), 0).await? else {
        return Err(session_not_found(id).into());
    };
    let body = stream::unfold(Some((hub, first)), move |state| async move {
        let (hub, lines) = state?;
        if lines.is_empty() {
            return None;
        }
        let mut text = String::new();
        for l in &lines {
            text.push_str(&text_line(l));
        }
        let last = lines.last().map(|l| l.seq as i64).unwrap_or(0);
        let next = match read(hub.clone(), last).await {
            Ok(Some((more, _))) => Some((hub, more)),
            Ok(None) => None,
            Err(e) => {
                // The status and headers are gone: the text says so.
                tracing::warn!(session_queue_id = id, error = %e, "console log text");
                text.push_str("\n[the hub cannot reach its database: the log stops here]\n");
                None
            }
        };
        Some((Ok::<_, Infallible>(text), next))
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"session-{id}.log\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// One line of `log.txt`: its time to the millisecond, level, step and
/// message.
fn text_line(l: &LogLine) -> String {
    let step = l
        .step_id
        .as_deref()
        .map(|s| format!("[{s}] "))
        .unwrap_or_default();
    format!(
        "{} {} {}{}\n",
        l.ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        l.level.as_str(),
        step,
        l.message
    )
}

pub async fn artifact(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let id = parse_id(&id)?;
    let lookup = name.clone();
    let found = hub
        .db
        .call(move |conn| artifacts::get(conn, id, &lookup))
        .await?
        .ok_or_else(|| {
            PageError::not_found(format!("session {id} has no artifact `{}`", shorten(&name)))
        })?;
    let image = INLINE_IMAGES.contains(&found.content_type.as_str());
    // A name is the robot's; only plain characters go into the header.
    let file: String = found
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (content_type, disposition) = if image {
        (found.content_type, format!("inline; filename=\"{file}\""))
    } else {
        // Never rendered as a page of this origin.
        (
            "application/octet-stream".to_string(),
            format!("attachment; filename=\"{file}\""),
        )
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CACHE_CONTROL, "private, max-age=60".to_string()),
        ],
        found.data,
    )
        .into_response())
}

/// The fields of a posted form, in order.
pub type Fields = Vec<(String, String)>;

pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub async fn cancel(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    op.check_csrf(field(&fields, CSRF_FIELD))?;
    op.require(Scope::SessionQueueDelete)?;
    let id = parse_id(&id)?;
    cancel_session(&hub, id, &op.caller.key_id).await?;
    Ok(Redirect::to(&format!("/ui/sessions/{id}")).into_response())
}

pub async fn approval(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    op.check_csrf(field(&fields, CSRF_FIELD))?;
    op.require(Scope::SessionQueueWrite)?;
    let id = parse_id(&id)?;
    let decision = match field(&fields, "decision") {
        Some("approve") => Decision::Approve,
        Some("reject") => Decision::Reject,
        _ => {
            return Err(PageError::from(crate::api::ApiError::invalid_field(
                "decision",
                "approve or reject",
            )));
        }
    };
    let comment = field(&fields, "comment")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from);
    let body = Decide { decision, comment };
    crate::api::decide_approval(&hub, id, body, &op.caller.key_id).await?;
    Ok(Redirect::to(&format!("/ui/sessions/{id}")).into_response())
}

pub async fn rerun(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    op.check_csrf(field(&fields, CSRF_FIELD))?;
    op.require(Scope::SessionQueueWrite)?;
    op.require(Scope::SessionQueueRead)?;
    let id = parse_id(&id)?;
    // Each secret read as its param's type (a secret may be a number).
    let declared = hub
        .db
        .call(move |conn| match sessions::workflow_of(conn, id)? {
            Some(workflow_id) => workflows::params_of(conn, workflow_id),
            None => Ok(None),
        })
        .await?
        .map(|d| d.params)
        .unwrap_or_default();
    let mut given = serde_json::Map::new();
    for (name, value) in &fields {
        if let Some(param) = name.strip_prefix("secret.") {
            let value = match declared.iter().find(|p| p.name == param) {
                Some(stored) => super::workflows::read_field(stored, value)?,
                // Not a secret param: the re-run refuses it by name.
                None => serde_json::Value::String(value.clone()),
            };
            given.insert(param.to_string(), value);
        }
    }
    let session = rerun_session(&hub, id, given).await.map_err(|e| {
        let mut page = PageError::from(e);
        if page.status == StatusCode::CONFLICT || page.status.is_client_error() {
            page.title = "Re-run refused".into();
        }
        page
    })?;
    tracing::info!(session_queue_id = session.id, rerun_of = id, key_id = %op.caller.key_id, "session re-run (console)");
    Ok(Redirect::to(&format!("/ui/sessions/{}", session.id)).into_response())
}
