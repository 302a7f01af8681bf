//! The kernel's lines: decoding ring-buffer records into the denials (and
//! audited operations) auditors read, and the count of those lost.

use std::{
    borrow::Cow,
    cell::Cell,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_common::{
    budget::BUDGET_NEW_DESTINATIONS,
    events::{
        Action, BUDGET_DETAIL_BYTES, BudgetDetail, EVENT_EXE_TRUNCATED, EVENT_HEADER_BYTES, EVENT_PATH_FROM_FS_ROOT,
        EVENT_PATH_TRUNCATED, EventHeader, FLOOR_DETAIL_BYTES, FloorDetail, Kind, NET_DETAIL_BYTES, NetDetail, Op,
        Reason,
    },
    net::{self, SOCKET_CLASSES},
    tls::{TLS_DETAIL_BYTES, TlsDetail},
};
use schemars::JsonSchema;
use serde::Serialize;

/// One denial (or audited operation), as written out.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Event<'a> {
    #[schemars(with = "String")]
    pub ts: Timestamp,
    pub kind: &'static str,
    pub action: &'static str,
    pub pid: u32,
    pub tgid: u32,
    pub comm: Cow<'a, str>,
    pub exe: Option<&'a str>,
    pub cgroup_id: u64,
    pub cgroup: Option<&'a str>,
    pub policy: &'a str,
    /// Daemon: the version of the policy the event was judged by (counts
    /// the changes the daemon applied to that policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
    /// Daemon: the SHA-256 of that version's file (first 16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<&'a str>,
    /// File events: the operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    /// File events: the file; unix socket events: the socket's bound name
    /// (`@name` for an abstract one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
    #[serde(flatten)]
    pub net: Option<NetFields>,
    #[serde(flatten)]
    pub floor: Option<FloorFields>,
    #[serde(flatten)]
    pub budget: Option<BudgetFields>,
    #[serde(flatten)]
    pub tls: Option<TlsFields>,
    pub errno: u32,
    pub reason: &'static str,
    /// The path did not fit the programs' buffers; the part near the root is missing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    /// The hook gave no mount, so `path` starts at its filesystem's root.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_from_fs_root: bool,
}

/// What a network event says about the socket.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NetFields {
    /// The address family the caller used: `inet`, `inet6`, `unix`, ...
    pub family: Cow<'static, str>,
    /// `tcp`, `udp`, or the protocol number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Cow<'static, str>>,
    /// The destination; an IPv4-mapped IPv6 address as the IPv4 address it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub daddr: Option<IpAddr>,
    /// Inbound events: where the connection or datagram came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub saddr: Option<IpAddr>,
    /// Connect and sendmsg events: the destination port; inbound events:
    /// the agent's local port it was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Socket events: `stream`, `dgram`, `raw`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<&'static str>,
    /// Socket events: the policy's name for the refused class (`raw`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'static str>,
    /// Connect and sendmsg events: the host name the address was last
    /// resolved from by the enforcer's resolver, `null` if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[expect(clippy::option_option, reason = "absent (not a connect or sendmsg), null (never resolved), or the name")]
    pub resolved_from: Option<Option<String>>,
}

/// What a `budget_exceeded` event says about the budget: bytes for an
/// upload budget, destinations for the budget of new destinations.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BudgetFields {
    /// The budget as the policy names it: `*` or the host name of a
    /// `network.upload` entry, or `new_destinations` (`null` if the policy
    /// is no longer known).
    pub budget: Option<String>,
    /// Bytes sent under it in its current window, before this send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_used: Option<u64>,
    /// Bytes it allows per window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_limit: Option<u64>,
    /// Distinct destinations reached in its current window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destinations_used: Option<u64>,
    /// Distinct destinations it allows per window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destinations_limit: Option<u64>,
    /// Its window, in seconds.
    pub window_s: u64,
    /// Bytes the refused send carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_bytes: Option<u64>,
}

