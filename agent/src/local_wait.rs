//! How `tasuki run` answers waiting steps (`approval`, `wait_event`): from
//! `--approve STEP`, `--reject STEP` and `--event NAME=JSON`, or, for a step
//! no flag answers, by asking on the terminal. Without a terminal such a
//! step fails with `wait_unanswered`, naming the flag that would answer it.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};

use jiff::Timestamp;
use serde_json::Value;
use tasuki_actions::runtime::wait::{
    WaitAnswer, WaitFuture, WaitKind, WaitOutcome, WaitRequest, Waiter, check_event_name,
};
use tasuki_actions::{Workflow, language::model::wait_kind};
use tokio_util::sync::CancellationToken;

pub struct LocalWaiter {
    approve: HashSet<String>,
    reject: HashSet<String>,
    events: HashMap<String, Value>,
    /// Whether a person is there to ask: stdin and stderr are a terminal.
    can_ask: bool,
}

impl LocalWaiter {
    /// Reads the flags against `workflow`: each names a waiting step (or
    /// an event one waits for) of it, and no step is both approved and
    /// rejected. Errors name the flag.
    pub fn from_flags(
        workflow: &Workflow,
        approve: &[String],
        reject: &[String],
        events: &[String],
    ) -> Result<LocalWaiter, Vec<String>> {
        let mut problems = Vec::new();
        let approvals: HashSet<&str> = workflow
            .steps
            .iter()
            .filter(|s| wait_kind(&s.action) == Some(WaitKind::Approval))
            .map(|s| s.id.as_str())
            .collect();
        let waited: HashSet<&str> = workflow
            .steps
            .iter()
            .filter(|s| wait_kind(&s.action) == Some(WaitKind::Event))
            .filter_map(|s| s.with.get("event").and_then(Value::as_str))
            .collect();
        for (flag, ids) in [("--approve", approve), ("--reject", reject)] {
            for id in ids {
                if !approvals.contains(id.as_str()) {
                    problems.push(format!(
                        "{flag} {id}: the workflow has no approval step `{id}`{}",
                        listed(&approvals)
                    ));
                }
            }
        }
        for id in approve.iter().filter(|id| reject.contains(id)) {
            problems.push(format!("--approve {id} and --reject {id}: choose one"));
        }
        let mut payloads = HashMap::new();
        for given in events {
            let Some((name, json)) = given.split_once('=') else {
                problems.push(format!(
                    "--event {given}: expected NAME=JSON, such as --event done='{{\"ok\": true}}'"
                ));
                continue;
            };
            if let Err(e) = check_event_name(name) {
                problems.push(format!("--event {given}: {e}"));
            } else if !waited.contains(name) {
                problems.push(format!(
                    "--event {name}: the workflow waits for no event `{name}`{}",
                    listed(&waited)
                ));
            }
            match serde_json::from_str::<Value>(json) {
                Ok(payload) => {
                    payloads.insert(name.to_string(), payload);
                }
                Err(e) => problems.push(format!(
                    "--event {name}: the payload is not JSON ({e}); quote text as '\"text\"'"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(LocalWaiter {
            approve: approve.iter().cloned().collect(),
            reject: reject.iter().cloned().collect(),
            events: payloads,
            can_ask: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        })
    }

    fn by_flag(&self, request: &WaitRequest) -> Option<WaitOutcome> {
        let (by, at) = ("flag".to_string(), Timestamp::now());
        match request.kind {
            WaitKind::Approval if self.approve.contains(&request.step_id) => {
                Some(WaitOutcome::Approved {
                    by,
                    at,
                    comment: None,
                })
            }
            WaitKind::Approval if self.reject.contains(&request.step_id) => {
                Some(WaitOutcome::Rejected {
                    by,
                    at,
                    comment: None,
                })
            }
            WaitKind::Event => request
                .event
                .as_ref()
                .and_then(|name| self.events.get(name))
                .map(|payload| WaitOutcome::Event {
                    payload: payload.clone(),
                    at,
                }),
            WaitKind::Approval => None,
        }
    }
}

fn listed(names: &HashSet<&str>) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut names: Vec<&str> = names.iter().copied().collect();
    names.sort_unstable();
    format!(" (it has: {})", names.join(", "))
}

impl Waiter for LocalWaiter {
    fn wait<'a>(&'a self, request: &'a WaitRequest, cancel: CancellationToken) -> WaitFuture<'a> {
        Box::pin(async move {
            if let Some(outcome) = self.by_flag(request) {
                return WaitAnswer::Decided(outcome);
            }
            if !self.can_ask {
                let flag = match request.kind {
                    WaitKind::Approval => {
                        format!("--approve {0} or --reject {0}", request.step_id)
                    }
                    WaitKind::Event => format!(
                        "--event {}=JSON",
                        request.event.as_deref().unwrap_or_default()
                    ),
                };
                return WaitAnswer::Unanswerable(format!(
                    "step `{}` waits for {}; there is no terminal to ask on, so pass {flag}",
                    request.step_id,
                    tasuki_actions::runtime::wait::describe(request)
                ));
            }
            // A thread of its own rather than the blocking pool: a read of
            // stdin cannot be interrupted, and the runtime would wait for
            // it at exit after a timeout or a cancel.
            let (tx, asking) = tokio::sync::oneshot::channel();
            let question = request.clone();
            std::thread::spawn(move || {
                let _ = tx.send(ask(&question));
            });
            tokio::select! {
                answer = asking => answer.unwrap_or_else(|_| {
                    WaitAnswer::Unanswerable("reading the terminal failed".into())
                }),
                _ = tokio::time::sleep(request.timeout()) => {
                    let at = Timestamp::now();
                    WaitAnswer::Decided(match (request.kind, request.on_timeout) {
                        (WaitKind::Event, _) => WaitOutcome::TimedOut { at },
                        (WaitKind::Approval, tasuki_actions::runtime::wait::OnTimeout::Approve) => {
                            WaitOutcome::Approved { by: "timeout".into(), at, comment: None }
                        }
                        (WaitKind::Approval, _) => {
                            WaitOutcome::Rejected { by: "timeout".into(), at, comment: None }
                        }
                    })
                }
                _ = cancel.cancelled() => WaitAnswer::Decided(WaitOutcome::Cancelled { at: Timestamp::now() }),
            }
        })
    }
}

/// Asks on the terminal (stderr, so `--output json` keeps stdout clean).
fn ask(request: &WaitRequest) -> WaitAnswer {
    let mut err = std::io::stderr();
    let mut line = String::new();
    let read = |line: &mut String| std::io::stdin().lock().read_line(line);
    match request.kind {
        WaitKind::Approval => {
            let _ = write!(
                err,
                "\nstep `{}` asks for approval: {}\napprove? [y/N] ",
                request.step_id,
                request.message.as_deref().unwrap_or_default()
            );
            let _ = err.flush();
            if let Err(e) = read(&mut line) {
                return WaitAnswer::Unanswerable(format!("reading the terminal failed: {e}"));
            }
            let (by, at) = ("terminal".to_string(), Timestamp::now());
            if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                WaitAnswer::Decided(WaitOutcome::Approved {
                    by,
                    at,
                    comment: None,
                })
            } else {
                WaitAnswer::Decided(WaitOutcome::Rejected {
                    by,
                    at,
                    comment: None,
                })
            }
        }
        WaitKind::Event => {
            let name = request.event.as_deref().unwrap_or_default();
            loop {
                let _ = write!(
                    err,
                    "\nstep `{}` waits for the event `{name}`: type its payload as JSON on one line: ",
                    request.step_id
                );
                let _ = err.flush();
                line.clear();
                match read(&mut line) {
                    Ok(0) => {
                        return WaitAnswer::Unanswerable(format!(
                            "the terminal closed before the event `{name}` was given"
                        ));
                    }
                    Ok(_) => match serde_json::from_str(line.trim()) {
                        Ok(payload) => {
                            return WaitAnswer::Decided(WaitOutcome::Event {
                                payload,
                                at: Timestamp::now(),
                            });
                        }
                        Err(e) => {
                            let _ = writeln!(err, "that is not JSON ({e}); try again");
                        }
                    },
                    Err(e) => {
                        return WaitAnswer::Unanswerable(format!(
                            "reading the terminal failed: {e}"
                        ));
                    }
                }
            }
        }
    }
}
