//! Network policy as the kernel sees it: destination rules in an LPM trie,
//! allowed unix socket names in a hash map, socket classes in tag flags.

use crate::policy::PolicyId;

/// Destination rules: an LPM trie keyed by [`NetKey`], valued [`NetPorts`].
pub const NET_RULES_MAP: &str = "NET_RULES";
/// Allowed unix socket names: a hash map keyed by [`UnixKey`].
pub const UNIX_RULES_MAP: &str = "UNIX_RULES";

/// Addresses resolved from allowed host names: a hash map keyed by the
/// exact address ([`NetKey`]), valued [`DnsGrant`].
pub const DNS_GRANTS_MAP: &str = "DNS_GRANTS";
/// The resolver each policy's DNS is redirected to: policy id -> [`Resolver`].
pub const RESOLVERS_MAP: &str = "RESOLVERS";

/// Resolved addresses at most, over all policies.
pub const DNS_GRANTS_MAX: u32 = 1 << 16;
/// Policies with a resolver at most.
pub const RESOLVERS_MAX: u32 = 256;
/// UDP sockets whose DNS was redirected, remembered so replies seem to come
/// from the server they were sent to (least recently used ones are dropped).
pub const DNS_ORIGINS_MAX: u32 = 1 << 14;

/// Sockets agents created, remembered so one handed to a task outside the
/// agent is refused there (least recently used ones are dropped).
pub const AGENT_SOCKETS_MAX: u32 = 1 << 16;

/// DNS port: connects and sends to it are redirected to the resolver.
pub const DNS_PORT: u16 = 53;

/// An address resolved from an allowed name: allowed for `ports` until
/// `expires_boot_ns` (`CLOCK_BOOTTIME`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DnsGrant {
    pub expires_boot_ns: u64,
    pub ports: NetPorts,
}

/// Where a policy's DNS goes: the enforcer's resolver on loopback
/// (127.0.0.1, and `::1` when `v6`), at `port`; an agent whose egress is
/// locked (a sensitive read) asks at `locked_port`, where only names in
/// `after_sensitive_read` are answered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Resolver {
    pub port: u16,
    pub v6: u16,
    pub locked_port: u16,
    pub pad: u16,
}

/// Destination prefixes at most, over all policies.
pub const NET_RULES_MAX: u32 = 1 << 18;
/// Unix socket names at most, over all policies.
pub const UNIX_RULES_MAX: u32 = 4096;

/// Port ranges one destination prefix can carry (its own and those of every
/// shorter prefix that covers it).
pub const NET_PORT_RANGES: usize = 16;

/// Bits of a [`NetKey`] before the address: the policy id, always matched.
pub const NET_KEY_POLICY_BITS: u32 = 32;
/// Set in a [`NetKey`]'s policy id for the policy's `listen` entries: the
/// address is a source allowed to connect in, the ports are local ones.
pub const NET_KEY_INBOUND: u32 = 1 << 31;
/// Set in a [`NetKey`]'s policy id for the policy's `after_sensitive_read`
/// entries (and the grants of names there): what an agent whose egress is
/// locked may still reach.
pub const NET_KEY_LOCKED: u32 = 1 << 30;

/// The data part of an LPM trie key: the policy id (always matched whole),
/// then the address as IPv6, IPv4 as `::ffff:a.b.c.d`, so an IPv4-mapped
/// IPv6 destination is judged exactly like the IPv4 one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetKey {
    /// Big-endian, like the address: the trie compares bytes in order.
    pub policy_id: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<NetKey>() == 20);

impl NetKey {
    /// The key of `addr` (IPv6 or IPv4-mapped) in `policy_id`'s outbound
    /// (`connect`, `sendmsg`) or `inbound` (`listen`) entries.
    #[inline]
    #[must_use]
    pub fn new(policy_id: PolicyId, inbound: bool, addr: [u8; 16]) -> Self {
        Self::from_word(u32::from(policy_id.0), inbound, addr)
    }

    /// The key of `addr` in `policy_id`'s `after_sensitive_read` entries.
    #[inline]
    #[must_use]
    pub fn locked(policy_id: PolicyId, addr: [u8; 16]) -> Self {
        Self::from_word(u32::from(policy_id.0) | NET_KEY_LOCKED, false, addr)
    }

    /// Whether it is one of the `after_sensitive_read` entries.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        u32::from_be_bytes(self.policy_id) & NET_KEY_LOCKED != 0
    }

    /// [`Self::new`] with the policy id as a `u32`.
    #[inline]
    #[must_use]
    pub(crate) fn from_word(policy: u32, inbound: bool, addr: [u8; 16]) -> Self {
        let direction = if inbound { NET_KEY_INBOUND } else { 0 };
        Self { policy_id: (policy | direction).to_be_bytes(), addr }
    }

    /// The policy the entry belongs to.
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "the id is the low 16 bits")]
    pub fn policy(&self) -> PolicyId {
        PolicyId(u32::from_be_bytes(self.policy_id) as u16)
    }
}

