//! Form state: check and uncheck (idempotently), clear, and read whether
//! an element is visible, enabled and selected.

use serde_json::{Map, Value, json};

use super::{CODE_BROWSER, check_locator, run, run_acting, with_element};
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

element_args!(CheckArgs {});

/// `browser.check` (`want` true) and `browser.uncheck`.
pub struct Check {
    pub want: bool,
}

impl TypedAction for Check {
    type Args = CheckArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: CheckArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let want = self.want;
        let verb = if want { "check" } else { "uncheck" };
        let locator = &locator;
        let result = run_acting(ctx, None, |h| async move {
            let (kind, was) = with_element(&h, locator, wait, verb, |el| async move {
                let kind = el.prop("type").await?.unwrap_or_default();
                Ok((kind, el.is_selected().await?))
            })
            .await?;
            if kind != "checkbox" && kind != "radio" {
                return Err(ActionError::new(
                    codes::INVALID_ARGS,
                    format!(
                        "{} is not a checkbox or a radio button (its type is `{kind}`)",
                        locator.describe()
                    ),
                ));
            }
            if was == want {
                return Ok(json!({ "changed": false, "checked": was }));
            }
            if kind == "radio" && !want {
                return Err(ActionError::new(
                    codes::INVALID_ARGS,
                    format!(
                        "{} is a checked radio button: a radio is unchecked by checking \
                         another of its group",
                        locator.describe()
                    ),
                ));
            }
            // Clicked, as a person would, so that the page's listeners run.
            let now = with_element(&h, locator, wait, verb, |el| async move {
                el.click().await?;
                el.is_selected().await
            })
            .await?;
            if now != want {
                return Err(ActionError::new(
                    CODE_BROWSER,
                    format!(
                        "clicked {} but it is still {}: the page undid the click",
                        locator.describe(),
                        if now { "checked" } else { "unchecked" }
                    ),
                ));
            }
            Ok(json!({ "changed": true, "checked": now }))
        })
        .await;
        if let Ok(out) = &result
            && out["changed"] == json!(false)
        {
            let state = if want { "checked" } else { "unchecked" };
            ctx.log(
                LogLevel::Info,
                &format!("{} is already {state}; nothing to do", locator.describe()),
            );
        }
        result
    }
}

element_args!(ClearArgs {});
pub struct Clear;

impl TypedAction for Clear {
    type Args = ClearArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: ClearArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            with_element(
                &h,
                locator,
                wait,
                "clear",
                |el| async move { el.clear().await },
            )
            .await?;
            Ok(json!({ "cleared": true }))
        })
        .await
    }
}

element_args!(GetStateArgs {});
pub struct GetState;

impl TypedAction for GetState {
    type Args = GetStateArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: GetStateArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            with_element(&h, locator, wait, "get_state", |el| async move {
                Ok(json!({
                    "visible": el.is_displayed().await?,
                    "enabled": el.is_enabled().await?,
                    "selected": el.is_selected().await?,
                }))
            })
            .await
        })
        .await
    }
}
