//! `${...}` templates.
//!
//! A template is text with embedded expressions. An expression is a path
//! (`params.user`, `steps.fetch.output.body.items[0].name`, `item`), a literal,
//! or a comparison or boolean combination of those. Nothing else: there are
//! no calls and no arithmetic, so a template can never execute code.
//!
//! `$${` writes a literal `${`. A string that is exactly one `${...}` keeps
//! the JSON type of its value; anything else renders to a string.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// A parsed string that may contain expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr { expr: Expr, source: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Path(PathExpr),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, CompareOp, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `root.segment[0]["key"]...`
#[derive(Debug, Clone, PartialEq)]
pub struct PathExpr {
    pub root: String,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)?;
        for s in &self.segments {
            match s {
                Segment::Key(k) if is_ident(k) => write!(f, ".{k}")?,
                Segment::Key(k) => write!(f, "[{}]", Value::from(k.as_str()))?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// Template text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {offset} of the template)")]
pub struct SyntaxError {
    pub message: String,
    pub offset: usize,
}

/// A template could not be rendered with the values at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`${{{expression}}}`: {message}")]
pub struct RenderError {
    pub expression: String,
    pub message: String,
}

/// What an expression's root names resolve to. The executor implements
/// this over the live session; validation uses a static version.
pub trait Scope {
    /// The value of `root`, after which `segments` are walked by the caller.
    /// Returns `Err` with a user-facing reason when the root is unknown.
    fn root(&self, path: &PathExpr) -> Result<Cow<'_, Value>, String>;
}

/// Whether a string contains any template at all. Cheap, used to skip the
/// parser on plain strings in the hot path.
pub fn has_template(s: &str) -> bool {
    s.contains("${")
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, SyntaxError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with("$${") {
                literal.push_str("${");
                i += 3;
            } else if text[i..].starts_with("${") {
                let start = i + 2;
                let end = find_close(text, start).map_err(|open_quote| match open_quote {
                    // The quote swallowed the `}`: say so, not that `${` is open.
                    Some(at) => SyntaxError {
                        message: "unterminated string literal".into(),
                        offset: at,
                    },
                    None => SyntaxError {
                        message: "`${` is never closed with `}`; write `$${` for a literal `${`"
                            .into(),
                        offset: i,
                    },
                })?;
                let source = text[start..end].trim().to_string();
                let expr = parse_expr(&text[start..end]).map_err(|mut e| {
                    e.offset += start;
                    e
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Expr { expr, source });
                i = end + 1;
            } else {
                let ch_len = utf8_len(bytes[i]);
                literal.push_str(&text[i..i + ch_len]);
                i += ch_len;
            }
        }
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Every expression in the template, with its source text.
    pub fn expressions(&self) -> impl Iterator<Item = (&Expr, &str)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr { expr, source } => Some((expr, source.as_str())),
            Part::Text(_) => None,
        })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    pub fn render(&self, scope: &dyn Scope) -> Result<Value, RenderError> {
        if let [Part::Expr { expr, source }] = self.parts.as_slice() {
            return eval(expr, scope)
                .map(Cow::into_owned)
                .map_err(|message| RenderError {
                    expression: source.clone(),
                    message,
                });
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr { expr, source } => {
                    let value = eval(expr, scope).map_err(|message| RenderError {
                        expression: source.clone(),
                        message,
                    })?;
                    push_display(&mut out, &value);
                }
            }
        }
        Ok(Value::String(out))
    }
}

impl Template {
    /// Renders what `scope` can resolve and leaves every other expression
    /// as written. For showing a plan, not for running it.
    pub fn render_partial(&self, scope: &dyn Scope) -> Value {
        if let [Part::Expr { expr, .. }] = self.parts.as_slice()
            && let Ok(v) = eval(expr, scope)
        {
            return v.into_owned();
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr { expr, source } => match eval(expr, scope) {
                    Ok(v) => push_display(&mut out, &v),
                    Err(_) => {
                        out.push_str("${");
                        out.push_str(source);
                        out.push('}');
                    }
                },
            }
        }
        Value::String(out)
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        _ => 2,
    }
}

