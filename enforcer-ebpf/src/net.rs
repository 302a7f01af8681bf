//! Network enforcement: where an agent may connect and send, which sockets
//! it may create, which unix sockets it may reach.
//!
//! The cgroup programs (connect4/6, sendmsg4/6, recvmsg4/6, `sock_create`)
//! are attached to tagged cgroups only, so processes elsewhere never run
//! them. They judge by the policy of the current task's deepest tagged
//! ancestor (`tag::tag_by_ancestors`): static rules in an LPM trie, then
//! the addresses the enforcer's resolver granted; port-53 traffic goes to
//! that resolver instead. The LSM programs (`socket_create`,
//! `unix_stream_connect`, `unix_may_send`) run for every task and screen it like
//! the file hooks.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, bpf_sock_addr},
    helpers::generated::{bpf_get_retval, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{cgroup_sock, cgroup_sock_addr, lsm, map},
    maps::{HashMap, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::{LsmContext, SockAddrContext, SockContext},
};
use enforcer_common::{
    events::{Action, Kind, Reason},
    net::{
        AF_INET, AF_INET6, AF_UNIX, AGENT_SOCKETS_MAX, DNS_GRANTS_MAX, DNS_ORIGINS_MAX, DNS_PORT, DnsGrant,
        IPPROTO_TCP, IPPROTO_UDP, NET_KEY_POLICY_BITS, NET_RULES_MAX, NetKey, NetPorts, PROTO_TCP, PROTO_UDP,
        RESOLVERS_MAX, Resolver, SOCK_DGRAM, SOCK_STREAM, UNIX_PATH_BYTES, UNIX_RULES_MAX, UnixKey, socket_class,
    },
    policy::{PolicyId, TAG_AUDIT, TAG_NET, TAG_TLS, TagInfo},
};

use crate::{
    destinations,
    kernel::{
        Direct, MsghdrName, Probe, Read, SkDaddr, SkDport, SkFamily, SkProtocol, SkType, SocketSk, UnixAddressLen,
        UnixSockAddr, off,
    },
    report::{NetDenial, report_net},
    sensitive,
    tag::{self, Tagged},
    tls,
};

const EPERM: i32 = 1;
/// What a cgroup socket program returns to allow or to refuse (`EPERM`).
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[map]
static NET_RULES: LpmTrie<NetKey, NetPorts> = LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);

#[map]
static UNIX_RULES: HashMap<UnixKey, u8> = HashMap::with_max_entries(UNIX_RULES_MAX, 0);

#[map]
static DNS_GRANTS: HashMap<NetKey, DnsGrant> = HashMap::with_max_entries(DNS_GRANTS_MAX, 0);

#[map]
static RESOLVERS: HashMap<PolicyId, Resolver> = HashMap::with_max_entries(RESOLVERS_MAX, 0);

/// The IPv4 and IPv6 sockets agents created, by socket cookie: the socket
/// programs also run for untagged tasks (below a selector root, or given an
/// agent's socket), and only the latter are refused.
#[map]
static AGENT_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(AGENT_SOCKETS_MAX, 0);

