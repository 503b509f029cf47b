//! Which robot may run which session. A session needs of its robot what
//! its workflow asks ([`Needs`]: the pins, every action its steps use,
//! every label in `robot_labels`); a robot has what it said when it last
//! registered ([`Capabilities`]: its name, its action catalog, its
//! labels). [`Needs::lacks`] says what one lacks for the other.
//!
//! The dispatcher matches waiting robots in memory with [`Needs::fits`];
//! `db::leases::next_for` says the same in SQL for a robot that polls,
//! and the two must agree. A robot whose catalog is unknown (an agent
//! older than catalogs) lacks no action: it is routed what it was before.
//! [`queued_reason`] tells a session that no registered robot could ever
//! take why it waits.

use std::collections::HashSet;

use tasuki_protocol::CredentialAllow;

/// What a robot must be to take a session.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Robot names the workflow is pinned to; empty means any.
    pub pins: Vec<String>,
    pub single_process: bool,
    /// Actions the workflow's steps use (control flow left out).
    pub actions: Vec<String>,
    /// Labels the robot must carry, every one.
    pub labels: Vec<String>,
    /// The credentials its workflow uses: every one must allow the robot.
    pub credentials: Vec<CredentialNeed>,
}

/// A credential a session's workflow uses, and whom it allows.
#[derive(Debug, Clone)]
pub struct CredentialNeed {
    pub name: String,
    /// `None`: there is no credential of that name (deleted, or not made
    /// yet), which allows no robot; the session waits for it.
    pub allow: Option<CredentialAllow>,
}

impl CredentialNeed {
    /// The robot's name is listed, or one of its labels is. Empty lists
    /// allow nobody: a credential reaches no robot by default.
    fn allows(&self, robot: &Capabilities) -> bool {
        self.allow.as_ref().is_some_and(|a| {
            a.robots.contains(&robot.name) || a.labels.iter().any(|l| robot.labels.contains(l))
        })
    }
}

/// What a robot offers, as it last registered.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub name: String,
    /// The names of the actions it offers; `None` when it did not say (an
    /// agent older than catalogs), which lacks nothing.
    pub actions: Option<HashSet<String>>,
    pub labels: HashSet<String>,
}

/// One thing a robot lacks for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lack {
    /// The workflow is pinned to other robots.
    NotPinned,
    Action(String),
    Label(String),
    /// A credential its workflow uses does not allow the robot.
    Credential(String),
}

impl Needs {
    /// Whether `robot` has everything the session needs. (Whether it has
    /// room for it now is the dispatcher's business.)
    pub fn fits(&self, robot: &Capabilities) -> bool {
        self.pinned(robot)
            && robot
                .actions
                .as_ref()
                .is_none_or(|offered| self.actions.iter().all(|a| offered.contains(a)))
            && self.labels.iter().all(|l| robot.labels.contains(l))
            && self.credentials.iter().all(|c| c.allows(robot))
    }

    /// Everything `robot` lacks for the session; empty when it
    /// [fits](Needs::fits).
    pub fn lacks(&self, robot: &Capabilities) -> Vec<Lack> {
        let mut lacks = Vec::new();
        if !self.pinned(robot) {
            lacks.push(Lack::NotPinned);
        }
        if let Some(offered) = &robot.actions {
            lacks.extend(
                self.actions
                    .iter()
                    .filter(|a| !offered.contains(*a))
                    .map(|a| Lack::Action(a.clone())),
            );
        }
        lacks.extend(
            self.labels
                .iter()
                .filter(|l| !robot.labels.contains(*l))
                .map(|l| Lack::Label(l.clone())),
        );
        lacks.extend(
            self.credentials
                .iter()
                .filter(|c| !c.allows(robot))
                .map(|c| Lack::Credential(c.name.clone())),
        );
        lacks
    }

    fn pinned(&self, robot: &Capabilities) -> bool {
        self.pins.is_empty() || self.pins.contains(&robot.name)
    }
}

/// Robots named in a `queued_reason`, at most; the rest are counted.
const ROBOTS_NAMED: usize = 3;

