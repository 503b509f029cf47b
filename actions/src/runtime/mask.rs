//! Replaces secret values with `***` wherever they appear, including inside
//! longer text.

use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

pub const MASK: &str = "***";

#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    /// The longest form of any secret, in bytes.
    longest: usize,
    /// The secrets themselves (not their encoded forms), so that a masker
    /// with more of them can be built (see [`Masker::with`]).
    secrets: Vec<String>,
}

impl Masker {
    /// Every non-empty secret is masked, however short: a leaked short
    /// secret is still a leaked secret.
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut kept: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        kept.sort();
        kept.dedup();
        let mut patterns: Vec<String> = Vec::new();
        for secret in &kept {
            patterns.push(secret.clone());
            patterns.extend(encoded_forms(secret));
        }
        patterns.retain(|p| !p.is_empty());
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Masker::default();
        }
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        // Leftmost-longest so that a secret containing another is masked whole.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Masker {
            matcher,
            longest,
            secrets: kept,
        }
    }

    /// A masker for these secrets and `more`; `None` when `more` holds no
    /// non-empty value this one does not mask already, so a caller need
    /// not rebuild.
    pub fn with<I, S>(&self, more: I) -> Option<Masker>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let new: Vec<String> = more
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty() && self.secrets.binary_search(s).is_err())
            .collect();
        if new.is_empty() {
            return None;
        }
        Some(Masker::new(self.secrets.iter().chain(new.iter())))
    }

    /// The values this masks, sorted.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    pub fn mask(&self, text: &str) -> String {
        match &self.matcher {
            None => text.to_string(),
            Some(m) => m.replace_all(text, &vec![MASK; m.patterns_len()]),
        }
    }

    /// How many bytes past a cut a reader must keep for [`Masker::mask_cut`]
    /// to see whole any secret that starts before the cut.
    pub fn cut_margin(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    /// The first `max` bytes of `text`, masked as a whole before the cut,
    /// so that a secret straddling the cut is masked rather than leaking
    /// its start. A secret that starts before the cut is replaced whole, so
    /// the result may run a few bytes past `max`. `text` must hold
    /// [`Masker::cut_margin`] bytes past `max`, or all of the line.
    pub fn mask_cut(&self, text: &[u8], max: usize) -> String {
        let max = max.min(text.len());
        let mut out: Vec<u8> = Vec::with_capacity(max + MASK.len());
        let mut copied = 0;
        if let Some(m) = &self.matcher {
            for found in m.find_iter(text) {
                if found.start() >= max {
                    break;
                }
                out.extend_from_slice(&text[copied..found.start()]);
                out.extend_from_slice(MASK.as_bytes());
                copied = found.end();
            }
        }
        if copied < max {
            out.extend_from_slice(&text[copied..max]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn mask_in_place(&self, text: &mut String) {
        if let Some(m) = &self.matcher
            && m.is_match(text.as_str())
        {
            *text = self.mask(text);
        }
    }

    /// Masks every string in a JSON value, keys included. A number or a
    /// boolean whose text holds a secret (a PIN kept as a number) becomes
    /// the string `***`.
    pub fn mask_value(&self, value: &mut Value) {
        if self.matcher.is_none() {
            return;
        }
        match value {
            Value::String(s) => self.mask_in_place(s),
            Value::Number(_) | Value::Bool(_) => {
                let text = value.to_string();
                if self.mask(&text) != text {
                    *value = Value::String(MASK.into());
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_value(v)),
            Value::Object(map) => {
                let needs_key_mask = map.keys().any(|k| self.mask(k) != *k);
                if needs_key_mask {
                    let old = std::mem::take(map);
                    for (k, mut v) in old {
                        self.mask_value(&mut v);
                        map.insert(self.mask(&k), v);
                    }
                } else {
                    map.values_mut().for_each(|v| self.mask_value(v));
                }
            }
            _ => {}
        }
    }
}

/// A session's masker, which actions may add secrets to while the session
/// runs (a cookie value read from the browser, say). Readers take the
/// current masker under a read lock held only for an `Arc` clone; adding
/// builds a new masker and swaps it in, so a line masked before the swap
/// keeps what it had, and every line after it masks the new secrets too.
#[derive(Debug, Default)]
pub struct SessionMasker {
    current: RwLock<Arc<Masker>>,
}

impl SessionMasker {
    pub fn new(masker: Masker) -> SessionMasker {
        SessionMasker {
            current: RwLock::new(Arc::new(masker)),
        }
    }

    /// The masker as it is now.
    pub fn current(&self) -> Arc<Masker> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Masks `more` too from now on. Returns whether anything was added
    /// (values already masked, and empty ones, are not).
    pub fn add<I, S>(&self, more: I) -> bool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match current.with(more) {
            Some(bigger) => {
                *current = Arc::new(bigger);
                true
            }
            None => false,
        }
    }

    pub fn mask(&self, text: &str) -> String {
        self.current().mask(text)
    }

    pub fn mask_in_place(&self, text: &mut String) {
        self.current().mask_in_place(text)
    }

    pub fn mask_value(&self, value: &mut Value) {
        self.current().mask_value(value)
    }

    pub fn mask_cut(&self, text: &[u8], max: usize) -> String {
        self.current().mask_cut(text, max)
    }

    pub fn cut_margin(&self) -> usize {
        self.current().cut_margin()
    }
}

/// The other shapes a secret takes on its way out: percent-encoded in a
/// URL, escaped inside JSON text, and line by line when it spans lines (a
/// process prints it one line at a time).
fn encoded_forms(secret: &str) -> Vec<String> {
    let mut forms = Vec::new();
    let query: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    forms.push(query);
    forms.push(percent_encode(secret));
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    if secret.contains('\n') {
        // Short lines (a lone brace, an empty line) would mask half the
        // output; the PEM lines that matter are long.
        forms.extend(
            secret
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= 8)
                .map(str::to_string),
        );
    }
    forms.retain(|f| f != secret);
    forms
}

/// Percent-encoding as URL paths and userinfo carry it.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_inside_longer_text_and_values() {
        let m = Masker::new(["hunter2", "s3cr3t-token"]);
        assert_eq!(m.mask("login with hunter2!"), "login with ***!");
        let mut v = serde_json::json!({"a": ["x s3cr3t-token y"], "hunter2": 1});
        m.mask_value(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["x *** y"], "***": 1}));
    }

    #[test]
    fn masks_encoded_escaped_multiline_and_numeric_forms() {
        let m = Masker::new([
            "ab+cd/ef==",
            "hun\"ter2",
            "-----BEGIN KEY-----\nMIIBVwIBADANBgkq\n-----END KEY-----",
            "4711",
        ]);
        assert_eq!(
            m.mask("GET /x?api_key=ab%2Bcd%2Fef%3D%3D"),
            "GET /x?api_key=***"
        );
        assert_eq!(m.mask(r#"{"pw":"hun\"ter2"}"#), r#"{"pw":"***"}"#);
        assert_eq!(m.mask("MIIBVwIBADANBgkq"), "***");
        let mut v = serde_json::json!({"pin": 4711, "n": 12});
        m.mask_value(&mut v);
        assert_eq!(v, serde_json::json!({"pin": "***", "n": 12}));
    }

    /// A reader keeps `max + cut_margin` bytes of a long line; whatever
    /// offset the secret (or its longest encoded form) has around the cut,
    /// no four bytes of it survive.
    #[test]
    fn a_secret_straddling_a_cut_is_masked_at_every_offset() {
        let secret = "S3cr3t/Token+Value=20";
        let m = Masker::new([secret]);
        let encoded = percent_encode(secret);
        assert_eq!(m.cut_margin(), encoded.len() - 1);
        let max = 64;
        for form in [secret, encoded.as_str()] {
            for start in max - form.len() - 2..max + 2 {
                let mut line = "x".repeat(start);
                line.push_str(form);
                line.push_str(&"y".repeat(200));
                let kept = &line.as_bytes()[..max + m.cut_margin()];
                let cut = m.mask_cut(kept, max);
                for n in 4..=form.len() {
                    assert!(
                        !cut.contains(&form[..n]),
                        "{n} bytes of {form:?} at offset {start} leaked: {cut}"
                    );
                }
                if start < max {
                    assert!(
                        cut.ends_with(MASK) || cut.contains(&format!("{MASK}y")),
                        "{cut}"
                    );
                }
                assert!(cut.len() <= max + MASK.len(), "{}", cut.len());
            }
        }
    }

    #[test]
    fn a_session_masker_masks_secrets_added_while_it_runs() {
        let session = SessionMasker::new(Masker::new(["hunter2"]));
        let before = session.current();
        assert_eq!(session.mask("hunter2 cookie-value-1"), "*** cookie-value-1");
        assert!(session.add(["cookie-value-1", ""]));
        // Already masked: nothing to rebuild.
        assert!(!session.add(["cookie-value-1", "hunter2"]));
        assert_eq!(session.mask("hunter2 cookie-value-1"), "*** ***");
        let mut v = serde_json::json!({"cookies": [{"value": "cookie-value-1"}]});
        session.mask_value(&mut v);
        assert_eq!(v, serde_json::json!({"cookies": [{"value": "***"}]}));
        // Encoded forms of an added secret are masked as at the start.
        session.add(["a+b/c=="]);
        assert_eq!(session.mask("q=a%2Bb%2Fc%3D%3D"), "q=***");
        assert_eq!(session.cut_margin(), "a%2Bb%2Fc%3D%3D".len() - 1);
        // A masker taken before the addition is unchanged.
        assert_eq!(before.mask("cookie-value-1"), "cookie-value-1");
    }

    #[test]
    fn mask_cut_without_secrets_or_past_the_end_just_cuts() {
        assert_eq!(
            Masker::new(Vec::<String>::new()).mask_cut(b"abcdef", 4),
            "abcd"
        );
        assert_eq!(Masker::new(["cd"]).mask_cut(b"abcdef", 40), "ab***ef");
        assert_eq!(Masker::new(["cd"]).mask_cut(b"abcdef", 3), "ab***");
    }
}
