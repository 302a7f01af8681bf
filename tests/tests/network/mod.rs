//! Network enforcement with real sockets against real listeners, in both
//! tiers: the host kernel (cgroup programs only, `enforcer run --degraded`)
//! and the BPF LSM kernels (everything, no `--degraded`). The including
//! test binary says which with `super::DEGRADED`.

mod new_destinations;

use std::net::{SocketAddr, TcpListener, UdpSocket};

use enforcer_tests::{Outcome, Sandbox};
use serde_json::Value;

/// Listeners the test process holds (outside the agent cgroup).
struct Listeners {
    allowed: SocketAddr,
    other_port: SocketAddr,
    other_addr: SocketAddr,
    v6_allowed: SocketAddr,
    v6_other_port: SocketAddr,
    udp_allowed: SocketAddr,
    udp_other_port: SocketAddr,
    _held: (Vec<TcpListener>, Vec<UdpSocket>),
}

impl Listeners {
    fn new() -> Self {
        let tcp = |addr: &str| TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        let udp = |addr: &str| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let tcp = [tcp("127.0.0.1:0"), tcp("127.0.0.1:0"), tcp("127.0.0.2:0"), tcp("[::1]:0"), tcp("[::1]:0")];
        let udp = [udp("127.0.0.1:0"), udp("127.0.0.1:0")];
        let at = |l: &TcpListener| l.local_addr().unwrap();
        let udp_at = |s: &UdpSocket| s.local_addr().unwrap();
        Self {
            allowed: at(&tcp[0]),
            other_port: at(&tcp[1]),
            // Same port as the allowed one, on another loopback address.
            other_addr: at(&tcp[2]),
            v6_allowed: at(&tcp[3]),
            v6_other_port: at(&tcp[4]),
            udp_allowed: udp_at(&udp[0]),
            udp_other_port: udp_at(&udp[1]),
            _held: (tcp.into(), udp.into()),
        }
    }

    /// The `[network]` section that allows exactly the `allowed` ones.
    fn policy(&self) -> String {
        format!(
            "[network]\nallow = [\"127.0.0.1:{}/tcp\", \"[::1]:{}\", \"127.0.0.1:{}/udp\", \"203.0.113.0/24:*\"]\n",
            self.allowed.port(),
            self.v6_allowed.port(),
            self.udp_allowed.port()
        )
    }
}

/// A loopback destination no policy here allows (and nothing listens on).
const NOWHERE: &str = "127.0.0.6:9";

fn sandbox(name: &str) -> Sandbox {
    let mut sb = Sandbox::new(name);
    sb.degraded = super::DEGRADED;
    sb
}

/// Host names are resolved by `enforcer run` and by the daemon, each its
/// own way: the tests of names run under both.
fn sandboxes_resolving(name: &str) -> Vec<Sandbox> {
    Sandbox::ways()
        .iter()
        .map(|&via| {
            let name = format!("{name}-{via}");
            let mut sb = if via == "run" { Sandbox::under_enforcer_run(&name) } else { Sandbox::under_daemon(&name) };
            sb.degraded = super::DEGRADED;
            sb
        })
        .collect()
}

fn mapped(addr: SocketAddr) -> String {
    format!("[::ffff:{}]:{}", addr.ip(), addr.port())
}

/// Events about `addr` (the IPv4 address a mapped one stands for) reached
/// through `family`.
fn to(addr: SocketAddr, family: &'static str) -> impl Fn(&Value) -> bool {
    let daddr = addr.ip().to_string();
    move |e: &Value| e["daddr"] == daddr.as_str() && e["dport"] == addr.port() && e["family"] == family
}

