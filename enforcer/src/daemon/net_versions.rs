//! The destinations of a policy's versions, changed in place across a
//! reload. Every version of a policy keys its destinations by the policy's
//! net id, so a new version of a 10 000-destination policy touches only the
//! entries that differ, in two steps around the table swap (see
//! [`NetChange`]): the versions' own parts (unix socket names, resolver)
//! are keyed by their ids and go in beside the old ones, as the tables do.

use std::collections::{BTreeMap, HashSet};

use enforcer_common::policy::PolicyId;

use super::policies::Loaded;
use crate::{
    bpf::{LoadError, NetRuleMaps},
    policy::network::NetChange,
};

/// A new version's change to its policy's destinations.
pub struct Change {
    pub policy: String,
    pub version: u32,
    pub net: NetChange,
}

/// The first step, before the swap: a new policy's destinations go in whole,
/// a new version's entries that change are narrowed. `changes` gets each
/// change as it is made (on error, what [`undo`] undoes).
pub fn before_swap(
    net: &mut NetRuleMaps,
    in_force: &BTreeMap<String, Loaded>,
    fresh: &BTreeMap<String, Loaded>,
    changes: &mut Vec<Change>,
) -> Result<(), LoadError> {
    for new in fresh.values() {
        // A version after one without destinations is new to its net id:
        // no tag judges by its entries before the swap. One without
        // destinations leaves the old ones to go after it (`after_swap`).
        let before = in_force.get(&new.name).filter(|old| old.net_id == new.net_id && old.net.is_some());
        match before {
            None => new.net.as_ref().map_or(Ok(()), |rules| net.add(rules))?,
            Some(_) if new.net.is_none() => {}
            Some(old) => {
                let change = NetChange::between(prefixes(old), prefixes(new));
                changes.push(Change { policy: new.name.clone(), version: new.version, net: change });
                net.narrow(&changes[changes.len() - 1].net)?;
                new.net.as_ref().map_or(Ok(()), |rules| net.add_own(rules))?;
            }
        }
    }
    Ok(())
}

/// Puts the destinations back as they were (the swap did not happen): the
/// narrowed entries get their ports back, and what is not of the net ids
/// `nets` and versions `versions` in force goes.
pub fn undo(net: &mut NetRuleMaps, changes: &[Change], nets: &HashSet<PolicyId>, versions: &HashSet<PolicyId>) {
    for change in changes {
        if let Err(e) = net.undo_narrow(&change.net) {
            tracing::warn!("cannot put back the destinations a failed change cut: {e} (they stay denied)");
        }
    }
    if let Err(e) = net.retain(versions, nets) {
        tracing::warn!("cannot remove the network rules of a failed change: {e} (no tag names them)");
    }
}

/// The second step, once the new tables are in force: new versions' entries
/// widened, and what versions out of force (`live`: the ids in force) had of
/// their own removed by key (a walk of the whole trie costs a system call
/// per entry of every policy). What fails is returned, for the reload's
/// report: entries no tag names stay (removed at the next start), or
/// destinations stay denied (until the policy changes again).
#[must_use]
pub fn after_swap(
    net: &mut NetRuleMaps,
    in_force: &BTreeMap<String, Loaded>,
    fresh: &BTreeMap<String, Loaded>,
    changes: &[Change],
    live: &HashSet<PolicyId>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for Change { policy, version, net: change } in changes {
        if let Err(e) = net.widen(change) {
            warnings.push(format!(
                "policy `{policy}` version {version}: cannot add its new destinations: {e} (they stay denied until \
                 the file changes again)"
            ));
        }
    }
    // Net ids whose version in force has destinations: the others' go.
    let live_nets: HashSet<PolicyId> = in_force
        .values()
        .chain(fresh.values())
        .filter(|p| live.contains(&p.id) && p.net.is_some())
        .map(|p| p.net_id)
        .collect();
    for gone in in_force.values().filter(|p| !live.contains(&p.id)) {
        let mut removed = net.remove_version(gone.id, gone.net.as_ref());
        if let Some(rules) = gone.net.as_ref().filter(|_| !live_nets.contains(&gone.net_id)) {
            removed = removed.and_then(|()| net.remove_destinations(rules));
        }
        if let Err(e) = removed {
            warnings.push(format!(
                "policy `{}` version {}: cannot remove its network rules: {e} (no tag names them; the next start \
                 removes them)",
                gone.name, gone.version
            ));
        }
    }
    warnings
}

fn prefixes(loaded: &Loaded) -> &[(u32, enforcer_common::net::NetKey, enforcer_common::net::NetPorts)] {
    loaded.net.as_ref().map(|rules| rules.prefixes.as_slice()).unwrap_or_default()
}