/// Finds the `}` that closes an expression, skipping quoted strings. When
/// there is none, tells where a string that is still open at the end began.
fn find_close(text: &str, start: usize) -> Result<usize, Option<usize>> {
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for (off, c) in text[start..].char_indices() {
        match quote {
            Some((q, _)) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some((c, start + off)),
                '}' => return Ok(start + off),
                _ => {}
            },
        }
    }
    Err(quote.map(|(_, at)| at))
}

/// Appends a value as text: strings as they are, everything else as JSON.
pub fn push_display(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => out.push_str("null"),
        other => out.push_str(&other.to_string()),
    }
}

/// Truthiness for `if:`: false, null, 0, "", "false", empty lists and
/// objects are false; everything else is true.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !(s.is_empty() || s == "false"),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub fn eval<'s>(expr: &Expr, scope: &'s dyn Scope) -> Result<Cow<'s, Value>, String> {
    match expr {
        Expr::Literal(v) => Ok(Cow::Owned(v.clone())),
        Expr::Path(path) => {
            let root = scope.root(path)?;
            walk(root, path)
        }
        Expr::Not(inner) => Ok(Cow::Owned(Value::Bool(!truthy(
            eval(inner, scope)?.as_ref(),
        )))),
        Expr::And(a, b) => {
            let left = truthy(eval(a, scope)?.as_ref());
            Ok(Cow::Owned(Value::Bool(
                left && truthy(eval(b, scope)?.as_ref()),
            )))
        }
        Expr::Or(a, b) => {
            let left = truthy(eval(a, scope)?.as_ref());
            Ok(Cow::Owned(Value::Bool(
                left || truthy(eval(b, scope)?.as_ref()),
            )))
        }
        Expr::Compare(a, op, b) => {
            let left = eval(a, scope)?;
            let right = eval(b, scope)?;
            compare(&left, *op, &right).map(|b| Cow::Owned(Value::Bool(b)))
        }
    }
}

fn walk<'s>(root: Cow<'s, Value>, path: &PathExpr) -> Result<Cow<'s, Value>, String> {
    match root {
        Cow::Borrowed(r) => walk_ref(r, path).map(Cow::Borrowed),
        Cow::Owned(v) => walk_ref(&v, path).map(|found| Cow::Owned(found.clone())),
    }
}

/// Walks the path's segments by reference, so that reading one field of a
/// large step output does not copy the whole output.
fn walk_ref<'v>(root: &'v Value, path: &PathExpr) -> Result<&'v Value, String> {
    let mut current = root;
    for (n, segment) in path.segments.iter().enumerate() {
        current = match (current, segment) {
            (Value::Object(map), Segment::Key(k)) => map.get(k).ok_or_else(|| {
                let keys: Vec<&str> = map.keys().map(String::as_str).take(10).collect();
                format!(
                    "`{}` has no field `{k}` (it has: {})",
                    prefix(path, n),
                    if keys.is_empty() {
                        "nothing".into()
                    } else {
                        keys.join(", ")
                    }
                )
            })?,
            (Value::Array(items), Segment::Index(i)) => items.get(*i).ok_or_else(|| {
                format!(
                    "`{}` has {} items, so index {i} is out of range",
                    prefix(path, n),
                    items.len()
                )
            })?,
            (other, _) => {
                return Err(format!(
                    "`{}` is {}, so `{}` cannot be looked up in it",
                    prefix(path, n),
                    describe(other),
                    match segment {
                        Segment::Key(k) => k.clone(),
                        Segment::Index(i) => format!("[{i}]"),
                    }
                ));
            }
        };
    }
    Ok(current)
}

fn prefix(path: &PathExpr, n: usize) -> String {
    PathExpr {
        root: path.root.clone(),
        segments: path.segments[..n].to_vec(),
    }
    .to_string()
}

pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn compare(a: &Value, op: CompareOp, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        CompareOp::Eq => Ok(loose_eq(a, b)),
        CompareOp::Ne => Ok(!loose_eq(a, b)),
        _ => {
            let ord = ordering
                .ok_or_else(|| format!("cannot order {} against {}", describe(a), describe(b)))?;
            Ok(match op {
                CompareOp::Lt => ord == Ordering::Less,
                CompareOp::Le => ord != Ordering::Greater,
                CompareOp::Gt => ord == Ordering::Greater,
                CompareOp::Ge => ord != Ordering::Less,
                CompareOp::Eq | CompareOp::Ne => unreachable!("handled above"),
            })
        }
    }
}

/// Numbers compare by value (1 == 1.0); everything else structurally.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

// ---- expression parser -------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(Value),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Not,
    And,
    Or,
    Op(CompareOp),
}

fn lex(src: &str) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let mut tokens = Vec::new();
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut i = 0;
    let err = |message: String, offset: usize| SyntaxError { message, offset };
    while i < chars.len() {
        let (off, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '.' => {
                tokens.push((Token::Dot, off));
                i += 1;
            }
            '[' => {
                tokens.push((Token::LBracket, off));
                i += 1;
            }
            ']' => {
                tokens.push((Token::RBracket, off));
                i += 1;
            }
            '(' => {
                tokens.push((Token::LParen, off));
                i += 1;
            }
            ')' => {
                tokens.push((Token::RParen, off));
                i += 1;
            }
            '!' | '=' | '<' | '>' | '&' | '|' => {
                let next = chars.get(i + 1).map(|(_, c)| *c);
                let (tok, len) = match (c, next) {
                    ('!', Some('=')) => (Token::Op(CompareOp::Ne), 2),
                    ('!', _) => (Token::Not, 1),
                    ('=', Some('=')) => (Token::Op(CompareOp::Eq), 2),
                    ('<', Some('=')) => (Token::Op(CompareOp::Le), 2),
                    ('<', _) => (Token::Op(CompareOp::Lt), 1),
                    ('>', Some('=')) => (Token::Op(CompareOp::Ge), 2),
                    ('>', _) => (Token::Op(CompareOp::Gt), 1),
                    ('&', Some('&')) => (Token::And, 2),
                    ('|', Some('|')) => (Token::Or, 2),
                    _ => {
                        let hint = match c {
                            '=' => "`==`",
                            '&' => "`&&`",
                            _ => "`||`",
                        };
                        return Err(err(format!("unexpected `{c}`; did you mean {hint}?"), off));
                    }
                };
                tokens.push((tok, off));
                i += len;
            }
            '\'' | '"' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else {
                        return Err(err("unterminated string literal".into(), off));
                    };
                    i += 1;
                    if ch == quote {
                        break;
                    }
                    if ch == '\\' {
                        let Some(&(at, esc)) = chars.get(i) else {
                            return Err(err("unterminated string literal".into(), off));
                        };
                        i += 1;
                        s.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            'u' => {
                                let hex: String = chars.iter().skip(i).take(4).map(|(_, c)| c).collect();
                                i += 4;
                                u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .filter(|_| hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| {
                                        err(
                                            "`\\u` takes four hex digits of a character, such as `\\u001b`"
                                                .into(),
                                            at - 1,
                                        )
                                    })?
                            }
                            other => other,
                        });
                    } else {
                        s.push(ch);
                    }
                }
                tokens.push((Token::Str(s), off));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|(_, d)| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].1.is_ascii_digit() || chars[i].1 == '.') {
                    i += 1;
                }
                // An index after `[` stays an integer; `a.0` is not allowed.
                let end = chars.get(i).map(|(o, _)| *o).unwrap_or(src.len());
                let text = &src[off..end];
                let value: Value = serde_json::from_str(text)
                    .map_err(|_| err(format!("`{text}` is not a number"), chars[start].0))?;
                tokens.push((Token::Num(value), off));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = off;
                while i < chars.len()
                    && (chars[i].1.is_ascii_alphanumeric()
                        || chars[i].1 == '_'
                        || chars[i].1 == '-')
                {
                    i += 1;
                }
                let end = chars.get(i).map(|(o, _)| *o).unwrap_or(src.len());
                tokens.push((Token::Ident(src[start..end].to_string()), start));
            }
            other => {
                return Err(err(format!("unexpected character `{other}`"), off));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    end: usize,
}

