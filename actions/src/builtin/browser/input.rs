//! The keyboard and the mouse: keys and chords, hover, double and right
//! click, drag and drop, and scrolling (into view, by an amount, or to the
//! bottom of a list that loads more as it is scrolled).

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thirtyfour::{WebDriver, WebElement};

use super::locator::{self, LocatorArgs};
use super::{Handle, Wait, check_locator, driver_error, run, run_acting, with_element};
use crate::builtin::args::{DurationArg, Text};
use crate::language::model::edit_distance;
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

/// WebDriver's key codes (W3C WebDriver, "Keyboard actions"), by the
/// names a workflow writes. Matched without regard to case.
const KEYS: &[(&str, char)] = &[
    ("Cancel", '\u{E001}'),
    ("Help", '\u{E002}'),
    ("Backspace", '\u{E003}'),
    ("Tab", '\u{E004}'),
    ("Clear", '\u{E005}'),
    ("Return", '\u{E006}'),
    ("Enter", '\u{E007}'),
    ("Pause", '\u{E00B}'),
    ("Escape", '\u{E00C}'),
    ("Esc", '\u{E00C}'),
    ("Space", '\u{E00D}'),
    ("PageUp", '\u{E00E}'),
    ("PageDown", '\u{E00F}'),
    ("End", '\u{E010}'),
    ("Home", '\u{E011}'),
    ("ArrowLeft", '\u{E012}'),
    ("Left", '\u{E012}'),
    ("ArrowUp", '\u{E013}'),
    ("Up", '\u{E013}'),
    ("ArrowRight", '\u{E014}'),
    ("Right", '\u{E014}'),
    ("ArrowDown", '\u{E015}'),
    ("Down", '\u{E015}'),
    ("Insert", '\u{E016}'),
    ("Delete", '\u{E017}'),
    ("Del", '\u{E017}'),
    ("F1", '\u{E031}'),
    ("F2", '\u{E032}'),
    ("F3", '\u{E033}'),
    ("F4", '\u{E034}'),
    ("F5", '\u{E035}'),
    ("F6", '\u{E036}'),
    ("F7", '\u{E037}'),
    ("F8", '\u{E038}'),
    ("F9", '\u{E039}'),
    ("F10", '\u{E03A}'),
    ("F11", '\u{E03B}'),
    ("F12", '\u{E03C}'),
];

const MODIFIERS: &[(&str, char)] = &[
    ("Shift", '\u{E008}'),
    ("Control", '\u{E009}'),
    ("Ctrl", '\u{E009}'),
    ("Alt", '\u{E00A}'),
    ("Option", '\u{E00A}'),
    ("Meta", '\u{E03D}'),
    ("Command", '\u{E03D}'),
    ("Cmd", '\u{E03D}'),
];

/// Releases every modifier held by an element's key sequence.
const NULL_KEY: char = '\u{E000}';

fn lookup(table: &[(&str, char)], name: &str) -> Option<char> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// One entry of `keys`.
#[derive(Debug, Clone, PartialEq)]
enum Press {
    /// Typed as it is.
    Text(String),
    /// Modifiers held while one key is pressed.
    Chord { modifiers: Vec<char>, key: char },
}

/// `Enter`, `Control+A`, `Shift+Tab`, `Control++`, or plain text. A `+`
/// between words that are not modifiers is text (`1+1`), unless the word
/// is a near miss of a modifier or key name (`Ctl+A`), which is refused.
fn parse_press(entry: &str) -> Result<Press, String> {
    if let Some(key) = lookup(KEYS, entry).or_else(|| lookup(MODIFIERS, entry)) {
        return Ok(Press::Chord {
            modifiers: Vec::new(),
            key,
        });
    }
    let split = if let Some(mods) = entry.strip_suffix("++") {
        Some((mods, "+"))
    } else {
        entry
            .rsplit_once('+')
            .filter(|(m, k)| !m.is_empty() && !k.is_empty())
    };
    let Some((mods, key)) = split else {
        return Ok(Press::Text(entry.to_string()));
    };
    let mut modifiers = Vec::new();
    for name in mods.split('+') {
        match lookup(MODIFIERS, name) {
            Some(m) => modifiers.push(m),
            None if near_a_key_name(name) => {
                return Err(format!(
                    "`{name}` in `{entry}` is not a modifier: use Control, Shift, Alt or Meta"
                ));
            }
            None => return Ok(Press::Text(entry.to_string())),
        }
    }
    let shift = modifiers.contains(&'\u{E008}');
    let key = match lookup(KEYS, key) {
        Some(k) => k,
        None => {
            let mut chars = key.chars();
            match (chars.next(), chars.next()) {
                // Control+A means the A key: send the letter as that key
                // types it (upper case only with Shift).
                (Some(c), None) if shift => c.to_ascii_uppercase(),
                (Some(c), None) => c.to_ascii_lowercase(),
                _ => {
                    return Err(format!(
                        "`{key}` in `{entry}` is not a key: name one key (Enter, Tab, \
                         ArrowDown, F5, ...) or one character"
                    ));
                }
            }
        }
    };
    Ok(Press::Chord { modifiers, key })
}

