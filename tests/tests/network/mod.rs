//! Network enforcement with real sockets against real listeners, in both
//! tiers: the host kernel (cgroup programs only, `enforcer run --degraded`)
//! and the BPF LSM kernels (everything, no `--degraded`). The including
//! test binary says which with `super::DEGRADED`.

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

fn sandbox(name: &str) -> Sandbox {
    let mut sb = Sandbox::new(name);
    sb.degraded = super::DEGRADED;
    sb
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
        // UDP to the allowed TCP destination: the rule says /tcp.
        (format!("udp-sendto:{}", l.allowed), "sendmsg", l.allowed, "inet"),
        (format!("udp-sendto:{}", l.udp_other_port), "sendmsg", l.udp_other_port, "inet"),
    ];
    let mut steps: Vec<String> = allowed.to_vec();
    steps.extend(denied.iter().map(|(s, _, _, _)| s.clone()));
    // A raw socket: denied when created.
    steps.push("socket:2:3:1".to_owned());
    let out = sb.run(&steps);
    for step in &allowed {
        out.assert_succeeded(step);
    }
    for (step, kind, addr, family) in &denied {
        let event = out.assert_denied_net(step, kind, to(*addr, family));
        assert_eq!(event["reason"], "not_allowed", "{event}");
        assert!(event["exe"].as_str().is_some_and(|e| e.ends_with("enforcer-probe")), "{event}");
    }
    let raw = out.assert_denied_net("socket:2:3:1", "socket", |_| true);
    assert_eq!((raw["class"].as_str(), raw["sock_type"].as_str()), (Some("raw"), Some("raw")), "{raw}");
    assert_eq!(out.events.len(), denied.len() + 1, "one event per denial: {:#?}", out.events);
    assert_eq!(out.code, Some(0), "{out:#?}");
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
