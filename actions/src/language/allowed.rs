//! A robot's action allow-list: `allowed_actions = ["browser.*", "http.*"]`
//! in its config refuses every other action before any step runs.

use std::fmt;

use crate::runtime::registry::Registry;

/// Patterns of action names: `*` (everything), `family.*` (every action
/// of a family, such as `browser.*`), or one action's full name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    patterns: Vec<String>,
}

impl Allowed {
    /// Checks each pattern against the actions `registry` knows, so that a
    /// typo (`brwoser.*`) is an error rather than a robot that refuses
    /// everything. `Err` holds one message per bad pattern, by index.
    pub fn new(patterns: &[String], registry: &Registry) -> Result<Allowed, Vec<(usize, String)>> {
        let known: Vec<&str> = registry.names().collect();
        let mut bad = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let matches_some = known.iter().any(|name| matches(p, name));
            if p != "*" && !matches_some {
                let families: std::collections::BTreeSet<String> = known
                    .iter()
                    .filter_map(|n| n.split_once('.').map(|(f, _)| format!("{f}.*")))
                    .collect();
                bad.push((
                    i,
                    format!(
                        "`{p}` matches no action; use `*`, a family ({}) or an action's name ({})",
                        families.into_iter().collect::<Vec<_>>().join(", "),
                        known.join(", ")
                    ),
                ));
            }
        }
        if bad.is_empty() {
            Ok(Allowed {
                patterns: patterns.to_vec(),
            })
        } else {
            Err(bad)
        }
    }

    pub fn allows(&self, action: &str) -> bool {
        self.patterns.iter().any(|p| matches(p, action))
    }
}

fn matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(family) => action
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == action,
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.patterns.iter().map(|p| format!("\"{p}\"")).collect();
        write!(f, "[{}]", quoted.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str]) -> Allowed {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Allowed::new(&patterns, &Registry::builtin()).expect("valid patterns")
    }

    #[test]
    fn families_names_and_star_match_as_documented() {
        let a = allowed(&["browser.*", "http.request"]);
        assert!(a.allows("browser.open"));
        assert!(a.allows("http.request"));
        assert!(!a.allows("shell.run"));
        // A family is a whole segment, not a prefix of letters.
        assert!(!allowed(&["http.*"]).allows("httpx.get"));
        assert!(allowed(&["*"]).allows("shell.run"));
        assert!(!allowed(&[]).allows("shell.run"));
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_refused_with_its_index() {
        let patterns = vec!["browser.*".to_string(), "brwoser.*".to_string()];
        let err = Allowed::new(&patterns, &Registry::builtin()).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].0, 1);
        assert!(
            err[0].1.contains("`brwoser.*` matches no action"),
            "{}",
            err[0].1
        );
        assert!(err[0].1.contains("shell.*"), "{}", err[0].1);
    }
}
