//! Inbound connections: who may connect to an agent's listeners and send
//! datagrams to its sockets. The connect and sendmsg programs judge where an
//! agent's data goes; data also leaves on a connection the other side opened
//! (the agent listens, an outside process connects, the agent answers with a
//! secret), so with a `[network]` section the other side is judged too.
//!
//! A `cgroup_skb/ingress` program on the agent's cgroups sees every packet
//! delivered to an agent's socket. It judges a TCP packet to a listening
//! socket (a connection request) and every UDP datagram, and lets the rest
//! through (replies on the agent's own connections, and everything else the
//! kernel will not deliver to a listener). Allowed: the agent's own
//! processes (the peer socket, found in the kernel's tables, belongs to the
//! same agent: test suites and dev servers on loopback), sources and ports a
//! `listen` entry allows, and for UDP replies from a destination the agent
//! may send to (its resolver included). The rest is dropped, with an event.

use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::generated::{
        bpf_ktime_get_boot_ns, bpf_sk_ancestor_cgroup_id, bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
        bpf_sk_release, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use enforcer_common::{
    events::Action,
    net::{
        AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, NET_KEY_POLICY_BITS, PROTO_TCP, PROTO_UDP, SOCK_DGRAM, SOCK_STREAM,
    },
    policy::{TAG_AUDIT, TAG_NET, TagInfo},
};

use crate::{
    net::{self, LOOPBACK4, LOOPBACK6, MAPPED},
    report::{InboundDenial, report_inbound},
    tag,
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const EPERM: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `__sk_buff::protocol` of IPv4 and IPv6 packets (`ETH_P_*`, network order).
const ETH_P_IP: u32 = 0x0800_u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86dd_u16.to_be() as u32;
/// `BPF_F_CURRENT_NETNS` for the socket lookups.
const CURRENT_NETNS: u64 = -1i64 as u64;

/// Where a packet comes from and goes to (addresses as IPv6 words in network
/// order, IPv4 as `::ffff:a.b.c.d`; ports in network order, 0 if unknown).
struct Flow {
    source: [u32; 4],
    dest: [u32; 4],
    source_port: u16,
    dest_port: u16,
    v6: bool,
}

#[cgroup_skb(ingress)]
pub fn inbound(ctx: SkBuffContext) -> i32 {
    judge(&ctx)
}

#[inline(always)]
fn judge(ctx: &SkBuffContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // Type and protocol are fields of a full socket only.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS;
    }
    let read = |field: *const u32| unsafe { core::ptr::read_volatile(field) };
    let (sock_type, protocol, state, local_port) = unsafe {
        (
            read(&raw const (*sk).type_) as u16,
            read(&raw const (*sk).protocol) as u16,
            read(&raw const (*sk).state),
            read(&raw const (*sk).src_port) as u16,
        )
    };
    let proto = match (sock_type, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) if state == TCP_LISTEN => PROTO_TCP,
        (SOCK_DGRAM, IPPROTO_UDP) => PROTO_UDP,
        _ => return PASS,
    };
    let Some((tagged, agent)) = tag::tag_of_ancestors(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) }) else {
        return PASS;
    };
    let info = tagged.info;
    if info.flags & TAG_NET == 0 {
        return PASS;
    }
    let Some(flow) = flow_of(ctx) else {
        // Unreadable headers: reported as from 0.0.0.0 (words, not a zeroed
        // run, which would compile to a `memset` call).
        let unknown = [0, 0, MAPPED, 0];
        return refuse(
            &info,
            skb,
            &Flow { source: unknown, dest: unknown, source_port: 0, dest_port: 0, v6: false },
            local_port,
            proto,
        );
    };
    if from_own_agent(ctx, &flow, proto, agent) || listen_allows(&info, &flow.source, local_port, proto) {
        return PASS;
    }
    if proto == PROTO_UDP && is_reply(&info, &flow) {
        return PASS;
    }
    refuse(&info, skb, &flow, local_port, proto)
}

/// Drops (or, in audit mode, passes) and reports.
#[inline(always)]
fn refuse(info: &TagInfo, skb: *mut __sk_buff, flow: &Flow, local_port: u16, proto: u8) -> i32 {
    let audit = info.flags & TAG_AUDIT != 0;
    report_inbound(&InboundDenial {
        policy_id: info.policy_id(),
        errno: if audit { 0 } else { EPERM },
        action: if audit { Action::Audit } else { Action::Deny },
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
        addr: flow.source,
        port: local_port,
        family: if flow.v6 { AF_INET6 } else { AF_INET },
        sock_type: if proto == PROTO_TCP { SOCK_STREAM } else { SOCK_DGRAM },
        protocol: if proto == PROTO_TCP { IPPROTO_TCP } else { IPPROTO_UDP },
    });
    if audit { PASS } else { DROP }
}

