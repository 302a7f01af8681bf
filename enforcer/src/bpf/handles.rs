//! One small handle per map userspace writes or reads (the policy tables
//! have theirs in `swap.rs`): each knows its map's name for errors and
//! offers the operations the daemon and `enforcer run` need.

use std::collections::HashSet;

use aya::maps::{
    Array, HashMap as BpfHashMap, IterableMap as _, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::{
    budget::{BUDGET_USE_MAP, BUDGETS_IN_FORCE_MAP, BUDGETS_MAP, Budget, BudgetUse, BudgetUseKey, split_budget_key},
    events::LOST_MAP,
    net::{
        DnsGrant, NET_KEY_POLICY_BITS, NET_RULES_MAP, NetKey, NetPorts, RESOLVERS_MAP, Resolver, UNIX_RULES_MAP,
        UnixKey,
    },
    policy::{ARMED_MAP, EgressLock, LOCKED_MAP, PROTECTED_MAP, PolicyId, Protected, TAG_BLOOM_BITS},
    select::{SELECTED_MAP, Selected, SelectedBloom},
    tls::{TLS_IN_FORCE_MAP, TlsNameKey},
};

use super::{LoadError, batch, map_err};
use crate::policy::network::{NetChange, NetRules};

/// Each policy's network rules: destinations (`NET_RULES`), unix socket
/// names (`UNIX_RULES`) and its resolver (`RESOLVERS`), all keyed by policy.
pub struct NetRuleMaps {
    pub(super) destinations: LpmTrie<MapData, NetKey, NetPorts>,
    pub(super) unix: BpfHashMap<MapData, UnixKey, u8>,
    pub(super) resolvers: BpfHashMap<MapData, PolicyId, Resolver>,
    pub(super) budgets: BpfHashMap<MapData, u32, Budget>,
    /// The programs' `BUDGETS_IN_FORCE`: set once a policy with budgets is
    /// installed (never cleared: a send by a task in no agent then costs
    /// the tag screen).
    pub(super) budgets_in_force: Array<MapData, u64>,
    /// The programs' `TLS_IN_FORCE`, alike for checked TLS names; none
    /// where the TLS judge is not attached.
    pub(super) tls_in_force: Option<Array<MapData, u64>>,
}

impl NetRuleMaps {
    /// Installs a policy's rules (before a cgroup is tagged with it).
    pub fn add(&mut self, rules: &NetRules) -> Result<(), LoadError> {
        self.put(&rules.prefixes)?;
        self.add_own(rules)
    }

    /// Installs what a version has of its own, keyed by its own id: unix
    /// socket names and upload budgets (its destinations are its net id's,
    /// see [`Self::narrow`]).
    pub fn add_own(&mut self, rules: &NetRules) -> Result<(), LoadError> {
        for key in &rules.unix {
            self.unix.insert(key, 1, 0).map_err(map_err(UNIX_RULES_MAP))?;
        }
        for (key, budget) in &rules.budgets {
            self.budgets.insert(key, budget, 0).map_err(map_err(BUDGETS_MAP))?;
        }
        if rules.counts_sends() {
            self.budgets_in_force.set(0, 1, 0).map_err(map_err(BUDGETS_IN_FORCE_MAP))?;
        }
        Ok(())
    }

    /// Whether a policy with checked TLS names was loaded (`TLS_IN_FORCE`):
    /// from then on the judge's `sock_ops` program is on every cgroup the
    /// socket programs are on.
    #[must_use]
    pub fn tls_in_force(&self) -> bool {
        self.tls_in_force.as_ref().is_some_and(|in_force| in_force.get(&0, 0).is_ok_and(|v| v != 0))
    }

    /// Sets `TLS_IN_FORCE`; false where the judge is not loaded.
    pub(super) fn set_tls_in_force(&mut self) -> Result<bool, LoadError> {
        let Some(in_force) = &mut self.tls_in_force else { return Ok(false) };
        in_force.set(0, 1, 0).map_err(map_err(TLS_IN_FORCE_MAP))?;
        Ok(true)
    }

    /// The first step of `change`, before the swap: dropped entries go,
    /// changed ones allow only what both versions allow.
    pub fn narrow(&mut self, change: &NetChange) -> Result<(), LoadError> {
        self.delete(&change.removed)?;
        let both: Vec<_> = change.narrowed.iter().map(|&(prefix, key, both, _)| (prefix, key, both)).collect();
        self.put(&both)
    }

    /// Undoes [`Self::narrow`] (the swap failed).
    pub fn undo_narrow(&mut self, change: &NetChange) -> Result<(), LoadError> {
        let old: Vec<_> = change.narrowed.iter().map(|&(prefix, key, _, old)| (prefix, key, old)).collect();
        self.put(&old)?;
        self.put(&change.removed)
    }

    /// The second step of `change`, after the swap: the new version's
    /// ports and entries.
    pub fn widen(&mut self, change: &NetChange) -> Result<(), LoadError> {
        self.put(&change.widened)
    }

    /// Sends the DNS of cgroups tagged with `policy_id` to `resolver`.
    pub fn set_resolver(&mut self, policy_id: PolicyId, resolver: Resolver) -> Result<(), LoadError> {
        self.resolvers.insert(policy_id, resolver, 0).map_err(map_err(RESOLVERS_MAP))
    }

    /// Removes a policy's destinations (`rules`: those [`Self::add`] put in).
    pub fn remove_destinations(&mut self, rules: &NetRules) -> Result<(), LoadError> {
        self.delete(&rules.prefixes)
    }

    /// Removes what version `id` has of its own: its unix socket names
    /// (`rules`: those [`Self::add`] put in) and its resolver.
    pub fn remove_version(&mut self, id: PolicyId, rules: Option<&NetRules>) -> Result<(), LoadError> {
        for key in rules.map(|r| r.unix.as_slice()).unwrap_or_default() {
            super::ignore_missing(self.unix.remove(key)).map_err(map_err(UNIX_RULES_MAP))?;
        }
        for (key, _) in rules.map(|r| r.budgets.as_slice()).unwrap_or_default() {
            super::ignore_missing(self.budgets.remove(key)).map_err(map_err(BUDGETS_MAP))?;
        }
        super::ignore_missing(self.resolvers.remove(&id)).map_err(map_err(RESOLVERS_MAP))
    }

    /// Writes destination entries: one call for all; if that fails, one by
    /// one (which names the failure).
    fn put(&mut self, entries: &[(u32, NetKey, NetPorts)]) -> Result<(), LoadError> {
        let keys = trie_keys(entries);
        let ports: Vec<NetPorts> = entries.iter().map(|&(_, _, ports)| ports).collect();
        if batch::update(self.destinations.map().fd(), &keys, &ports).is_ok() {
            return Ok(());
        }
        for (key, ports) in keys.iter().zip(&ports) {
            self.destinations.insert(key, ports, 0).map_err(map_err(NET_RULES_MAP))?;
        }
        Ok(())
    }

    /// Removes destination entries (those missing already too).
    fn delete(&mut self, entries: &[(u32, NetKey, NetPorts)]) -> Result<(), LoadError> {
        self.delete_keys(&trie_keys(entries))
    }

    fn delete_keys(&mut self, keys: &[Key<NetKey>]) -> Result<(), LoadError> {
        if batch::delete(self.destinations.map().fd(), keys).is_ok() {
            return Ok(());
        }
        for key in keys {
            super::ignore_missing(self.destinations.remove(key)).map_err(map_err(NET_RULES_MAP))?;
        }
        Ok(())
    }

    /// Removes the destinations of every net id not in `nets`, and the unix
    /// socket names and resolvers of every version not in `versions`.
    pub fn retain(&mut self, versions: &HashSet<PolicyId>, nets: &HashSet<PolicyId>) -> Result<(), LoadError> {
        let stale: Vec<Key<NetKey>> = self
            .destinations
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !nets.contains(&key.data().policy()))
            .collect();
        self.delete_keys(&stale)?;
        let stale: Vec<UnixKey> =
            self.unix.keys().filter_map(Result::ok).filter(|key| !versions.contains(&key.policy_id)).collect();
        for key in stale {
            self.unix.remove(&key).map_err(map_err(UNIX_RULES_MAP))?;
        }
        let stale: Vec<PolicyId> =
            self.resolvers.keys().filter_map(Result::ok).filter(|id| !versions.contains(id)).collect();
        for id in stale {
            self.resolvers.remove(&id).map_err(map_err(RESOLVERS_MAP))?;
        }
        let stale: Vec<u32> = self
            .budgets
            .keys()
            .filter_map(Result::ok)
            .filter(|&key| !versions.contains(&split_budget_key(key).0))
            .collect();
        for key in stale {
            self.budgets.remove(&key).map_err(map_err(BUDGETS_MAP))?;
        }
        Ok(())
    }
}