/// Where a redirected UDP socket's DNS was headed, by socket cookie.
#[map]
static DNS_ORIGINS: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(DNS_ORIGINS_MAX, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct DnsOrigin {
    /// The server the caller addressed (context words: network order).
    addr: [u32; 4],
    port: u32,
    /// The resolver port its replies come from (context word).
    via_port: u32,
}

/// `127.0.0.1` and `::1` as context words (network order).
pub(crate) const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
pub(crate) const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
pub(crate) const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Whether the longest prefix of `key` in the rules allows `port` for
/// `proto` (`bits`: the key's matched length).
#[inline(always)]
pub(crate) fn rule_allows(key: &NetKey, bits: u32, port: u16, proto: u8) -> bool {
    NET_RULES.get(&Key::new(bits, *key)).is_some_and(|ports| ports.allows(port, proto))
}

/// Whether the resolver granted `key` (a grant key) for `port`, and the
/// grant has not expired.
#[inline(always)]
fn grant_allows(key: &NetKey, port: u16, proto: u8, now_boot_ns: u64) -> bool {
    // SAFETY: the value is only read, while the program runs.
    unsafe { DNS_GRANTS.get(key) }
        .is_some_and(|grant| grant.ports.allows(port, proto) && grant.expires_boot_ns > now_boot_ns)
}

/// Whether the policy of `info` may send to `addr` at `port`: a static
/// rule, or an address its resolver granted that has not expired.
#[inline(always)]
pub(crate) fn destination_allows(info: &TagInfo, addr: [u8; 16], port: u16, proto: u8, now_boot_ns: u64) -> bool {
    rule_allows(&info.net_key(false, addr), NET_KEY_POLICY_BITS + 128, port, proto)
        || grant_allows(&info.grant_key(addr), port, proto, now_boot_ns)
}

/// Whether an agent whose egress is locked (see `sensitive`) may send to
/// `addr` at `port`: its policy's `after_sensitive_read` entries, or an
/// address the resolver granted for a name there.
#[inline(always)]
pub(crate) fn locked_allows(info: &TagInfo, addr: [u8; 16], port: u16, proto: u8, now_boot_ns: u64) -> bool {
    rule_allows(&info.locked_net_key(addr), NET_KEY_POLICY_BITS + 128, port, proto)
        || grant_allows(&info.locked_grant_key(addr), port, proto, now_boot_ns)
}

/// Whether `port` is one of the ports of the resolver that answers
/// `policy_id`'s DNS.
#[inline(always)]
pub(crate) fn is_resolver_port(policy_id: PolicyId, port: u16) -> bool {
    // SAFETY: the value is only read, while the program runs.
    unsafe { RESOLVERS.get(&policy_id) }
        .is_some_and(|resolver| resolver.port == port || (resolver.locked_port == port && port != 0))
}

/// Whether `port` is where the resolver answers `policy_id`'s locked agents.
#[inline(always)]
fn is_locked_resolver_port(policy_id: PolicyId, port: u16) -> bool {
    // SAFETY: the value is only read, while the program runs.
    unsafe { RESOLVERS.get(&policy_id) }.is_some_and(|resolver| resolver.locked_port == port && port != 0)
}

/// What the event says about the socket.
#[derive(Clone, Copy)]
pub(crate) struct Detail {
    /// The destination as IPv6 words, in network order (IPv4 as
    /// `::ffff:a.b.c.d`); words, not bytes: zeroing a byte array compiles
    /// to a `memset` call, a byte loop in BPF.
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
}

/// Reports a refusal and turns it into the answer: `refused` unless the
/// policy only audits (`tag` is `None` when no policy could be found).
#[inline(always)]
fn refuse(
    tag: Option<&TagInfo>,
    kind: Kind,
    reason: Reason,
    detail: &Detail,
    unix: Option<&UnixName>,
    allow: i32,
    refused: i32,
) -> i32 {
    let audit = tag.is_some_and(|t| t.flags & TAG_AUDIT != 0);
    let (action, errno) = if audit { (Action::Audit, 0) } else { (Action::Deny, EPERM) };
    report_net(&NetDenial {
        policy_id: tag.map_or(PolicyId::NONE, TagInfo::policy_id),
        errno: errno as u32,
        kind,
        reason,
        action,
        addr: detail.addr,
        port: detail.port,
        family: detail.family,
        sock_type: detail.sock_type,
        protocol: detail.protocol,
        unix_path: unix.map_or(core::ptr::null(), |u| u.path),
        unix_len: unix.map_or(0, |u| u.len),
        // A null the compiler cannot see: next to the other zeros it
        // would make a `memset`.
        budget: opaque_zero() as usize as *const _,
    });
    if audit { allow } else { refused }
}

/// The protocol bit a destination rule must grant, or 0 for a socket whose
/// destinations the rules do not judge (raw, ICMP, SCTP: allowed or refused
/// as a whole when created, by their socket class).
#[inline(always)]
fn proto_bit(sock_type: u16, protocol: u16) -> u8 {
    match (sock_type, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) => PROTO_TCP,
        (SOCK_DGRAM, IPPROTO_UDP) => PROTO_UDP,
        _ => 0,
    }
}

/// Whether a program that ran before this one on the same operation has
/// refused it: the socket programs on two of the cgroup's ancestors (for a
/// moment while the daemon moves them, e.g. to a selector root created
/// later) judge alike, and the second stays silent. Before 5.18 (the
/// compat build) no program can read that verdict: both report.
#[inline(always)]
fn already_refused() -> bool {
    !crate::COMPAT && unsafe { bpf_get_retval() != 0 }
}

