//! Which names a policy lets an agent resolve, and for which ports.

use enforcer_common::net::{NET_PORT_RANGES, NetPorts, PortRange};

use crate::{
    policy::budgets::{self, CountBudget, Located},
    policy::destinations::{Destination, Target, host_matches},
    policy::{Location, Network},
};

/// One `HOST:PORTS` entry of `network.allow`.
#[derive(Clone, Debug)]
struct HostRule {
    name: String,
    wildcard: bool,
    range: PortRange,
    /// `Destination::tls`.
    tls: u8,
}

/// The host name entries of one policy: of `network.allow`, and of
/// `network.after_sensitive_read` (`locked`).
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    rules: NameList,
    locked: NameList,
    /// `network.upload`: the budget each name's addresses count against.
    budgets: Vec<Located>,
    /// `network.dns_names`.
    dns_names: Option<CountBudget>,
}

/// The host name entries of one list.
#[derive(Clone, Debug, Default)]
struct NameList {
    rules: Vec<HostRule>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{at}: error: network.{key}: host name `{name}` ends up with more than {NET_PORT_RANGES} separate port ranges\n  \
     hint: merge its ports into ranges"
)]
pub struct TooManyHostRanges {
    at: Location,
    key: &'static str,
    name: String,
}

impl HostRules {
    /// The host name entries of `network`; refused if a name could match
    /// more separate port ranges than a grant holds.
    pub fn of(network: &Network) -> Result<Self, TooManyHostRanges> {
        Ok(Self {
            rules: NameList::of(&network.allow, "allow")?,
            locked: NameList::of(&network.after_sensitive_read, "after_sensitive_read")?,
            budgets: network.upload.clone(),
            dns_names: network.dns_names,
        })
    }

    /// How many distinct names one agent may have asked upstream per window.
    #[must_use]
    pub fn dns_names(&self) -> Option<CountBudget> {
        self.dns_names
    }

    /// The upload budget beyond `*` that the addresses of `qname` count
    /// against, if any.
    #[must_use]
    pub fn budget_for(&self, qname: &str) -> Option<u16> {
        budgets::index_for(&self.budgets, qname)
    }

    /// What the policy allows for addresses of `qname` (lower case, no
    /// trailing dot); `None` if the name is not allowed at all.
    #[must_use]
    pub fn ports_for(&self, qname: &str) -> Option<NetPorts> {
        self.rules.ports_for(qname)
    }

    /// How the TLS names of connections to addresses of `qname` are checked
    /// (`locked`: under `after_sensitive_read`): the strictest mode of the
    /// entries that match it.
    #[must_use]
    pub fn tls_for(&self, qname: &str, locked: bool) -> u8 {
        let list = if locked { &self.locked } else { &self.rules };
        list.rules
            .iter()
            .filter(|rule| host_matches(&rule.name, rule.wildcard, qname))
            .map(|r| r.tls)
            .max()
            .unwrap_or(0)
    }

    /// What `after_sensitive_read` allows for addresses of `qname`.
    #[must_use]
    pub fn locked_ports_for(&self, qname: &str) -> Option<NetPorts> {
        self.locked.ports_for(qname)
    }
}

impl NameList {
    fn of(entries: &[(Destination, Location)], key: &'static str) -> Result<Self, TooManyHostRanges> {
        let mut rules = Vec::new();
        for (destination, at) in entries {
            let Target::Host { name, wildcard } = &destination.target else { continue };
            let (first, last) = (*destination.ports.start(), *destination.ports.end());
            let range = PortRange { first, last, protos: destination.protos, pad: [0; 3] };
            let rule = HostRule { name: name.clone(), wildcard: *wildcard, range, tls: destination.tls };
            rules.push((rule, at));
        }
        let this = Self { rules: rules.iter().map(|(rule, _)| rule.clone()).collect() };
        // Checked per distinct name (a policy may list thousands of names).
        let mut checked = std::collections::HashSet::new();
        for (rule, at) in &rules {
            let probe = if rule.wildcard { format!("x.{}", rule.name) } else { rule.name.clone() };
            if checked.insert(probe.clone()) && this.ranges(&probe).len() > NET_PORT_RANGES {
                return Err(TooManyHostRanges { at: (*at).clone(), key, name: rule.name.clone() });
            }
        }
        Ok(this)
    }

