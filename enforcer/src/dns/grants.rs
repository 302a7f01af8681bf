//! The addresses allowed because an allowed name resolved to them: kept
//! here per (policy, address) with each name's own expiry, and written to
//! the programs' `DNS_GRANTS` map as one merged entry per address.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use enforcer_common::{
    net::{DNS_GRANTS_MAX, DnsGrant, NetKey, NetPorts},
    policy::PolicyId,
    tls::{TLS_NAME_BYTES, TlsNameKey},
};

use super::names::merge_ports;
use crate::bpf::{GrantMaps, ignore_missing};

/// `CLOCK_BOOTTIME` in nanoseconds: the clock the programs compare with.
#[must_use]
pub fn boot_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// One name's grant of one address.
#[derive(Clone, Debug)]
struct NameGrant {
    name: String,
    ports: NetPorts,
    /// How connections' TLS names are checked (`enforcer_common::tls`).
    tls: u8,
    expires_boot_ns: u64,
}

/// What a name's answer grants an address.
#[derive(Clone, Copy, Debug)]
pub struct Granted {
    pub ports: NetPorts,
    /// How connections' TLS names are checked (`enforcer_common::tls`; 0: not).
    pub tls: u8,
    pub ttl: Duration,
    /// The upload budget sends to it count against (beyond `*`).
    pub budget: Option<u16>,
}

/// Names remembered per address for events, at most (then forgotten whole).
const HISTORY_MAX: usize = 1 << 17;

/// Addresses one policy version may hold grants for: an eighth of the table
/// every policy shares, so an agent resolving names it controls under an
/// allowed wildcard (each answer full of distinct addresses) fills its own
/// share, not every agent's table.
pub const GRANTS_PER_POLICY: usize = DNS_GRANTS_MAX as usize / 8;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("policy {0} holds grants for {GRANTS_PER_POLICY} addresses already")]
    ShareFull(PolicyId),
    #[error(transparent)]
    Map(#[from] MapError),
}

/// Whose grant: a policy version's agents', or (`locked`) those of its
/// agents whose egress is locked (names in `after_sensitive_read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grantee {
    pub policy: PolicyId,
    pub locked: bool,
}

impl Grantee {
    fn key(self, addr: Ipv6Addr) -> NetKey {
        if self.locked {
            NetKey::locked(self.policy, addr.octets())
        } else {
            NetKey::new(self.policy, false, addr.octets())
        }
    }
}

pub struct Grants {
    map: BpfHashMap<MapData, NetKey, DnsGrant>,
    /// The programs' `BUDGET_ADDRS`: the upload budget of each address a
    /// budgeted name resolved to, kept while the version is in force (a
    /// connection outlives its grant and goes on counting).
    budget_addrs: BpfHashMap<MapData, NetKey, u16>,
    /// What `budget_addrs` holds, with the name that put it there (empty:
    /// an earlier daemon's).
    budgeted: HashMap<(PolicyId, Ipv6Addr), (String, u16)>,
    by_address: HashMap<(Grantee, Ipv6Addr), Vec<NameGrant>>,
    /// The last name each address was resolved from (expired or not), for
    /// the `resolved_from` of a denied connect.
    history: HashMap<Ipv6Addr, String>,
    /// Addresses granted per policy, both grantees (see [`GRANTS_PER_POLICY`]).
    held: HashMap<PolicyId, usize>,
    /// The programs' `TLS_ADDRS` and `TLS_NAMES` (none where the TLS judge
    /// is not attached: no name is checked).
    tls: Option<crate::bpf::TlsMaps>,
    /// The names `TLS_NAMES` holds per address.
    tls_names: HashMap<(Grantee, Ipv6Addr), Vec<String>>,
}

impl Grants {
    #[must_use]
    pub fn new(maps: GrantMaps) -> Self {
        Self {
            map: maps.grants,
            budget_addrs: maps.budget_addrs,
            budgeted: HashMap::new(),
            by_address: HashMap::new(),
            history: HashMap::new(),
            held: HashMap::new(),
            tls: maps.tls,
            tls_names: HashMap::new(),
        }
    }

