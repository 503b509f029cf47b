//! Questions about the page: how many elements match and whether one
//! exists (answered at once, for `if:`), and waits on the page's URL and
//! title.

use std::time::Instant;

use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::locator::{self, LocatorArgs};
use super::{CODE_NOT_FOUND, Wait, driver_error, run};
use crate::builtin::args::DurationArg;
use crate::runtime::context::ActionContext;
use crate::runtime::registry::{ActionError, TypedAction, codes};

/// `browser.count` and `browser.exists`: they look once and never wait.
pub struct Count {
    pub as_exists: bool,
}

impl TypedAction for Count {
    type Args = LocatorArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        locator::check(args, true, "")
    }

    async fn run(&self, ctx: &ActionContext, args: LocatorArgs) -> Result<Value, ActionError> {
        let locator = args.locator();
        let (locator, as_exists) = (&locator, self.as_exists);
        run(ctx, None, |h| async move {
            let what = if as_exists { "exists" } else { "count" };
            let found = locator
                .find_all(&h.driver)
                .await
                .map_err(|e| driver_error(&format!("{what}: finding {}", locator.describe()), e))?;
            Ok(if as_exists {
                json!({ "exists": !found.is_empty() })
            } else {
                json!({ "count": found.len() })
            })
        })
        .await
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForPageArgs {
    /// Wait until it contains this text.
    contains: Option<String>,
    /// Wait until it matches this regular expression.
    matches: Option<String>,
    /// How long to wait; 30s by default.
    timeout: Option<DurationArg>,
    /// How often to look; 50ms by default.
    poll: Option<DurationArg>,
}

/// `browser.wait_for_url` and `browser.wait_for_title`.
pub struct WaitForPage {
    pub title: bool,
}

fn check_page_wait(args: &Map<String, Value>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match (args.get("contains"), args.get("matches")) {
        (Some(_), Some(_)) => problems.push((
            "matches".into(),
            "give `contains` or `matches`, not both".into(),
        )),
        (None, None) => problems.push((
            String::new(),
            "say what to wait for: `contains` (text) or `matches` (a regular expression)".into(),
        )),
        _ => {}
    }
    if let Some(Value::String(re)) = args.get("matches")
        && !re.contains("${")
        && let Err(e) = Regex::new(re)
    {
        problems.push((
            "matches".into(),
            format!("not a valid regular expression: {e}"),
        ));
    }
    problems
}

impl TypedAction for WaitForPage {
    type Args = WaitForPageArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_page_wait(args)
    }

    async fn run(&self, ctx: &ActionContext, args: WaitForPageArgs) -> Result<Value, ActionError> {
        let wait = Wait::from_args(ctx, args.timeout, args.poll);
        let pattern = match &args.matches {
            Some(re) => Some(Regex::new(re).map_err(|e| {
                ActionError::new(
                    codes::INVALID_ARGS,
                    format!("with.matches: not a valid regular expression: {e}"),
                )
            })?),
            None => None,
        };
        let (title, pattern, contains) = (self.title, &pattern, &args.contains);
        let what = if title { "title" } else { "URL" };
        run(ctx, None, |h| async move {
            let started = Instant::now();
            let deadline = started + wait.timeout;
            loop {
                let now = if title {
                    h.driver.title().await
                } else {
                    h.driver.current_url().await.map(|u| u.to_string())
                }
                .map_err(|e| driver_error(&format!("reading the page's {what}"), e))?;
                let holds = match (pattern, contains) {
                    (Some(re), _) => re.is_match(&now),
                    (None, Some(text)) => now.contains(text.as_str()),
                    (None, None) => true,
                };
                if holds {
                    let key = if title { "title" } else { "url" };
                    return Ok(
                        json!({ key: now, "waited_ms": started.elapsed().as_millis() as u64 }),
                    );
                }
                if Instant::now() >= deadline {
                    let want = match (pattern, contains) {
                        (Some(re), _) => format!("to match `{re}`"),
                        (None, Some(text)) => format!("to contain \"{text}\""),
                        (None, None) => String::new(),
                    };
                    return Err(ActionError::new(
                        CODE_NOT_FOUND,
                        format!(
                            "waited {} ms for the page's {what} {want}; it is \"{now}\"",
                            wait.timeout.as_millis()
                        ),
                    ));
                }
                tokio::time::sleep(wait.poll).await;
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_wait_needs_one_valid_condition() {
        let check = |v: Value| check_page_wait(v.as_object().unwrap());
        assert!(check(json!({"contains": "report"})).is_empty());
        assert!(check(json!({"matches": "report/\\d+"})).is_empty());
        assert_eq!(check(json!({}))[0].0, "");
        assert_eq!(
            check(json!({"contains": "a", "matches": "b"}))[0].0,
            "matches"
        );
        let bad = check(json!({"matches": "(unclosed"}));
        assert_eq!(bad[0].0, "matches");
        assert!(bad[0].1.contains("regular expression"), "{bad:?}");
        assert!(check(json!({"matches": "${params.re}"})).is_empty());
    }
}