/// Judges a destination given to `connect` or `sendmsg` by a task whose
/// socket belongs to a tagged cgroup.
#[inline(always)]
fn judge_destination(ctx: &SockAddrContext, kind: Kind, v6: bool) -> i32 {
    if already_refused() {
        return REFUSE;
    }
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // Context fields must be read with loads of their own size.
    let read = |field: *const u32| unsafe { core::ptr::read_volatile(field) };
    let addr = if v6 {
        let word = |i: usize| read(unsafe { (&raw const (*sa).user_ip6).cast::<u32>().add(i) });
        [word(0), word(1), word(2), word(3)]
    } else {
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), read(unsafe { &raw const (*sa).user_ip4 })]
    };
    let detail = Detail {
        addr,
        port: u16::from_be(read(unsafe { &raw const (*sa).user_port }) as u16),
        family: read(unsafe { &raw const (*sa).user_family }) as u16,
        sock_type: read(unsafe { &raw const (*sa).type_ }) as u16,
        protocol: read(unsafe { &raw const (*sa).protocol }) as u16,
    };
    let Some(tag) = tag::tag_by_ancestors() else {
        // A socket made in an agent cgroup and handed to a task outside
        // it: there is no policy to judge by. Any other untagged task's is
        // none of ours.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        if unsafe { AGENT_SOCKETS.get(&cookie) }.is_none() {
            return ALLOW;
        }
        return refuse(None, kind, Reason::Untagged, &detail, None, ALLOW, REFUSE);
    };
    let info = tag.info;
    if info.flags & TAG_NET == 0 {
        return ALLOW;
    }
    let proto = proto_bit(detail.sock_type, detail.protocol);
    if proto == 0 {
        return ALLOW;
    }
    let locked = sensitive::locked(&tag);
    if detail.port == DNS_PORT
        // SAFETY: the value is only read, while the program runs.
        && let Some(resolver) = unsafe { RESOLVERS.get(&info.policy_id()) }
    {
        // A locked agent asks the resolver that answers only names in
        // `after_sensitive_read`.
        let port = if locked { resolver.locked_port } else { resolver.port };
        redirect_dns(ctx, v6, &addr, port, resolver.v6 != 0, proto == PROTO_UDP);
        return ALLOW;
    }
    // SAFETY: sixteen bytes either way.
    let addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(addr) };
    let (rule, grant, refusal) = if locked {
        (info.locked_net_key(addr), info.locked_grant_key(addr), Reason::EgressLocked)
    } else {
        (info.net_key(false, addr), info.grant_key(addr), Reason::NotAllowed)
    };
    if rule_allows(&rule, NET_KEY_POLICY_BITS + 128, detail.port, proto) {
        if !destinations::admit(&tag, &detail) {
            return REFUSE;
        }
        if info.flags & TAG_TLS != 0 {
            tls::forget(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk });
        }
        return ALLOW;
    }
    if !grant_allows(&grant, detail.port, proto, unsafe { bpf_ktime_get_boot_ns() }) {
        return refuse(Some(&info), kind, refusal, &detail, None, ALLOW, REFUSE);
    }
    if !destinations::admit(&tag, &detail) {
        return REFUSE;
    }
    // Granted for a name: its TLS name may be checked.
    match tls::judge_connect(ctx, &info, &grant, proto) {
        Some(reason) => refuse(Some(&info), kind, reason, &detail, None, ALLOW, REFUSE),
        None => ALLOW,
    }
}

/// Where a send on an IPv4 or IPv6 socket goes, as the `socket_sendmsg`
/// hook and the send counters (`budget`) see it.
#[derive(Clone, Copy)]
pub(crate) struct Send {
    pub detail: Detail,
    /// `PROTO_TCP`, `PROTO_UDP`, or 0 for a socket the destination rules do
    /// not judge (raw, ICMP, SCTP).
    pub proto: u8,
    /// The destination is the address the send names (a UDP datagram's, a
    /// TCP Fast Open connect's), not the socket's peer.
    pub named: bool,
}