    /// Takes over the grants an earlier daemon left in the (pinned) map:
    /// they keep their expiry and ports, under a name this daemon does not
    /// know, and are swept as they expire.
    #[must_use]
    pub fn adopting(maps: GrantMaps) -> Self {
        let mut grants = Self::new(maps);
        // The names an earlier daemon checked TLS names against: they keep
        // granting their addresses (with the merged expiry).
        let mut checked: HashMap<NetKey, (u8, Vec<String>)> = HashMap::new();
        if let Some(tls) = &grants.tls {
            for (key, _) in tls.names.iter().filter_map(Result::ok) {
                let len = (key.len as usize).min(TLS_NAME_BYTES);
                let name = String::from_utf8_lossy(&key.name[..len]).into_owned();
                let mode = tls.addrs.get(&key.grant, 0).unwrap_or(0);
                checked.entry(key.grant).or_insert((mode, Vec::new())).1.push(name);
            }
        }
        let left: Vec<(NetKey, DnsGrant)> = grants.map.iter().filter_map(Result::ok).collect();
        for (key, grant) in left {
            let grantee = Grantee { policy: key.policy(), locked: key.is_locked() };
            let addr = Ipv6Addr::from(key.addr);
            let (mode, names) = checked.remove(&key).unwrap_or((0, vec![String::new()]));
            if mode != 0 {
                grants.tls_names.insert((grantee, addr), names.clone());
            }
            for name in names {
                let earlier = NameGrant { name, ports: grant.ports, tls: mode, expires_boot_ns: grant.expires_boot_ns };
                grants.by_address.entry((grantee, addr)).or_default().push(earlier);
            }
        }
        let budgeted: Vec<(NetKey, u16)> = grants.budget_addrs.iter().filter_map(Result::ok).collect();
        for (key, index) in budgeted {
            grants.budgeted.insert((key.policy(), Ipv6Addr::from(key.addr)), (String::new(), index));
        }
        grants.recount();
        grants
    }

    /// Counts the addresses each policy holds anew (after removals).
    fn recount(&mut self) {
        self.held.clear();
        for (grantee, _) in self.by_address.keys() {
            *self.held.entry(grantee.policy).or_default() += 1;
        }
    }

    /// Gives policy `to` the grants `from` has for names `ports_for` still
    /// allows (told whether the grant is for locked agents), with the ports
    /// it allows them now and their expiry: a new version of a policy keeps
    /// the answers its agents already hold. Grants adopted from an earlier
    /// daemon (no name) are not carried.
    pub fn carry_over(
        &mut self,
        from: PolicyId,
        to: PolicyId,
        ports_for: impl Fn(&str, bool) -> Option<(NetPorts, u8)>,
        budget_for: impl Fn(&str) -> Option<u16>,
    ) -> Result<(), GrantError> {
        // The budgets first: no address is allowed before its budget counts.
        // Those the names of carried grants have under the new version (it
        // may budget a name the old one did not), and those the old version
        // kept past their grants.
        let granted = self
            .by_address
            .iter()
            .filter(|((grantee, _), _)| grantee.policy == from)
            .flat_map(|((_, addr), list)| list.iter().map(move |g| (*addr, g.name.as_str())));
        let kept =
            self.budgeted.iter().filter(|((policy, _), _)| *policy == from).map(|((_, a), (n, _))| (*a, n.as_str()));
        let budgeted: Vec<(Ipv6Addr, String, u16)> = granted
            .chain(kept)
            .filter(|(_, name)| !name.is_empty())
            .filter_map(|(addr, name)| budget_for(name).map(|index| (addr, name.to_owned(), index)))
            .collect();
        for (addr, name, index) in budgeted {
            self.set_budget(to, addr, &name, index)?;
        }
        let carried: Vec<(Grantee, Ipv6Addr, Vec<NameGrant>)> = self
            .by_address
            .iter()
            .filter(|((grantee, _), _)| grantee.policy == from)
            .map(|((grantee, addr), list)| {
                let kept = list
                    .iter()
                    .filter(|g| !g.name.is_empty())
                    .filter_map(|g| {
                        ports_for(&g.name, grantee.locked).map(|(ports, tls)| NameGrant { ports, tls, ..g.clone() })
                    })
                    .collect();
                (Grantee { policy: to, ..*grantee }, *addr, kept)
            })
            .collect();
        for (grantee, addr, list) in carried.into_iter().filter(|(_, _, list): &(_, _, Vec<_>)| !list.is_empty()) {
            self.by_address.insert((grantee, addr), list);
            self.write(grantee, addr)?;
        }
        self.recount();
        Ok(())
    }

