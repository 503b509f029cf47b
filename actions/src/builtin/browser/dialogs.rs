//! Dialogs: `alert`, `confirm` and `prompt`.
//!
//! The browser is started with WebDriver's `unhandledPromptBehavior` set
//! to `ignore`: a command that meets an open dialog is refused and the
//! dialog stays open, so that `browser.accept_dialog` and
//! `browser.dismiss_dialog` can answer it, and so that `super::run` can
//! apply the session's policy to a dialog no step expected (`unexpected`).

use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use thirtyfour::WebDriver;
use thirtyfour::error::{WebDriverError, WebDriverErrorInner};

use super::{CODE_BROWSER, Wait, driver_error, run};
use crate::builtin::args::{DurationArg, Text};
use crate::runtime::context::{ActionContext, DialogPolicy};
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction};

/// A WebDriver command was refused because a dialog is open: the code
/// `driver_error` gives it, which `super::run` turns into the policy's
/// outcome. It never ends a step as it is.
pub const CODE_DIALOG_OPEN: &str = "dialog_open";
/// The step's error when the policy fails it, or when a dialog opened
/// while an acting step acted.
pub const CODE_UNEXPECTED: &str = "unexpected_dialog";
/// `accept_dialog`/`dismiss_dialog` found no dialog in time.
pub const CODE_NO_DIALOG: &str = "dialog_not_found";

/// How many unexpected dialogs one step answers before it gives up: a page
/// that opens one after another would otherwise hold the step forever.
const MAX_ANSWERED: u32 = 10;
/// How much of a dialog's text an error or a log line quotes.
const QUOTE_CHARS: usize = 300;

/// Applies the session's policy to the dialog that refused a command.
/// `Ok` means the dialog is answered and the step may try again.
pub async fn unexpected(
    ctx: &ActionContext,
    driver: &WebDriver,
    answered: u32,
) -> Result<(), ActionError> {
    let text = match driver.get_alert_text().await {
        Ok(text) => text,
        // It closed on its own (or the page went): nothing to answer.
        Err(e) if no_dialog(&e) => return Ok(()),
        Err(e) => return Err(driver_error("reading the open dialog", e)),
    };
    let quoted = quote(ctx, &text);
    let policy = ctx.options().browser.unexpected_dialog;
    if policy == DialogPolicy::Fail || answered >= MAX_ANSWERED {
        // Dismissed, so that the steps after this one (on_error, catch)
        // still have a browser that answers.
        let _ = driver.dismiss_alert().await;
        let why = if answered >= MAX_ANSWERED {
            format!("{MAX_ANSWERED} dialogs opened one after another during this step")
        } else {
            "no step expected it".to_string()
        };
        return Err(ActionError::new(
            CODE_UNEXPECTED,
            format!(
                "a dialog is open: \"{quoted}\" ({why}). Answer it with browser.accept_dialog \
                 or browser.dismiss_dialog in a step right after the one that opens it, or set \
                 `browser: {{unexpected_dialog: accept}}` (or `dismiss`) in the workflow; \
                 it was dismissed so that later steps can use the browser"
            ),
        ));
    }
    let (answer, done) = if policy == DialogPolicy::Accept {
        (driver.accept_alert().await, "accepted")
    } else {
        (driver.dismiss_alert().await, "dismissed")
    };
    match answer {
        Ok(()) => {}
        Err(e) if no_dialog(&e) => {}
        Err(e) => return Err(driver_error("answering the open dialog", e)),
    }
    ctx.log(
        LogLevel::Warn,
        &format!(
            "{done} a dialog no step expected: \"{quoted}\" (unexpected_dialog: {})",
            policy.as_str()
        ),
    );
    Ok(())
}

/// The error of a step that acts (see `super::run_acting`) when a dialog
/// opened while it acted: the dialog was answered by the policy, but the
/// step is not run again.
pub fn answered_mid_step() -> ActionError {
    ActionError::new(
        CODE_UNEXPECTED,
        "a dialog opened while this step was acting and was answered by the \
         unexpected_dialog policy (see the warning before this error); the step is not \
         repeated, since part of it may already have taken effect. If this step opens the \
         dialog, answer it with browser.accept_dialog or browser.dismiss_dialog in the next step",
    )
}