/// The maps the resolver writes: the grants of resolved addresses, and the
/// upload budget each address of a budgeted name counts against.
pub struct GrantMaps {
    pub grants: BpfHashMap<MapData, NetKey, DnsGrant>,
    pub budget_addrs: BpfHashMap<MapData, NetKey, u16>,
    /// None where the TLS judge is not attached (no BPF LSM).
    pub tls: Option<TlsMaps>,
}

/// The names each granted address may be named by in a ClientHello
/// (`TLS_NAMES`), and how strictly (`TLS_ADDRS`).
pub struct TlsMaps {
    pub addrs: BpfHashMap<MapData, NetKey, u8>,
    pub names: BpfHashMap<MapData, TlsNameKey, u8>,
}

/// What each agent sent under each upload budget (`BUDGET_USE`): only the
/// kernel adds to it; userspace reads it and forgets cgroups that are gone.
pub struct BudgetUsage(pub(super) BpfHashMap<MapData, BudgetUseKey, BudgetUse>);

impl BudgetUsage {
    /// Every (agent, budget) pair with what it sent in its current window.
    #[must_use]
    pub fn all(&self) -> Vec<(BudgetUseKey, BudgetUse)> {
        self.0.iter().filter_map(Result::ok).collect()
    }

    /// Forgets the pairs `keep` does not keep (agents gone, versions out
    /// of force).
    pub fn retain(&mut self, keep: impl Fn(&BudgetUseKey) -> bool) -> Result<(), LoadError> {
        retain_keys(&mut self.0, BUDGET_USE_MAP, keep)
    }
}