#[test]
fn allowed_destinations_connect_and_everything_else_is_denied_with_one_event() {
    let sb = sandbox("net-destinations");
    let l = Listeners::new();
    sb.write_policy_with("enforce", &l.policy());
    let allowed = [
        format!("tcp-connect:{}", l.allowed),
        format!("tcp-connect:{}", l.v6_allowed),
        // An IPv4-mapped IPv6 address is the IPv4 address.
        format!("tcp-connect:{}", mapped(l.allowed)),
        format!("udp-sendto:{}", l.udp_allowed),
        format!("udp-connect:{}", l.udp_allowed),
    ];
    let other_addr = l.other_addr;
    let denied = [
        (format!("tcp-connect:{}", l.other_port), "connect", l.other_port, "inet"),
        (format!("tcp-connect:{other_addr}"), "connect", other_addr, "inet"),
        (format!("tcp-connect:{}", l.v6_other_port), "connect", l.v6_other_port, "inet6"),
        // Judged as the IPv4 address; the event keeps the caller's family.
        (format!("tcp-connect:{}", mapped(l.other_port)), "connect", l.other_port, "inet6"),
        // TCP Fast Open: the connect inside sendto is judged like connect.
        (format!("tcp-fastopen:{NOWHERE}"), "connect", NOWHERE.parse().unwrap(), "inet"),
        // UDP to the allowed TCP destination: the rule says /tcp.
        (format!("udp-sendto:{}", l.allowed), "sendmsg", l.allowed, "inet"),
        (format!("udp-sendto:{}", l.udp_other_port), "sendmsg", l.udp_other_port, "inet"),
    ];
    let mut steps: Vec<String> = allowed.to_vec();
    steps.extend(denied.iter().map(|(s, _, _, _)| s.clone()));
    // A raw socket: denied when created.
    steps.push("socket:2:3:1".to_owned());
    // TCP Fast Open to an allowed destination still works.
    steps.push(format!("tcp-fastopen:{}", l.allowed));
    let out = sb.run(&steps);
    for step in &allowed {
        out.assert_succeeded(step);
    }
    for (step, kind, addr, family) in &denied {
        let event = out.assert_denied_net(step, kind, to(*addr, family));
        assert_eq!(event["reason"], "not_allowed", "{event}");
        assert!(event["exe"].as_str().is_some_and(|e| e.ends_with("enforcer-probe")), "{event}");
    }
    out.assert_succeeded(&format!("tcp-fastopen:{}", l.allowed));
    let raw = out.assert_denied_net("socket:2:3:1", "socket", |_| true);
    assert_eq!((raw["class"].as_str(), raw["sock_type"].as_str()), (Some("raw"), Some("raw")), "{raw}");
    assert_eq!(out.events.len(), denied.len() + 1, "one event per denial: {:#?}", out.events);
    assert_eq!(out.code, Some(0), "{out:#?}");
}

#[test]
fn a_socket_class_the_policy_names_is_allowed() {
    let sb = sandbox("net-classes");
    sb.write_policy_with("enforce", "[network]\nsockets = [\"raw\"]\n");
    let out = sb.run(&["socket:2:3:1".to_owned(), "socket:10:3:58".to_owned()]);
    out.assert_succeeded("socket:2:3:1");
    out.assert_succeeded("socket:10:3:58");
    assert!(out.events.is_empty(), "{out:#?}");
}

#[test]
fn audit_mode_reports_and_allows() {
    let sb = sandbox("net-audit");
    let l = Listeners::new();
    sb.write_policy_with("audit", &l.policy());
    let step = format!("tcp-connect:{}", l.other_port);
    let out: Outcome = sb.run(std::slice::from_ref(&step));
    out.assert_succeeded(&step);
    assert_eq!(out.events.len(), 1, "{out:#?}");
    assert_eq!(out.events[0]["action"], "audit");
    assert_eq!(out.events[0]["kind"], "connect");
}

#[test]
fn a_policy_without_a_network_section_leaves_the_network_alone() {
    let sb = sandbox("net-absent");
    let l = Listeners::new();
    let step = format!("tcp-connect:{}", l.other_port);
    let out = sb.run(std::slice::from_ref(&step));
    out.assert_succeeded(&step);
    assert!(out.events.is_empty(), "{out:#?}");
    if super::DEGRADED {
        assert!(out.stderr.contains("--degraded: NOT enforced: [files]"), "says what is not enforced: {}", out.stderr);
    }
}

/// Names the test DNS server knows, and listeners at their addresses.
struct Names {
    dns: enforcer_tests::DnsServer,
    port: u16,
    /// `api.allowed.test`'s address (the one DNS answers with).
    answered: SocketAddr,
    /// Another address of the same service, never in an answer.
    other: SocketAddr,
    _held: Vec<TcpListener>,
}