fn near_a_key_name(word: &str) -> bool {
    word.len() >= 3
        && MODIFIERS
            .iter()
            .chain(KEYS)
            .any(|(n, _)| edit_distance(&word.to_ascii_lowercase(), &n.to_ascii_lowercase()) <= 2)
}

/// The keys as one string for an element's "send keys", where modifiers
/// stay down until the null key.
fn as_key_sequence(presses: &[Press]) -> String {
    let mut out = String::new();
    for press in presses {
        match press {
            Press::Text(t) => out.push_str(t),
            Press::Chord { modifiers, key } => {
                out.extend(modifiers.iter());
                out.push(*key);
                if !modifiers.is_empty() {
                    out.push(NULL_KEY);
                }
            }
        }
    }
    out
}

/// The keys as input actions on whatever has the focus.
async fn press_on_focus(driver: &WebDriver, presses: &[Press]) -> Result<(), ActionError> {
    let mut chain = driver.action_chain();
    for press in presses {
        chain = match press {
            Press::Text(t) => chain.send_keys(t.as_str()),
            Press::Chord { modifiers, key } => {
                let mut c = chain;
                for m in modifiers {
                    c = c.key_down(*m);
                }
                c = c.key_down(*key).key_up(*key);
                for m in modifiers.iter().rev() {
                    c = c.key_up(*m);
                }
                c
            }
        };
    }
    chain
        .perform()
        .await
        .map_err(|e| driver_error("press_keys", e))
}

#[derive(Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
enum Keys {
    One(Text),
    Many(Vec<Text>),
}

impl Keys {
    fn entries(&self) -> Vec<String> {
        match self {
            Keys::One(t) => vec![t.0.clone()],
            Keys::Many(list) => list.iter().map(|t| t.0.clone()).collect(),
        }
    }
}

element_args!(PressKeysArgs {
    /// A key (`Enter`, `Tab`, `Escape`, `ArrowDown`, `F5`), a chord
    /// (`Control+A`, `Shift+Tab`, `Meta+V`) or text, or a list of them,
    /// pressed in order. Without an element, they go to whatever has the focus.
    keys: Keys,
});
pub struct PressKeys;

impl TypedAction for PressKeys {
    type Args = PressKeysArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = check_locator(args, false);
        let entries: Vec<(String, &str)> = match args.get("keys") {
            Some(Value::String(s)) => vec![("keys".into(), s.as_str())],
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.as_str().map(|s| (format!("keys[{i}]"), s)))
                .collect(),
            _ => Vec::new(),
        };
        if matches!(args.get("keys"), Some(Value::Array(l)) if l.is_empty()) {
            problems.push(("keys".into(), "name at least one key".into()));
        }
        for (path, entry) in entries {
            if entry.contains("${") {
                continue;
            }
            if entry.is_empty() {
                problems.push((path, "an empty entry presses nothing".into()));
            } else if let Err(m) = parse_press(entry) {
                problems.push((path, m));
            }
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: PressKeysArgs) -> Result<Value, ActionError> {
        let entries = args.keys.entries();
        let mut presses = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            // A secret is text to type, whatever it looks like: never read
            // as key names, and never quoted in part by an error.
            if ctx.mask(entry) != *entry {
                presses.push(Press::Text(entry.clone()));
                continue;
            }
            presses.push(parse_press(entry).map_err(|m| {
                ActionError::new(codes::INVALID_ARGS, format!("with.keys[{i}]: {m}"))
            })?);
        }
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let (presses, locator) = (&presses, &locator);
        let result = run_acting(ctx, None, |h| async move {
            if locator.is_set() {
                let sequence = as_key_sequence(presses);
                with_element(&h, locator, wait, "press_keys", |el| {
                    let sequence = sequence.clone();
                    async move { el.send_keys(sequence.as_str()).await }
                })
                .await?;
            } else {
                press_on_focus(&h.driver, presses).await?;
            }
            Ok(json!({ "pressed": presses.len() }))
        })
        .await;
        if result.is_ok() {
            // Through the masker: a secret typed as text shows as ***.
            ctx.log(LogLevel::Info, &format!("pressed {}", entries.join(", ")));
        }
        result
    }
}

