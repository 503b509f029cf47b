//! Replaces secret values with `***` wherever they appear, including inside
//! longer text.

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

pub const MASK: &str = "***";

#[derive(Debug, Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
}

impl Masker {
    /// Every non-empty secret is masked, however short: a leaked short
    /// secret is still a leaked secret.
    pub fn new<I, S>(secrets: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Masker { matcher: None };
        }
        // Leftmost-longest so that a secret containing another is masked whole.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();
        Masker { matcher }
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

    pub fn mask_in_place(&self, text: &mut String) {
        if let Some(m) = &self.matcher
            && m.is_match(text.as_str())
        {
            *text = self.mask(text);
        }
    }

    /// Masks every string in a JSON value, keys included.
    pub fn mask_value(&self, value: &mut Value) {
        if self.matcher.is_none() {
            return;
        }
        match value {
            Value::String(s) => self.mask_in_place(s),
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
}