impl Names {
    fn new(ttl: u32) -> Self {
        let first = TcpListener::bind("127.0.0.3:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let second = TcpListener::bind(("127.0.0.4", port)).unwrap();
        let evil = TcpListener::bind(("127.0.0.5", port)).unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let dns = enforcer_tests::DnsServer::start(&[
            ("api.allowed.test", ip("127.0.0.3"), ttl),
            ("files.wild.test", ip("127.0.0.3"), ttl),
            ("evil.test", ip("127.0.0.5"), ttl),
        ]);
        Self {
            dns,
            port,
            answered: first.local_addr().unwrap(),
            other: second.local_addr().unwrap(),
            _held: vec![first, second, evil],
        }
    }

    fn policy(&self, min_ttl: u32) -> String {
        format!(
            "[network]\nallow = [\"api.allowed.test:{port}\", \"*.wild.test:{port}/tcp\"]\ndns_min_ttl = {min_ttl}\n",
            port = self.port
        )
    }
}

/// A loopback address nothing serves DNS on: an agent's "own" resolver.
const OTHER_RESOLVER: &str = "127.0.0.77:53";

#[test]
fn host_names_resolve_through_the_enforcer_and_only_their_answers_connect() {
    for sb in sandboxes_resolving("net-dns") {
        host_names_resolve(sb);
    }
}

fn host_names_resolve(mut sb: Sandbox) {
    let names = Names::new(300);
    sb.dns_upstream = Some(names.dns.addr);
    sb.write_policy_with("enforce", &names.policy(30));
    let port = names.port;
    let steps = [
        // The system resolver (getaddrinfo), redirected: the first try connects.
        format!("resolve-connect:api.allowed.test:{port}"),
        format!("resolve-connect:files.wild.test:{port}"),
        // A hard-coded address of the same service that no answer gave.
        format!("tcp-connect:{}", names.other),
        // An address an allowed name resolved to, on another port.
        format!("tcp-connect:127.0.0.3:{}", port - 1),
        format!("resolve-connect:evil.test:{port}"),
        // DNS to another resolver, over UDP and TCP: redirected, same rules.
        format!("dns-udp:api.allowed.test@{OTHER_RESOLVER}"),
        format!("dns-tcp:api.allowed.test@{OTHER_RESOLVER}"),
        format!("dns-udp:evil.test@{OTHER_RESOLVER}"),
        // DNS over TLS to a resolver the policy does not allow.
        "tcp-connect:127.0.0.77:853".to_owned(),
    ];
    let out = sb.run(&steps);
    for step in [&steps[0], &steps[1], &steps[5], &steps[6]] {
        out.assert_succeeded(step);
    }
    assert_eq!(out.errno(&steps[4]), 1000, "a name the policy does not allow does not resolve: {out:#?}");
    assert_eq!(out.errno(&steps[7]), 103, "NXDOMAIN from the enforcer's resolver: {out:#?}");
    let never = out.assert_denied_net(&steps[2], "connect", to(names.other, "inet"));
    assert_eq!(never["resolved_from"], Value::Null, "never resolved: {never}");
    let resolved = out.assert_denied_net(&steps[3], "connect", |e| e["daddr"] == "127.0.0.3");
    // Both names resolved to it; the event names the latest.
    assert!(
        ["api.allowed.test", "files.wild.test"].contains(&resolved["resolved_from"].as_str().unwrap_or_default()),
        "{resolved}"
    );
    out.assert_denied_net(&steps[8], "connect", |e| e["dport"] == 853);
    let refused: Vec<&Value> = out.events.iter().filter(|e| e["kind"] == "dns").collect();
    assert!(
        !refused.is_empty() && refused.iter().all(|e| e["qname"] == "evil.test" && e["action"] == "deny"),
        "{refused:#?}"
    );
    assert!(refused.iter().all(|e| e["policy"] == "test-policy" && e["reason"] == "not_allowed"), "{refused:#?}");
    // The asking cgroup, as the kernel named it (the daemon's resolver
    // serves every cgroup of the policy on one port).
    let cgroup = out.cgroup.clone().unwrap_or_default();
    assert!(refused.iter().all(|e| e["cgroup_id"] != 0 && e["cgroup"].as_str() > Some("")), "{refused:#?}");
    assert!(out.cgroup.is_none() || refused.iter().all(|e| e["cgroup"] == cgroup.as_str()), "{refused:#?}");
    assert!(!names.dns.queries().contains(&"evil.test".to_owned()), "refused names never reach upstream");
    assert_eq!(out.events.len(), 3 + refused.len(), "{:#?}", out.events);
}

#[test]
fn resolved_addresses_expire_after_the_ttl() {
    for sb in sandboxes_resolving("net-dns-ttl") {
        resolved_addresses_expire(sb);
    }
}

fn resolved_addresses_expire(mut sb: Sandbox) {
    let names = Names::new(1);
    sb.dns_upstream = Some(names.dns.addr);
    sb.write_policy_with("enforce", &names.policy(1));
    let steps = [
        format!("resolve-connect:api.allowed.test:{}", names.port),
        "sleep-ms:2500".to_owned(),
        format!("tcp-connect:{}", names.answered),
    ];
    let out = sb.run(&steps);
    out.assert_succeeded(&steps[0]);
    let expired = out.assert_denied_net(&steps[2], "connect", to(names.answered, "inet"));
    assert_eq!(expired["resolved_from"], "api.allowed.test", "{expired}");
}

/// A free loopback port (bound, then let go).
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port()
    } else {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free TCP port").port()
    }
}