/// An element brought into view, then handed to a pointer action: W3C
/// pointer actions refuse a target outside the viewport.
async fn pointer_at<F, Fut>(
    h: &Handle,
    args_locator: &locator::Locator,
    wait: Wait,
    what: &str,
    act: F,
) -> Result<(), ActionError>
where
    F: Fn(WebDriver, WebElement) -> Fut,
    Fut: std::future::Future<Output = thirtyfour::error::WebDriverResult<()>>,
{
    let driver = h.driver.clone();
    with_element(h, args_locator, wait, what, |el| {
        let driver = driver.clone();
        let act = &act;
        async move {
            el.scroll_into_view().await?;
            act(driver, el).await
        }
    })
    .await
}

element_args!(HoverArgs {});
pub struct Hover;

impl TypedAction for Hover {
    type Args = HoverArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: HoverArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            pointer_at(&h, locator, wait, "hover", |d, el| async move {
                d.action_chain().move_to_element_center(&el).perform().await
            })
            .await?;
            Ok(json!({ "hovered": true }))
        })
        .await
    }
}

element_args!(DoubleClickArgs {});
pub struct DoubleClick;

impl TypedAction for DoubleClick {
    type Args = DoubleClickArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: DoubleClickArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            pointer_at(&h, locator, wait, "double_click", |d, el| async move {
                d.action_chain().double_click_element(&el).perform().await
            })
            .await?;
            Ok(json!({ "clicked": true }))
        })
        .await
    }
}

element_args!(RightClickArgs {});
pub struct RightClick;

impl TypedAction for RightClick {
    type Args = RightClickArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: RightClickArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            pointer_at(&h, locator, wait, "right_click", |d, el| async move {
                d.action_chain().context_click_element(&el).perform().await
            })
            .await?;
            Ok(json!({ "clicked": true }))
        })
        .await
    }
}

/// Whether pointer actions start an HTML5 drag (`draggable="true"`,
/// `dragstart` and `drop` listeners) depends on the Chromium and
/// chromedriver versions and on the page cancelling `dragenter` as well as
/// `dragover`; so such a source gets the drag's events from a script, with
/// one shared DataTransfer, which works on every version.
const HTML5_DRAG_JS: &str = r#"
const [source, target] = arguments;
const data = new DataTransfer();
const fire = (el, type) => {
  const r = el.getBoundingClientRect();
  el.dispatchEvent(new DragEvent(type, {
    bubbles: true, cancelable: true, dataTransfer: data,
    clientX: r.left + r.width / 2, clientY: r.top + r.height / 2,
  }));
};
fire(source, 'dragstart');
fire(target, 'dragenter');
fire(target, 'dragover');
fire(target, 'drop');
fire(source, 'dragend');
"#;

element_args!(DragAndDropArgs {
    /// Where to drop the element: `selector`, `xpath`, `by_text`, ... as for the element.
    target: LocatorArgs,
});
pub struct DragAndDrop;

