//! The entries of `network.allow`: `CIDR:PORTS[/PROTO]`, `[IPv6-CIDR]:PORTS`,
//! `HOST:PORTS` with an optional `*.` wildcard label, alone or as the `to` of
//! a table with a `tls` mode. Parsing only; each
//! error is a message and a hint (the policy module adds the location).

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv6Addr},
    ops::RangeInclusive,
};

use enforcer_common::{
    net::{PROTO_TCP, PROTO_UDP},
    tls::{TLS_CHECK, TLS_REQUIRE},
};

/// Where an entry allows traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address prefix, as IPv6 (IPv4 as `::ffff:0:0/96` plus its prefix).
    Net { addr: Ipv6Addr, prefix: u8 },
    /// A DNS name; `wildcard`: any one label in front of `name`.
    Host { name: String, wildcard: bool },
}

/// One parsed `network.allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub target: Target,
    pub ports: RangeInclusive<u16>,
    /// `PROTO_*` bits: both unless the entry names one.
    pub protos: u8,
    /// How the TLS names of connections to a host's addresses are checked
    /// (`enforcer_common::tls`): `TLS_CHECK` unless the entry says; 0 (off)
    /// for an address prefix.
    pub tls: u8,
}

/// The `tls` of a host entry: `check` (a ClientHello must name a name
/// granted the address), `require` (and the connection must open with one),
/// or `off`.
pub fn parse_tls(mode: &str) -> Result<u8, EntryError> {
    match mode {
        "check" => Ok(TLS_CHECK),
        "require" => Ok(TLS_REQUIRE),
        "off" => Ok(0),
        other => fail(
            format!("tls `{other}` is not a mode"),
            "write tls = \"check\" (the default: a ClientHello must name a name that resolved to the address), \
             \"require\" (and every connection must open with one) or \"off\"",
        ),
    }
}

/// Why an entry is not valid, and what to write instead.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryError {
    pub message: String,
    pub hint: String,
}

fn fail<T>(message: impl Into<String>, hint: impl Into<String>) -> Result<T, EntryError> {
    Err(EntryError { message: message.into(), hint: hint.into() })
}

const FORMS: &str = "write `CIDR:PORTS[/tcp|/udp]`, e.g. \"10.0.0.0/8:443\", \"[2606:50c0::]/32:443\", \
\"api.github.com:443\", \"*.pypi.org:443\", \"127.0.0.1:8000-8999/tcp\"";

impl std::str::FromStr for Destination {
    type Err = EntryError;

    fn from_str(entry: &str) -> Result<Self, EntryError> {
        let entry = entry.trim();
        let (target, rest) = split_target(entry)?;
        let (ports, protos) = match rest.split_once('/') {
            Some((ports, proto)) => (ports, parse_proto(proto)?),
            None => (rest, PROTO_TCP | PROTO_UDP),
        };
        let target = parse_target(target)?;
        let tls = if matches!(target, Target::Host { .. }) { TLS_CHECK } else { 0 };
        Ok(Self { target, ports: parse_ports(ports)?, protos, tls })
    }
}

/// Splits at the colon before the ports (after a bracketed IPv6 prefix).
fn split_target(entry: &str) -> Result<(&str, &str), EntryError> {
    if let Some(inner) = entry.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return fail(format!("`{entry}`: `[` without `]`"), "write an IPv6 prefix as \"[2606:50c0::]/32:443\"");
        };
        let after = &inner[close + 1..];
        let Some((prefix, ports)) = after.split_once(':') else {
            return fail(format!("`{entry}` has no port"), FORMS);
        };
        // `[addr]/len:ports`, or `[addr/len]:ports`.
        let target = &entry[..close + 2 + prefix.len()];
        return Ok((target, ports));
    }
    match entry.rsplit_once(':') {
        Some((target, _)) if target.contains(':') => fail(
            format!("`{entry}`: an IPv6 address must be in brackets"),
            "write \"[2001:db8::]/32:443\" (the brackets keep the address's colons apart from the port's)",
        ),
        Some((target, ports)) => Ok((target, ports)),
        None => fail(format!("`{entry}` has no port"), FORMS),
    }
}

