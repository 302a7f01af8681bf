//! A policy's `[network]` section as map entries: destination prefixes for
//! the LPM trie and unix socket names for the hash map.
//!
//! The trie answers a lookup with the longest matching prefix only, so each
//! prefix carries the port ranges of every shorter prefix of the same policy
//! that covers it: `10.0.0.0/8:80` and `10.1.0.0/16:443` make the /16 allow
//! both 80 and 443.

use std::{collections::HashMap, net::Ipv6Addr};

use enforcer_common::{
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
    /// `allow` or `listen`.
    pub key: &'static str,
    pub prefix: String,
}

/// The map entries of one policy.
#[derive(Debug, Default)]
pub struct NetRules {
    /// Prefix length (of the address, 0..=128) and key, with what it allows.
    pub prefixes: Vec<(u32, NetKey, NetPorts)>,
    pub unix: Vec<UnixKey>,
}

/// Builds the entries of `network` for policy `policy_id`: destinations,
/// then `listen` sources (under `NET_KEY_INBOUND`). Host name entries are
/// not here: their addresses come from the resolver.
pub fn build(network: &Network, policy_id: PolicyId) -> Result<NetRules, TooManyRanges> {
    let mut prefixes = prefixes(&network.allow, policy_id, false, "allow")?;
    prefixes.extend(self::prefixes(&network.listen, policy_id, true, "listen")?);
    let unix = network.unix.iter().map(|name| unix_key(name, policy_id)).collect();
    Ok(NetRules { prefixes, unix })
}

/// The trie entries of `entries`, keyed by `policy_id` and direction.
fn prefixes(
    entries: &[(Destination, Location)],
    policy_id: PolicyId,
    inbound: bool,
    key: &'static str,
) -> Result<Vec<(u32, NetKey, NetPorts)>, TooManyRanges> {
    // (address, prefix) -> ranges, and where the prefix was first written.
    let mut own: HashMap<(Ipv6Addr, u8), (Vec<PortRange>, &Location)> = HashMap::new();
    for (destination, at) in entries {
        let Target::Net { addr, prefix } = destination.target else { continue };
        let (first, last) = (*destination.ports.start(), *destination.ports.end());
        let range = PortRange { first, last, protos: destination.protos, pad: [0; 3] };
        own.entry((addr, prefix)).or_insert_with(|| (Vec::new(), at)).0.push(range);
    }
    let mut lengths: Vec<u8> = own.keys().map(|&(_, prefix)| prefix).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut prefixes = Vec::with_capacity(own.len());
    for (&(addr, prefix), (ranges, at)) in &own {
        let mut all = ranges.clone();
        for &shorter in lengths.iter().take_while(|&&l| l < prefix) {
            if let Some((covering, _)) = own.get(&(mask(addr, shorter), shorter)) {
                all.extend_from_slice(covering);
            }
        }
        let merged = merge(all);
        if merged.len() > NET_PORT_RANGES {
            return Err(TooManyRanges { at: (*at).clone(), key, prefix: prefix_text(addr, prefix) });
        }
        let mut ports = NetPorts::default();
        ports.ranges[..merged.len()].copy_from_slice(&merged);
        prefixes.push((u32::from(prefix), NetKey::new(policy_id, inbound, addr.octets()), ports));
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
        build(&policy.network.unwrap(), PolicyId(7))
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

    #[test]
    fn unix_keys_match_what_the_programs_build() {
        let rules = rules(&[]).unwrap();
        assert_eq!(&rules.unix[0].path[..12], b"/run/a.sock\0");
        assert_eq!(rules.unix[0].len, 0);
        assert_eq!(&rules.unix[1].path[..4], b"\0bus");
        assert_eq!(rules.unix[1].len, 4);
    }
}