impl TypedAction for DragAndDrop {
    type Args = DragAndDropArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = check_locator(args, true);
        if let Some(Value::Object(target)) = args.get("target") {
            problems.extend(locator::check(target, true, "target."));
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: DragAndDropArgs) -> Result<Value, ActionError> {
        let (source, target, wait) = (args.locator(), args.target.locator(), args.wait(ctx));
        let (source, target) = (&source, &target);
        run(ctx, None, |h| async move {
            let found = |el: WebElement| async move { Ok(el) };
            let from = with_element(&h, source, wait, "drag_and_drop", found).await?;
            let to = with_element(&h, target, wait, "drag_and_drop (target)", found).await?;
            let html5 = from
                .attr("draggable")
                .await
                .map_err(|e| driver_error("drag_and_drop", e))?
                .as_deref()
                == Some("true");
            if html5 {
                h.driver
                    .execute(
                        HTML5_DRAG_JS,
                        vec![
                            from.to_json()
                                .map_err(|e| driver_error("drag_and_drop", e))?,
                            to.to_json().map_err(|e| driver_error("drag_and_drop", e))?,
                        ],
                    )
                    .await
                    .map_err(|e| driver_error("drag_and_drop", e))?;
            } else {
                from.scroll_into_view()
                    .await
                    .map_err(|e| driver_error("drag_and_drop", e))?;
                // A small first move: pages that drag by mouse events often
                // wait for the pointer to travel a few pixels first.
                h.driver
                    .action_chain()
                    .click_and_hold_element(&from)
                    .move_by_offset(5, 5)
                    .move_to_element_center(&to)
                    .release()
                    .perform()
                    .await
                    .map_err(|e| driver_error("drag_and_drop", e))?;
            }
            Ok(json!({ "dropped": true, "html5": html5 }))
        })
        .await
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ScrollTo {
    Top,
    Bottom,
}

element_args!(ScrollArgs {
    /// Scroll the page by `[x, y]` pixels.
    by: Option<[i64; 2]>,
    /// `top` or `bottom` of the page, or of the element when one is given.
    to: Option<ScrollTo>,
    /// With `to: bottom`: keep scrolling while the page grows (a list that
    /// loads more as it is scrolled), until it stops or `max_rounds`.
    #[serde(default)]
    until_stable: bool,
    /// At most this many rounds of `until_stable`; 50 by default.
    max_rounds: Option<u32>,
    /// How long each round waits for the page to grow; 500ms by default.
    settle: Option<DurationArg>,
});
pub struct Scroll;

/// Scrolls the page (or `arguments[0]`) to its top or bottom, or by an
/// amount, and returns where it is and how tall it is.
const SCROLL_JS: &str = r#"
const [el, to, by] = arguments;
const box = el || document.scrollingElement || document.documentElement;
if (to === 'bottom') { box.scrollTop = box.scrollHeight; }
if (to === 'top') { box.scrollTop = 0; }
if (by) { if (el) { el.scrollBy(by[0], by[1]); } else { window.scrollBy(by[0], by[1]); } }
return [box.scrollLeft, box.scrollTop, box.scrollHeight];
"#;

const INTO_VIEW_JS: &str = r#"
arguments[0].scrollIntoView({ block: 'center', inline: 'nearest' });
const box = document.scrollingElement || document.documentElement;
return [box.scrollLeft, box.scrollTop, box.scrollHeight];
"#;

impl TypedAction for Scroll {
    type Args = ScrollArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = check_locator(args, false);
        let element = locator::FIELDS.iter().any(|k| args.contains_key(*k));
        let (by, to) = (args.contains_key("by"), args.contains_key("to"));
        if by && to {
            problems.push(("by".into(), "give `by` or `to`, not both".into()));
        }
        if !element && !by && !to {
            problems.push((
                String::new(),
                "say where to scroll: an element (into view), `by: [x, y]`, or `to: top|bottom`"
                    .into(),
            ));
        }
        if args.get("until_stable") == Some(&Value::Bool(true))
            && args.get("to").and_then(Value::as_str) != Some("bottom")
        {
            problems.push((
                "until_stable".into(),
                "`until_stable` goes with `to: bottom`".into(),
            ));
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: ScrollArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let settle = args.settle.map_or(Duration::from_millis(500), |d| d.0);
        let max_rounds = args.max_rounds.unwrap_or(50).max(1);
        let (locator, args) = (&locator, &args);
        let result = run(ctx, None, |h| async move {
            let element = match locator.is_set() {
                true => Some(
                    with_element(
                        &h,
                        locator,
                        wait,
                        "scroll",
                        |el| async move { el.to_json() },
                    )
                    .await?,
                ),
                false => None,
            };
            let script = |to: Option<ScrollTo>, by: Option<[i64; 2]>| {
                let to = match to {
                    Some(ScrollTo::Top) => json!("top"),
                    Some(ScrollTo::Bottom) => json!("bottom"),
                    None => Value::Null,
                };
                let el = element.clone().unwrap_or(Value::Null);
                let driver = h.driver.clone();
                async move {
                    let ret = driver
                        .execute(SCROLL_JS, vec![el, to, json!(by)])
                        .await
                        .map_err(|e| driver_error("scroll", e))?;
                    Ok::<_, ActionError>(position(ret.json()))
                }
            };
            if args.to.is_none() && args.by.is_none() {
                let el = element.clone().unwrap_or(Value::Null);
                let ret = h
                    .driver
                    .execute(INTO_VIEW_JS, vec![el])
                    .await
                    .map_err(|e| driver_error("scroll", e))?;
                let (x, y, height) = position(ret.json());
                return Ok(json!({ "x": x, "y": y, "height": height, "rounds": 1 }));
            }
            let (mut x, mut y, mut height) = script(args.to, args.by).await?;
            if !args.until_stable {
                return Ok(json!({ "x": x, "y": y, "height": height, "rounds": 1 }));
            }
            let mut rounds = 1;
            let stable = loop {
                // Has the page grown since the last scroll?
                let deadline = Instant::now() + settle;
                let mut grew = false;
                while Instant::now() < deadline {
                    tokio::time::sleep(wait.poll.max(Duration::from_millis(20))).await;
                    let (_, _, now) = script(None, None).await?;
                    if now > height {
                        grew = true;
                        break;
                    }
                }
                if !grew {
                    break true;
                }
                if rounds >= max_rounds {
                    break false;
                }
                rounds += 1;
                (x, y, height) = script(Some(ScrollTo::Bottom), None).await?;
            };
            let (x2, y2, h2) = script(Some(ScrollTo::Bottom), None).await?;
            (x, y, height) = (x2.max(x), y2.max(y), h2.max(height));
            Ok(json!({ "x": x, "y": y, "height": height, "rounds": rounds, "stable": stable }))
        })
        .await;
        if let Ok(out) = &result
            && out["stable"] == json!(false)
        {
            ctx.log(
                LogLevel::Warn,
                &format!(
                    "the page was still growing after {max_rounds} rounds of scrolling \
                     (max_rounds); it may hold more"
                ),
            );
        }
        result
    }
}

fn position(v: &Value) -> (i64, i64, i64) {
    let at = |i: usize| v[i].as_f64().map_or(0, |f| f as i64);
    (at(0), at(1), at(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chords_and_text() {
        let chord = |mods: &[char], key| Press::Chord {
            modifiers: mods.to_vec(),
            key,
        };
        assert_eq!(parse_press("Enter"), Ok(chord(&[], '\u{E007}')));
        assert_eq!(parse_press("enter"), Ok(chord(&[], '\u{E007}')));
        assert_eq!(parse_press("F5"), Ok(chord(&[], '\u{E035}')));
        assert_eq!(parse_press("Control+A"), Ok(chord(&['\u{E009}'], 'a')));
        assert_eq!(parse_press("Shift+a"), Ok(chord(&['\u{E008}'], 'A')));
        assert_eq!(
            parse_press("Shift+Tab"),
            Ok(chord(&['\u{E008}'], '\u{E004}'))
        );
        assert_eq!(
            parse_press("Control+Shift+ArrowLeft"),
            Ok(chord(&['\u{E009}', '\u{E008}'], '\u{E012}'))
        );
        assert_eq!(parse_press("Meta+V"), Ok(chord(&['\u{E03D}'], 'v')));
        assert_eq!(parse_press("Control++"), Ok(chord(&['\u{E009}'], '+')));
        assert_eq!(parse_press("hello"), Ok(Press::Text("hello".into())));
        assert_eq!(parse_press("1+1"), Ok(Press::Text("1+1".into())));
        assert_eq!(parse_press("+"), Ok(Press::Text("+".into())));
        let typo = parse_press("Contrl+A").unwrap_err();
        assert!(
            typo.contains("`Contrl`") && typo.contains("Control"),
            "{typo}"
        );
        let not_a_key = parse_press("Control+Enterr").unwrap_err();
        assert!(not_a_key.contains("not a key"), "{not_a_key}");
    }

    #[test]
    fn an_element_gets_its_chords_held_until_the_null_key() {
        let presses = [
            parse_press("Control+A").unwrap(),
            parse_press("abc").unwrap(),
            parse_press("Enter").unwrap(),
        ];
        assert_eq!(as_key_sequence(&presses), "\u{E009}a\u{E000}abc\u{E007}");
    }
}
