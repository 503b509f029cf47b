//! The actions a workflow uploaded to the hub may use: the built-ins, and
//! every action some registered robot offers in its catalog
//! (docs/protocol.md, *The action catalog*).
//!
//! The hub has no pack's schema, only its name: an offered action is
//! registered here as a placeholder whose arguments may be anything. The
//! robot checks them against the real schema when it takes the lease,
//! as it checks everything that depends on its own settings.

use serde_json::Value;
use tasuki_actions::Registry;
use tasuki_actions::runtime::registry::{Action, ActionError, ActionFuture};

use crate::db::robots::FleetCatalog;

/// Packs (by version) and robots named in a message, at most; the rest are
/// counted.
const PACKS_NAMED: usize = 20;
const ROBOTS_NAMED: usize = 3;

/// `builtin` plus a placeholder for every action `fleet` offers that is
/// not a built-in, and the text that follows "no robot of this hub offers
/// `x`" in a workflow's problems: which packs the fleet does offer.
pub fn registry(builtin: &Registry, fleet: &FleetCatalog) -> (Registry, String) {
    let mut registry = builtin.clone();
    for name in &fleet.actions {
        if registry.get(name).is_none() {
            registry.register(name, Offered);
        }
    }
    (registry, describe(fleet))
}

/// An action some robot offers, as the hub knows it: by name only.
struct Offered;

impl Action for Offered {
    fn args_schema(&self) -> Value {
        Value::Bool(true)
    }

    fn run<'a>(
        &'a self,
        _ctx: &'a tasuki_actions::runtime::context::ActionContext,
        _args: Value,
    ) -> ActionFuture<'a> {
        Box::pin(async {
            Err(ActionError::new(
                "not_here",
                "the hub validates workflows; robots run them",
            ))
        })
    }
}

/// `the packs its robots offer: excel 1.2.0 (robot-a, robot-b), probe
/// 0.1.0 (robot-c)`, and which robots did not say what they offer.
fn describe(fleet: &FleetCatalog) -> String {
    // (pack, version) → robots, in the catalog's order (pack, version,
    // robot).
    let mut packs: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for (pack, version, robot) in &fleet.packs {
        match packs.last_mut() {
            Some((p, v, robots)) if p == pack && v == version => robots.push(robot),
            _ => packs.push((pack, version, vec![robot])),
        }
    }
    let mut text = if packs.is_empty() {
        "no robot of this hub offers any action pack".to_string()
    } else {
        let mut listed: Vec<String> = packs
            .iter()
            .take(PACKS_NAMED)
            .map(|(pack, version, robots)| format!("{pack} {version} ({})", names(robots)))
            .collect();
        if packs.len() > PACKS_NAMED {
            listed.push(format!("and {} more", packs.len() - PACKS_NAMED));
        }
        format!("the packs its robots offer: {}", listed.join(", "))
    };
    if !fleet.unknown.is_empty() {
        let robots: Vec<&str> = fleet.unknown.iter().map(String::as_str).collect();
        text.push_str(&format!(
            "; {} did not say what {} (agents older than action catalogs)",
            names(&robots),
            if robots.len() == 1 {
                "it offers"
            } else {
                "they offer"
            }
        ));
    }
    text
}

fn names(robots: &[&str]) -> String {
    let mut text = robots
        .iter()
        .take(ROBOTS_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if robots.len() > ROBOTS_NAMED {
        text.push_str(&format!(" and {} more", robots.len() - ROBOTS_NAMED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(packs: &[(&str, &str, &str)], unknown: &[&str]) -> FleetCatalog {
        FleetCatalog {
            actions: Default::default(),
            packs: packs
                .iter()
                .map(|(p, v, r)| (p.to_string(), v.to_string(), r.to_string()))
                .collect(),
            unknown: unknown.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_each_pack_version_with_its_robots() {
        let fleet = catalog(
            &[
                ("excel", "1.2.0", "a"),
                ("excel", "1.2.0", "b"),
                ("excel", "1.3.0", "c"),
                ("probe", "0.1.0", "a"),
                ("probe", "0.1.0", "b"),
                ("probe", "0.1.0", "c"),
                ("probe", "0.1.0", "d"),
                ("probe", "0.1.0", "e"),
            ],
            &[],
        );
        assert_eq!(
            describe(&fleet),
            "the packs its robots offer: excel 1.2.0 (a, b), excel 1.3.0 (c), probe 0.1.0 \
             (a, b, c and 2 more)"
        );
    }

    #[test]
    fn says_when_no_robot_offers_a_pack_and_which_robots_said_nothing() {
        assert_eq!(
            describe(&catalog(&[], &[])),
            "no robot of this hub offers any action pack"
        );
        assert_eq!(
            describe(&catalog(&[], &["old-1"])),
            "no robot of this hub offers any action pack; old-1 did not say what it offers \
             (agents older than action catalogs)"
        );
    }
}
