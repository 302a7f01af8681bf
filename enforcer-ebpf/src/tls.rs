//! TLS names (`tls` on a host entry of `network.allow`): a TCP connection to
//! an address the resolver granted for a name must open with a ClientHello
//! that names one of the names granted that address. This closes "allowed
//! CDN address, other site".
//!
//! - `connect4`/`connect6` mark a TCP socket allowed by such a grant
//!   (socket storage: the grant, the mode) and refuse UDP there (QUIC's
//!   handshake cannot be judged);
//! - `tls_established` (`sock_ops`, on the tagged cgroups) puts the socket in
//!   `TLS_HELLO` when the connection is established, and takes it out at
//!   the first acknowledgement after its first bytes passed: from then on
//!   its sends take the plain TCP path again;
//! - `tls_hello` (`sk_msg` on `TLS_HELLO`) judges the first bytes, after
//!   the kernel copied them: it holds them back (corks) until the first TLS
//!   record is whole, reads the ClientHello's server name, and looks it up
//!   among the names granted the address. A refusal is `EACCES` to the
//!   sender, for that send and every later one;
//! - `socket_sendmsg` (BPF LSM) refuses bytes sent before the socket is in
//!   `TLS_HELLO` (TCP Fast Open data, a write racing the connect's end):
//!   they would leave unjudged.

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, bpf_sock, sk_action::SK_DROP, sk_action::SK_PASS,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_probe_read_kernel_buf,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_map_delete_elem, bpf_msg_cork_bytes,
            bpf_msg_pull_data, bpf_sk_storage_get,
        },
    },
    macros::{btf_map, map, sk_msg, sock_ops},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use enforcer_common::{
    events::Reason,
    net::{DNS_GRANTS_MAX, NET_KEY_POLICY_BITS, NetKey, PROTO_TCP, PROTO_UDP},
    policy::{TAG_AUDIT, TAG_TLS, TagInfo},
    tls::{
        TLS_HELLO_MAX, TLS_JUDGING, TLS_NAME_BYTES, TLS_NAMES_MAX, TLS_PASSED, TLS_PENDING, TLS_RECORD_MAX,
        TLS_REFUSED, TLS_REQUIRE, TlsNameKey, TlsSocket,
    },
};

use crate::{
    net,
    report::{TlsDenial, report_tls},
    sensitive,
    tag::Tagged,
};

/// Each socket's check, from its connect on.
#[btf_map]
static TLS_STATE: SkStorage<TlsSocket> = SkStorage::new();

/// The strictest mode of the names granted each address, by grant key.
#[map]
static TLS_ADDRS: HashMap<NetKey, u8> = HashMap::with_max_entries(DNS_GRANTS_MAX, 0);

/// The names granted each address.
#[map]
static TLS_NAMES: HashMap<TlsNameKey, u8> = HashMap::with_max_entries(TLS_NAMES_MAX, BPF_F_NO_PREALLOC);

/// The connections whose first bytes are judged, by socket cookie.
#[map]
static TLS_HELLO: SockHash<u64> = SockHash::with_max_entries(TLS_HELLO_MAX, 0);

/// The first record, copied out of the message to be read at any offset.
#[repr(C)]
struct Record {
    bytes: [u8; RECORD_BUF],
}
/// A power of two above `TLS_RECORD_MAX`: an offset masked with
/// `RECORD_BUF - 1` is always inside.
const RECORD_BUF: usize = 1 << 15;
const _: () = assert!(TLS_RECORD_MAX as usize + 8 <= RECORD_BUF);

#[map]
static RECORD: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NAME_KEY: PerCpuArray<TlsNameKey> = PerCpuArray::with_max_entries(1, 0);

/// Set by userspace once a policy with checked names is loaded: until then
/// a send by a task in no agent pays nothing more here.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.tls")]
static mut TLS_IN_FORCE: u64 = 0;

/// Whether some policy loaded checks TLS names.
#[inline(always)]
pub fn in_force() -> bool {
    unsafe { (&raw const TLS_IN_FORCE).read_volatile() != 0 }
}