impl BudgetFields {
    /// The fields of `budget`, named `name` (if known).
    #[must_use]
    pub fn of(budget: &BudgetDetail, name: Option<String>) -> Self {
        let window_s = budget.window_ns / 1_000_000_000;
        if budget.index == BUDGET_NEW_DESTINATIONS {
            return Self {
                budget: name,
                bytes_used: None,
                bytes_limit: None,
                destinations_used: Some(budget.used),
                destinations_limit: Some(budget.limit),
                window_s,
                send_bytes: None,
            };
        }
        Self {
            budget: name,
            bytes_used: Some(budget.used),
            bytes_limit: Some(budget.limit),
            destinations_used: None,
            destinations_limit: None,
            window_s,
            send_bytes: Some(budget.size),
        }
    }
}

/// What a `sni_mismatch` event says about the ClientHello (the name granted
/// is its `resolved_from`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct TlsFields {
    /// The server name the ClientHello sent; `null` if none was read (no
    /// ClientHello, one without a name, or one that could not be read).
    pub sni: Option<String>,
}

/// What a floor event says beyond its operation.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FloorFields {
    /// Signals and ptrace: the process acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// `bpf`: the command (`BPF_PROG_LOAD` is 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_cmd: Option<u32>,
    /// `rlimit`: the resource (`RLIMIT_CPU` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<u32>,
    /// `tty_inject`: the ioctl (`TIOCSTI` is 0x5412 = 21522).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl: Option<u32>,
    /// `source_route`: the socket option or control message (`IP_OPTIONS`
    /// 4, `IP_RETOPTS` 7, `IPV6_RTHDR` 57; 0 when it could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub option: Option<u32>,
}

/// A count of events that were lost (never silently).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Lost {
    pub ts: String,
    pub kind: &'static str,
    pub count: u64,
}

/// Converts `bpf_ktime_get_boot_ns` stamps to wall-clock time.
pub struct Clock {
    /// The wall-clock time at boot, in nanoseconds since the Unix epoch.
    boot_epoch_ns: u64,
    /// The last second stamped and its text up to the fraction
    /// (`2026-12-06T18:05:12.`): a storm's events share their second.
    second: Cell<(u64, [u8; SECOND_BYTES])>,
}

/// `2026-12-06T18:05:12.`
const SECOND_BYTES: usize = 20;
/// `2026-12-06T18:05:12.123456Z`
const TIMESTAMP_BYTES: usize = SECOND_BYTES + 7;

/// An event's time: RFC 3339, UTC, to the microsecond, without an
/// allocation (a storm stamps hundreds of thousands a second).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; TIMESTAMP_BYTES]);