const MAX_EXPR_DEPTH: usize = 32;

pub fn parse_expr(src: &str) -> Result<Expr, SyntaxError> {
    if src.trim().is_empty() {
        return Err(SyntaxError {
            message: "empty expression `${}`".into(),
            offset: 0,
        });
    }
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end: src.len(),
    };
    let expr = p.or(0)?;
    if let Some((tok, off)) = p.tokens.get(p.pos) {
        return Err(SyntaxError {
            message: format!("unexpected {} after the expression", token_name(tok)),
            offset: *off,
        });
    }
    Ok(expr)
}

fn token_name(t: &Token) -> String {
    match t {
        Token::Ident(s) => format!("name `{s}`"),
        Token::Str(s) => format!("string '{s}'"),
        Token::Num(n) => format!("number {n}"),
        Token::Dot => "`.`".into(),
        Token::LBracket => "`[`".into(),
        Token::RBracket => "`]`".into(),
        Token::LParen => "`(`".into(),
        Token::RParen => "`)`".into(),
        Token::Not => "`!`".into(),
        Token::And => "`&&`".into(),
        Token::Or => "`||`".into(),
        Token::Op(_) => "comparison".into(),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }
    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|(_, o)| *o)
            .unwrap_or(self.end)
    }
    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            message: message.into(),
            offset: self.offset(),
        }
    }
    fn guard(&self, depth: usize) -> Result<(), SyntaxError> {
        if depth > MAX_EXPR_DEPTH {
            Err(self.error(format!(
                "expression is nested deeper than {MAX_EXPR_DEPTH} levels"
            )))
        } else {
            Ok(())
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        self.guard(depth)?;
        let mut left = self.and(depth + 1)?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            let right = self.and(depth + 1)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let mut left = self.compare(depth + 1)?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            let right = self.compare(depth + 1)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn compare(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let left = self.unary(depth + 1)?;
        if let Some(Token::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.unary(depth + 1)?;
            return Ok(Expr::Compare(Box::new(left), op, Box::new(right)));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        self.guard(depth)?;
        match self.peek().cloned() {
            Some(Token::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some(Token::LParen) => {
                self.pos += 1;
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Token::RParen) {
                    return Err(self.error("expected `)`"));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Token::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Literal(Value::String(s)))
            }
            Some(Token::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Literal(n))
            }
            Some(Token::Ident(name)) => {
                self.pos += 1;
                match name.as_str() {
                    "true" => return Ok(Expr::Literal(Value::Bool(true))),
                    "false" => return Ok(Expr::Literal(Value::Bool(false))),
                    "null" => return Ok(Expr::Literal(Value::Null)),
                    _ => {}
                }
                self.path(name).map(Expr::Path)
            }
            Some(other) => Err(self.error(format!("unexpected {}", token_name(&other)))),
            None => Err(self.error("the expression ends too early")),
        }
    }

    fn path(&mut self, root: String) -> Result<PathExpr, SyntaxError> {
        let mut segments = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    match self.peek().cloned() {
                        Some(Token::Ident(k)) => {
                            self.pos += 1;
                            segments.push(Segment::Key(k));
                        }
                        _ => return Err(self.error("expected a field name after `.`")),
                    }
                }
                Some(Token::LBracket) => {
                    self.pos += 1;
                    let segment = match self.peek().cloned() {
                        Some(Token::Num(Value::Number(n))) if n.is_u64() => {
                            Segment::Index(n.as_u64().unwrap_or_default() as usize)
                        }
                        Some(Token::Str(s)) => Segment::Key(s),
                        _ => {
                            return Err(self.error(
                                "expected a list index such as [0] or a quoted key such as [\"a b\"]",
                            ));
                        }
                    };
                    self.pos += 1;
                    if self.peek() != Some(&Token::RBracket) {
                        return Err(self.error("expected `]`"));
                    }
                    self.pos += 1;
                    segments.push(segment);
                }
                _ => return Ok(PathExpr { root, segments }),
            }
        }
    }
}