    /// Removes every grant of `policy_id` (a version no longer in force).
    pub fn forget(&mut self, policy_id: PolicyId) {
        let budgeted: Vec<Ipv6Addr> =
            self.budgeted.keys().filter(|(policy, _)| *policy == policy_id).map(|&(_, addr)| addr).collect();
        for addr in budgeted {
            self.budgeted.remove(&(policy_id, addr));
            // A failed removal leaves an entry no tag can reach.
            let _ = self.budget_addrs.remove(&NetKey::new(policy_id, false, addr.octets()));
        }
        let held: Vec<(Grantee, Ipv6Addr)> =
            self.by_address.keys().filter(|(grantee, _)| grantee.policy == policy_id).copied().collect();
        for (grantee, addr) in held {
            self.by_address.remove(&(grantee, addr));
            // A failed removal leaves an entry no tag can reach (the id is
            // not in force), which expires in the kernel by itself.
            let _ = self.write(grantee, addr);
        }
        self.held.remove(&policy_id);
    }

    /// The policies that hold grants.
    #[must_use]
    pub fn policies(&self) -> std::collections::BTreeSet<PolicyId> {
        self.by_address.keys().map(|(grantee, _)| grantee.policy).collect()
    }

    /// Allows `addr` to `grantee` as `granted` says, because `name`
    /// resolved to it. The maps hold it when this returns.
    pub fn grant(&mut self, grantee: Grantee, addr: IpAddr, name: &str, answer: Granted) -> Result<(), GrantError> {
        let Granted { ports, tls, ttl, budget } = answer;
        let addr = as_v6(addr);
        if let Some(index) = budget {
            self.set_budget(grantee.policy, addr, name, index)?;
        }
        let expires_boot_ns = boot_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        if !self.by_address.contains_key(&(grantee, addr)) {
            let held = self.held.entry(grantee.policy).or_default();
            if *held >= GRANTS_PER_POLICY {
                return Err(GrantError::ShareFull(grantee.policy));
            }
            *held += 1;
        }
        let list = self.by_address.entry((grantee, addr)).or_default();
        list.retain(|g| g.name != name);
        list.push(NameGrant { name: name.to_owned(), ports, tls, expires_boot_ns });
        if self.history.len() >= HISTORY_MAX {
            self.history.clear();
        }
        self.history.insert(addr, name.to_owned());
        Ok(self.write(grantee, addr)?)
    }

    /// Makes sends of `policy`'s agents to `addr` count against budget
    /// `index` (`name` resolved to it). Where two budgeted names share an
    /// address, the budget declared first counts it.
    fn set_budget(&mut self, policy: PolicyId, addr: Ipv6Addr, name: &str, index: u16) -> Result<(), GrantError> {
        let earlier = self.budgeted.get(&(policy, addr)).map(|&(_, index)| index);
        if earlier.is_some_and(|earlier| earlier <= index) {
            return Ok(());
        }
        if earlier.is_none() && self.budgeted.keys().filter(|(p, _)| *p == policy).count() >= GRANTS_PER_POLICY {
            return Err(GrantError::ShareFull(policy));
        }
        self.budget_addrs.insert(NetKey::new(policy, false, addr.octets()), index, 0)?;
        self.budgeted.insert((policy, addr), (name.to_owned(), index));
        Ok(())
    }

    /// Removes what has expired; returns how many addresses lost every grant.
    pub fn sweep(&mut self) -> usize {
        let now = boot_ns();
        let mut changed = Vec::new();
        for (key, list) in &mut self.by_address {
            let before = list.len();
            list.retain(|g| g.expires_boot_ns > now);
            if list.len() != before {
                changed.push(*key);
            }
        }
        let mut emptied = 0;
        for (grantee, addr) in changed {
            if self.by_address.get(&(grantee, addr)).is_some_and(Vec::is_empty) {
                emptied += 1;
            }
            // A failed rewrite leaves the older entry, which expires in the
            // kernel by itself.
            let _ = self.write(grantee, addr);
        }
        self.by_address.retain(|_, list| !list.is_empty());
        self.recount();
        emptied
    }

    /// The name `addr` was last resolved from, if any.
    #[must_use]
    pub fn resolved_from(&self, addr: IpAddr) -> Option<&str> {
        self.history.get(&as_v6(addr)).map(String::as_str)
    }

    /// Writes the merged entry of one address (or removes it).
    fn write(&mut self, grantee: Grantee, addr: Ipv6Addr) -> Result<(), MapError> {
        self.write_tls(grantee, addr)?;
        let key = grantee.key(addr);
        let list = self.by_address.get(&(grantee, addr)).map(Vec::as_slice).unwrap_or_default();
        if list.is_empty() {
            return ignore_missing(self.map.remove(&key));
        }
        let ports = list.iter().fold(NetPorts::default(), |all, g| merge_ports(&all, &g.ports));
        let expires_boot_ns = list.iter().map(|g| g.expires_boot_ns).max().unwrap_or(0);
        self.map.insert(key, DnsGrant { expires_boot_ns, ports }, 0)
    }
}