/// Inbound: an agent listens and something outside connects (or sends a
/// datagram) to it. Its own processes reach its listeners; from outside
/// only the ports a `listen` entry names are reachable. The refused
/// connection (each SYN of it) and datagram each make an `inbound` event.
#[test]
fn connections_and_datagrams_from_outside_need_a_listen_entry() {
    use std::{io::BufRead as _, time::Duration};
    let sb = sandbox("net-inbound");
    let (private, public, udp) = (free_port(false), free_port(false), free_port(true));
    sb.write_policy_with(
        "enforce",
        &format!(
            "[network]\nallow = [\"127.0.0.1:{private}/tcp\", \"127.0.0.1:{udp}/udp\"]\nlisten = [\"*:{public}/tcp\"]\n"
        ),
    );
    let steps = [
        format!("tcp-listen-bg:127.0.0.1:{private}"),
        format!("tcp-listen-bg:127.0.0.1:{public}"),
        format!("udp-bind-bg:127.0.0.1:{udp}"),
        // The agent's own processes reach its own listener and socket.
        format!("tcp-connect:127.0.0.1:{private}"),
        format!("udp-sendto:127.0.0.1:{udp}"),
        "wait-stdin:".to_owned(),
        "udp-received".to_owned(),
    ];
    let mut child = sb.spawn(&steps);
    let (_, mut stdout) = enforcer_tests::wait_ready(&mut child);
    for step in &steps[..5] {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a step result");
        let result: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a result: {line}"));
        assert_eq!((result["step"].as_str(), result["errno"].as_i64()), (Some(step.as_str()), Some(0)), "{line}");
    }
    // From outside (the test process): the private port is unreachable (the
    // request is dropped: the connect times out), the listed one answers.
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let refused = std::net::TcpStream::connect_timeout(&at(private), Duration::from_millis(700));
    assert!(refused.is_err(), "a connection from outside reached the agent's private listener");
    let mut greeting = String::new();
    let public_stream =
        std::net::TcpStream::connect_timeout(&at(public), Duration::from_secs(5)).expect("the listed port answers");
    std::io::BufReader::new(public_stream).read_line(&mut greeting).expect("read the greeting");
    assert_eq!(greeting, "hello\n");
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"from outside", at(udp))).expect("send a datagram");
    std::thread::sleep(Duration::from_millis(200));
    enforcer_tests::release(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout.into_inner(), &mut rest).expect("the rest");
    let out = sb.finish(child);
    assert!(
        rest.contains("{\"errno\":1,\"step\":\"udp-received\"}"),
        "only the agent's own datagram arrived: {rest}\n{out:#?}"
    );
    let inbound: Vec<&Value> = out.events.iter().filter(|e| e["kind"] == "inbound").collect();
    let about = |port: u16, proto: &str| {
        inbound.iter().filter(|e| e["dport"] == port && e["proto"] == proto && e["saddr"] == "127.0.0.1").count()
    };
    // Each SYN is refused and reported: one, or two when the client's kernel
    // retransmitted it before the client gave up (its first retry is due
    // after a second, which a guest under TCG can reach within the 700 ms).
    let syns = about(private, "tcp");
    assert!((1..=2).contains(&syns), "{inbound:#?}");
    assert_eq!(about(udp, "udp"), 1, "{inbound:#?}");
    assert_eq!(inbound.len(), syns + 1, "nothing else came in: {inbound:#?}");
    assert!(
        inbound.iter().all(|e| e["action"] == "deny" && e["reason"] == "not_allowed" && e["policy"] == "test-policy"),
        "{inbound:#?}"
    );
}
