//! API scopes. The first four are AUTORO's; `workflow.write` (registering
//! workflows, which AUTORO does in its console) and `robot` (the robot
//! protocol) are Tasuki's.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    SessionQueueWrite,
    SessionQueueRead,
    SessionQueueDelete,
    AccessTokenCreate,
    WorkflowWrite,
    Robot,
    /// Reading the hub's audit log (who changed what).
    AuditRead,
    /// Reading credentials' metadata (never a value).
    CredentialRead,
    /// Making, rotating and deleting credentials.
    CredentialWrite,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::SessionQueueWrite,
        Scope::SessionQueueRead,
        Scope::SessionQueueDelete,
        Scope::AccessTokenCreate,
        Scope::WorkflowWrite,
        Scope::Robot,
        Scope::AuditRead,
        Scope::CredentialRead,
        Scope::CredentialWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SessionQueueWrite => "session_queue.write",
            Scope::SessionQueueRead => "session_queue.read",
            Scope::SessionQueueDelete => "session_queue.delete",
            Scope::AccessTokenCreate => "access_token.create",
            Scope::WorkflowWrite => "workflow.write",
            Scope::Robot => "robot",
            Scope::AuditRead => "audit.read",
            Scope::CredentialRead => "credential.read",
            Scope::CredentialWrite => "credential.write",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown scope `{name}`; the scopes are: {}", known())]
    Unknown { name: String },
}

fn known() -> String {
    Scope::ALL.map(Scope::as_str).join(", ")
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| ScopeError::Unknown { name: s.into() })
    }
}

/// A set of scopes, written as the space-separated string that the `scopes`
/// claim carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u16);

impl Scopes {
    pub fn empty() -> Scopes {
        Scopes(0)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn intersection(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        let mut set = Scopes::empty();
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl FromStr for Scopes {
    type Err = ScopeError;
    /// Any ASCII whitespace separates names; repeats are harmless.
    fn from_str(s: &str) -> Result<Scopes, ScopeError> {
        s.split_ascii_whitespace().map(Scope::from_str).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_claim_string() {
        let s: Scopes = "session_queue.write  session_queue.read access_token.create"
            .parse()
            .unwrap();
        assert!(s.contains(Scope::SessionQueueRead));
        assert!(!s.contains(Scope::Robot));
        assert_eq!(
            s.to_string(),
            "session_queue.write session_queue.read access_token.create"
        );
    }

    #[test]
    fn names_an_unknown_scope() {
        let err = "session_queue.read sesion_queue.write"
            .parse::<Scopes>()
            .unwrap_err();
        assert!(err.to_string().contains("`sesion_queue.write`"), "{err}");
    }

    #[test]
    fn every_scope_has_its_own_bit_and_round_trips() {
        let all: Scopes = Scope::ALL.into_iter().collect();
        assert_eq!(all.iter().count(), Scope::ALL.len());
        assert_eq!(all.to_string().parse::<Scopes>().unwrap(), all);
        let c: Scopes = "credential.read credential.write".parse().unwrap();
        assert!(c.contains(Scope::CredentialWrite) && !c.contains(Scope::AuditRead));
    }

    #[test]
    fn intersects() {
        let a: Scopes = "robot workflow.write".parse().unwrap();
        let b: Scopes = "robot session_queue.read".parse().unwrap();
        assert_eq!(a.intersection(b).to_string(), "robot");
    }
}
