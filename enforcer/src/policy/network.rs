//! A policy's `[network]` section as map entries: destination prefixes for
//! the LPM trie and unix socket names for the hash map.
//!
//! The trie answers a lookup with the longest matching prefix only, so each
//! prefix carries the port ranges of every shorter prefix of the same policy
//! that covers it: `10.0.0.0/8:80` and `10.1.0.0/16:443` make the /16 allow
//! both 80 and 443.

use std::{cmp::Ordering, net::Ipv6Addr};

use enforcer_common::{
    budget::{BUDGET_NEW_DESTINATIONS, Budget, budget_key, split_budget_key},
    net::{NET_PORT_RANGES, NetKey, NetPorts, PortRange, UNIX_PATH_BYTES, UnixKey},
    policy::PolicyId,
};

use crate::{
    policy::destinations::{Destination, Target, mask, prefix_text},
    policy::{Location, Network},
};

#[derive(Debug, thiserror::Error)]
#[error(
    "{at}: error: network.{key}: the prefix {prefix} ends up with more than {NET_PORT_RANGES} separate port ranges \
     (its own and those of wider prefixes that cover it)\n  hint: merge ports into ranges, or allow fewer separate \
     ports for it"
)]
pub struct TooManyRanges {
    pub at: Location,
    /// `allow`, `after_sensitive_read` or `listen`.
    pub key: &'static str,
    pub prefix: String,
}

/// The map entries of one policy.
#[derive(Debug, Default)]
pub struct NetRules {
    /// Prefix length (of the address, 0..=128) and key, with what it
    /// allows; sorted by key and length (see [`NetChange::between`]).
    pub prefixes: Vec<(u32, NetKey, NetPorts)>,
    pub unix: Vec<UnixKey>,
    /// Upload budgets and the budget of new destinations, by `budget_key`
    /// (of the version's own id).
    pub budgets: Vec<(u32, Budget)>,
    /// Some host entry has its TLS names checked (`tls`).
    pub tls: bool,
}

/// Builds the entries of `network` for policy `policy_id`: destinations,
/// then `listen` sources (under `NET_KEY_INBOUND`), keyed by `net_id`;
/// unix socket names keyed by `policy_id`. Host name entries are not here:
/// their addresses come from the resolver.
pub fn build(network: &Network, policy_id: PolicyId, net_id: PolicyId) -> Result<NetRules, TooManyRanges> {
    let mut prefixes = prefixes(&network.allow, net_id, Set::Allow)?;
    // Sorted already: `after_sensitive_read` keys have `NET_KEY_LOCKED`
    // set, `listen` keys the direction bit above it.
    prefixes.extend(self::prefixes(&network.after_sensitive_read, net_id, Set::AfterSensitiveRead)?);
    prefixes.extend(self::prefixes(&network.listen, net_id, Set::Listen)?);
    debug_assert!(prefixes.is_sorted_by_key(order));
    let unix = network.unix.iter().map(|name| unix_key(name, policy_id)).collect();
    let mut budgets = crate::policy::budgets::kernel_entries(&network.upload, policy_id);
    if let Some(budget) = &network.new_destinations {
        budgets.push((budget_key(policy_id, BUDGET_NEW_DESTINATIONS), budget.kernel()));
    }
    Ok(NetRules { prefixes, unix, budgets, tls: network.checks_tls_names() })
}

impl NetRules {
    /// Whether it has upload budgets: every send of its agents is counted.
    #[must_use]
    pub fn counts_sends(&self) -> bool {
        self.budgets.iter().any(|&(key, _)| split_budget_key(key).1 != BUDGET_NEW_DESTINATIONS)
    }
}

/// The order of [`NetRules::prefixes`].
fn order(&(prefix, key, _): &(u32, NetKey, NetPorts)) -> ([u8; 4], [u8; 16], u32) {
    (key.policy_id, key.addr, prefix)
}