#[inline(always)]
fn state_of(sk: *mut bpf_sock, create: bool) -> Option<&'static mut TlsSocket> {
    let flags = if create { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    let map = (&raw const TLS_STATE).cast_mut().cast();
    unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags).cast::<TlsSocket>().as_mut() }
}

/// A connect allowed by the grant `grant` of `info`'s policy: the reason to
/// refuse it, if any. A TCP socket is marked for its first bytes to be
/// judged; UDP is refused where the names are checked.
#[inline(always)]
pub(crate) fn judge_connect(ctx: &SockAddrContext, info: &TagInfo, grant: &NetKey, proto: u8) -> Option<Reason> {
    if info.flags & TAG_TLS == 0 {
        return None;
    }
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: the value is only read, while the program runs.
    let Some(&mode) = (unsafe { TLS_ADDRS.get(grant) }) else {
        // A socket that connects anew (after a failed connect) is judged
        // by its new destination.
        forget(sk);
        return None;
    };
    if proto == PROTO_UDP {
        return Some(Reason::QuicRefused);
    }
    let Some(state) = state_of(sk, true) else { return Some(Reason::TlsUncheckable) };
    state.grant = *grant;
    state.state = TLS_PENDING;
    state.mode = mode;
    state.audit = u8::from(info.flags & TAG_AUDIT != 0);
    state.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    state.policy_id = info.policy_id();
    state.port = u16::from_be(unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port) } as u16);
    state.family = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_family) } as u8;
    None
}

/// Drops `sk`'s check, if it has one (it connects where none applies).
#[inline(always)]
pub(crate) fn forget(sk: *mut bpf_sock) {
    if let Some(state) = state_of(sk, false) {
        state.state = 0;
    }
}

/// Whether a send on `sk` (a `struct sock` the verifier knows the type of)
/// must be refused: it would leave unjudged (see the module's comment).
#[inline(always)]
pub(crate) fn send_unjudged(sk: *const u8) -> bool {
    state_of(sk.cast_mut().cast(), false).is_some_and(|state| state.state == TLS_PENDING)
}

/// Whether TCP connections to `addr`:`port` by the agent of `tag` have
/// their TLS names checked: TCP Fast Open's connect, which
/// `connect4`/`connect6` mark only after the `socket_sendmsg` hook ran.
/// As there, a static rule that allows it comes first: it marks nothing.
#[inline(always)]
pub(crate) fn checks(tag: &Tagged, addr: [u8; 16], port: u16) -> bool {
    let info = &tag.info;
    let (rule, grant) = if sensitive::locked(tag) {
        (info.locked_net_key(addr), info.locked_grant_key(addr))
    } else {
        (info.net_key(false, addr), info.grant_key(addr))
    };
    // SAFETY: the value is only read, while the program runs.
    unsafe { TLS_ADDRS.get(&grant) }.is_some() && !net::rule_allows(&rule, NET_KEY_POLICY_BITS + 128, port, PROTO_TCP)
}

/// Puts an established checked connection in `TLS_HELLO`; takes it out
/// once its first bytes passed.
#[sock_ops]
pub fn tls_established(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_RTT_CB {
        return 1;
    }
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let Some(state) = state_of(sk, false) else { return 1 };
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if state.state != TLS_PENDING {
            return 1;
        }
        // Failing, it stays pending: its sends are refused.
        if TLS_HELLO.update(&mut cookie, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST)).is_ok() {
            state.state = TLS_JUDGING;
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
        }
    } else if state.state == TLS_PASSED {
        let map = (&raw const TLS_HELLO).cast_mut().cast();
        unsafe { bpf_map_delete_elem(map, (&raw const cookie).cast()) };
        let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
    }
    1
}

/// What the first bytes get.
enum Verdict {
    Pass,
    /// Hold the bytes until this many are sent.
    Wait(u32),
    Refuse(Reason),
}