/// The destination trie's keys of `entries`.
fn trie_keys(entries: &[(u32, NetKey, NetPorts)]) -> Vec<Key<NetKey>> {
    entries.iter().map(|&(prefix, key, _)| Key::new(NET_KEY_POLICY_BITS + prefix, key)).collect()
}

/// The cgroups whose tag waits for an exec (`TAG_FROM_EXEC`) and had one.
pub struct ArmedCgroups(pub(super) BpfHashMap<MapData, u64, u8>);

impl ArmedCgroups {
    /// Whether cgroup `id` had its first exec.
    #[must_use]
    pub fn contains(&self, id: u64) -> bool {
        self.0.get(&id, 0).is_ok()
    }

    /// Arms cgroup `id` now (a cgroup judged already stays judged).
    pub fn arm(&mut self, id: u64) -> Result<(), LoadError> {
        self.0.insert(id, 1, 0).map_err(map_err(ARMED_MAP))
    }

    /// Forgets every cgroup but those `keep` says to keep (a tag that goes
    /// and comes back waits for an exec again).
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) -> Result<(), LoadError> {
        retain_keys(&mut self.0, ARMED_MAP, |&id| keep(id))
    }
}

/// The agents whose egress a sensitive read locked (`LOCKED`): only the
/// kernel adds to it; userspace reads it and forgets cgroups that are gone.
pub struct LockedAgents(pub(super) BpfHashMap<MapData, u64, EgressLock>);

impl LockedAgents {
    /// Every locked agent (tagged cgroup id) and the read that locked it.
    #[must_use]
    pub fn all(&self) -> Vec<(u64, EgressLock)> {
        self.0.iter().filter_map(Result::ok).collect()
    }

    /// Forgets the agents `keep` says are gone.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) -> Result<(), LoadError> {
        retain_keys(&mut self.0, LOCKED_MAP, |&id| keep(id))
    }
}

/// Removes the entries of a hash map (`name`, for errors) whose keys `keep`
/// does not keep.
fn retain_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    name: &'static str,
    keep: impl Fn(&K) -> bool,
) -> Result<(), LoadError> {
    let gone: Vec<K> = map.keys().filter_map(Result::ok).filter(|key| !keep(key)).collect();
    for key in gone {
        super::ignore_missing(map.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// The cgroups selectors tagged (`SELECTED`), and the kernel's half of
/// their bloom filter (`SELECTED_BLOOM`, which only the kernel sets).
pub struct SelectedCgroups {
    pub(super) records: BpfHashMap<MapData, u64, Selected>,
    pub(super) bloom: Array<MapData, SelectedBloom>,
}

impl SelectedCgroups {
    /// Whether cgroup `id` is recorded.
    #[must_use]
    pub fn contains(&self, id: u64) -> bool {
        self.records.get(&id, 0).is_ok()
    }

    /// Every recorded cgroup.
    #[must_use]
    pub fn all(&self) -> Vec<(u64, Selected)> {
        self.records.iter().filter_map(Result::ok).collect()
    }

    /// Records a selected cgroup (its id must pass the tag check's filter
    /// first: see `Swap::set_extra_filter`).
    pub fn insert(&mut self, cgroup_id: u64, selected: Selected) -> Result<(), LoadError> {
        self.records.insert(cgroup_id, selected, 0).map_err(map_err(SELECTED_MAP))
    }

    pub fn remove(&mut self, cgroup_id: u64) -> Result<(), LoadError> {
        super::ignore_missing(self.records.remove(&cgroup_id)).map_err(map_err(SELECTED_MAP))
    }

    /// How full the bloom filter is (0 to 1): it only fills, and past about
    /// a half it lets many untagged cgroups through to a map lookup.
    #[must_use]
    pub fn bloom_fill(&self) -> f64 {
        let Ok(bloom) = self.bloom.get(&0, 0) else { return 0.0 };
        let set: u32 = bloom.bloom.iter().map(|w| w.count_ones()).sum();
        f64::from(set) / f64::from(u32::try_from(TAG_BLOOM_BITS).unwrap_or(u32::MAX))
    }
}

/// The inodes no tagged task may change (`PROTECTED`: the daemon's own
/// files).
pub struct ProtectedInodes(pub(super) Array<MapData, Protected>);

impl ProtectedInodes {
    pub fn set(&mut self, protected: &Protected) -> Result<(), LoadError> {
        self.0.set(0, protected, 0).map_err(map_err(PROTECTED_MAP))
    }
}

/// Events the ring buffer could not take (`LOST`, per CPU).
pub struct LostEvents(pub(super) PerCpuArray<MapData, u64>);

impl LostEvents {
    /// Since load, over all CPUs.
    pub fn total(&self) -> Result<u64, LoadError> {
        let per_cpu = self.0.get(&0, 0).map_err(map_err(LOST_MAP))?;
        Ok(per_cpu.iter().sum())
    }
}