/// `PortRange::protos` bits.
pub const PROTO_TCP: u8 = 1 << 0;
pub const PROTO_UDP: u8 = 1 << 1;

/// Ports `first..=last` for the protocols in `protos`; `protos == 0` marks
/// an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub protos: u8,
    pub pad: [u8; 3],
}

/// What a destination prefix allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetPorts {
    pub ranges: [PortRange; NET_PORT_RANGES],
}
const _: () = assert!(core::mem::size_of::<NetPorts>() == 8 * NET_PORT_RANGES);

impl NetPorts {
    /// Whether `port` is allowed for `proto` (one `PROTO_*` bit). Used
    /// ranges come first (the builders keep them packed), so the first
    /// unused slot ends the search.
    #[expect(clippy::inline_always, reason = "BPF programs: no calls on the connect path")]
    #[inline(always)]
    #[must_use]
    pub fn allows(&self, port: u16, proto: u8) -> bool {
        let mut i = 0;
        while i < NET_PORT_RANGES {
            let range = &self.ranges[i];
            if range.protos == 0 {
                return false;
            }
            if range.protos & proto != 0 && range.first <= port && port <= range.last {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Longest unix socket name (`sun_path`).
pub const UNIX_PATH_BYTES: usize = 108;

/// An allowed unix socket: the name the listening socket was bound to
/// (`sun_path`, zero-padded; an abstract name starts with NUL), for a policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct UnixKey {
    pub policy_id: PolicyId,
    /// Zero.
    pub reserved: u16,
    /// Bytes of `path` in the bound address.
    pub len: u32,
    pub path: [u8; UNIX_PATH_BYTES],
}
const _: () = assert!(core::mem::size_of::<UnixKey>() == 116);

/// Socket classes a policy can allow by name; each is a `TagInfo::flags` bit.
/// Everything an agent ordinarily needs (unix, TCP and UDP over IPv4 and
/// IPv6, netlink route queries) is always allowed.
pub const SOCKET_CLASSES: &[(&str, u32, &str)] = &[
    ("raw", TAG_SOCK_RAW, "raw IP sockets (SOCK_RAW in AF_INET/AF_INET6)"),
    ("icmp", TAG_SOCK_ICMP, "ICMP datagram (ping) sockets"),
    ("packet", TAG_SOCK_PACKET, "AF_PACKET sockets (every frame on an interface)"),
    ("netlink", TAG_SOCK_NETLINK, "netlink protocols other than NETLINK_ROUTE"),
    ("sctp", TAG_SOCK_SCTP, "SCTP sockets"),
    ("mptcp", TAG_SOCK_MPTCP, "multipath TCP sockets"),
    ("other", TAG_SOCK_OTHER, "every other address family (vsock, AF_ALG, bluetooth, CAN, XDP...)"),
];

pub const TAG_SOCK_RAW: u32 = 1 << 8;
pub const TAG_SOCK_ICMP: u32 = 1 << 9;
pub const TAG_SOCK_PACKET: u32 = 1 << 10;
pub const TAG_SOCK_NETLINK: u32 = 1 << 11;
pub const TAG_SOCK_SCTP: u32 = 1 << 12;
pub const TAG_SOCK_MPTCP: u32 = 1 << 13;
pub const TAG_SOCK_OTHER: u32 = 1 << 14;

/// Address families and protocols the programs judge by.
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_NETLINK: u16 = 16;
pub const AF_PACKET: u16 = 17;
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_RAW: u16 = 3;
pub const IPPROTO_ICMP: u16 = 1;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
pub const IPPROTO_ICMPV6: u16 = 58;
pub const IPPROTO_SCTP: u16 = 132;
pub const IPPROTO_MPTCP: u16 = 262;
pub const NETLINK_ROUTE: u16 = 0;

/// The `TagInfo::flags` bit a socket of this family, type and protocol
/// needs, or 0 if every policy allows it. `protocol` is the resolved one
/// (the kernel's, not the caller's 0).
#[must_use]
pub const fn socket_class(family: u16, sock_type: u16, protocol: u16) -> u32 {
    match family {
        AF_UNIX => 0,
        AF_INET | AF_INET6 => match (sock_type, protocol) {
            (SOCK_RAW, _) => TAG_SOCK_RAW,
            (_, IPPROTO_ICMP | IPPROTO_ICMPV6) => TAG_SOCK_ICMP,
            (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP) => 0,
            (_, IPPROTO_SCTP) => TAG_SOCK_SCTP,
            (_, IPPROTO_MPTCP) => TAG_SOCK_MPTCP,
            // UDP-Lite and anything new: not judged by the destination rules'
            // protocols, so not allowed by them.
            _ => TAG_SOCK_OTHER,
        },
        AF_NETLINK if protocol == NETLINK_ROUTE => 0,
        AF_NETLINK => TAG_SOCK_NETLINK,
        AF_PACKET => TAG_SOCK_PACKET,
        _ => TAG_SOCK_OTHER,
    }
}

#[cfg(feature = "user")]
aya_pod!(NetKey, NetPorts, UnixKey, DnsGrant, Resolver);