    fn ports_for(&self, qname: &str) -> Option<NetPorts> {
        let ranges = self.ranges(qname);
        if ranges.is_empty() {
            return None;
        }
        let mut ports = NetPorts::default();
        for (slot, range) in ports.ranges.iter_mut().zip(ranges) {
            *slot = range;
        }
        Some(ports)
    }

    fn ranges(&self, qname: &str) -> Vec<PortRange> {
        let mut ranges: Vec<PortRange> = self.rules.iter().filter(|r| r.matches(qname)).map(|r| r.range).collect();
        ranges.sort_unstable_by_key(|r| (r.protos, r.first, r.last));
        ranges.dedup();
        ranges
    }
}

impl HostRule {
    fn matches(&self, qname: &str) -> bool {
        host_matches(&self.name, self.wildcard, qname)
    }
}

/// Merges the ports of two grants of one address (two names may share it).
#[must_use]
pub fn merge_ports(a: &NetPorts, b: &NetPorts) -> NetPorts {
    let mut all: Vec<PortRange> = a.ranges.iter().chain(&b.ranges).filter(|r| r.protos != 0).copied().collect();
    all.sort_unstable_by_key(|r| (r.protos, r.first, r.last));
    all.dedup();
    let mut merged = NetPorts::default();
    // Past the slots, allow less rather than more: the grant is cut, never widened.
    for (slot, range) in merged.ranges.iter_mut().zip(all) {
        *slot = range;
    }
    merged
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use enforcer_common::net::{PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::policy;

    fn rules(allow: &str) -> HostRules {
        let text = format!("name = \"x\"\n[network]\nallow = [{allow}]\n");
        HostRules::of(&policy::parse(&text, Path::new("p.toml")).unwrap().0.network.unwrap()).unwrap()
    }

    #[test]
    fn names_after_a_sensitive_read_are_their_own_list() {
        let text = "name = \"x\"\n[files]\nsensitive = [\"/e\"]\n[network]\nallow = [\"github.com:443\", \
                    \"*.pypi.org:443\"]\nafter_sensitive_read = [\"pypi.org:443\"]\n";
        let rules = HostRules::of(&policy::parse(text, Path::new("p.toml")).unwrap().0.network.unwrap()).unwrap();
        assert!(rules.ports_for("github.com").is_some() && rules.locked_ports_for("github.com").is_none());
        assert!(rules.ports_for("pypi.org").is_none());
        assert!(rules.locked_ports_for("pypi.org").is_some_and(|p| p.allows(443, PROTO_TCP)));
    }

    #[test]
    fn names_and_one_label_wildcards_match() {
        let rules = rules("\"api.github.com:443\", \"*.pypi.org:443/tcp\", \"*.pypi.org:80\", \"10.0.0.0/8:53\"");
        assert!(rules.ports_for("api.github.com").unwrap().allows(443, PROTO_UDP));
        assert!(rules.ports_for("github.com").is_none());
        assert!(rules.ports_for("evil.api.github.com").is_none());
        let files = rules.ports_for("files.pypi.org").unwrap();
        assert!(files.allows(443, PROTO_TCP) && files.allows(80, PROTO_UDP) && !files.allows(443, PROTO_UDP));
        assert!(rules.ports_for("pypi.org").is_none(), "the wildcard needs a label");
        assert!(rules.ports_for("a.b.pypi.org").is_none(), "one label only");
        assert!(rules.ports_for("xpypi.org").is_none());
    }
}
