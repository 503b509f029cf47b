//! The local runner's view of a session: a live spinner on a terminal, or
//! plain lines when the output is a pipe or a file.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tasuki_actions::{Event, EventSink, LogLevel, SessionStatus, StepStatus};

pub enum Target {
    Stdout,
    Stderr,
}

pub struct Display {
    bar: Option<ProgressBar>,
    plain: Mutex<Box<dyn Write + Send>>,
    total_steps: usize,
    finished_steps: Mutex<usize>,
}

impl Display {
    pub fn new(target: Target, total_steps: usize) -> Display {
        let is_tty = match target {
            Target::Stdout => std::io::stdout().is_terminal(),
            Target::Stderr => std::io::stderr().is_terminal(),
        };
        let plain: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
        };
        let bar = is_tty.then(|| {
            let draw = match target {
                Target::Stdout => ProgressDrawTarget::stdout(),
                Target::Stderr => ProgressDrawTarget::stderr(),
            };
            let bar = ProgressBar::with_draw_target(Some(total_steps as u64), draw);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Display {
            bar,
            plain: Mutex::new(plain),
            total_steps,
            finished_steps: Mutex::new(0),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let mut out = self.plain.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(out, "{text}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl EventSink for Display {
    fn emit(&self, event: Event) {
        match event {
            Event::SessionStarted { workflow, .. } => self.line(&format!("▶ {workflow}")),
            Event::StepStarted {
                step_id,
                action,
                attempt,
                ..
            } => {
                if attempt > 1 {
                    self.line(&format!("↻ {step_id}: attempt {attempt}"));
                } else if self.bar.is_none() {
                    self.line(&format!("→ {step_id} ({action})"));
                }
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("{step_id} ({action})"));
                }
            }
            Event::Log(log) => {
                let step = log.step_id.as_deref().unwrap_or("-");
                let level = match log.level {
                    LogLevel::Warn => "warn: ",
                    LogLevel::Error => "error: ",
                    LogLevel::Debug => "debug: ",
                    LogLevel::Info => "",
                };
                self.line(&format!("  {step} │ {level}{}", log.message));
            }
            Event::StepFinished { step_id, record } => {
                let ms = record.duration_ms.unwrap_or(0);
                let text = match record.status {
                    StepStatus::Success => format!("✓ {step_id} ({ms} ms)"),
                    StepStatus::Skipped => format!("- {step_id} skipped (its `if` was false)"),
                    StepStatus::Cancelled => format!("⊘ {step_id} cancelled"),
                    _ => format!(
                        "✗ {step_id} failed: {}",
                        record
                            .error
                            .as_ref()
                            .map(|e| e.message.as_str())
                            .unwrap_or("unknown error")
                    ),
                };
                self.line(&text);
                let mut done = self
                    .finished_steps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                *done += 1;
                if let Some(bar) = &self.bar {
                    bar.set_position((*done).min(self.total_steps) as u64);
                }
            }
            Event::SessionFinished(report) => {
                let text = match report.status {
                    SessionStatus::Success => format!("✓ success in {} ms", report.duration_ms),
                    SessionStatus::Cancelled => {
                        format!("⊘ cancelled after {} ms", report.duration_ms)
                    }
                    _ => match &report.error {
                        Some(e) => format!(
                            "✗ {} in step `{}`: {}",
                            e.code,
                            e.step_id.as_deref().unwrap_or("-"),
                            e.message
                        ),
                        None => "✗ error".to_string(),
                    },
                };
                self.line(&text);
            }
        }
    }
}