fn no_dialog(e: &WebDriverError) -> bool {
    matches!(e.as_inner(), WebDriverErrorInner::NoSuchAlert(_))
}

/// The dialog's text, masked and cut, for an error or a log line.
fn quote(ctx: &ActionContext, text: &str) -> String {
    let masked = ctx.mask(text);
    let mut cut: String = masked.chars().take(QUOTE_CHARS).collect();
    if cut.len() < masked.len() {
        cut.push('…');
    }
    cut
}

/// Waits for a dialog to be open and returns its text.
async fn wait_for_dialog(driver: &WebDriver, wait: Wait) -> Result<String, ActionError> {
    let deadline = Instant::now() + wait.timeout;
    loop {
        match driver.get_alert_text().await {
            Ok(text) => return Ok(text),
            Err(e) if no_dialog(&e) => {}
            Err(e) => return Err(driver_error("waiting for a dialog", e)),
        }
        if Instant::now() >= deadline {
            return Err(ActionError::new(
                CODE_NO_DIALOG,
                format!(
                    "no dialog (alert, confirm or prompt) opened within {} ms",
                    wait.timeout.as_millis()
                ),
            ));
        }
        tokio::time::sleep(wait.poll).await;
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptDialogArgs {
    /// Typed into a prompt before accepting it. A secret param stays masked.
    text: Option<Text>,
    /// How long to wait for the dialog to open; 30s by default.
    timeout: Option<DurationArg>,
    /// How often to look while waiting; 50ms by default.
    poll: Option<DurationArg>,
}

pub struct AcceptDialog;

impl TypedAction for AcceptDialog {
    type Args = AcceptDialogArgs;

    async fn run(&self, ctx: &ActionContext, args: AcceptDialogArgs) -> Result<Value, ActionError> {
        let wait = Wait::from_args(ctx, args.timeout, args.poll);
        let text = args.text.map(|t| t.0);
        let text = &text;
        let result = run(ctx, None, |h| async move {
            let message = wait_for_dialog(&h.driver, wait).await?;
            if let Some(text) = text {
                h.driver
                    .send_alert_text(text.as_str())
                    .await
                    .map_err(|e| dialog_error("typing into the prompt", e))?;
            }
            h.driver
                .accept_alert()
                .await
                .map_err(|e| dialog_error("accepting the dialog", e))?;
            Ok(json!({ "message": message }))
        })
        .await;
        if let Ok(out) = &result {
            let typed = match text {
                Some(t) => format!(", typed \"{t}\""),
                None => String::new(),
            };
            let message = out["message"].as_str().unwrap_or_default();
            ctx.log(
                LogLevel::Info,
                &format!("accepted the dialog \"{}\"{typed}", quote(ctx, message)),
            );
        }
        result
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissDialogArgs {
    /// How long to wait for the dialog to open; 30s by default.
    timeout: Option<DurationArg>,
    /// How often to look while waiting; 50ms by default.
    poll: Option<DurationArg>,
}

pub struct DismissDialog;

impl TypedAction for DismissDialog {
    type Args = DismissDialogArgs;

    async fn run(
        &self,
        ctx: &ActionContext,
        args: DismissDialogArgs,
    ) -> Result<Value, ActionError> {
        let wait = Wait::from_args(ctx, args.timeout, args.poll);
        let result = run(ctx, None, |h| async move {
            let message = wait_for_dialog(&h.driver, wait).await?;
            h.driver
                .dismiss_alert()
                .await
                .map_err(|e| dialog_error("dismissing the dialog", e))?;
            Ok(json!({ "message": message }))
        })
        .await;
        if let Ok(out) = &result {
            let message = out["message"].as_str().unwrap_or_default();
            ctx.log(
                LogLevel::Info,
                &format!("dismissed the dialog \"{}\"", quote(ctx, message)),
            );
        }
        result
    }
}

/// A dialog that closed between the wait and the answer is not an
/// "unexpected dialog": say what happened.
fn dialog_error(what: &str, e: WebDriverError) -> ActionError {
    if no_dialog(&e) {
        return ActionError::new(
            CODE_NO_DIALOG,
            format!("{what}: the dialog closed before it could be answered"),
        );
    }
    let mut error = driver_error(what, e);
    if error.code == CODE_DIALOG_OPEN {
        error.code = CODE_BROWSER.into();
    }
    error
}
