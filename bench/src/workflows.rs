//! The generated workflows the benchmarks run.

use std::fmt::Write;

/// `steps` `set` steps, shaped like the bookkeeping of a real workflow: each
/// sets one or two variables, and three steps in five use a template that
/// reads a previous variable or a previous step's output.
///
/// The pattern repeats every five steps (`i` is the step's index):
/// 0. `x<i>: <i>`: a literal, a new variable each time;
/// 1. `prev: ${x<i-1>}` and `label: item-${x<i-1>}`: a whole-value template
///    (keeps the number's type) and an interpolated string;
/// 2. `y<i>: ${steps.s<i-1>.output.label}`: a previous step's output;
/// 3. `count: <i>` and `done: false`: literals, reused variable names;
/// 4. `summary: ${label} / ${prev}`: two expressions in one string.
pub fn set_steps(steps: usize) -> String {
    let mut y = header("bench-executor", steps * 64);
    for i in 0..steps {
        let _ = writeln!(y, "  - id: s{i}\n    action: set");
        let with = match i % 5 {
            0 => format!("{{x{i}: {i}}}"),
            1 => format!(
                "{{prev: \"${{x{p}}}\", label: \"item-${{x{p}}}\"}}",
                p = i - 1
            ),
            2 => format!("{{y{i}: \"${{steps.s{p}.output.label}}\"}}", p = i - 1),
            3 => format!("{{count: {i}, done: false}}"),
            _ => "{summary: \"${label} / ${prev}\"}".to_string(),
        };
        let _ = writeln!(y, "    with: {with}");
    }
    y
}

/// What step `s<steps-1>` of [`set_steps`] outputs, to check a run did the work.
pub fn last_set_output(steps: usize) -> serde_json::Value {
    let i = steps - 1;
    match i % 5 {
        0 => serde_json::json!({ format!("x{i}"): i }),
        1 => serde_json::json!({"prev": i - 1, "label": format!("item-{}", i - 1)}),
        2 => serde_json::json!({ format!("y{i}"): format!("item-{}", i - 2) }),
        3 => serde_json::json!({"count": i, "done": false}),
        _ => serde_json::json!({"summary": format!("item-{p} / {p}", p = i - 4)}),
    }
}

/// `steps` `shell.run` steps of `true`.
pub fn shell_true(steps: usize) -> String {
    let mut y = header("bench-shell", steps * 48);
    for i in 0..steps {
        let _ = writeln!(
            y,
            "  - id: t{i}\n    action: shell.run\n    with: {{argv: [\"true\"]}}"
        );
    }
    y
}

fn header(name: &str, capacity: usize) -> String {
    let mut y = String::with_capacity(capacity + 64);
    let _ = writeln!(y, "version: 1\nname: {name}\nsteps:");
    y
}

/// The browser benchmark's 10 steps (issue 3), against the demo shop at
/// `url`. The ids are [`crate::webdriver::STEP_IDS`]; the raw client and
/// the Robot Framework file do the same 10 things.
pub fn browser_ten(url: &str) -> String {
    use crate::webdriver::{CUSTOMER, ITEM_LABEL, STATUS_WAIT};
    let mut y = header("bench-browser", 1024);
    let _ = write!(
        y,
        r##"  - id: open
    action: browser.open
    with: {{url: "{url}"}}
  - id: customer
    action: browser.type
    with: {{selector: "#customer", text: "{CUSTOMER}", clear: true}}
  - id: item
    action: browser.select
    with: {{selector: "#item", label: "{ITEM_LABEL}"}}
  - id: submit
    action: browser.click
    with: {{selector: "#submit"}}
  - id: wait
    action: browser.wait_for
    with: {{selector: "#status", text: "{STATUS_WAIT}"}}
  - id: status
    action: browser.get_text
    with: {{selector: "#status"}}
  - id: orders
    action: browser.extract_table
    with: {{selector: "#orders"}}
  - id: shot
    action: browser.screenshot
    with: {{path: "shot.png"}}
  - id: url
    action: browser.get_url
  - id: close
    action: browser.close
"##
    );
    y
}

/// `steps` `browser.goto` steps to `url?step=<i>`, then a `browser.close`.
/// With `fresh`, a `browser.close` follows every goto instead, so each goto
/// starts a browser of its own; otherwise the workflow sets
/// `single_process_mode: true` and all gotos share one browser.
pub fn browser_gotos(url: &str, steps: usize, fresh: bool) -> String {
    let name = if fresh {
        "bench-browser-fresh"
    } else {
        "bench-browser-reuse"
    };
    let mut y = String::with_capacity(steps * 160 + 128);
    let _ = writeln!(
        y,
        "version: 1\nname: {name}\nsingle_process_mode: {}\nsteps:",
        !fresh
    );
    for i in 0..steps {
        let _ = writeln!(
            y,
            "  - id: goto{i}\n    action: browser.goto\n    with: {{url: \"{url}?step={i}\"}}"
        );
        if fresh {
            let _ = writeln!(y, "  - id: close{i}\n    action: browser.close");
        }
    }
    if !fresh {
        let _ = writeln!(y, "  - id: close\n    action: browser.close");
    }
    y
}
