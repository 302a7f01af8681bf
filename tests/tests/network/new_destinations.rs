//! The budget of new destinations (`network.new_destinations`), attacked
//! from inside the agent: a walk over destinations the rules allow (data
//! carried in the choice of address, or a scan) stops at the budget, for
//! every process of the agent, by TCP and by UDP; destinations reached
//! already in the window stay reachable; the count outlives the daemon.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use enforcer_tests::Outcome;
use serde_json::Value;

use super::{mapped, sandbox};

const EPERM: i64 = 1;

/// A TCP and a UDP port on every loopback address (the test process holds
/// them, outside the agent).
struct AnyLoopback {
    tcp: u16,
    udp: u16,
    _held: (TcpListener, UdpSocket),
}

impl AnyLoopback {
    fn new() -> Self {
        let tcp = TcpListener::bind("0.0.0.0:0").expect("listen on 0.0.0.0");
        let udp = UdpSocket::bind("0.0.0.0:0").expect("bind 0.0.0.0");
        Self { tcp: tcp.local_addr().unwrap().port(), udp: udp.local_addr().unwrap().port(), _held: (tcp, udp) }
    }

    fn tcp(&self, last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], self.tcp))
    }

    fn udp(&self, last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], self.udp))
    }

    /// Every address of 127.0.0.0/24 on the two ports, and `budget`.
    fn policy(&self, budget: &str) -> String {
        format!(
            "[network]\nallow = [\"127.0.0.0/24:{}/tcp\", \"127.0.0.0/24:{}/udp\"]\nnew_destinations = \"{budget}\"\n",
            self.tcp, self.udp
        )
    }
}

/// The errno of each step, in order.
fn errnos(out: &Outcome) -> Vec<i64> {
    out.results.iter().map(|r| r["errno"].as_i64().unwrap_or(-1)).collect()
}

/// The `budget_exceeded` events of `out`.
fn exceeded(out: &Outcome) -> Vec<&Value> {
    out.events.iter().filter(|e| e["kind"] == "budget_exceeded").collect()
}

/// `3/1h`: one process reaches three destinations; a second process of the
/// same agent cannot reach a fourth (TCP or UDP), yet reaches the three
/// again, the IPv4-mapped form of one of them too.
#[test]
fn past_the_budget_a_new_destination_is_refused_and_one_reached_already_is_not() {
    for mode in ["enforce", "audit"] {
        let sb = sandbox(&format!("new-destinations-{mode}"));
        let places = AnyLoopback::new();
        sb.write_policy_with(mode, &places.policy("3/1h"));
        let first = [
            format!("tcp-connect:{}", places.tcp(1)),
            format!("tcp-connect:{}", places.tcp(2)),
            format!("udp-sendto:{}", places.udp(3)),
            format!("tcp-connect:{}", places.tcp(1)),
        ];
        let second = [
            format!("tcp-connect:{}", places.tcp(4)),
            format!("udp-sendto:{}", places.udp(5)),
            format!("udp-connect:{}", places.udp(6)),
            format!("udp-sendto:{}", places.udp(3)),
            format!("tcp-connect:{}", mapped(places.tcp(2))),
            format!("tcp-connect:{}", places.tcp(1)),
        ];
        let probe = enforcer_tests::probe_bin();
        let script = format!("{probe} {}; {probe} {}", first.join(" "), second.join(" "), probe = probe.display());
        let out = sb.finish(sb.spawn_command(&["/bin/sh".into(), "-c".into(), script.into()]));
        let refused = if mode == "enforce" { EPERM } else { 0 };
        assert_eq!(errnos(&out), [0, 0, 0, 0, refused, refused, refused, 0, 0, 0], "{mode}: {out:#?}");
        let events = exceeded(&out);
        let daddrs: Vec<_> = events.iter().map(|e| (e["daddr"].as_str(), e["proto"].as_str())).collect();
        assert_eq!(
            daddrs,
            [(Some("127.0.0.4"), Some("tcp")), (Some("127.0.0.5"), Some("udp")), (Some("127.0.0.6"), Some("udp"))],
            "{mode}: one event per refusal: {out:#?}"
        );
        let first_refusal = events[0];
        let fields = |e: &Value| {
            (
                e["reason"].as_str().map(str::to_owned),
                e["budget"].as_str().map(str::to_owned),
                e["destinations_used"].as_u64(),
                e["destinations_limit"].as_u64(),
                e["window_s"].as_u64(),
            )
        };
        assert_eq!(
            fields(first_refusal),
            (Some("new_destinations_exceeded".into()), Some("new_destinations".into()), Some(3), Some(3), Some(3600)),
            "{first_refusal}"
        );
        let (action, errno) = if mode == "enforce" { ("deny", EPERM) } else { ("audit", 0) };
        assert_eq!((first_refusal["action"].as_str(), first_refusal["errno"].as_i64()), (Some(action), Some(errno)));
        assert!(first_refusal.get("bytes_used").is_none(), "counts destinations, not bytes: {first_refusal}");
        if mode == "audit" {
            // Audited destinations are counted like the others.
            assert_eq!(events[2]["destinations_used"], 5, "{}", events[2]);
        }
    }
}

