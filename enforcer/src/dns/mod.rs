//! The resolver agents' DNS is redirected to (the connect and sendmsg
//! programs send every UDP and TCP port-53 packet of a tagged cgroup here).
//!
//! It answers names the policy allows by asking the upstream resolver, and
//! puts each answer's addresses into the programs' grants, with the answer's
//! TTL (bounded below), before the answer is released: the first connection
//! never races the map. Other names get NXDOMAIN and a `dns` denial event.

pub mod asker;
pub mod grants;
pub mod names;
pub mod names_asked;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, RecordType},
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};

use self::{
    grants::{Granted, Grantee, Grants},
    names::HostRules,
    names_asked::NamesAsked,
};

/// How long the upstream resolver gets to answer one query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest DNS message over UDP we take or relay (EDNS allows up to 64 KiB;
/// this is what resolvers use in practice).
const UDP_MESSAGE_MAX: usize = 4096;

/// A DNS query the resolver refused (or could not serve), for the stream.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DnsEvent {
    pub kind: &'static str,
    pub action: &'static str,
    pub qname: String,
    pub qtype: String,
    pub reason: &'static str,
    /// Audit mode: the addresses upstream answered with (the query was
    /// answered, not refused), so an address connected to later can be
    /// named by the name it was resolved from (`enforcer learn` does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<IpAddr>,
    /// The policy whose resolver refused it.
    #[serde(skip)]
    pub policy_id: enforcer_common::policy::PolicyId,
    /// The cgroup the asking socket was made in, if the kernel could say.
    #[serde(skip)]
    pub asker: Option<u64>,
}

/// Refusals queued for the event stream at most; past that they are
/// dropped and counted (a flood of refused names cannot take the memory).
const REFUSALS_QUEUED_MAX: usize = 4096;

/// Where resolvers send their refusals: a bounded queue to the stream, and
/// the count of those it had no room for.
#[derive(Clone)]
pub struct Refusals {
    queue: mpsc::Sender<DnsEvent>,
    dropped: Arc<AtomicU64>,
}

impl Refusals {
    /// The sending side and the stream's receiving side.
    #[must_use]
    pub fn channel() -> (Self, mpsc::Receiver<DnsEvent>) {
        let (queue, events) = mpsc::channel(REFUSALS_QUEUED_MAX);
        (Self { queue, dropped: Arc::new(AtomicU64::new(0)) }, events)
    }

    fn send(&self, event: DnsEvent) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals dropped because the stream was behind.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What one resolver serves: one policy.
pub struct Resolver {
    pub policy_id: enforcer_common::policy::PolicyId,
    /// Answer names the policy does not allow too, and report them.
    pub audit: bool,
    pub rules: HostRules,
    /// Where agents whose egress is locked ask (`Sockets::locked`): there
    /// only names in `after_sensitive_read` are answered.
    pub locked_port: Option<u16>,
    pub upstream: SocketAddr,
    pub min_ttl: Duration,
    pub grants: Arc<Mutex<Grants>>,
    pub events: Refusals,
    /// The names asked per agent, for `network.dns_names`.
    pub names_asked: NamesAsked,
}

/// Every socket of one resolver: where agents ask, and where the programs
/// send the DNS of agents whose egress is locked (policies with
/// `files.sensitive`), a port of its own so the kernel, not the resolver,
/// tells the two apart.
pub struct Sockets {
    pub open: Listeners,
    pub locked: Option<Listeners>,
}

impl Sockets {
    /// Binds the sockets (`locked`: the second set too); see [`Listeners::bind`].
    pub fn bind(locked: bool) -> Result<Self, DnsError> {
        Ok(Self { open: Listeners::bind()?, locked: locked.then(Listeners::bind).transpose()? })
    }

    /// The programs' `RESOLVERS` entry for them.
    #[must_use]
    pub fn entry(&self) -> enforcer_common::net::Resolver {
        let v6 = self.open.v6 && self.locked.as_ref().is_none_or(|l| l.v6);
        enforcer_common::net::Resolver {
            port: self.open.port,
            v6: u16::from(v6),
            locked_port: self.locked.as_ref().map_or(0, |l| l.port),
            pad: 0,
        }
    }

