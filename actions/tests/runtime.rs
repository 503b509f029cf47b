//! The action runtime as a library: plugging in an action, the event
//! stream, and cancellation through the token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tasuki_actions::language::params::{ParamInputs, bind_params};
use tasuki_actions::runtime::context::ActionContext;
use tasuki_actions::runtime::registry::{ActionError, TypedAction};
use tasuki_actions::{
    Event, EventSink, ExecOptions, Executor, LoadOptions, LogLevel, Registry, SessionStatus,
    parse_workflow,
};
use tokio_util::sync::CancellationToken;

/// An action defined outside the crate, as a plugin would be.
struct Shout;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ShoutArgs {
    text: String,
    times: Option<u32>,
}

impl TypedAction for Shout {
    type Args = ShoutArgs;

    async fn run(&self, ctx: &ActionContext, args: ShoutArgs) -> Result<Value, ActionError> {
        let loud = args
            .text
            .to_uppercase()
            .repeat(args.times.unwrap_or(1) as usize);
        ctx.log(LogLevel::Info, &loud);
        Ok(json!({ "loud": loud }))
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl EventSink for Collect {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register("test.shout", Shout);
    r
}

#[tokio::test]
async fn a_new_action_plugs_in_through_the_registry() {
    let text = "version: 1\nname: plug\nsteps:\n  - id: s\n    action: test.shout\n    with: {text: hey, times: 2}\n";
    let wf = parse_workflow(text, "plug.yaml", &registry(), &LoadOptions::default()).unwrap();
    let params = bind_params(&wf, &ParamInputs::default()).unwrap();
    let sink = Arc::new(Collect::default());
    let report = Executor::new(registry(), ExecOptions::default())
        .run(&wf, &params, sink, CancellationToken::new())
        .await;
    assert_eq!(report.status, SessionStatus::Success);
    assert_eq!(report.steps["s"].output, json!({"loud": "HEYHEY"}));

    // Its arguments are validated from its own schema, like a built-in's.
    let bad = "version: 1\nname: plug\nsteps:\n  - id: s\n    action: test.shout\n    with: {text: 1, loudness: 11}\n";
    let problems =
        parse_workflow(bad, "bad.yaml", &registry(), &LoadOptions::default()).unwrap_err();
    let text = problems.to_string();
    assert!(
        text.contains("bad.yaml:6:") && text.contains("steps[0].with.text: expected a string"),
        "{text}"
    );
    assert!(
        text.contains("steps[0].with.loudness: unknown argument"),
        "{text}"
    );
}

#[tokio::test]
async fn events_arrive_in_order_with_gapless_log_sequence_numbers() {
    let text = r#"
version: 1
name: events
steps:
  - id: a
    action: test.shout
    with: {text: one}
  - id: b
    action: shell.run
    with: {argv: [sh, -c, "echo x; echo y; echo z"]}
  - id: c
    action: log
    with: {message: done}
"#;
    let wf = parse_workflow(text, "events.yaml", &registry(), &LoadOptions::default()).unwrap();
    let params = bind_params(&wf, &ParamInputs::default()).unwrap();
    let sink = Arc::new(Collect::default());
    let report = Executor::new(registry(), ExecOptions::default())
        .run(&wf, &params, sink.clone(), CancellationToken::new())
        .await;
    assert_eq!(report.status, SessionStatus::Success);

    let events = sink.0.lock().unwrap();
    assert!(matches!(events.first(), Some(Event::SessionStarted { .. })));
    assert!(matches!(events.last(), Some(Event::SessionFinished(_))));
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            if let Event::Log(l) = e {
                Some(l.seq)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "log seq must count from 1 without gaps"
    );
    assert_eq!(seqs.len(), 5);
    // Each step starts, logs, and finishes before the next one starts.
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step_id, .. } => Some(format!("start {step_id}")),
            Event::StepFinished { step_id, .. } => Some(format!("end {step_id}")),
            Event::Log(l) => Some(format!("log {}", l.step_id.clone().unwrap_or_default())),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "start a", "log a", "end a", "start b", "log b", "log b", "log b", "end b", "start c",
            "log c", "end c"
        ]
    );
}

#[tokio::test]
async fn cancelling_the_token_interrupts_a_wait_at_once() {
    let text = "version: 1\nname: c\nsteps:\n  - id: nap\n    action: sleep\n    with: {duration: 10m}\n  - id: after\n    action: log\n    with: {message: no}\n";
    let wf = parse_workflow(text, "c.yaml", &registry(), &LoadOptions::default()).unwrap();
    let params = bind_params(&wf, &ParamInputs::default()).unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let report = Executor::new(registry(), ExecOptions::default())
        .run(&wf, &params, Arc::new(Collect::default()), cancel)
        .await;
    assert_eq!(report.status, SessionStatus::Cancelled);
    assert_eq!(
        report.steps["nap"].status,
        tasuki_actions::StepStatus::Cancelled
    );
    assert_eq!(
        report.steps["after"].status,
        tasuki_actions::StepStatus::Cancelled
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

/// A sink that holds output back the way the agent's spool does (at most
/// 10,000 lines ahead of what its hub has taken), with a hub that keeps up
/// slowly: a 5,000-line batch every 200 ms, never slow enough to count as
/// stalled. Whatever the pipe still holds when the process exits must be
/// read, all of it, not cut off by the time allowed for reading it.
struct Paced {
    written: std::sync::atomic::AtomicU64,
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl EventSink for Paced {
    fn emit(&self, event: Event) {
        if matches!(event, Event::Log(_)) {
            self.written
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn log_room(&self) -> tasuki_actions::LogRoom<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            while self
                .written
                .load(SeqCst)
                .saturating_sub(self.taken.load(SeqCst))
                > 10_000
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }
}

#[tokio::test(flavor = "current_thread")]
async fn held_back_output_is_read_to_the_end_when_the_process_exits() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    const LINES: u64 = 100_000;
    let yaml = format!(
        "version: 1\nname: paced\nsteps:\n  - id: chatty\n    action: shell.run\n    with:\n      argv: [\"sh\", \"-c\", \"yes '' | head -n {LINES}\"]\n"
    );
    let workflow = parse_workflow(
        &yaml,
        "paced.yaml",
        &Registry::builtin(),
        &LoadOptions::default(),
    )
    .unwrap();
    let params = bind_params(&workflow, &ParamInputs::default()).unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    let sink = Arc::new(Paced {
        written: AtomicU64::new(0),
        taken: taken.clone(),
    });
    let hub = {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let written = sink.written.load(SeqCst);
                let before = taken.load(SeqCst);
                taken.store(written.min(before + 5_000), SeqCst);
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let options = ExecOptions {
        work_dir: dir.path().into(),
        artifacts_dir: dir.path().join("artifacts"),
        ..ExecOptions::default()
    };
    let report = Executor::new(Registry::builtin(), options)
        .run(&workflow, &params, sink.clone(), CancellationToken::new())
        .await;
    hub.abort();
    assert_eq!(report.status, SessionStatus::Success);
    assert_eq!(sink.written.load(SeqCst), LINES, "every line was read");
}