impl Timestamp {
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Clock {
    #[must_use]
    pub fn new() -> Self {
        let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let since_boot =
            Duration::new(u64::try_from(boot.tv_sec).unwrap_or(0), u32::try_from(boot.tv_nsec).unwrap_or(0));
        let boot_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().saturating_sub(since_boot);
        Self {
            boot_epoch_ns: u64::try_from(boot_epoch.as_nanos()).unwrap_or(0),
            second: Cell::new((u64::MAX, [0; SECOND_BYTES])),
        }
    }

    /// The wall-clock time of a kernel stamp (truncated to the microsecond).
    #[must_use]
    pub fn stamp(&self, boot_ns: u64) -> Timestamp {
        let ns = self.boot_epoch_ns.saturating_add(boot_ns);
        let (secs, micros) = (ns / 1_000_000_000, ns % 1_000_000_000 / 1000);
        let (cached, mut prefix) = self.second.get();
        if cached != secs {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
            prefix[..SECOND_BYTES - 1].copy_from_slice(&text.as_bytes()[..SECOND_BYTES - 1]);
            prefix[SECOND_BYTES - 1] = b'.';
            self.second.set((secs, prefix));
        }
        let mut text = [0; TIMESTAMP_BYTES];
        text[..SECOND_BYTES].copy_from_slice(&prefix);
        let mut rest = micros;
        for digit in text[SECOND_BYTES..TIMESTAMP_BYTES - 1].iter_mut().rev() {
            *digit = b'0' + u8::try_from(rest % 10).unwrap_or(0);
            rest /= 10;
        }
        text[TIMESTAMP_BYTES - 1] = b'Z';
        Timestamp(text)
    }

    /// The wall-clock time of a kernel stamp, for tests of [`Clock::stamp`].
    #[cfg(test)]
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.boot_epoch_ns + boot_ns)
    }

    #[must_use]
    pub fn now() -> String {
        humantime::format_rfc3339_micros(SystemTime::now()).to_string()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The raw fields of a record, before names are looked up.
#[derive(Debug)]
pub struct Record {
    pub header: EventHeader,
    /// File events: the file's path.
    pub path: String,
    /// The acting program, when the kernel could name it.
    pub exe: Option<String>,
    /// Network events.
    pub net: Option<NetDetail>,
    /// Floor events.
    pub floor: Option<FloorDetail>,
    /// `budget_exceeded` events.
    pub budget: Option<BudgetDetail>,
    /// `sni_mismatch` events.
    pub tls: Option<TlsDetail>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed event record ({0} bytes)")]
pub struct Malformed(usize);

/// Splits a ring-buffer record into its header and path.
pub fn decode(bytes: &[u8]) -> Result<Record, Malformed> {
    if bytes.len() < EVENT_HEADER_BYTES {
        return Err(Malformed(bytes.len()));
    }
    let header: EventHeader = bytemuck::pod_read_unaligned(&bytes[..EVENT_HEADER_BYTES]);
    let names = bytes.get(EVENT_HEADER_BYTES..).unwrap_or_default();
    let (path, rest) = names.split_at((header.path_len as usize).min(names.len()));
    let exe = &rest[..(header.exe_len as usize).min(rest.len())];
    let exe = (!exe.is_empty()).then(|| join_path(exe, header.flags & EVENT_EXE_TRUNCATED != 0));
    // A network event carries its NetDetail where a file event has its path.
    let kind = Kind::from_u8(header.kind);
    if kind.is_some_and(Kind::is_net) {
        // A budget event's BudgetDetail follows, a TLS event's TlsDetail.
        let more = match kind {
            Some(Kind::BudgetExceeded) => BUDGET_DETAIL_BYTES,
            Some(Kind::SniMismatch) => TLS_DETAIL_BYTES,
            _ => 0,
        };
        if path.len() != NET_DETAIL_BYTES + more {
            return Err(Malformed(bytes.len()));
        }
        let (net, more) = path.split_at(NET_DETAIL_BYTES);
        let net: NetDetail = bytemuck::pod_read_unaligned(net);
        let budget = (kind == Some(Kind::BudgetExceeded)).then(|| bytemuck::pod_read_unaligned(more));
        let tls = (kind == Some(Kind::SniMismatch)).then(|| bytemuck::pod_read_unaligned(more));
        return Ok(Record { header, path: String::new(), exe, net: Some(net), floor: None, budget, tls });
    }
    if kind == Some(Kind::Floor) {
        if path.len() != FLOOR_DETAIL_BYTES {
            return Err(Malformed(bytes.len()));
        }
        let floor: FloorDetail = bytemuck::pod_read_unaligned(path);
        return Ok(Record { header, path: String::new(), exe, net: None, floor: Some(floor), budget: None, tls: None });
    }
    let path = join_path(path, header.flags & EVENT_PATH_TRUNCATED != 0);
    Ok(Record { header, path, exe, net: None, floor: None, budget: None, tls: None })
}

/// Leaf-first NUL-terminated names to a `/`-separated path.
fn join_path(names: &[u8], truncated: bool) -> String {
    // One allocation: every event has a path or an exe, a storm thousands.
    let mut path = String::with_capacity(names.len() + 4);
    if truncated {
        path.push('…');
    }
    let start = path.len();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()).rev() {
        path.push('/');
        // `from_utf8_lossy` walks valid names chunk by chunk: check first.
        match std::str::from_utf8(name) {
            Ok(name) => path.push_str(name),
            Err(_) => path.push_str(&String::from_utf8_lossy(name)),
        }
    }
    if path.len() == start {
        path.push('/');
    }
    path
}

/// What userspace knows that the kernel record does not.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub clock: &'a Clock,
    pub policy: &'a str,
    /// Daemon: the policy's version and hash.
    pub version: Option<(u32, &'a str)>,
    pub cgroup: Option<&'a str>,
    /// The policy's upload budgets by index, as `network.upload` names them.
    pub budgets: &'a [(u16, String)],
}

impl Record {
    #[must_use]
    pub fn event<'a>(&'a self, ctx: Context<'a>) -> Event<'a> {
        let h = &self.header;
        let comm_len = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
        Event {
            ts: ctx.clock.stamp(h.boot_ns),
            kind: Kind::from_u8(h.kind).map_or("unknown", Kind::name),
            action: Action::from_u8(h.action).map_or("unknown", Action::name),
            pid: h.pid,
            tgid: h.tgid,
            comm: String::from_utf8_lossy(&h.comm[..comm_len]),
            exe: self.exe.as_deref(),
            cgroup_id: h.cgroup_id,
            cgroup: ctx.cgroup,
            policy: ctx.policy,
            policy_version: ctx.version.map(|(version, _)| version),
            policy_hash: ctx.version.map(|(_, hash)| hash),
            op: self.net.is_none().then(|| Op::from_u8(h.op).map_or("unknown", Op::name)),
            path: match (&self.net, &self.floor) {
                (Some(net), _) => unix_name(net).map(Cow::Owned),
                (None, Some(_)) => None,
                (None, None) => Some(Cow::Borrowed(&self.path)),
            },
            net: self.net.as_ref().map(|net| net_fields(Kind::from_u8(h.kind), net)),
            floor: self.floor.map(|floor| floor_fields(Op::from_u8(h.op), floor)),
            budget: self.budget.map(|budget| {
                let name = ctx.budgets.iter().find(|(index, _)| *index == budget.index).map(|(_, name)| name.clone());
                BudgetFields::of(&budget, name)
            }),
            tls: self.tls.as_ref().map(|tls| {
                let len = (tls.len as usize).min(tls.name.len());
                TlsFields { sni: (len != 0).then(|| String::from_utf8_lossy(&tls.name[..len]).into_owned()) }
            }),
            errno: h.errno,
            reason: Reason::from_u8(h.reason).map_or("unknown", Reason::name),
            path_truncated: h.flags & EVENT_PATH_TRUNCATED != 0,
            path_from_fs_root: h.flags & EVENT_PATH_FROM_FS_ROOT != 0,
        }
    }
}

fn floor_fields(op: Option<Op>, floor: FloorDetail) -> FloorFields {
    FloorFields {
        target_pid: (floor.target_pid != 0).then_some(floor.target_pid),
        signal: matches!(op, Some(Op::Signal | Op::Sigio)).then_some(floor.value),
        bpf_cmd: (op == Some(Op::Bpf)).then_some(floor.value),
        resource: (op == Some(Op::Rlimit)).then_some(floor.value),
        ioctl: (op == Some(Op::TtyInject)).then_some(floor.value),
        option: (op == Some(Op::SourceRoute)).then_some(floor.value),
    }
}

/// A unix socket's bound name: a path, or `@name` for an abstract one.
fn unix_name(net: &NetDetail) -> Option<String> {
    let name = net.unix_path.get(..usize::from(net.unix_len))?;
    match name.split_first() {
        None => None,
        Some((0, abstract_name)) => Some(format!("@{}", String::from_utf8_lossy(abstract_name).replace('\0', "@"))),
        Some(_) => {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Some(String::from_utf8_lossy(&name[..end]).into_owned())
        }
    }
}

fn net_fields(kind: Option<Kind>, net: &NetDetail) -> NetFields {
    let family = match net.family {
        net::AF_UNIX => "unix".into(),
        net::AF_INET => "inet".into(),
        net::AF_INET6 => "inet6".into(),
        net::AF_NETLINK => "netlink".into(),
        net::AF_PACKET => "packet".into(),
        other => other.to_string().into(),
    };
    let proto = match (net.family, net.protocol) {
        (net::AF_UNIX, _) => None,
        (net::AF_INET | net::AF_INET6, net::IPPROTO_TCP) => Some("tcp".into()),
        (net::AF_INET | net::AF_INET6, net::IPPROTO_UDP) => Some("udp".into()),
        (net::AF_INET | net::AF_INET6, net::IPPROTO_ICMP) => Some("icmp".into()),
        (net::AF_INET | net::AF_INET6, net::IPPROTO_ICMPV6) => Some("icmpv6".into()),
        (_, protocol) => Some(protocol.to_string().into()),
    };
    let destination = matches!(kind, Some(Kind::Connect | Kind::Sendmsg | Kind::BudgetExceeded | Kind::SniMismatch));
    let inbound = kind == Some(Kind::Inbound);
    let addr = (destination || inbound).then(|| {
        let addr = Ipv6Addr::from(net.addr);
        addr.to_ipv4_mapped().map_or(IpAddr::V6(addr), IpAddr::V4)
    });
    let (daddr, saddr) = if destination { (addr, None) } else { (None, addr) };
    let socket = matches!(kind, Some(Kind::Socket));
    let class_bit = net::socket_class(net.family, net.sock_type, net.protocol);
    NetFields {
        family,
        proto,
        daddr,
        saddr,
        dport: (destination || inbound).then_some(net.port),
        sock_type: socket.then_some(match net.sock_type {
            net::SOCK_STREAM => "stream",
            net::SOCK_DGRAM => "dgram",
            net::SOCK_RAW => "raw",
            4 => "rdm",
            5 => "seqpacket",
            10 => "packet",
            _ => "unknown",
        }),
        class: socket.then(|| SOCKET_CLASSES.iter().find(|c| c.1 == class_bit).map_or("unknown", |c| c.0)),
        resolved_from: destination.then_some(None),
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::policy::PolicyId;

    use super::*;

    #[test]
    fn joins_leaf_first_names() {
        assert_eq!(join_path(b"credentials\0.aws\0root\0", false), "/root/.aws/credentials");
        assert_eq!(join_path(b"", false), "/");
        assert_eq!(join_path(b"c\0b\0", true), "…/b/c");
        assert_eq!(join_path(b"a\xff\0b\0", false), "/b/a\u{fffd}");
    }

    #[test]
    fn decodes_a_record_into_the_contract_fields() {
        let header = EventHeader {
            boot_ns: 5,
            cgroup_id: 42,
            pid: 7,
            tgid: 7,
            policy_id: PolicyId(1),
            reserved: 0,
            errno: 1,
            path_len: 13,
            exe_len: 13,
            kind: Kind::FileWrite as u8,
            op: Op::Open as u8,
            action: Action::Deny as u8,
            reason: Reason::OutsideWriteTrees as u8,
            flags: 0,
            pad: [0; 7],
            comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let mut bytes = bytemuck::bytes_of(&header).to_vec();
        bytes.extend_from_slice(b".bashrc\0root\0bash\0bin\0usr\0");
        let clock = Clock::new();
        let record = decode(&bytes).unwrap();
        let event =
            record.event(Context { clock: &clock, policy: "p", version: None, cgroup: Some("/x"), budgets: &[] });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "file_write");
        assert_eq!(json["action"], "deny");
        assert_eq!(json["op"], "open");
        assert_eq!(json["path"], "/root/.bashrc");
        assert_eq!(json["comm"], "bash");
        assert_eq!(json["exe"], "/usr/bin/bash");
        assert_eq!(json["errno"], 1);
        assert_eq!(json["cgroup"], "/x");
        assert!(json.get("path_truncated").is_none());
        assert!(decode(&bytes[..10]).is_err());
    }
}