/// How the destinations of one net id go from one version's rules to the
/// next's in place, in two steps around the table swap:
///
/// - before it, `narrow`: entries the new version drops go, and entries it
///   changes allow only what both versions allow;
/// - after it, `widen`: changed entries get the new version's ports, new
///   entries go in.
///
/// Every address sees at most what both versions allow in between (fail
/// closed): its longest match is then an entry both have, whose ports are
/// cut to what both allow, and each version's own answer for the address
/// carries that entry's ports, as a longer prefix carries those of the
/// prefixes covering it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetChange {
    /// Entries to remove, with their old ports (to put back on a rollback).
    pub removed: Vec<(u32, NetKey, NetPorts)>,
    /// Changed entries: the ports both allow, and the old ones.
    pub narrowed: Vec<(u32, NetKey, NetPorts, NetPorts)>,
    /// Changed and new entries, with the new ports.
    pub widened: Vec<(u32, NetKey, NetPorts)>,
}

impl NetChange {
    /// The change from `old` to `new` (both sorted, as [`build`] makes them).
    #[must_use]
    pub fn between(old: &[(u32, NetKey, NetPorts)], new: &[(u32, NetKey, NetPorts)]) -> Self {
        let mut change = Self::default();
        let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
        loop {
            // Which list's next entry comes first (an exhausted list's never).
            let first = match (old.peek(), new.peek()) {
                (None, None) => return change,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(was), Some(now)) => order(was).cmp(&order(now)),
            };
            match first {
                Ordering::Less => change.removed.extend(old.next()),
                Ordering::Greater => change.widened.extend(new.next()),
                Ordering::Equal => {
                    if let (Some(&was), Some(&now)) = (old.next(), new.next())
                        && was.2 != now.2
                    {
                        change.narrowed.push((was.0, was.1, both_allow(&was.2, &now.2), was.2));
                        change.widened.push(now);
                    }
                }
            }
        }
    }

    /// Whether nothing changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.narrowed.is_empty() && self.widened.is_empty()
    }
}

/// What both `a` and `b` allow, as far as it fits an entry: the ranges left
/// out only make it allow less.
fn both_allow(a: &NetPorts, b: &NetPorts) -> NetPorts {
    let used = |ports: &NetPorts| ports.ranges.iter().take_while(|r| r.protos != 0).copied().collect::<Vec<_>>();
    let mut both = Vec::new();
    for x in used(a) {
        for y in used(b) {
            let (first, last, protos) = (x.first.max(y.first), x.last.min(y.last), x.protos & y.protos);
            if first <= last && protos != 0 {
                both.push(PortRange { first, last, protos, pad: [0; 3] });
            }
        }
    }
    let both = merge(both);
    let mut ports = NetPorts::default();
    for (slot, range) in ports.ranges.iter_mut().zip(both) {
        *slot = range;
    }
    ports
}

/// A range an entry gives its prefix, and where the entry was written.
type OwnRange<'a> = ((Ipv6Addr, u8), PortRange, &'a Location);

/// Which of a policy's lists of destinations.
#[derive(Clone, Copy)]
enum Set {
    Allow,
    AfterSensitiveRead,
    Listen,
}

impl Set {
    fn key(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::AfterSensitiveRead => "after_sensitive_read",
            Self::Listen => "listen",
        }
    }

    fn net_key(self, net_id: PolicyId, addr: [u8; 16]) -> NetKey {
        match self {
            Self::Allow => NetKey::new(net_id, false, addr),
            Self::AfterSensitiveRead => NetKey::locked(net_id, addr),
            Self::Listen => NetKey::new(net_id, true, addr),
        }
    }
}

