//! Which cgroup a query came from. The daemon's resolvers serve every
//! cgroup tagged with one policy on one port, so the address a query came
//! from (loopback, some port) names no agent. The kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`) find the asking socket by its four
//! addresses and tell the cgroup it was made in (`INET_DIAG_CGROUP_ID`,
//! Linux 5.9 and later). Asked only for a refusal's event, never on the
//! path of an answer.

use std::net::{IpAddr, SocketAddr};

use bytemuck::{Pod, Zeroable};

const NETLINK_SOCK_DIAG: i32 = 4;
// The request's byte-wide fields (libc has them as `c_int`).
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `idiag_cookie` that matches any socket.
const NO_COOKIE: [u32; 2] = [u32::MAX; 2];

/// `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NetlinkHeader {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses big-endian.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SocketId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2` behind its netlink header.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Request {
    header: NetlinkHeader,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SocketId,
}

/// `struct inet_diag_msg`'s size: the attributes follow it.
const DIAG_MSG_BYTES: usize = 72;

/// The cgroup id of the socket at `client` that sent to `server` (the
/// resolver's address) over TCP or UDP; `None` if the kernel cannot say
/// (the socket is gone, or the kernel is older than 5.9).
#[must_use]
pub fn cgroup_of(client: SocketAddr, server: SocketAddr, tcp: bool) -> Option<u64> {
    let (family, client_ip, server_ip) = match (client.ip(), server.ip()) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (AF_INET, v4_words(c.octets()), v4_words(s.octets())),
        (c, s) => (AF_INET6, as_v6(c), as_v6(s)),
    };
    let client = (client.port().to_be_bytes(), client_ip);
    let server = (server.port().to_be_bytes(), server_ip);
    // TCP looks a socket up by its own address first; UDP by the sender's
    // ("src and dst are swapped for historical reasons", udp_diag.c).
    let ((sport, src), (dport, dst)) = if tcp { (client, server) } else { (server, client) };
    let id = SocketId { sport, dport, src, dst, interface: 0, cookie: NO_COOKIE };
    let protocol = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    ask(family, protocol, id).ok().flatten()
}

fn v4_words(octets: [u8; 4]) -> [u8; 16] {
    let mut words = [0; 16];
    words[..4].copy_from_slice(&octets);
    words
}

fn as_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[expect(clippy::cast_possible_truncation, reason = "the request is 72 bytes")]
fn ask(family: u8, protocol: u8, id: SocketId) -> std::io::Result<Option<u64>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = Request {
        header: NetlinkHeader {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST,
            seq: 1,
            pid: 0,
        },
        family,
        protocol,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id,
    };
    let bytes = bytemuck::bytes_of(&request);
    // SAFETY: send(2) of a buffer that lives through the call.
    if unsafe { libc::send(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The kernel answers while handling the send: the reply is queued by now.
    let mut reply = vec![0u8; 1024];
    // SAFETY: recv(2) into a buffer of the length given.
    let len = unsafe { libc::recv(socket.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), libc::MSG_DONTWAIT) };
    let len = usize::try_from(len).map_err(|_| std::io::Error::last_os_error())?;
    Ok(cgroup_in_reply(&reply[..len]))
}

/// The `INET_DIAG_CGROUP_ID` attribute of a `SOCK_DIAG_BY_FAMILY` reply.
fn cgroup_in_reply(reply: &[u8]) -> Option<u64> {
    let header: NetlinkHeader = bytemuck::pod_read_unaligned(reply.get(..size_of::<NetlinkHeader>())?);
    if header.kind == NLMSG_ERROR || header.kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let message = reply.get(..usize::try_from(header.len).ok()?)?;
    let mut attributes = message.get(size_of::<NetlinkHeader>() + DIAG_MSG_BYTES..)?;
    // Each attribute: u16 length (header included), u16 type, payload,
    // padded to 4 bytes.
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if len < 4 {
            return None;
        }
        let payload = attributes.get(4..len)?;
        if kind == INET_DIAG_CGROUP_ID {
            return Some(u64::from_ne_bytes(payload.try_into().ok()?));
        }
        attributes = attributes.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream, UdpSocket},
        os::unix::fs::MetadataExt as _,
    };

    use super::*;

    /// This process's cgroup id (cgroup v2).
    fn own_cgroup_id() -> Option<u64> {
        let line = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = line.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = crate::cgroups::Hierarchy::find().ok()?.mount_point.join(path.trim_start_matches('/'));
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    #[test]
    fn names_the_cgroup_of_a_loopback_tcp_and_udp_client() {
        let own = own_cgroup_id().expect("this process's cgroup (cgroup v2 mounted)");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(cgroup_of(peer, listener.local_addr().unwrap(), true), Some(own));

        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        client.send_to(b"q", server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 4];
        let (_, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(cgroup_of(from, server.local_addr().unwrap(), false), Some(own));
        drop(client);
        assert_eq!(cgroup_of(from, server.local_addr().unwrap(), false), None, "gone: nobody");
    }
}