/// Why a queued session waits, when no robot among `robots` (every
/// registered one) could ever take it; `None` when one could, and the
/// session only waits for it to have room. Offline and draining robots
/// count: they may come back.
pub fn queued_reason(needs: &Needs, robots: &[Capabilities]) -> Option<String> {
    if robots.is_empty() {
        return Some("no robot is registered on this hub".into());
    }
    if robots.iter().any(|r| needs.fits(r)) {
        return None;
    }
    let missing: Vec<&str> = needs
        .credentials
        .iter()
        .filter(|c| c.allow.is_none())
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "its workflow uses the credential{} {}, which this hub does not have; it waits \
             until one of that name is made (POST /v1/credentials)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ));
    }
    // Robots the workflow is not pinned to are out whatever else they
    // have: only the pinned ones are worth describing.
    let candidates: Vec<(&Capabilities, Vec<Lack>)> = robots
        .iter()
        .filter(|r| needs.pinned(r))
        .map(|r| (r, needs.lacks(r)))
        .collect();
    if candidates.is_empty() {
        return Some(format!(
            "no robot can run it: its workflow_robots names {}, and no robot of that name is \
             registered",
            needs.pins.join(", ")
        ));
    }
    let mut parts: Vec<String> = candidates
        .iter()
        .take(ROBOTS_NAMED)
        .map(|(robot, lacks)| format!("{} {}", robot.name, describe(lacks)))
        .collect();
    if candidates.len() > ROBOTS_NAMED {
        parts.push(format!("and {} more", candidates.len() - ROBOTS_NAMED));
    }
    Some(format!("no robot can run it: {}", parts.join("; ")))
}

