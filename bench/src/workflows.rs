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
