//! The `${...}` parser and evaluator on arbitrary text, rendered against a
//! fixed scope (params, steps' outputs, an item, env).
//!
//! Beyond "no panic": a syntax error points inside the text, at a character
//! boundary; text without `${` is its own literal; every path an expression
//! holds prints back (`PathExpr`'s `Display`, used in messages) to text that
//! parses to the same path; a full render and a partial one agree when
//! every root resolves.

#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tasuki_actions::language::template::{Expr, PathExpr, Scope, Template, parse_expr, paths};

struct Fixed(Value);

impl Scope for Fixed {
    fn root(&self, path: &PathExpr) -> Result<Cow<'_, Value>, String> {
        self.0
            .get(&path.root)
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("`{}` is not defined", path.root))
    }
}

fn scope() -> &'static Fixed {
    static SCOPE: OnceLock<Fixed> = OnceLock::new();
    SCOPE.get_or_init(|| {
        Fixed(json!({
            "params": {"who": "world", "count": 3, "ratio": 0.5, "on": true, "none": null,
                       "list": [1, "two", [3], {"four": 4}], "odd key": {"a.b": "c"}},
            "steps": {"fetch": {"output": {"status": 200, "body": {"items": [{"name": "a"}]}}}},
            "item": {"id": -1, "tags": []},
            "index": 0,
            "env": {"HOME": "/root"},
        }))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let template = match Template::parse(text) {
        Ok(t) => t,
        Err(e) => {
            assert!(
                e.offset <= text.len(),
                "offset {} past the end: {e}",
                e.offset
            );
            assert!(
                text.is_char_boundary(e.offset),
                "offset {} inside a character",
                e.offset
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    if !text.contains('$') {
        assert!(template.is_literal());
        assert_eq!(
            template.render(scope()).ok(),
            Some(Value::String(text.into()))
        );
    }
    let mut found = Vec::new();
    for (expr, _source) in template.expressions() {
        paths(expr, &mut found);
    }
    for path in &found {
        let printed = path.to_string();
        match parse_expr(&printed) {
            Ok(Expr::Path(again)) => assert_eq!(&again, path, "printed as `{printed}`"),
            other => panic!("`{printed}` (from {path:?}) parses back as {other:?}"),
        }
    }
    let rendered = template.render(scope());
    let partial = template.render_partial(scope());
    if let Ok(value) = &rendered
        && found.iter().all(|p| scope().0.get(&p.root).is_some())
    {
        assert_eq!(value, &partial);
    }
});