/// Judges the first bytes of a checked connection.
#[sk_msg]
pub fn tls_hello(ctx: SkMsgContext) -> u32 {
    let sk = unsafe { (*ctx.msg).__bindgen_anon_3.sk };
    let Some(state) = state_of(sk, false) else { return SK_DROP };
    if state.state == TLS_PASSED {
        return SK_PASS;
    }
    if state.state != TLS_JUDGING {
        return SK_DROP;
    }
    match first_bytes(&ctx, state) {
        Verdict::Pass => {
            state.state = TLS_PASSED;
            SK_PASS
        }
        Verdict::Wait(bytes) => {
            unsafe { bpf_msg_cork_bytes(ctx.msg, bytes) };
            SK_PASS
        }
        Verdict::Refuse(reason) => {
            report_tls(&TlsDenial { state, reason, name: NAME_KEY.get_ptr(0).unwrap_or(core::ptr::null()) });
            if state.audit != 0 {
                state.state = TLS_PASSED;
                return SK_PASS;
            }
            state.state = TLS_REFUSED;
            SK_DROP
        }
    }
}

const CONTENT_HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
/// Extensions read at most before the server name: more is refused (a
/// browser sends about twenty).
const EXTENSIONS_MAX: usize = 64;

#[inline(always)]
fn first_bytes(ctx: &SkMsgContext, state: &TlsSocket) -> Verdict {
    let size = ctx.size();
    let Some(key) = NAME_KEY.get_ptr_mut(0) else { return Verdict::Refuse(Reason::TlsUncheckable) };
    let key = unsafe { &mut *key };
    key.len = 0;
    if size == 0 {
        return Verdict::Pass;
    }
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, size.min(5), 0) } != 0 {
        return Verdict::Refuse(Reason::TlsUncheckable);
    }
    let Some(first) = packet_byte(ctx, 0) else { return Verdict::Refuse(Reason::TlsUncheckable) };
    if first != CONTENT_HANDSHAKE {
        return if state.mode == TLS_REQUIRE { Verdict::Refuse(Reason::TlsNoName) } else { Verdict::Pass };
    }
    if size < 5 {
        return Verdict::Wait(5);
    }
    let (Some(high), Some(low)) = (packet_byte(ctx, 3), packet_byte(ctx, 4)) else {
        return Verdict::Refuse(Reason::TlsUncheckable);
    };
    let record = 5 + (u32::from(high) << 8 | u32::from(low));
    if record > TLS_RECORD_MAX {
        return Verdict::Refuse(Reason::TlsUnparsable);
    }
    if size < record {
        return Verdict::Wait(record);
    }
    let Some(buf) = RECORD.get_ptr_mut(0) else { return Verdict::Refuse(Reason::TlsUncheckable) };
    let buf = unsafe { &mut (*buf).bytes };
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, record, 0) } != 0 || !copy_record(ctx, buf, record) {
        return Verdict::Refuse(Reason::TlsUncheckable);
    }
    match server_name(buf, record as usize) {
        Err(reason) => Verdict::Refuse(reason),
        Ok(None) => {
            if state.mode == TLS_REQUIRE {
                Verdict::Refuse(Reason::TlsNoName)
            } else {
                Verdict::Pass
            }
        }
        Ok(Some((at, len))) => {
            fill_key(key, &state.grant, buf, at, len);
            // SAFETY: the value is only read, while the program runs.
            if unsafe { TLS_NAMES.get(key) }.is_some() { Verdict::Pass } else { Verdict::Refuse(Reason::SniMismatch) }
        }
    }
}

/// Byte `at` of the message's first (pulled) bytes.
#[inline(always)]
fn packet_byte(ctx: &SkMsgContext, at: usize) -> Option<u8> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + at + 1 > end {
        return None;
    }
    Some(unsafe { *((data + at) as *const u8) })
}

/// Copies the first `len` bytes of the message (pulled into one run) into
/// `buf`.
#[inline(always)]
fn copy_record(ctx: &SkMsgContext, buf: &mut [u8; RECORD_BUF], len: u32) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len as usize > end {
        return false;
    }
    let len = (len as usize) & (RECORD_BUF - 1);
    unsafe { bpf_probe_read_kernel_buf(data as *const u8, &mut buf[..len]) }.is_ok()
}