impl Send {
    /// The send of `msg` on `socket` (a `struct socket`); `None` for a
    /// socket of another family. The destination is all zeros where there is
    /// none (an unconnected socket, a name of an unknown family: the send
    /// fails, or is judged by `connect4`/`connect6`, `sendmsg4`/`sendmsg6`).
    #[inline(always)]
    pub(crate) fn of(socket: *const u8, msg: *const u8) -> Option<Self> {
        let sk = unsafe { Direct::ptr::<SocketSk>(socket) };
        if sk.is_null() {
            return None;
        }
        let family = unsafe { Direct::get::<SkFamily>(sk) } as u16;
        if family != AF_INET && family != AF_INET6 {
            return None;
        }
        let (sock_type, protocol) = unsafe { (Direct::get::<SkType>(sk) as u16, Direct::get::<SkProtocol>(sk) as u16) };
        let proto = proto_bit(sock_type, protocol);
        let port = u16::from_be(unsafe { Direct::get::<SkDport>(sk) } as u16);
        let name = unsafe { Direct::ptr::<MsghdrName>(msg) };
        // A connected TCP socket ignores a name; UDP sends to it instead.
        let named = !name.is_null() && (proto == PROTO_UDP || port == 0);
        let zero = opaque_zero();
        let mut detail = Detail { addr: [zero; 4], port: zero as u16, family, sock_type, protocol };
        if named {
            (detail.addr, detail.port) = read_name(name);
        } else if port != 0 {
            detail.port = port;
            detail.addr = [0, 0, MAPPED, unsafe { Direct::get::<SkDaddr>(sk) } as u32];
            if family == AF_INET6 {
                let at = sk.wrapping_add(off!(sock_skc_v6_daddr));
                let read = unsafe { bpf_probe_read_kernel(detail.addr.as_mut_ptr().cast(), 16, at.cast()) };
                if read != 0 {
                    detail.addr = [zero; 4]; // unreadable: judged as `::`, which nothing allows
                }
            }
        }
        Some(Self { detail, proto, named })
    }

    /// The destination as the rules key it.
    #[inline(always)]
    pub(crate) fn addr_bytes(&self) -> [u8; 16] {
        // SAFETY: sixteen bytes either way.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(self.detail.addr) }
    }
}

/// The address and port in a send's name (`msg_name`: the kernel's copy of
/// the caller's `sockaddr_in` or `sockaddr_in6`); zeros for another family
/// or an unreadable one.
#[inline(always)]
fn read_name(name: *const u8) -> ([u32; 4], u16) {
    // family, port | flowinfo | address (IPv6), or family, port | address (IPv4)
    let mut words = [opaque_zero(); 6];
    if unsafe { bpf_probe_read_kernel(words.as_mut_ptr().cast(), 24, name.cast()) } != 0 {
        return ([opaque_zero(); 4], 0);
    }
    let family = words[0] as u16;
    let port = u16::from_be((words[0] >> 16) as u16);
    match family {
        AF_INET => ([0, 0, MAPPED, words[1]], port),
        AF_INET6 => ([words[2], words[3], words[4], words[5]], port),
        _ => ([opaque_zero(); 4], 0),
    }
}

/// A send on a connected IPv4 or IPv6 socket by an agent whose egress is
/// locked (the `socket_sendmsg` hook, for every way bytes are sent: `send`,
/// `write`, `sendmmsg`, `io_uring`; `sendfile` and `splice` from Linux 6.5):
/// its peer must be one `after_sensitive_read` allows, or a connection
/// opened before the secret read would carry it out. A datagram given an
/// address is judged by `sendmsg4`/`sendmsg6` instead.
#[inline(always)]
pub(crate) fn judge_locked_send(tag: &Tagged, send: &Send) -> i32 {
    let (detail, proto) = (&send.detail, send.proto);
    // Not connected: the send fails, or is TCP Fast Open's connect, which
    // `connect4`/`connect6` judge.
    if proto == 0 || send.named || detail.port == 0 {
        return 0;
    }
    let info = tag.info;
    let to_resolver = (detail.addr == [0, 0, MAPPED, LOOPBACK4] || detail.addr == LOOPBACK6)
        && is_locked_resolver_port(info.policy_id(), detail.port);
    if to_resolver || locked_allows(&info, send.addr_bytes(), detail.port, proto, unsafe { bpf_ktime_get_boot_ns() }) {
        return 0;
    }
    refuse_send(&info, Reason::EgressLocked, detail)
}

/// Refuses (or, auditing, reports) a send from the `socket_sendmsg` hook.
#[inline(always)]
pub(crate) fn refuse_send(info: &TagInfo, reason: Reason, detail: &Detail) -> i32 {
    refuse(Some(info), Kind::Sendmsg, reason, detail, None, 0, -EPERM)
}