/// The trie entries of `entries`, keyed by `net_id` and the list they are
/// in, sorted by address and length. A reload compiles every entry of a
/// changed file (10 000 and more), so this allocates per prefix only when
/// it has more than one range.
fn prefixes(
    entries: &[(Destination, Location)],
    net_id: PolicyId,
    set: Set,
) -> Result<Vec<(u32, NetKey, NetPorts)>, TooManyRanges> {
    // Sorted by prefix: a prefix's ranges are neighbours, the first written
    // first.
    let mut own: Vec<OwnRange<'_>> = entries
        .iter()
        .filter_map(|(destination, at)| {
            let Target::Net { addr, prefix } = destination.target else { return None };
            let (first, last) = (*destination.ports.start(), *destination.ports.end());
            Some(((addr, prefix), PortRange { first, last, protos: destination.protos, pad: [0; 3] }, at))
        })
        .collect();
    own.sort_by_key(|&(prefix, _, _)| prefix);
    let groups: Vec<&[OwnRange<'_>]> = own.chunk_by(|a, b| a.0 == b.0).collect();
    let ranges_of = |prefix: (Ipv6Addr, u8)| {
        let group = groups.binary_search_by_key(&prefix, |group| group[0].0).ok()?;
        Some(groups[group].iter().map(|&(_, range, _)| range))
    };
    let mut lengths: Vec<u8> = groups.iter().map(|group| group[0].0.1).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut prefixes = Vec::with_capacity(groups.len());
    for group in &groups {
        let ((addr, prefix), first_range, at) = group[0];
        let covering = lengths.iter().take_while(|&&l| l < prefix).filter_map(|&l| ranges_of((mask(addr, l), l)));
        let mut covering = covering.peekable();
        let mut ports = NetPorts::default();
        if group.len() == 1 && covering.peek().is_none() {
            ports.ranges[0] = first_range;
        } else {
            let all: Vec<PortRange> = group.iter().map(|&(_, range, _)| range).chain(covering.flatten()).collect();
            let merged = merge(all);
            if merged.len() > NET_PORT_RANGES {
                return Err(TooManyRanges { at: at.clone(), key: set.key(), prefix: prefix_text(addr, prefix) });
            }
            ports.ranges[..merged.len()].copy_from_slice(&merged);
        }
        prefixes.push((u32::from(prefix), set.net_key(net_id, addr.octets()), ports));
    }
    Ok(prefixes)
}

/// Merges ranges per protocol: overlapping or adjacent ranges of the same
/// protocols become one.
fn merge(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort_unstable_by_key(|r| (r.protos, r.first, r.last));
    let mut merged: Vec<PortRange> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.protos == range.protos && u32::from(range.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// The key the programs build for a socket bound to `name` (see
/// `net::UnixKey`): a path up to its end, zero-padded; an abstract name
/// (`@name`: NUL then the name) with its length.
#[must_use]
pub fn unix_key(name: &str, policy_id: PolicyId) -> UnixKey {
    let mut key = UnixKey { policy_id, reserved: 0, len: 0, path: [0; UNIX_PATH_BYTES] };
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            let bytes = abstract_name.as_bytes();
            key.path[1..=bytes.len()].copy_from_slice(bytes);
            key.len = u32::try_from(bytes.len() + 1).unwrap_or(u32::MAX);
        }
        None => key.path[..name.len()].copy_from_slice(name.as_bytes()),
    }
    key
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use enforcer_common::net::{PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::policy;

    fn rules(allow: &[&str]) -> Result<NetRules, TooManyRanges> {
        let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        let text =
            format!("name = \"x\"\n[network]\nallow = [{}]\nunix = [\"/run/a.sock\", \"@bus\"]\n", list.join(", "));
        let (policy, _) = policy::parse(&text, Path::new("p.toml")).unwrap();
        build(&policy.network.unwrap(), PolicyId(7), PolicyId(7))
    }

    fn ports_of(rules: &NetRules, addr: &str, prefix: u32) -> NetPorts {
        let addr: Ipv6Addr = match addr.parse::<std::net::Ipv4Addr>() {
            Ok(v4) => v4.to_ipv6_mapped(),
            Err(_) => addr.parse().unwrap(),
        };
        rules.prefixes.iter().find(|(p, k, _)| *p == prefix && k.addr == addr.octets()).unwrap().2
    }

    #[test]
    fn narrower_prefixes_inherit_the_ports_of_wider_ones() {
        let rules =
            rules(&["10.0.0.0/8:80", "10.1.0.0/16:443/tcp", "10.1.2.3:53/udp", "11.0.0.0/8:22", "api.github.com:443"])
                .unwrap();
        assert_eq!(rules.prefixes.len(), 4, "host names are not prefixes");
        let narrow = ports_of(&rules, "10.1.2.3", 128);
        assert!(narrow.allows(53, PROTO_UDP) && narrow.allows(443, PROTO_TCP) && narrow.allows(80, PROTO_UDP));
        assert!(!narrow.allows(443, PROTO_UDP) && !narrow.allows(22, PROTO_TCP), "{narrow:?}");
        let wide = ports_of(&rules, "10.0.0.0", 104);
        assert!(wide.allows(80, PROTO_TCP) && !wide.allows(443, PROTO_TCP));
        assert_eq!(rules.prefixes[0].1.policy_id, 7u32.to_be_bytes());
    }

    #[test]
    fn after_sensitive_read_entries_are_keyed_apart_and_sorted() {
        let text = "name = \"x\"\n[files]\nsensitive = [\"/e\"]\n[network]\nallow = [\"10.0.0.0/8:443\"]\n\
                    after_sensitive_read = [\"10.1.0.0/16:443\", \"9.9.9.9:53\"]\nlisten = [\"*:8080\"]\n";
        let (policy, _) = policy::parse(text, Path::new("p.toml")).unwrap();
        let rules = build(&policy.network.unwrap(), PolicyId(7), PolicyId(9)).unwrap();
        let words: Vec<u32> = rules.prefixes.iter().map(|(_, k, _)| u32::from_be_bytes(k.policy_id)).collect();
        let locked = 9 | enforcer_common::net::NET_KEY_LOCKED;
        assert_eq!(words, [9, locked, locked, 9 | enforcer_common::net::NET_KEY_INBOUND]);
        assert!(rules.prefixes.is_sorted_by_key(order), "NetChange::between needs them sorted");
        let (_, key, ports) = rules.prefixes[2];
        assert!(key.is_locked() && ports.allows(443, PROTO_TCP) && !ports.allows(53, PROTO_UDP));
        assert_eq!(key, NetKey::locked(PolicyId(9), "::ffff:10.1.0.0".parse::<Ipv6Addr>().unwrap().octets()));
    }

    #[test]
    fn ranges_merge_and_too_many_is_an_error_at_the_entry() {
        let merged = rules(&["1.2.3.4:80", "1.2.3.4:81-90", "1.2.3.4:85-100"]).unwrap();
        let ports = ports_of(&merged, "1.2.3.4", 128);
        assert_eq!((ports.ranges[0].first, ports.ranges[0].last), (80, 100));
        assert_eq!(ports.ranges[1].protos, 0);
        let many: Vec<String> = (1..=17).map(|p| format!("1.2.3.4:{}", p * 10)).collect();
        let e = rules(&many.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err().to_string();
        assert!(
            e.starts_with("p.toml:3:10: error: network.allow: the prefix 1.2.3.4/32 ends up with more than 16"),
            "{e}"
        );
    }

    /// What the trie answers for `addr`: the ports of its longest prefix.
    fn trie_answer(entries: &[(u32, NetKey, NetPorts)], addr: Ipv6Addr) -> NetPorts {
        let hit = entries.iter().filter(|(prefix, key, _)| {
            let prefix = u8::try_from(*prefix).unwrap();
            mask(addr, prefix).octets() == key.addr
        });
        hit.max_by_key(|(prefix, _, _)| *prefix).map(|&(_, _, ports)| ports).unwrap_or_default()
    }

    /// The trie after [`NetRules::narrow`]'s step.
    fn narrowed(old: &[(u32, NetKey, NetPorts)], change: &NetChange) -> Vec<(u32, NetKey, NetPorts)> {
        let mut entries: Vec<_> = old.iter().filter(|entry| !change.removed.contains(entry)).copied().collect();
        for &(prefix, key, both, _) in &change.narrowed {
            let entry = entries.iter_mut().find(|(p, k, _)| *p == prefix && *k == key).unwrap();
            entry.2 = both;
        }
        entries
    }

    fn widened(mut entries: Vec<(u32, NetKey, NetPorts)>, change: &NetChange) -> Vec<(u32, NetKey, NetPorts)> {
        for &(prefix, key, ports) in &change.widened {
            match entries.iter_mut().find(|(p, k, _)| *p == prefix && *k == key) {
                Some(entry) => entry.2 = ports,
                None => entries.push((prefix, key, ports)),
            }
        }
        entries.sort_unstable_by_key(order);
        entries
    }

    #[test]
    fn a_new_version_changes_only_the_entries_that_differ() {
        let old = rules(&["10.0.0.0/8:80", "10.1.2.3:443", "10.9.9.9:22", "10.5.5.5:53/udp"]).unwrap();
        let new = rules(&["10.0.0.0/8:80", "10.1.2.3:443-444", "10.7.7.7:22", "10.5.5.5:53/udp"]).unwrap();
        let change = NetChange::between(&old.prefixes, &new.prefixes);
        assert_eq!(change.removed.len(), 1, "{change:?}");
        assert_eq!(change.removed[0].1.addr, ports_key(&old, "10.9.9.9").addr);
        assert_eq!(change.narrowed.len(), 1, "{change:?}");
        let both = change.narrowed[0].2;
        assert!(both.allows(443, PROTO_TCP) && both.allows(80, PROTO_TCP) && !both.allows(444, PROTO_TCP));
        assert_eq!(change.widened.len(), 2, "the changed entry and the new one: {change:?}");
        assert!(NetChange::between(&new.prefixes, &new.prefixes).is_empty());
        assert_eq!(widened(narrowed(&old.prefixes, &change), &change), new.prefixes);
    }

    fn ports_key(rules: &NetRules, addr: &str) -> NetKey {
        let addr = addr.parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped();
        rules.prefixes.iter().find(|(_, k, _)| k.addr == addr.octets()).unwrap().1
    }

    /// Between the two steps, every address is allowed at most what both
    /// versions allow it: prefixes nested, dropped, added and changed.
    #[test]
    fn between_the_steps_an_address_gets_at_most_what_both_versions_allow() {
        let old = rules(&[
            "10.0.0.0/8:80",
            "10.1.0.0/16:443",
            "10.1.2.0/24:8000-8100",
            "10.1.2.3:22",
            "10.2.0.0/16:25",
            "0.0.0.0/0:53/udp",
        ])
        .unwrap();
        let new = rules(&[
            "10.0.0.0/8:80-81",
            "10.1.2.0/24:8050-8200",
            "10.1.2.3:22/tcp",
            "10.1.2.4:9000",
            "10.2.0.0/16:25",
            "10.2.3.0/24:587",
        ])
        .unwrap();
        let change = NetChange::between(&old.prefixes, &new.prefixes);
        let between = narrowed(&old.prefixes, &change);
        assert_eq!(widened(between.clone(), &change), new.prefixes);
        let probes = ["10.1.2.3", "10.1.2.4", "10.1.2.9", "10.1.9.9", "10.2.3.4", "10.2.9.9", "10.9.9.9", "8.8.8.8"];
        let ports = [22, 25, 53, 80, 81, 443, 587, 8000, 8060, 8150, 9000];
        for probe in probes {
            let addr = probe.parse::<std::net::Ipv4Addr>().unwrap().to_ipv6_mapped();
            let (was, now, mid) =
                (trie_answer(&old.prefixes, addr), trie_answer(&new.prefixes, addr), trie_answer(&between, addr));
            for port in ports {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    if mid.allows(port, proto) {
                        assert!(was.allows(port, proto) && now.allows(port, proto), "{probe}:{port}/{proto}");
                    }
                }
            }
        }
    }

    #[test]
    fn unix_keys_match_what_the_programs_build() {
        let rules = rules(&[]).unwrap();
        assert_eq!(&rules.unix[0].path[..12], b"/run/a.sock\0");
        assert_eq!(rules.unix[0].len, 0);
        assert_eq!(&rules.unix[1].path[..4], b"\0bus");
        assert_eq!(rules.unix[1].len, 4);
    }
}