/// Every path an expression reads, for validation.
pub fn paths(expr: &Expr, out: &mut Vec<PathExpr>) {
    match expr {
        Expr::Literal(_) => {}
        Expr::Path(p) => out.push(p.clone()),
        Expr::Not(e) => paths(e, out),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(a, _, b) => {
            paths(a, out);
            paths(b, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Vars(Value);
    impl Scope for Vars {
        fn root(&self, path: &PathExpr) -> Result<Cow<'_, Value>, String> {
            self.0
                .get(&path.root)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("`{}` is not defined", path.root))
        }
    }

    fn render(t: &str, v: Value) -> Result<Value, String> {
        Template::parse(t)
            .map_err(|e| e.to_string())?
            .render(&Vars(v))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_template_keeps_type_and_embedded_makes_string() {
        let vars = json!({"n": 3, "list": [1, 2], "name": "x"});
        assert_eq!(render("${n}", vars.clone()).unwrap(), json!(3));
        assert_eq!(render("${list}", vars.clone()).unwrap(), json!([1, 2]));
        assert_eq!(
            render("n=${n} ${name}", vars.clone()).unwrap(),
            json!("n=3 x")
        );
        assert_eq!(render("$${n}", vars).unwrap(), json!("${n}"));
    }

    #[test]
    fn paths_walk_objects_and_lists() {
        let vars = json!({"steps": {"f": {"output": {"body": {"items": [{"name": "a"}]}}}}});
        assert_eq!(
            render("${steps.f.output.body.items[0].name}", vars.clone()).unwrap(),
            json!("a")
        );
        let err = render("${steps.f.output.body.items[3]}", vars).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn comparisons_and_logic() {
        let vars = json!({"a": 1, "s": "x"});
        assert_eq!(
            render("${a == 1 && s != 'y'}", vars.clone()).unwrap(),
            json!(true)
        );
        assert_eq!(render("${!(a >= 2) || false}", vars).unwrap(), json!(true));
    }

    /// Messages print a path's keys as JSON strings (control characters
    /// escaped, so that a message cannot drive a terminal); the template
    /// language reads JSON's escapes, so a path copied from a message means
    /// the same path. Found by the `template` fuzz target.
    #[test]
    fn printed_paths_parse_back() {
        for key in [
            "odd key\u{1a}\0",
            "tab\t",
            "cr\r",
            "quote\"back\\slash",
            "\u{8}\u{c}é",
        ] {
            let path = PathExpr {
                root: "params".into(),
                segments: vec![Segment::Key(key.into()), Segment::Index(2)],
            };
            let printed = path.to_string();
            assert_eq!(parse_expr(&printed), Ok(Expr::Path(path)), "{printed}");
        }
        assert_eq!(parse_expr(r#"'\u00e9\r'"#), Ok(Expr::Literal(json!("é\r"))));
        for bad in [r#"'\u12'"#, r#"'\ud800'"#, r#"'\u12G4'"#] {
            let e = parse_expr(bad).unwrap_err();
            assert!(e.message.contains("four hex digits"), "{bad}: {e}");
            assert_eq!(e.offset, 1, "{bad}");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in [
            "${", "${}", "${a.}", "${a[}", "${a = 1}", "${'x}", "${a b}", "${a[-1]}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
