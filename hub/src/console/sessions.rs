//! `/ui/sessions`: every session, newest first, filtered by status,
//! workflow, robot and day with the API's own search terms
//! (`api/search.rs`), a page at a time. The table refreshes itself
//! (console.js) while the page is open.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use maud::{Markup, html};
use serde::Deserialize;
use tasuki_protocol::{Scope, SessionQueue, SessionStatus};

use super::auth::Operator;
use super::layout::{self, PageError};
use crate::api::Hub;
use crate::api::search;
use crate::db::{robots, sessions, workflows};

const PER_PAGE: i64 = 25;
/// Workflows offered in the filter; more are reached by id in the URL.
const FILTER_CHOICES: i64 = 500;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    workflow: Option<String>,
    robot: Option<String>,
    after: Option<String>,
    before: Option<String>,
    page: Option<String>,
}

impl ListQuery {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The filter as the API's search terms read it, plus workflow and
    /// robot; a wrong value names itself.
    fn filter(&self) -> Result<sessions::Filter, String> {
        let mut terms = Vec::new();
        if let Some(s) = Self::given(&self.status) {
            terms.push(format!("is:{s}"));
        }
        if let Some(d) = Self::given(&self.after) {
            terms.push(format!("after:{d}"));
        }
        if let Some(d) = Self::given(&self.before) {
            terms.push(format!("before:{d}"));
        }
        if terms.iter().any(|t| t.chars().any(char::is_whitespace)) {
            return Err("a filter value must not contain spaces".into());
        }
        let mut filter = search::parse(&terms.join(" ")).map_err(|e| e.message)?;
        filter.workflow_id = id_of("workflow", Self::given(&self.workflow))?;
        filter.robot_id = id_of("robot", Self::given(&self.robot))?;
        Ok(filter)
    }

    fn page(&self) -> Result<i64, String> {
        match Self::given(&self.page) {
            None => Ok(1),
            Some(p) => p
                .parse::<i64>()
                .ok()
                .filter(|p| (1..=1_000_000).contains(p))
                .ok_or_else(|| format!("the page is a whole number from 1, not `{p}`")),
        }
    }

    /// This filter's URL at `page`.
    fn url(&self, page: i64) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("status", &self.status),
            ("workflow", &self.workflow),
            ("robot", &self.robot),
            ("after", &self.after),
            ("before", &self.before),
        ] {
            if let Some(v) = Self::given(v) {
                parts.push(format!("{name}={}", layout::encode(v)));
            }
        }
        parts.push(format!("page={page}"));
        format!("/ui/sessions?{}", parts.join("&"))
    }
}

fn id_of(what: &str, v: Option<&str>) -> Result<Option<i64>, String> {
    v.map(|v| {
        v.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
            format!("the {what} filter is an id (a positive whole number), not `{v}`")
        })
    })
    .transpose()
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    op: Operator,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Markup, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let parsed = q.filter().and_then(|f| Ok((f, q.page()?)));
    let (filter, page, problem) = match parsed {
        Ok((f, p)) => (f, p, None),
        Err(problem) => (sessions::Filter::default(), 1, Some(problem)),
    };
    let (rows, total, workflow_names, robot_names) = hub
        .db
        .call(move |conn| {
            let (rows, total) = if problem.is_none() {
                sessions::list(conn, &filter, PER_PAGE, (page - 1) * PER_PAGE)?
            } else {
                (Vec::new(), 0)
            };
            let (wf, _) = workflows::list(conn, FILTER_CHOICES, 0)?;
            let wf: Vec<(i64, String)> = wf.into_iter().map(|w| (w.id, w.name)).collect();
            let rb: Vec<(i64, String)> = robots::list(conn)?
                .into_iter()
                .map(|r| (r.id, r.name))
                .collect();
            Ok((rows, total, wf, rb))
        })
        .await?;
    let problem = parsed_problem(&q);
    let pages = (total as i64 + PER_PAGE - 1) / PER_PAGE;
    let active = rows
        .iter()
        .any(|s| matches!(s.status, SessionStatus::Queued | SessionStatus::Running));
    let body = html! {
        h1 { "Sessions" }
        form method="get" action="/ui/sessions" class="filters" aria-label="Filter sessions" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in SessionStatus::ALL {
                        option value=(s.as_str()) selected[ListQuery::given(&q.status) == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "Workflow "
                select name="workflow" {
                    option value="" { "any" }
                    @for (id, name) in &workflow_names {
                        option value=(id) selected[ListQuery::given(&q.workflow) == Some(id.to_string().as_str())] { (name) " (" (id) ")" }
                    }
                }
            }
            label { "Robot "
                select name="robot" {
                    option value="" { "any" }
                    @for (id, name) in &robot_names {
                        option value=(id) selected[ListQuery::given(&q.robot) == Some(id.to_string().as_str())] { (name) }
                    }
                }
            }
            label { "Queued on or after " input type="date" name="after" value=(ListQuery::given(&q.after).unwrap_or("")); }
            label { "Queued before " input type="date" name="before" value=(ListQuery::given(&q.before).unwrap_or("")); }
            button type="submit" { "Filter" }
            a href="/ui/sessions" { "Clear" }
        }
        @if let Some(problem) = &problem {
            p class="problem" role="alert" id="problem" { (problem) }
        }
        // console.js fetches this page again and swaps this element; more
        // often while something is queued or running.
        div id="sessions-table" data-refresh=(if active { "2000" } else { "5000" }) {
            p class="count" { (total) " session" @if total != 1 { "s" } @if pages > 1 { ", page " (page) " of " (pages) } }
            @if rows.is_empty() {
                p class="none" { "No sessions match." }
            } @else {
                div class="scroll" {
                    table class="sessions" {
                        thead { tr {
                            th scope="col" { "Session" } th scope="col" { "Status" } th scope="col" { "Workflow" }
                            th scope="col" { "Robot" } th scope="col" { "Queued" } th scope="col" { "Started" }
                            th scope="col" { "Ended" } th scope="col" { "Duration" }
                        } }
                        tbody {
                            @for s in &rows { (row(s)) }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav class="pages" aria-label="Pages" {
                    @if page > 1 { a href=(q.url(page - 1)) rel="prev" { "← Newer" } }
                    @if page < pages { a href=(q.url(page + 1)) rel="next" { "Older →" } }
                }
            }
        }
    };
    Ok(layout::page(&op, "Sessions", "sessions", body))
}

fn parsed_problem(q: &ListQuery) -> Option<String> {
    q.filter().err().or_else(|| q.page().err())
}

fn row(s: &SessionQueue) -> Markup {
    html! {
        tr id={ "session-" (s.id) } {
            td { a href={ "/ui/sessions/" (s.id) } { "#" (s.id) } }
            td { (layout::status(s.status)) }
            td { (s.workflow.name) }
            td { @match &s.robot { Some(r) => (r.name), None => span class="none" { "—" } } }
            td { (layout::time(Some(s.created_at))) }
            td { (layout::time(s.started_at)) }
            td { (layout::time(s.ended_at)) }
            td { (layout::duration_between(s.started_at, s.ended_at)) }
        }
    }
}