fn parse_proto(proto: &str) -> Result<u8, EntryError> {
    match proto {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        other => {
            fail(format!("unknown protocol `{other}`"), "the protocol is `tcp` or `udp`; leave it out to allow both")
        }
    }
}

fn parse_ports(ports: &str) -> Result<RangeInclusive<u16>, EntryError> {
    if ports == "*" {
        return Ok(1..=u16::MAX);
    }
    let hint = "ports are 1 to 65535: one port (443), a range (8000-8999) or `*` for all";
    let port = |text: &str| match text.parse::<u32>() {
        Ok(0) => fail("port 0 is not a destination port", hint),
        Ok(p) => u16::try_from(p).or_else(|_| fail(format!("port {p} is out of range"), hint)),
        Err(_) => fail(format!("`{text}` is not a port"), hint),
    };
    match ports.split_once('-') {
        None => port(ports).map(|p| p..=p),
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first > last {
                return fail(
                    format!("port range {first}-{last} is empty"),
                    "write the lower port first, e.g. 8000-8999",
                );
            }
            Ok(first..=last)
        }
    }
}

fn parse_target(target: &str) -> Result<Target, EntryError> {
    let bracketed = target.starts_with('[');
    // A policy can hold 100 000 entries: no copy unless there are brackets.
    let unbracketed = if bracketed { Cow::Owned(target.replace(['[', ']'], "")) } else { Cow::Borrowed(target) };
    let (addr, prefix) = match unbracketed.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (&*unbracketed, None),
    };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) if bracketed => fail(
            format!("`{target}`: brackets are for IPv6 addresses"),
            "write an IPv4 prefix without brackets: \"10.0.0.0/8:443\"",
        ),
        Ok(ip) => parse_prefix(target, ip, prefix),
        Err(_) if bracketed || prefix.is_some() || addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            fail(format!("`{target}` is not an IP address or prefix"), FORMS)
        }
        Err(_) => parse_host(addr),
    }
}

fn parse_prefix(target: &str, ip: IpAddr, prefix: Option<&str>) -> Result<Target, EntryError> {
    let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => bits,
        Some(text) => match text.parse::<u8>() {
            Ok(len) if len <= bits => len,
            _ => {
                return fail(
                    format!("`{target}`: bad prefix length `/{text}`"),
                    format!("a prefix length is 0 to {bits}"),
                );
            }
        },
    };
    let (addr, prefix) = match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 96 + len),
        IpAddr::V6(v6) => (v6, len),
    };
    let masked = mask(addr, prefix);
    if masked != addr {
        return fail(
            format!("`{target}` has bits set past its /{len} prefix"),
            format!("did you mean {}?", prefix_text(masked, prefix)),
        );
    }
    Ok(Target::Net { addr, prefix })
}

/// `addr` with every bit past `prefix` cleared.
#[must_use]
pub fn mask(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    Ipv6Addr::from(bits & mask)
}

/// A host name or `*.domain` wildcard as a policy writes it.
pub(crate) fn parse_host(host: &str) -> Result<Target, EntryError> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, name),
    };
    if name.contains('*') {
        return fail(
            format!("`{host}`: a wildcard may only be the whole first label"),
            "write \"*.pypi.org\" (any one label in front of pypi.org); `*` elsewhere is not allowed",
        );
    }
    let labels: Vec<&str> = name.split('.').collect();
    let valid_label = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !labels.iter().all(valid_label) {
        return fail(
            format!("`{host}` is not a valid host name"),
            "host names are labels of letters, digits and `-`, joined by dots",
        );
    }
    if wildcard && labels.len() < 2 {
        return fail(
            format!("`{host}`: a wildcard needs a domain of two labels or more"),
            "write \"*.example.com\", not \"*.com\"",
        );
    }
    Ok(Target::Host { name, wildcard })
}