    #[must_use]
    pub fn locked_port(&self) -> Option<u16> {
        self.locked.as_ref().map(|l| l.port)
    }
}

/// The loopback sockets a resolver listens on.
pub struct Listeners {
    pub port: u16,
    /// Whether it also listens on `[::1]` (same port).
    pub v6: bool,
    udp4: UdpSocket,
    tcp4: TcpListener,
    v6_sockets: Option<(UdpSocket, TcpListener)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot start the DNS resolver on loopback: {0}")]
    Listen(std::io::Error),
}

impl Listeners {
    /// Binds UDP and TCP on 127.0.0.1 (one free port, both protocols), and
    /// on `[::1]` at the same port when the host has IPv6 loopback. Needs a
    /// Tokio runtime (not a task: the daemon binds while it holds its core).
    pub fn bind() -> Result<Self, DnsError> {
        // A port free for UDP may be taken for TCP: try a few.
        let mut last = None;
        for _ in 0..16 {
            let udp4 = udp((Ipv4Addr::LOCALHOST, 0).into()).map_err(DnsError::Listen)?;
            let port = udp4.local_addr().map_err(DnsError::Listen)?.port();
            match tcp((Ipv4Addr::LOCALHOST, port).into()) {
                Ok(tcp4) => {
                    let v6 = (Ipv6Addr::LOCALHOST, port).into();
                    let v6_sockets = match (udp(v6), tcp(v6)) {
                        (Ok(udp), Ok(tcp)) => Some((udp, tcp)),
                        _ => None,
                    };
                    return Ok(Self { port, v6: v6_sockets.is_some(), udp4, tcp4, v6_sockets });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DnsError::Listen(last.unwrap_or_else(|| std::io::Error::other("no free port"))))
    }
}

fn udp(at: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(at)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

fn tcp(at: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(at)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// The first `nameserver` of `/etc/resolv.conf`, port 53; like the C
/// library, 127.0.0.1 when the file is missing or names none.
#[must_use]
pub fn system_upstream() -> SocketAddr {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ip = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|addr| addr.trim().parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, 53)
}

/// Serves queries on `sockets` until the task is dropped.
pub async fn serve(resolver: Resolver, sockets: Sockets) {
    let resolver = Arc::new(resolver);
    let mut tasks = tokio::task::JoinSet::new();
    for listeners in std::iter::once(sockets.open).chain(sockets.locked) {
        let Listeners { udp4, tcp4, v6_sockets, .. } = listeners;
        for (udp, tcp) in std::iter::once((udp4, tcp4)).chain(v6_sockets) {
            tasks.spawn(serve_udp(resolver.clone(), udp));
            tasks.spawn(serve_tcp(resolver.clone(), tcp));
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Queries answered at once per UDP socket; more are dropped (a client
/// asks again), so a flood of queries cannot take the daemon's memory.
const UDP_QUERIES_MAX: usize = 256;
/// TCP connections served at once per listener; more are closed at once.
const TCP_CONNECTIONS_MAX: usize = 64;

async fn serve_udp(resolver: Arc<Resolver>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else { return };
    let slots = Arc::new(tokio::sync::Semaphore::new(UDP_QUERIES_MAX));
    let mut buf = vec![0u8; UDP_MESSAGE_MAX];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let query = buf[..len].to_vec();
        let (resolver, socket) = (resolver.clone(), socket.clone());
        let peer = Peer { addr: from, local, transport: Transport::Udp };
        tokio::spawn(async move {
            if let Some(reply) = resolver.answer(&query, peer).await {
                let _ = socket.send_to(&reply, from).await;
            }
            drop(slot);
        });
    }
}

async fn serve_tcp(resolver: Arc<Resolver>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS_MAX));
    loop {
        let Ok((stream, from)) = listener.accept().await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let Ok(local) = stream.local_addr() else { continue };
        let resolver = resolver.clone();
        let peer = Peer { addr: from, local, transport: Transport::Tcp };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), serve_connection(&resolver, stream, peer)).await;
            drop(slot);
        });
    }
}

/// DNS over TCP: two-byte length, message; as many as the client sends.
async fn serve_connection(resolver: &Resolver, mut stream: TcpStream, peer: Peer) -> std::io::Result<()> {
    loop {
        let query = read_framed(&mut stream).await?;
        if let Some(reply) = resolver.answer(&query, peer).await {
            write_framed(&mut stream, &reply).await?;
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    stream.write_all(&[&len.to_be_bytes()[..], message].concat()).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Who sent a query, and to which of the resolver's sockets.
#[derive(Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    local: SocketAddr,
    transport: Transport,
}

impl Resolver {
    /// The reply to one query, or `None` to stay silent (not a DNS query).
    async fn answer(&self, query: &[u8], peer: Peer) -> Option<Vec<u8>> {
        let transport = peer.transport;
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let Some(question) = request.queries.first() else {
            return refusal(&request, ResponseCode::FormErr);
        };
        // Reported as asked (letter case can carry data too), matched in lower case.
        let asked = question.name().to_ascii().trim_end_matches('.').to_owned();
        let qname = asked.to_ascii_lowercase();
        let qtype = question.query_type();
        // The programs sent a locked agent's query to the locked port.
        let locked_asker = self.locked_port == Some(peer.local.port());
        let ports = if locked_asker { None } else { self.rules.ports_for(&qname) };
        let locked_ports = self.locked_port.and_then(|_| self.rules.locked_ports_for(&qname));
        if ports.is_none() && locked_ports.is_none() {
            let reason = if locked_asker { "egress_locked" } else { "not_allowed" };
            if self.audit {
                let reply = self.ask_upstream(query, transport).await.ok();
                let answers = reply.as_deref().map(answered_addresses).unwrap_or_default();
                self.report_answered(&asked, qtype, reason, peer, answers);
                return reply;
            }
            self.report(&asked, qtype, reason, peer);
            return refusal(&request, ResponseCode::NXDomain);
        }
        if let Some(names) = self.rules.dns_names() {
            // Counted as asked: letter case carries data too.
            let agent = asker::cgroup_of(peer.addr, peer.local, peer.transport == Transport::Tcp);
            if self.names_asked.admit(agent, &asked, names).is_err() {
                self.report(&asked, qtype, "dns_names_exceeded", peer);
                if !self.audit {
                    return refusal(&request, ResponseCode::Refused);
                }
            }
        }
        let budget = self.rules.budget_for(&qname);
        let grantee_of = |locked: bool, ports| {
            (Grantee { policy: self.policy_id, locked }, ports, self.rules.tls_for(&qname, locked))
        };
        let grantees = [ports.map(|ports| grantee_of(false, ports)), locked_ports.map(|ports| grantee_of(true, ports))];
        let Ok(reply) = self.ask_upstream(query, transport).await else {
            self.report(&qname, qtype, "upstream_failed", peer);
            return refusal(&request, ResponseCode::ServFail);
        };
        let Ok(response) = Message::from_vec(&reply) else {
            self.report(&qname, qtype, "upstream_failed", peer);
            return refusal(&request, ResponseCode::ServFail);
        };
        // The grants go in before the answer goes out.
        for record in &response.answers {
            let addr = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(record.ttl)).max(self.min_ttl);
            let granted = self.grants.lock().map_err(|_| ()).and_then(|mut grants| {
                grantees.iter().flatten().try_for_each(|&(grantee, ports, tls)| {
                    let granted = Granted { ports, tls, ttl, budget };
                    grants.grant(grantee, addr, &qname, granted).map_err(|_| ())
                })
            });
            if granted.is_err() {
                // Without the grant the connect would be denied: say so now.
                self.report(&qname, qtype, "grant_table_full", peer);
                return refusal(&request, ResponseCode::ServFail);
            }
        }
        Some(reply)
    }

    async fn ask_upstream(&self, query: &[u8], transport: Transport) -> std::io::Result<Vec<u8>> {
        let ask = async {
            match transport {
                Transport::Udp => {
                    let any: IpAddr = if self.upstream.is_ipv4() {
                        Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        Ipv6Addr::UNSPECIFIED.into()
                    };
                    let bind = SocketAddr::new(any, 0);
                    let socket = UdpSocket::bind(bind).await?;
                    socket.connect(self.upstream).await?;
                    socket.send(query).await?;
                    let mut buf = vec![0u8; UDP_MESSAGE_MAX];
                    let len = socket.recv(&mut buf).await?;
                    buf.truncate(len);
                    Ok(buf)
                }
                Transport::Tcp => {
                    let mut stream = TcpStream::connect(self.upstream).await?;
                    write_framed(&mut stream, query).await?;
                    read_framed(&mut stream).await
                }
            }
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, ask)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    fn report(&self, qname: &str, qtype: RecordType, reason: &'static str, peer: Peer) {
        self.report_answered(qname, qtype, reason, peer, Vec::new());
    }

    fn report_answered(&self, qname: &str, qtype: RecordType, reason: &'static str, peer: Peer, answers: Vec<IpAddr>) {
        let action = if self.audit { "audit" } else { "deny" };
        let asker = asker::cgroup_of(peer.addr, peer.local, peer.transport == Transport::Tcp);
        let event = DnsEvent {
            kind: "dns",
            action,
            qname: qname.to_owned(),
            qtype: qtype.to_string(),
            reason,
            answers,
            policy_id: self.policy_id,
            asker,
        };
        self.events.send(event);
    }
}

/// The A and AAAA addresses of a reply (none if it does not parse).
fn answered_addresses(reply: &[u8]) -> Vec<IpAddr> {
    let Ok(message) = Message::from_vec(reply) else { return Vec::new() };
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

/// An answer with no records and `code`, for `request`.
fn refusal(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_queue_are_dropped_and_counted() {
        let (refusals, mut events) = Refusals::channel();
        let refusal = || DnsEvent {
            kind: "dns",
            action: "deny",
            qname: "x.evil.example".to_owned(),
            qtype: "A".to_owned(),
            reason: "not_allowed",
            answers: Vec::new(),
            policy_id: enforcer_common::policy::PolicyId(1),
            asker: None,
        };
        for _ in 0..=REFUSALS_QUEUED_MAX {
            refusals.send(refusal());
        }
        assert_eq!(refusals.dropped(), 1, "the stream is behind: the one past the queue is counted");
        assert!(events.try_recv().is_ok());
        refusals.send(refusal());
        assert_eq!(refusals.dropped(), 1, "room again");
    }
}
