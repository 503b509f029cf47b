//! `/ui/robots`: the registered robots as `GET /v1/robots` shows them.

use std::sync::Arc;

use axum::extract::State;
use maud::{Markup, html};
use tasuki_protocol::{RobotState, Scope};

use super::auth::Operator;
use super::layout::{self, PageError};
use crate::api::Hub;

pub async fn list(State(hub): State<Arc<Hub>>, op: Operator) -> Result<Markup, PageError> {
    op.require(Scope::SessionQueueRead)?;
    let robots = crate::api::robots::items(&hub).await?;
    let body = html! {
        h1 { "Robots" }
        // Heartbeats and running sessions change by the second: the list
        // refreshes on its own (console.js).
        div id="robots-list" data-refresh="5000" {
            p class="count" { (robots.len()) " registered" }
            @if robots.is_empty() {
                p class="none" { "No robot has registered. Register one with " code { "tasuki agent register" } "." }
            } @else {
                div class="scroll" {
                    table class="robots" id="robots" {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "State" } th scope="col" { "Labels" }
                            th scope="col" { "Version" } th scope="col" { "Last heartbeat" } th scope="col" { "Host" }
                            th scope="col" { "CPU / memory / disk free" } th scope="col" { "Running" }
                        } }
                        tbody {
                            @for r in &robots {
                                @let state = match r.state { RobotState::Idle => "idle", RobotState::Busy => "busy", RobotState::Offline => "offline" };
                                tr {
                                    td { (r.name) }
                                    td {
                                        span class={ "status robot-" (state) } { (state) }
                                        @if r.draining { " " span class="status robot-draining" { "draining" } }
                                    }
                                    td { @for l in &r.labels { span class="label" { (l) } " " } }
                                    td { (r.version) }
                                    td { (layout::time(r.last_heartbeat_at)) }
                                    td { (r.host.hostname) " " span class="sub" { (r.host.os) "/" (r.host.arch) } }
                                    td {
                                        @match &r.metrics {
                                            Some(m) => {
                                                (format!("{:.0}%", m.cpu_percent)) " · "
                                                (layout::bytes(m.memory_used_bytes)) " of " (layout::bytes(m.memory_total_bytes)) " · "
                                                (layout::bytes(m.disk_free_bytes)) " free"
                                            }
                                            None => span class="none" { "—" },
                                        }
                                    }
                                    td {
                                        (r.running_sessions.len()) " of " (r.max_concurrency)
                                        @for id in &r.running_sessions { " " a href={ "/ui/sessions/" (id) } { "#" (id) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&op, "Robots", "robots", body))
}