/// Sends a DNS connect or datagram to the policy's resolver instead (at
/// `port`, on `::1` if it listens there, `resolver_v6`); for UDP, remembers
/// where it was headed so replies seem to come from there.
#[inline(always)]
fn redirect_dns(ctx: &SockAddrContext, v6: bool, addr: &[u32; 4], port: u16, resolver_v6: bool, udp: bool) {
    let sa = ctx.sock_addr;
    let port = u32::from(port.to_be());
    if udp {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        let user_port = unsafe { core::ptr::read_volatile(&raw const (*sa).user_port) };
        let origin = DnsOrigin { addr: *addr, port: user_port, via_port: port };
        let _ = DNS_ORIGINS.insert(&cookie, &origin, 0);
    }
    unsafe {
        if v6 {
            let words = if resolver_v6 { LOOPBACK6 } else { [0, 0, MAPPED, LOOPBACK4] };
            let ip6 = (&raw mut (*sa).user_ip6).cast::<u32>();
            for (i, word) in words.iter().enumerate() {
                ip6.add(i).write_volatile(*word);
            }
        } else {
            (&raw mut (*sa).user_ip4).write_volatile(LOOPBACK4);
        }
        (&raw mut (*sa).user_port).write_volatile(port);
    }
}

/// A reply from the resolver to a redirected UDP socket: named as coming
/// from the server the caller addressed (resolvers check that).
#[inline(always)]
fn restore_dns_origin(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let read = |field: *const u32| unsafe { core::ptr::read_volatile(field) };
    let from_loopback = if v6 {
        let word = |i: usize| read(unsafe { (&raw const (*sa).user_ip6).cast::<u32>().add(i) });
        let last = [word(0), word(1), word(2), word(3)];
        last == LOOPBACK6 || last == [0, 0, MAPPED, LOOPBACK4]
    } else {
        read(unsafe { &raw const (*sa).user_ip4 }) == LOOPBACK4
    };
    if !from_loopback {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let Some(origin) = (unsafe { DNS_ORIGINS.get(&cookie) }) else { return ALLOW };
    if read(unsafe { &raw const (*sa).user_port }) != origin.via_port {
        return ALLOW;
    }
    unsafe {
        if v6 {
            let ip6 = (&raw mut (*sa).user_ip6).cast::<u32>();
            for (i, word) in origin.addr.iter().enumerate() {
                ip6.add(i).write_volatile(*word);
            }
        } else {
            (&raw mut (*sa).user_ip4).write_volatile(origin.addr[3]);
        }
        (&raw mut (*sa).user_port).write_volatile(origin.port);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_dns_origin(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_dns_origin(&ctx, true)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_destination(&ctx, Kind::Connect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_destination(&ctx, Kind::Connect, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_destination(&ctx, Kind::Sendmsg, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_destination(&ctx, Kind::Sendmsg, true)
}

/// The socket class a task may create, judged by its policy.
#[inline(always)]
fn judge_socket(tag: &Tagged, family: u16, sock_type: u16, protocol: u16, allow: i32, refused: i32) -> i32 {
    let info = tag.info;
    if info.flags & TAG_NET == 0 {
        return allow;
    }
    let class = socket_class(family, sock_type, protocol);
    if class == 0 || info.flags & class != 0 {
        return allow;
    }
    let detail = socket_detail(family, sock_type, protocol);
    refuse(Some(&info), Kind::Socket, Reason::SocketClass, &detail, None, allow, refused)
}

/// IPv4 and IPv6 sockets (the kernel runs this for those families only;
/// on a kernel with BPF LSM, `socket_create` has judged every family first).
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sock = ctx.sock;
    let read = |field: *const u32| unsafe { core::ptr::read_volatile(field) } as u16;
    let (family, sock_type, protocol) =
        unsafe { (read(&raw const (*sock).family), read(&raw const (*sock).type_), read(&raw const (*sock).protocol)) };
    if already_refused() {
        return REFUSE;
    }
    // The creator is the current task: untagged, it is none of ours.
    let Some(tag) = tag::tag_by_ancestors() else { return ALLOW };
    let verdict = judge_socket(&tag, family, sock_type, protocol, ALLOW, REFUSE);
    if verdict == ALLOW {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
        let _ = AGENT_SOCKETS.insert(&cookie, &1, 0);
    }
    verdict
}

/// Every socket of every family (BPF LSM kernels). The caller's protocol 0
/// means the family's default, resolved here the way the kernel will.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let (family, sock_type, protocol, kern): (i32, i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if kern != 0 {
        return 0;
    }
    let (family, sock_type) = (family as u16, sock_type as u16);
    let protocol = match (family, sock_type, protocol) {
        (AF_INET | AF_INET6, SOCK_STREAM, 0) => IPPROTO_TCP,
        (AF_INET | AF_INET6, SOCK_DGRAM, 0) => IPPROTO_UDP,
        (_, _, protocol) => protocol as u16,
    };
    judge_socket(&tag, family, sock_type, protocol, 0, -EPERM)
}

/// A unix socket's bound name, read from the kernel.
struct UnixName {
    /// Kernel address of the name's bytes (`sun_path`).
    path: *const u8,
    /// Bytes of it.
    len: u32,
}

impl UnixName {
    /// The name `sock` (a `struct sock` of a unix socket) is bound to;
    /// `None` for an unbound socket (a socketpair's end).
    #[inline(always)]
    fn of(sock: *const u8) -> Option<Self> {
        let addr = unsafe { Probe::ptr::<UnixSockAddr>(sock) };
        if addr.is_null() {
            return None;
        }
        let len = unsafe { Probe::get::<UnixAddressLen>(addr) } as u32;
        // `len` counts `sun_family` (2 bytes) and the name.
        let name = addr.wrapping_add(off!(unix_address_name));
        let len = len.saturating_sub(2).min(UNIX_PATH_BYTES as u32);
        Some(Self { path: name.wrapping_add(2), len })
    }
}

/// Per-CPU room for a unix rule key (116 bytes, built without a `memset`).
#[map]
static UNIX_KEY: aya_ebpf::maps::PerCpuArray<UnixKey> = aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// Whether the policy allows the unix socket bound to `name`. A pathname
/// is compared up to its NUL; an abstract name (leading NUL) byte for byte,
/// its length included.
#[inline(always)]
fn unix_allowed(policy_id: PolicyId, name: &UnixName) -> bool {
    let Some(key) = UNIX_KEY.get_ptr_mut(0) else { return false };
    let key = unsafe { &mut *key };
    let words = key.path.as_mut_ptr().cast::<u32>();
    for i in 0..UNIX_PATH_BYTES / 4 {
        unsafe { words.add(i).write_volatile(0) };
    }
    let len = name.len;
    if len == 0 || len > UNIX_PATH_BYTES as u32 {
        return false;
    }
    let len = mask_127(len);
    if unsafe { bpf_probe_read_kernel(key.path.as_mut_ptr().cast(), len, name.path.cast()) } != 0 {
        return false;
    }
    key.policy_id = policy_id;
    key.reserved = 0;
    if key.path[0] == 0 {
        key.len = len;
    } else {
        // A pathname's bound length may or may not count its NUL.
        key.len = 0;
    }
    unsafe { UNIX_RULES.get(&*key) }.is_some()
}

/// Zero the compiler cannot see as a constant: a struct with a run of
/// known zeros compiles to a `memset` call, a byte loop in BPF.
#[inline(always)]
pub(crate) fn opaque_zero() -> u32 {
    let zero: u64;
    unsafe { core::arch::asm!("{0} = 0", out(reg) zero, options(pure, nomem, nostack)) };
    zero as u32
}

/// What a socket event says: no destination.
#[inline(always)]
fn socket_detail(family: u16, sock_type: u16, protocol: u16) -> Detail {
    let zero = opaque_zero();
    Detail { addr: [zero; 4], port: zero as u16, family, sock_type, protocol }
}

/// `value & 127`, in asm: the compiler drops a mask the checks before it
/// make redundant, and the verifier needs it to bound a read's size.
#[inline(always)]
pub fn mask_127(value: u32) -> u32 {
    let mut value = u64::from(value);
    unsafe { core::arch::asm!("{0} &= 127", inout(reg) value, options(pure, nomem, nostack)) };
    value as u32
}

/// Judges reaching the unix socket `other` (a `struct sock`).
#[inline(always)]
fn judge_unix(other: *const u8) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let info = tag.info;
    if info.flags & TAG_NET == 0 {
        return 0;
    }
    // An unbound peer was never reachable by name: a socketpair's other end.
    let Some(name) = UnixName::of(other) else { return 0 };
    if unix_allowed(info.policy_id(), &name) {
        return 0;
    }
    let zero = opaque_zero() as u16;
    let detail = socket_detail(AF_UNIX, zero, zero);
    refuse(Some(&info), Kind::UnixConnect, Reason::NotAllowed, &detail, Some(&name), 0, -EPERM)
}

/// `connect` of a stream or seqpacket unix socket; `other` is the listener.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    judge_unix(ctx.arg(1))
}

/// A datagram to a unix socket (`connect`, and every send); `other` is
/// the receiving `struct socket`.
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let other: *const u8 = ctx.arg(1);
    if other.is_null() {
        return 0;
    }
    let sock = unsafe { Probe::ptr::<crate::kernel::SocketSk>(other) };
    judge_unix(sock)
}
