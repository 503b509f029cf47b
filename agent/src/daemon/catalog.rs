//! The robot's action catalog, sent with every registration
//! (docs/protocol.md, *The action catalog*): the hub validates workflows
//! against what its robots offer and routes each session to a robot that
//! has every action it uses.

use tasuki_actions::Registry;
use tasuki_actions::language::allowed::Allowed;
use tasuki_protocol::ActionOffer;
use tasuki_protocol::robot::MAX_ACTION_OFFERS;

/// Every action of `registry` that `allowed` lets this robot run: one
/// it would refuse is not offered, so the hub never routes it here. Packs
/// are loaded when the agent starts, so the catalog changes only then,
/// and every start registers again. An offer the hub would refuse (a
/// pack's version with control characters, say) is left out with a
/// warning rather than keep the robot from registering.
pub fn offers(registry: &Registry, allowed: &Allowed) -> Vec<ActionOffer> {
    let mut offers = Vec::new();
    for offer in registry.offers() {
        if !allowed.allows(&offer.name) {
            continue;
        }
        let (pack, version) = match offer.pack {
            Some((pack, version)) => (Some(pack), version),
            None => (None, env!("CARGO_PKG_VERSION").to_string()),
        };
        let offer = ActionOffer {
            name: offer.name,
            pack,
            version,
            schema_sha256: offer.schema_sha256,
        };
        if let Err((field, problem)) = offer.check() {
            tracing::warn!(action = %offer.name, "not offered to the hub: its {field}: {problem}");
            continue;
        }
        offers.push(offer);
    }
    if offers.len() > MAX_ACTION_OFFERS {
        tracing::warn!(
            actions = offers.len(),
            "the hub takes at most {MAX_ACTION_OFFERS} actions from a robot; the rest are not offered"
        );
        offers.truncate(MAX_ACTION_OFFERS);
    }
    offers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], registry: &Registry) -> Allowed {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Allowed::new(&patterns, registry).expect("valid patterns")
    }

    #[test]
    fn offers_what_the_robot_allows_with_the_agents_version_for_built_ins() {
        let registry = Registry::builtin();
        let all = offers(&registry, &allowed(&["*"], &registry));
        assert_eq!(all.len(), registry.names().count());
        let log = all.iter().find(|o| o.name == "log").expect("log offered");
        assert_eq!(log.pack, None);
        assert_eq!(log.version, env!("CARGO_PKG_VERSION"));
        assert!(log.check().is_ok());

        let browser_only = offers(&registry, &allowed(&["browser.*"], &registry));
        assert!(!browser_only.is_empty());
        assert!(browser_only.iter().all(|o| o.name.starts_with("browser.")));
    }
}