/// Whether host `name` (a wildcard: `*.name`) covers `qname` (lower case,
/// no trailing dot): `*.pypi.org` matches exactly one label in front of
/// `pypi.org`.
#[must_use]
pub fn host_matches(name: &str, wildcard: bool, qname: &str) -> bool {
    if !wildcard {
        return qname == name;
    }
    qname
        .strip_suffix(name)
        .and_then(|front| front.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

/// A prefix as a policy writes it: `10.0.0.0/8` for IPv4 (kept as
/// `::ffff:0:0/96` plus its prefix), `[2606:50c0::]/32` otherwise.
#[must_use]
pub fn prefix_text(addr: Ipv6Addr, prefix: u8) -> String {
    match addr.to_ipv4_mapped() {
        Some(v4) if prefix >= 96 => format!("{v4}/{}", prefix - 96),
        _ => format!("[{addr}]/{prefix}"),
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Net { addr, prefix } => write!(f, "{}", prefix_text(*addr, *prefix))?,
            Target::Host { name, wildcard } => write!(f, "{}{name}", if *wildcard { "*." } else { "" })?,
        }
        match (*self.ports.start(), *self.ports.end()) {
            (1, u16::MAX) => write!(f, ":*"),
            (first, last) if first == last => write!(f, ":{first}"),
            (first, last) => write!(f, ":{first}-{last}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// An IPv4 address as the key space holds it.
    fn v4(addr: Ipv4Addr) -> Ipv6Addr {
        addr.to_ipv6_mapped()
    }

    fn parse(entry: &str) -> Destination {
        entry.parse().unwrap_or_else(|e: EntryError| panic!("{entry}: {} ({})", e.message, e.hint))
    }

    fn error(entry: &str) -> String {
        let e = entry.parse::<Destination>().unwrap_err();
        format!("{} / {}", e.message, e.hint)
    }

    #[test]
    fn parses_every_documented_form() {
        let d = parse("140.82.112.0/20:443");
        assert_eq!(d.target, Target::Net { addr: v4(Ipv4Addr::new(140, 82, 112, 0)), prefix: 116 });
        assert_eq!((d.ports, d.protos), (443..=443, PROTO_TCP | PROTO_UDP));
        let d = parse("[2606:50c0::]/32:443");
        assert_eq!(d.target, Target::Net { addr: "2606:50c0::".parse().unwrap(), prefix: 32 });
        let d = parse("[2606:50c0::/32]:443");
        assert_eq!(d.target, Target::Net { addr: "2606:50c0::".parse().unwrap(), prefix: 32 });
        assert_eq!(parse("127.0.0.1:8080").target, Target::Net { addr: v4(Ipv4Addr::LOCALHOST), prefix: 128 });
        let d = parse("10.0.0.0/8:1-1024/tcp");
        assert_eq!((d.ports, d.protos), (1..=1024, PROTO_TCP));
        assert_eq!(parse("[::1]:53/udp").protos, PROTO_UDP);
        assert_eq!(
            parse("API.GitHub.com.:443").target,
            Target::Host { name: "api.github.com".into(), wildcard: false }
        );
        assert_eq!(parse("*.pypi.org:443").target, Target::Host { name: "pypi.org".into(), wildcard: true });
        assert_eq!(parse("0.0.0.0/0:*").ports, 1..=65535);
    }

    #[test]
    fn refuses_bad_entries_with_hints() {
        assert!(error("10.0.0.0/33:443").contains("bad prefix length"), "{}", error("10.0.0.0/33:443"));
        assert!(error("10.0.0.1/8:443").contains("did you mean 10.0.0.0/8?"), "{}", error("10.0.0.1/8:443"));
        assert!(error("1.2.3.4:0").contains("port 0"));
        assert!(error("1.2.3.4:65536").contains("out of range"));
        assert!(error("1.2.3.4:9-1").contains("empty"));
        assert!(error("1.2.3.4:443/sctp").contains("unknown protocol `sctp`"));
        assert!(error("1.2.3.4").contains("has no port"));
        assert!(error("2606:50c0::1:443").contains("must be in brackets"));
        assert!(error("api.*.com:443").contains("whole first label"));
        assert!(error("*pypi.org:443").contains("whole first label"));
        assert!(error("*.com:443").contains("two labels"));
        assert!(error("1.2.3:443").contains("not an IP address"));
        assert!(error("[1.2.3.4]:443").contains("brackets are for IPv6"));
        assert!(error("exa mple.com:443").contains("not a valid host name"));
    }

    #[test]
    fn masks_prefixes() {
        assert_eq!(mask("2606:50c0:ffff::1".parse().unwrap(), 32), "2606:50c0::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(mask("::1".parse().unwrap(), 0), Ipv6Addr::UNSPECIFIED);
    }
}
