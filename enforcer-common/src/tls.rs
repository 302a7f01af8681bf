//! TLS names (`tls` on a host entry of `network.allow`) as the kernel sees
//! them: a TCP connection to an address the resolver granted for a name
//! must open with a TLS ClientHello whose server name (SNI) is one of the
//! names that resolved there.

use crate::{net::NetKey, policy::PolicyId};

/// How a grant's names are checked ([`TLS_ADDRS_MAP`]'s value): no entry is
/// `tls = "off"`.
pub const TLS_CHECK: u8 = 1;
/// `tls = "require"`: the connection must open with a ClientHello that
/// names a name.
pub const TLS_REQUIRE: u8 = 2;

/// The strictest mode of the names granted each address: the policy's
/// grant key ([`NetKey`]) -> [`TLS_CHECK`] or [`TLS_REQUIRE`].
pub const TLS_ADDRS_MAP: &str = "TLS_ADDRS";
/// The names granted each address: [`TlsNameKey`] -> 1.
pub const TLS_NAMES_MAP: &str = "TLS_NAMES";
/// The sockets whose first bytes are being judged (a sockhash by socket
/// cookie); the ClientHello judge is attached to it.
pub const TLS_HELLO_MAP: &str = "TLS_HELLO";
/// The global (a data section of its own) userspace sets once a policy
/// with checked names is loaded: until then a send by a task in no agent
/// costs nothing more.
pub const TLS_IN_FORCE_MAP: &str = ".bss.tls";

/// (address, name) pairs at most, over all policies.
pub const TLS_NAMES_MAX: u32 = 1 << 16;
/// Connections being judged at once, at most (a connection leaves the set
/// at the first acknowledgement after its ClientHello passed).
pub const TLS_HELLO_MAX: u32 = 1 << 14;
/// The longest name a ClientHello may carry (a DNS name is at most 253).
pub const TLS_NAME_BYTES: usize = 256;
/// The largest TLS record: a ClientHello must fit one.
pub const TLS_RECORD_MAX: u32 = 5 + (1 << 14);

/// A name granted an address: [`TLS_NAMES_MAP`]'s key. The name is lower
/// case, without a trailing dot, zero-filled past `len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TlsNameKey {
    pub grant: NetKey,
    pub len: u32,
    pub name: [u8; TLS_NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<TlsNameKey>() == 280);

/// Where a checked connection is (`TlsSocket::state`).
/// `connect` allowed it; not yet established (a send now is refused: TCP
/// Fast Open data would leave unjudged).
pub const TLS_PENDING: u8 = 1;
/// Established and in the sockhash: its first bytes are judged.
pub const TLS_JUDGING: u8 = 2;
/// Its first bytes passed; it leaves the sockhash at the next
/// acknowledgement.
pub const TLS_PASSED: u8 = 3;
/// Its first bytes were refused: every later send is too.
pub const TLS_REFUSED: u8 = 4;

/// Per socket (socket storage): what its first bytes are judged by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSocket {
    /// The grant that allowed the connect.
    pub grant: NetKey,
    pub state: u8,
    /// [`TLS_CHECK`] or [`TLS_REQUIRE`].
    pub mode: u8,
    /// The agent's policy is in audit mode: refusals are reported, not made.
    pub audit: u8,
    pub family: u8,
    /// The agent (its task's cgroup at the connect), for events.
    pub cgroup_id: u64,
    pub policy_id: PolicyId,
    /// The destination port.
    pub port: u16,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsSocket>() == 40);

/// What a `tls_name` event says about the ClientHello, after its
/// `NetDetail`: the name it sent (none: `len` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TlsDetail {
    pub len: u32,
    pub pad: u32,
    pub name: [u8; TLS_NAME_BYTES],
}
pub const TLS_DETAIL_BYTES: usize = 264;
const _: () = assert!(core::mem::size_of::<TlsDetail>() == TLS_DETAIL_BYTES);

#[cfg(feature = "user")]
aya_pod!(TlsNameKey, TlsDetail);