/// The packet's addresses and ports, from its IP and transport headers;
/// `None` if they cannot be read (the packet is then dropped). An IPv6
/// packet with extension headers has its ports left at 0 (its transport
/// header is further in): it can then only be allowed by a `listen` entry.
#[inline(always)]
fn flow_of(ctx: &SkBuffContext) -> Option<Flow> {
    let protocol = unsafe { core::ptr::read_volatile(&raw const (*ctx.skb.skb).protocol) };
    if protocol == ETH_P_IP {
        let head: [u32; 5] = ctx.load(0).ok()?;
        let header_len = ((u32::from_be(head[0]) >> 24) & 0xf) as usize * 4;
        let ports: u32 = ctx.load(header_len & 0x3c).ok()?;
        let [sport_hi, sport_lo, dport_hi, dport_lo] = ports.to_ne_bytes();
        return Some(Flow {
            source: [0, 0, MAPPED, head[3]],
            dest: [0, 0, MAPPED, head[4]],
            source_port: u16::from_ne_bytes([sport_hi, sport_lo]),
            dest_port: u16::from_ne_bytes([dport_hi, dport_lo]),
            v6: false,
        });
    }
    if protocol == ETH_P_IPV6 {
        let head: [u32; 10] = ctx.load(0).ok()?;
        let next = (u32::from_be(head[1]) >> 8) & 0xff;
        let (source_port, dest_port) = if next == u32::from(IPPROTO_TCP) || next == u32::from(IPPROTO_UDP) {
            let ports: u32 = ctx.load(40).ok()?;
            let [a, b, c, d] = ports.to_ne_bytes();
            (u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d]))
        } else {
            (0, 0)
        };
        return Some(Flow {
            source: [head[2], head[3], head[4], head[5]],
            dest: [head[6], head[7], head[8], head[9]],
            source_port,
            dest_port,
            v6: true,
        });
    }
    None
}

/// Whether the socket that sent the packet (the kernel's own lookup, as if
/// the reply were arriving there) belongs to the same agent.
#[inline(always)]
fn from_own_agent(ctx: &SkBuffContext, flow: &Flow, proto: u8, agent: u64) -> bool {
    if flow.source_port == 0 {
        return false;
    }
    // Every byte the lookup reads (`size` of them) is written below.
    let mut tuple = core::mem::MaybeUninit::<bpf_sock_tuple>::uninit();
    let at = tuple.as_mut_ptr();
    // SAFETY: field writes through a raw pointer to our own stack slot.
    let size = unsafe {
        if flow.v6 {
            let v6 = &raw mut (*at).__bindgen_anon_1.ipv6;
            (&raw mut (*v6).saddr).write(flow.dest);
            (&raw mut (*v6).daddr).write(flow.source);
            (&raw mut (*v6).sport).write(flow.dest_port);
            (&raw mut (*v6).dport).write(flow.source_port);
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
        } else {
            let v4 = &raw mut (*at).__bindgen_anon_1.ipv4;
            (&raw mut (*v4).saddr).write(flow.dest[3]);
            (&raw mut (*v4).daddr).write(flow.source[3]);
            (&raw mut (*v4).sport).write(flow.dest_port);
            (&raw mut (*v4).dport).write(flow.source_port);
            size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
        }
    };
    let skb = ctx.skb.skb.cast();
    let peer = unsafe {
        if proto == PROTO_TCP {
            bpf_sk_lookup_tcp(skb, at, size as u32, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(skb, at, size as u32, CURRENT_NETNS, 0)
        }
    };
    if peer.is_null() {
        return false;
    }
    let same = tag::tag_of_ancestors(|level| unsafe { bpf_sk_ancestor_cgroup_id(peer.cast(), level) })
        .is_some_and(|(_, id)| id == agent);
    unsafe { bpf_sk_release(peer.cast()) };
    same
}

/// Whether a `listen` entry of the policy allows `source` to reach `port`.
#[inline(always)]
fn listen_allows(info: &TagInfo, source: &[u32; 4], port: u16, proto: u8) -> bool {
    let key = info.net_key(true, words_to_bytes(source));
    net::rule_allows(&key, NET_KEY_POLICY_BITS + 128, port, proto)
}

/// Whether a UDP datagram is a reply from where the agent may send: a
/// destination its rules or its resolver's grants allow, or the resolver.
#[inline(always)]
fn is_reply(info: &TagInfo, flow: &Flow) -> bool {
    let port = u16::from_be(flow.source_port);
    if port == 0 {
        return false;
    }
    let from_loopback = flow.source == [0, 0, MAPPED, LOOPBACK4] || flow.source == LOOPBACK6;
    if from_loopback && net::is_resolver_port(info.policy_id(), port) {
        return true;
    }
    net::destination_allows(info, words_to_bytes(&flow.source), port, PROTO_UDP, unsafe { bpf_ktime_get_boot_ns() })
}

#[inline(always)]
fn words_to_bytes(words: &[u32; 4]) -> [u8; 16] {
    // SAFETY: sixteen bytes either way.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(*words) }
}