/// IPv4 as the programs key it: `::ffff:a.b.c.d`.
impl Grants {
    /// Writes which names may be named in a ClientHello to one address, and
    /// how strictly (the strictest mode of its names): every name granted
    /// it, while one of them is checked.
    fn write_tls(&mut self, grantee: Grantee, addr: Ipv6Addr) -> Result<(), MapError> {
        let Some(tls) = &mut self.tls else { return Ok(()) };
        let key = grantee.key(addr);
        let list = self.by_address.get(&(grantee, addr)).map(Vec::as_slice).unwrap_or_default();
        let mode = list.iter().map(|g| g.tls).max().unwrap_or(0);
        let wanted: Vec<String> = if mode == 0 {
            Vec::new()
        } else {
            list.iter().map(|g| g.name.clone()).filter(|n| !n.is_empty()).collect()
        };
        let held = self.tls_names.remove(&(grantee, addr)).unwrap_or_default();
        // Names in before the mode: a connect never sees a mode without them.
        for name in wanted.iter().filter(|n| !held.contains(n)) {
            tls.names.insert(tls_name_key(key, name), 1, 0)?;
        }
        if mode == 0 {
            ignore_missing(tls.addrs.remove(&key))?;
        } else {
            tls.addrs.insert(key, mode, 0)?;
        }
        for name in held.iter().filter(|n| !wanted.contains(n)) {
            ignore_missing(tls.names.remove(&tls_name_key(key, name)))?;
        }
        if !wanted.is_empty() {
            self.tls_names.insert((grantee, addr), wanted);
        }
        Ok(())
    }
}

/// The `TLS_NAMES` key of `name` granted `grant` (names longer than a key
/// holds are never matched: a ClientHello cannot carry them either).
#[must_use]
pub fn tls_name_key(grant: NetKey, name: &str) -> TlsNameKey {
    let mut key = TlsNameKey { grant, len: 0, name: [0; TLS_NAME_BYTES] };
    let bytes = name.as_bytes();
    let len = bytes.len().min(TLS_NAME_BYTES - 1);
    key.name[..len].copy_from_slice(&bytes[..len]);
    key.len = u32::try_from(len).unwrap_or(0);
    key
}