/// `lacks excel.read_sheet, probe.hello and the labels gpu, ssd and is
/// not allowed by the credential shop`.
fn describe(lacks: &[Lack]) -> String {
    let actions: Vec<&str> = lacks
        .iter()
        .filter_map(|l| match l {
            Lack::Action(a) => Some(a.as_str()),
            _ => None,
        })
        .collect();
    let labels: Vec<&str> = lacks
        .iter()
        .filter_map(|l| match l {
            Lack::Label(l) => Some(l.as_str()),
            _ => None,
        })
        .collect();
    let mut parts = Vec::new();
    if !actions.is_empty() {
        parts.push(actions.join(", "));
    }
    match labels.as_slice() {
        [] => {}
        [one] => parts.push(format!("the label {one}")),
        many => parts.push(format!("the labels {}", many.join(", "))),
    }
    let credentials: Vec<&str> = lacks
        .iter()
        .filter_map(|l| match l {
            Lack::Credential(c) => Some(c.as_str()),
            _ => None,
        })
        .collect();
    let lacking = (!parts.is_empty()).then(|| format!("lacks {}", parts.join(" and ")));
    let refused = match credentials.as_slice() {
        [] => None,
        [one] => Some(format!("is not allowed by the credential {one}")),
        many => Some(format!(
            "is not allowed by the credentials {}",
            many.join(", ")
        )),
    };
    [lacking, refused]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robot(name: &str, actions: Option<&[&str]>, labels: &[&str]) -> Capabilities {
        Capabilities {
            name: name.into(),
            actions: actions.map(|a| a.iter().map(|s| s.to_string()).collect()),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn needs(actions: &[&str], labels: &[&str]) -> Needs {
        Needs {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Needs::default()
        }
    }

    #[test]
    fn a_robot_fits_when_it_has_every_action_and_label() {
        let n = needs(&["log", "excel.read_sheet"], &["gpu"]);
        assert!(n.fits(&robot(
            "a",
            Some(&["log", "excel.read_sheet"]),
            &["gpu", "x"]
        )));
        assert!(!n.fits(&robot("b", Some(&["log"]), &["gpu"])));
        assert!(!n.fits(&robot("c", Some(&["log", "excel.read_sheet"]), &[])));
        // An unknown catalog lacks no action, but labels still count.
        assert!(n.fits(&robot("d", None, &["gpu"])));
        assert!(!n.fits(&robot("e", None, &[])));
        assert_eq!(
            n.lacks(&robot("b", Some(&["log"]), &[])),
            [
                Lack::Action("excel.read_sheet".into()),
                Lack::Label("gpu".into())
            ]
        );
    }

    #[test]
    fn fits_and_lacks_agree() {
        let robots = [
            robot("a", Some(&["log"]), &[]),
            robot("b", None, &["gpu"]),
            robot("c", Some(&["log", "x.y"]), &["gpu"]),
        ];
        for n in [
            needs(&[], &[]),
            needs(&["x.y"], &[]),
            needs(&["log"], &["gpu"]),
            Needs {
                pins: vec!["b".into()],
                ..needs(&["x.y"], &[])
            },
        ] {
            for r in &robots {
                assert_eq!(n.fits(r), n.lacks(r).is_empty(), "{n:?} {r:?}");
            }
        }
    }

    #[test]
    fn the_reason_names_what_each_robot_lacks() {
        let robots = [
            robot("robot-a", Some(&["log"]), &["gpu"]),
            robot("robot-b", Some(&["log", "excel.read_sheet"]), &[]),
        ];
        let n = needs(&["excel.read_sheet"], &["gpu"]);
        assert_eq!(
            queued_reason(&n, &robots).as_deref(),
            Some(
                "no robot can run it: robot-a lacks excel.read_sheet; robot-b lacks the label gpu"
            )
        );
        assert_eq!(queued_reason(&needs(&["log"], &["gpu"]), &robots), None);
        assert_eq!(
            queued_reason(&n, &[]).as_deref(),
            Some("no robot is registered on this hub")
        );
    }

    #[test]
    fn a_credential_allows_robots_by_name_or_label_and_nobody_when_missing() {
        let robots = [
            robot("robot-a", None, &["eu"]),
            robot("robot-b", None, &[]),
            robot("robot-c", None, &[]),
        ];
        let need = |allow: Option<CredentialAllow>| Needs {
            credentials: vec![CredentialNeed {
                name: "shop".into(),
                allow,
            }],
            ..Needs::default()
        };
        let by_label = need(Some(CredentialAllow {
            robots: vec!["robot-c".into()],
            labels: vec!["eu".into()],
            workflows: None,
        }));
        let fits: Vec<bool> = robots.iter().map(|r| by_label.fits(r)).collect();
        assert_eq!(fits, [true, false, true]);
        for r in &robots {
            assert_eq!(by_label.fits(r), by_label.lacks(r).is_empty());
        }
        let nobody = need(Some(CredentialAllow::default()));
        assert_eq!(
            queued_reason(&nobody, &robots[..2]).as_deref(),
            Some(
                "no robot can run it: robot-a is not allowed by the credential shop; robot-b is \
                 not allowed by the credential shop"
            )
        );
        let missing = need(None);
        assert!(robots.iter().all(|r| !missing.fits(r)));
        assert_eq!(
            queued_reason(&missing, &robots).as_deref(),
            Some(
                "its workflow uses the credential shop, which this hub does not have; it waits \
                 until one of that name is made (POST /v1/credentials)"
            )
        );
    }

    #[test]
    fn the_reason_describes_pinned_robots_only_and_a_few_at_most() {
        let robots: Vec<Capabilities> = (0..6)
            .map(|i| robot(&format!("r{i}"), Some(&[]), &[]))
            .collect();
        let n = needs(&["a.b", "c.d"], &["x", "y"]);
        assert_eq!(
            queued_reason(&n, &robots).as_deref(),
            Some(
                "no robot can run it: r0 lacks a.b, c.d and the labels x, y; r1 lacks a.b, c.d \
                 and the labels x, y; r2 lacks a.b, c.d and the labels x, y; and 3 more"
            )
        );
        let pinned = Needs {
            pins: vec!["r4".into()],
            ..needs(&["a.b"], &[])
        };
        assert_eq!(
            queued_reason(&pinned, &robots).as_deref(),
            Some("no robot can run it: r4 lacks a.b")
        );
        let elsewhere = Needs {
            pins: vec!["gone".into()],
            ..Needs::default()
        };
        assert_eq!(
            queued_reason(&elsewhere, &robots).as_deref(),
            Some(
                "no robot can run it: its workflow_robots names gone, and no robot of that name \
                 is registered"
            )
        );
    }
}