/// Byte `at` of the record (every offset is inside the buffer). The mask
/// goes on a value the compiler cannot see through: it proves from the
/// parser's comparisons that the mask changes nothing and drops it, and
/// verifiers before 6.8 cannot follow those comparisons (between two
/// unknown values).
#[inline(always)]
fn byte(buf: &[u8; RECORD_BUF], at: usize) -> usize {
    usize::from(buf[opaque(at) & (RECORD_BUF - 1)])
}

/// `value`, unknown to the compiler.
#[inline(always)]
fn opaque(mut value: usize) -> usize {
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack)) };
    value
}

#[inline(always)]
fn be16(buf: &[u8; RECORD_BUF], at: usize) -> usize {
    byte(buf, at) << 8 | byte(buf, at + 1)
}

/// Where the server name of the ClientHello in the first `record` bytes of
/// `buf` is (offset, length); `None` if it has none.
#[inline(always)]
fn server_name(buf: &[u8; RECORD_BUF], record: usize) -> Result<Option<(usize, usize)>, Reason> {
    const UNPARSABLE: Reason = Reason::TlsUnparsable;
    if byte(buf, 5) != usize::from(CLIENT_HELLO) {
        return Err(UNPARSABLE);
    }
    // The whole ClientHello must be in this record.
    let hello_end = 9 + (byte(buf, 6) << 16 | be16(buf, 7));
    if hello_end > record {
        return Err(UNPARSABLE);
    }
    // Version (2) and random (32), then the session id.
    let mut at = 9 + 2 + 32;
    at += 1 + byte(buf, at);
    at += 2 + be16(buf, at); // cipher suites
    at += 1 + byte(buf, at); // compression methods
    if at == hello_end {
        return Ok(None);
    }
    let extensions_end = at + 2 + be16(buf, at);
    if at + 2 > hello_end || extensions_end > hello_end {
        return Err(UNPARSABLE);
    }
    at += 2;
    for _ in 0..EXTENSIONS_MAX {
        if at == extensions_end {
            return Ok(None);
        }
        if at + 4 > extensions_end {
            return Err(UNPARSABLE);
        }
        let (kind, len) = (be16(buf, at), be16(buf, at + 2));
        at += 4;
        if at + len > extensions_end {
            return Err(UNPARSABLE);
        }
        if kind == usize::from(EXTENSION_SERVER_NAME) {
            // The list's length (2), the name's type (1: host name is 0),
            // the name's length (2), the name.
            let name_len = be16(buf, at + 3);
            let fits = len >= 5 && be16(buf, at) == len - 2 && byte(buf, at + 2) == 0 && 5 + name_len <= len;
            if !fits || name_len == 0 || name_len >= TLS_NAME_BYTES {
                return Err(UNPARSABLE);
            }
            return Ok(Some((at + 5, name_len)));
        }
        at += len;
    }
    Err(UNPARSABLE)
}

/// The key of a name granted `grant`: `len` bytes of `buf` from `at`, in
/// lower case, zero-filled.
#[inline(always)]
fn fill_key(key: &mut TlsNameKey, grant: &NetKey, buf: &[u8; RECORD_BUF], at: usize, len: usize) {
    key.grant = *grant;
    key.len = len as u32;
    let words = key.name.as_mut_ptr().cast::<u64>();
    for i in 0..TLS_NAME_BYTES / 8 {
        unsafe { words.add(i).write_volatile(0) };
    }
    // Bounded where the verifier can see it (the parser checked `len`).
    let len = opaque(len) & (TLS_NAME_BYTES - 1);
    for i in 0..TLS_NAME_BYTES - 1 {
        if i >= len {
            break;
        }
        let c = byte(buf, at + i) as u8;
        key.name[opaque(i) & (TLS_NAME_BYTES - 1)] = if c.is_ascii_uppercase() { c | 0x20 } else { c };
    }
}