/// A window starts at the first destination after the last one ended: a
/// destination refused at the end of one is reached in the next.
#[test]
fn a_new_window_gives_new_destinations() {
    let sb = sandbox("new-destinations-window");
    let places = AnyLoopback::new();
    sb.write_policy_with("enforce", &places.policy("2/2s"));
    let steps = [
        format!("tcp-connect:{}", places.tcp(1)),
        format!("tcp-connect:{}", places.tcp(2)),
        format!("tcp-connect:{}", places.tcp(3)),
        "sleep-ms:2100".to_owned(),
        format!("tcp-connect:{}", places.tcp(3)),
        format!("tcp-connect:{}", places.tcp(1)),
        format!("tcp-connect:{}", places.tcp(2)),
    ];
    let out = sb.run(&steps);
    assert_eq!(errnos(&out), [0, 0, EPERM, 0, 0, 0, EPERM], "{out:#?}");
    assert_eq!(exceeded(&out).len(), 2, "{out:#?}");
}

/// The count is the kernel's, in a pinned map: a daemon killed and started
/// again lists it (status and metrics), and the agent still cannot reach
/// a destination more.
#[test]
fn the_count_outlives_the_daemon_and_is_listed() {
    use enforcer_tests::daemon::{Daemon, errno_of};
    let places = AnyLoopback::new();
    let policy = format!("name = \"agent\"\n{}", places.policy("2/1h"));
    let mut d = Daemon::start("new-destinations-restart", super::super::DEGRADED, &[("agent.toml", &policy)], "");
    let cgroup = d.cgroup("agent");
    let tag = d.ctl(&["tag", &cgroup, "--policy", "agent"]);
    assert!(tag.status.success(), "{}", String::from_utf8_lossy(&tag.stderr));
    let reached = [format!("tcp-connect:{}", places.tcp(1)), format!("udp-sendto:{}", places.udp(2))];
    let results = d.run_probe(&cgroup, &reached);
    assert_eq!(results.iter().map(|r| r["errno"].as_i64()).collect::<Vec<_>>(), [Some(0), Some(0)], "{results:?}");

    d.kill9();
    d.spawn();
    let (_, status) = d.api("GET", "/v1/status", None);
    let listed = status["new_destinations"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{status}");
    assert_eq!(
        (listed[0]["cgroup"].as_str(), listed[0]["used"].as_u64(), listed[0]["limit"].as_u64()),
        (Some(cgroup.as_str()), Some(2), Some(2)),
        "{status}"
    );
    let metrics = d.http("GET", "/metrics", None).1;
    let sample = format!("enforcer_new_destinations_used{{cgroup=\"{cgroup}\",policy=\"agent\"}} 2");
    assert!(metrics.contains(&sample), "{metrics}");
    let third = format!("tcp-connect:{}", places.tcp(3));
    let results = d.run_probe(&cgroup, &[reached[0].clone(), third.clone()]);
    assert_eq!(errno_of(&results, &reached[0]), 0, "reached already: {results:?}");
    assert_eq!(errno_of(&results, &third), EPERM, "{results:?}");
    let refused = d.wait_event("budget_exceeded", |e| e["kind"] == "budget_exceeded");
    assert_eq!(
        (refused["destinations_used"].as_u64(), refused["cgroup"].as_str(), refused["daddr"].as_str()),
        (Some(2), Some(cgroup.as_str()), Some("127.0.0.3"))
    );
}