fn as_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6, |v4| v4.to_ipv6_mapped()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd as _;

    use aya::maps::Map;

    use super::*;
    use enforcer_common::tls::{TLS_CHECK, TLS_REQUIRE};

    /// A kernel hash map of `K` to `V` (the test runs as root, as the unit
    /// tier does).
    fn hash_map<K: aya::Pod, V: aya::Pod>(max_entries: u32) -> BpfHashMap<MapData, K, V> {
        let mut attr = [0u32; 18];
        attr[0] = 1; // BPF_MAP_TYPE_HASH
        attr[1] = u32::try_from(size_of::<K>()).unwrap();
        attr[2] = u32::try_from(size_of::<V>()).unwrap();
        attr[3] = max_entries;
        // SAFETY: bpf(BPF_MAP_CREATE) with a zero-filled attribute prefix.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), size_of_val(&attr)) };
        assert!(fd >= 0, "cannot create a BPF map (root?): {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
        BpfHashMap::try_from(Map::HashMap(MapData::from_fd(fd).unwrap())).unwrap()
    }

    /// Maps shaped like the programs' `DNS_GRANTS` and `BUDGET_ADDRS`.
    fn grant_maps() -> GrantMaps {
        GrantMaps { grants: hash_map(DNS_GRANTS_MAX), budget_addrs: hash_map(DNS_GRANTS_MAX), tls: None }
    }

    /// What an answer grants: all ports, no TLS check.
    fn granted(ttl: Duration, budget: Option<u16>) -> Granted {
        Granted { ports: NetPorts::default(), tls: 0, ttl, budget }
    }

    #[test]
    fn one_policy_fills_its_share_of_the_grants_not_the_others() {
        let mut grants = Grants::new(grant_maps());
        let ttl = Duration::from_mins(1);
        let addr = |i: usize| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128));
        let (one, two) =
            (Grantee { policy: PolicyId(1), locked: false }, Grantee { policy: PolicyId(2), locked: false });
        let one_locked = Grantee { locked: true, ..one };
        for i in 0..GRANTS_PER_POLICY - 1 {
            grants.grant(one, addr(i), "x.evil.example", granted(ttl, None)).unwrap();
        }
        grants.grant(one_locked, addr(0), "x.evil.example", granted(ttl, None)).expect("the last of the share");
        let full = grants.grant(one, addr(GRANTS_PER_POLICY), "y.evil.example", granted(ttl, None));
        assert!(matches!(full, Err(GrantError::ShareFull(PolicyId(1)))), "{full:?}");
        grants.grant(one, addr(0), "z.evil.example", granted(ttl, None)).expect("an address it holds takes more names");
        grants.grant(two, addr(0), "api.example", granted(ttl, None)).expect("another policy still gets grants");
        grants.forget(PolicyId(1));
        let left: Vec<NetKey> = grants.map.keys().filter_map(Result::ok).collect();
        assert_eq!(left, [NetKey::new(PolicyId(2), false, as_v6(addr(0)).octets())], "both of its grantees forgotten");
        grants.grant(one, addr(1), "x.evil.example", granted(ttl, None)).expect("a share freed");
    }

    #[test]
    fn a_budgeted_address_keeps_its_budget_past_its_grant_and_into_the_next_version() {
        let mut grants = Grants::new(grant_maps());
        let one = Grantee { policy: PolicyId(1), locked: false };
        let addr = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | 7));
        let key = |policy| NetKey::new(PolicyId(policy), false, as_v6(addr).octets());
        let ports = NetPorts::default();
        grants.grant(one, addr, "uploads.example", granted(Duration::ZERO, Some(3))).unwrap();
        grants.grant(one, addr, "cdn.example", granted(Duration::ZERO, Some(5))).unwrap();
        assert_eq!(grants.budget_addrs.get(&key(1), 0).ok(), Some(3), "the budget declared first counts it");
        grants.sweep();
        assert!(grants.map.get(&key(1), 0).is_err(), "the grant expired");
        assert_eq!(grants.budget_addrs.get(&key(1), 0).ok(), Some(3), "the budget stays");
        let plain = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | 8));
        grants.grant(one, plain, "plain.example", granted(Duration::from_mins(5), None)).unwrap();
        let budget_for = |name: &str| match name {
            "uploads.example" => Some(4),
            "plain.example" => Some(6),
            _ => None,
        };
        grants.carry_over(PolicyId(1), PolicyId(2), |_, _| Some((ports, 0)), budget_for).unwrap();
        assert_eq!(grants.budget_addrs.get(&key(2), 0).ok(), Some(4), "the next version's index for the name");
        let plain_key = NetKey::new(PolicyId(2), false, as_v6(plain).octets());
        assert_eq!(grants.budget_addrs.get(&plain_key, 0).ok(), Some(6), "a budget the new version adds");
        grants.forget(PolicyId(1));
        assert!(grants.budget_addrs.get(&key(1), 0).is_err());
    }

    /// The TLS names of an address: every name granted it while one of them
    /// is checked, the strictest mode; gone with the grants (expiry, a
    /// version no longer in force).
    #[test]
    fn the_names_a_clienthello_may_carry_follow_the_grants() {
        let mut maps = grant_maps();
        maps.tls = Some(crate::bpf::TlsMaps { addrs: hash_map(DNS_GRANTS_MAX), names: hash_map(1024) });
        let mut grants = Grants::new(maps);
        let one = Grantee { policy: PolicyId(1), locked: false };
        let addr = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | 9));
        let key = NetKey::new(PolicyId(1), false, as_v6(addr).octets());
        let with = |tls, ttl| Granted { ports: NetPorts::default(), tls, ttl, budget: None };
        let names = |grants: &Grants| {
            let tls = grants.tls.as_ref().unwrap();
            let mut names: Vec<String> = tls
                .names
                .keys()
                .filter_map(Result::ok)
                .map(|k| String::from_utf8_lossy(&k.name[..k.len as usize]).into_owned())
                .collect();
            names.sort();
            (tls.addrs.get(&key, 0).ok(), names)
        };
        grants.grant(one, addr, "plain.example", with(0, Duration::from_mins(5))).unwrap();
        assert_eq!(names(&grants), (None, vec![]), "no checked name: nothing");
        grants.grant(one, addr, "api.example", with(TLS_CHECK, Duration::ZERO)).unwrap();
        grants.grant(one, addr, "www.example", with(TLS_REQUIRE, Duration::from_mins(5))).unwrap();
        let all = vec!["api.example".to_owned(), "plain.example".to_owned(), "www.example".to_owned()];
        assert_eq!(names(&grants), (Some(TLS_REQUIRE), all), "every name, the strictest mode");
        grants.sweep();
        let left = vec!["plain.example".to_owned(), "www.example".to_owned()];
        assert_eq!(names(&grants), (Some(TLS_REQUIRE), left), "an expired name goes");
        grants.forget(PolicyId(1));
        assert_eq!(names(&grants), (None, vec![]), "a version no longer in force");
    }
}
