//! TLS names (`tls` on a host entry of `network.allow`), attacked from
//! inside the agent: a real TLS server (`openssl s_server`, its self-signed
//! certificate trusted by the client) answers on one address for two
//! allowed names and for a site that is not allowed; `curl` reaches it by
//! an allowed name, by the other allowed name, and by the other site's name
//! on the same address (refused before the ClientHello leaves), with no
//! name at all, and over UDP (QUIC's place: refused).

use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{Outcome, Sandbox};
use serde_json::Value;

use super::{probe, sandbox_via};

const EACCES: i64 = 13;

/// `openssl s_server` on 127.0.0.3, with a certificate for the names.
struct TlsServer {
    port: u16,
    cert: String,
    child: Child,
    _dns: enforcer_tests::DnsServer,
}

impl TlsServer {
    /// Serves; the sandbox's resolver hears `api.allowed.test` and
    /// `www.allowed.test` (both 127.0.0.3) from a fake upstream.
    fn start(sb: &mut Sandbox) -> Self {
        let dir = sb.outside_file("cert.pem");
        let dir = std::path::Path::new(&dir).parent().unwrap().to_owned();
        let (cert, key, config) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("openssl.cnf"));
        // The VM has no /usr/lib/ssl: the least `req` reads.
        std::fs::write(&config, "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
        let made = Command::new("openssl")
            .env("OPENSSL_CONF", &config)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", "/CN=api.allowed.test"])
            .args(["-addext", "subjectAltName=DNS:api.allowed.test,DNS:www.allowed.test,DNS:other.test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(made.status.success(), "openssl req: {}", String::from_utf8_lossy(&made.stderr));
        let port = TcpListener::bind("127.0.0.3:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("openssl")
            .env("OPENSSL_CONF", &config)
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.3:{port}")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.3", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ip = "127.0.0.3".parse::<std::net::IpAddr>().unwrap();
        let dns = enforcer_tests::DnsServer::start(&[("api.allowed.test", ip, 300), ("www.allowed.test", ip, 300)]);
        sb.dns_upstream = Some(dns.addr);
        Self { port, cert: cert.display().to_string(), child, _dns: dns }
    }

    /// A `curl` of `https://URL_HOST:PORT/` that prints `LABEL=EXIT`;
    /// `resolve` (`NAME:PORT:ADDRESS`) forces the address.
    fn curl(&self, label: &str, url_host: &str, resolve: Option<&str>) -> String {
        let resolve = resolve.map(|r| format!("--resolve {r} ")).unwrap_or_default();
        format!(
            "curl -sS --max-time 20 --cacert {cert} {resolve}-o /dev/null https://{url_host}:{port}/; echo {label}=$?",
            cert = self.cert,
            port = self.port
        )
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exit code `curl` printed for `label`.
fn exit_of(out: &Outcome, label: &str) -> i64 {
    let line = out.stdout.lines().find_map(|l| l.strip_prefix(&format!("{label}=")));
    line.and_then(|code| code.trim().parse().ok()).unwrap_or_else(|| panic!("no exit for {label}: {out:#?}"))
}

fn tls_events(out: &Outcome) -> Vec<&Value> {
    out.events.iter().filter(|e| e["kind"] == "sni_mismatch").collect()
}

/// Every BPF LSM kernel takes the judge (else the daemon would only warn,
/// and list TLS names as not enforced).
#[test]
fn the_kernel_takes_the_tls_name_judge() {
    let sb = Sandbox::under_enforcer_run("tls-judge");
    sb.write_policy_with("enforce", "[network]\nallow = [\"api.allowed.test:443\"]\n");
    let out = sb.finish(sb.spawn_command(&["/bin/true".into()]));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(!out.stderr.contains("TLS names cannot be checked"), "{}", out.stderr);
}

/// `check` (the default): an allowed name passes, so does the other name
/// that resolved to the address; a ClientHello naming a site that is not
/// allowed, on the same address, is refused before it leaves (`curl` sees
/// the send fail) with one `sni_mismatch` event; a connection with no name
/// passes. Audit mode reports the mismatch and lets it through.
#[test]
fn a_clienthello_must_name_a_name_that_resolved_to_the_address() {
    let ways = [("daemon", "enforce"), ("run", "enforce"), ("daemon", "audit")];
    for (via, mode) in ways.into_iter().filter(|(via, _)| Sandbox::ways().contains(via)) {
        let mut sb = sandbox_via(via, &format!("tls-check-{mode}"));
        let server = TlsServer::start(&mut sb);
        let port = server.port;
        sb.write_policy_with(mode, &format!("[network]\nallow = [\"*.allowed.test:{port}/tcp\"]\n"));
        let script = [
            server.curl("api", "api.allowed.test", None),
            server.curl("www", "www.allowed.test", None),
            server.curl("other", "other.test", Some(&format!("other.test:{port}:127.0.0.3"))),
            format!("curl -sS --max-time 20 -k -o /dev/null https://127.0.0.3:{port}/; echo bare=$?"),
        ]
        .join("; ");
        let out = sb.finish(sb.spawn_command(&["/bin/sh".into(), "-c".into(), script.into()]));
        assert_eq!(
            (exit_of(&out, "api"), exit_of(&out, "www"), exit_of(&out, "bare")),
            (0, 0, 0),
            "{via} {mode}: {out:#?}"
        );
        let other = exit_of(&out, "other");
        let events = tls_events(&out);
        assert_eq!(events.len(), 1, "{via} {mode}: one sni_mismatch event: {out:#?}");
        let e = events[0];
        assert_eq!((e["sni"].as_str(), e["reason"].as_str()), (Some("other.test"), Some("sni_mismatch")), "{e}");
        assert_eq!((e["daddr"].as_str(), e["dport"].as_u64()), (Some("127.0.0.3"), Some(u64::from(port))), "{e}");
        assert!(e["resolved_from"].as_str().is_some_and(|n| n.ends_with("allowed.test")), "{e}");
        if mode == "enforce" {
            assert_ne!(other, 0, "{via}: the other site's ClientHello left: {out:#?}");
            assert_eq!((e["action"].as_str(), e["errno"].as_i64()), (Some("deny"), Some(EACCES)), "{e}");
        } else {
            assert_eq!(other, 0, "audit lets it through: {out:#?}");
            assert_eq!((e["action"].as_str(), e["errno"].as_i64()), (Some("audit"), Some(0)), "{e}");
        }
    }
}

/// `tls = "require"`: a connection with no name (a bare address, or bytes
/// that are not TLS) is refused too; `tls = "off"` checks nothing.
#[test]
fn require_refuses_connections_without_a_name_and_off_checks_nothing() {
    for tls in ["require", "off"] {
        let mut sb = sandbox_via("daemon", &format!("tls-{tls}"));
        let server = TlsServer::start(&mut sb);
        let port = server.port;
        sb.write_policy_with(
            "enforce",
            &format!("[network]\nallow = [{{ to = \"*.allowed.test:{port}/tcp\", tls = \"{tls}\" }}]\n"),
        );
        let script = [
            server.curl("api", "api.allowed.test", None),
            format!("curl -sS --max-time 20 -k -o /dev/null https://127.0.0.3:{port}/; echo bare=$?"),
            server.curl("other", "other.test", Some(&format!("other.test:{port}:127.0.0.3"))),
            format!("{p} tcp-keep:127.0.0.3:{port} kept-upload:0:100", p = probe()),
        ]
        .join("; ");
        let out = sb.finish(sb.spawn_command(&["/bin/sh".into(), "-c".into(), script.into()]));
        assert_eq!(exit_of(&out, "api"), 0, "{tls}: {out:#?}");
        let plain = out.results.iter().filter(|r| r["step"] == "kept-upload:0:100").map(|r| r["errno"].as_i64());
        let plain: Vec<_> = plain.collect();
        if tls == "require" {
            assert_ne!(exit_of(&out, "bare"), 0, "no name, yet it passed: {out:#?}");
            assert_ne!(exit_of(&out, "other"), 0, "{out:#?}");
            assert_eq!(plain, [Some(EACCES)], "plain bytes where TLS is required: {out:#?}");
            let reasons: Vec<_> = tls_events(&out).iter().map(|e| e["reason"].as_str().unwrap_or("")).collect();
            assert_eq!(reasons, ["tls_no_name", "sni_mismatch", "tls_no_name"], "{out:#?}");
        } else {
            assert_eq!((exit_of(&out, "bare"), exit_of(&out, "other")), (0, 0), "{out:#?}");
            assert_eq!(plain, [Some(0)], "{out:#?}");
            assert!(tls_events(&out).is_empty(), "{out:#?}");
        }
    }
}

/// The agent goes around the judge: UDP to the checked address (QUIC's
/// place) is refused at the send; a ClientHello written a byte at a time is
/// held until it is whole, then judged; TCP Fast Open data would leave in
/// the SYN, before the judge sees the connection: refused, by `sendto`
/// (`MSG_FASTOPEN`) and by socket option (`TCP_FASTOPEN_CONNECT`). Fast
/// Open to a port of the same address that a static rule allows (no name is
/// checked there) goes.
#[test]
fn udp_split_hellos_and_fast_open_do_not_get_around_the_judge() {
    let mut sb = sandbox_via("daemon", "tls-around");
    let server = TlsServer::start(&mut sb);
    let port = server.port;
    let udp = UdpSocket::bind(("127.0.0.3", port)).unwrap();
    let unchecked = TcpListener::bind("127.0.0.3:0").unwrap();
    let static_port = unchecked.local_addr().unwrap().port();
    sb.write_policy_with(
        "enforce",
        &format!("[network]\nallow = [\"*.allowed.test:{port}\", \"127.0.0.3:{static_port}/tcp\"]\n"),
    );
    let steps = [
        format!("resolve-connect:api.allowed.test:{port}"),
        format!("udp-keep:127.0.0.3:{port}"),
        format!("tcp-keep:127.0.0.3:{port}"),
        "kept-hello:0:other.test".to_owned(),
        format!("tcp-fastopen:127.0.0.3:{port}"),
        format!("tcp-fastopen-connect:127.0.0.3:{port}"),
        format!("tcp-fastopen:127.0.0.3:{static_port}"),
    ];
    let mut command = vec![probe().into()];
    command.extend(steps.iter().map(Into::into));
    // Fast Open data without a cookie from the server first (client flag
    // 0x4), so `connect` after TCP_FASTOPEN_CONNECT defers to the write.
    let sysctl = "/proc/sys/net/ipv4/tcp_fastopen";
    let was = std::fs::read_to_string(sysctl).unwrap();
    std::fs::write(sysctl, "5").unwrap();
    let out = sb.finish(sb.spawn_command(&command));
    std::fs::write(sysctl, was.trim()).unwrap();
    drop(udp);
    assert_eq!(out.errno(&steps[0]), 0, "{out:#?}");
    assert_eq!(out.errno(&steps[1]), 1, "UDP to a checked address (EPERM): {out:#?}");
    assert_eq!(out.errno(&steps[3]), EACCES, "a ClientHello a byte at a time: {out:#?}");
    assert_eq!(out.errno(&steps[4]), 1, "TCP Fast Open data to a checked address (EPERM): {out:#?}");
    assert_eq!(out.errno(&steps[5]), 1, "the first write after TCP_FASTOPEN_CONNECT (EPERM): {out:#?}");
    assert_eq!(out.errno(&steps[6]), 0, "Fast Open where a static rule allows it: {out:#?}");
    drop(unchecked);
    let reasons: Vec<_> = out.events.iter().map(|e| (e["kind"].as_str(), e["reason"].as_str())).collect();
    assert!(reasons.contains(&(Some("connect"), Some("quic_refused"))), "{reasons:?}");
    assert!(reasons.contains(&(Some("sni_mismatch"), Some("sni_mismatch"))), "{reasons:?}");
}

/// The judge's `sock_ops` program runs at every TCP callback of the cgroups
/// it is on (and, once on any, every TCP callback on the host looks for
/// one), so it goes on only once a policy checks names: a cgroup tagged
/// before is given it when such a version is loaded, and the check holds.
#[test]
fn a_cgroup_tagged_before_a_policy_checks_names_is_judged_once_one_does() {
    use enforcer_tests::daemon::{Daemon, errno_of};
    let listener = TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = enforcer_tests::DnsServer::start(&[("api.allowed.test", "127.0.0.3".parse().unwrap(), 300)]);
    let policy = |to: &str| format!("name = \"agent\"\n[network]\nallow = [\"{to}:{port}/tcp\"]\n");
    // Pins of its own: the judge is on for good once any daemon of the
    // shared pins loaded a policy that checks names (earlier tests did).
    let bpffs = "/sys/fs/bpf/enforcer-tls-late";
    let _ = std::fs::remove_dir_all(bpffs);
    let config = format!("bpffs = \"{bpffs}\"\n[dns]\nupstream = \"{}\"\n", dns.addr);
    let mut d = Daemon::start("tls-late", false, &[("agent.toml", &policy("127.0.0.3"))], &config);
    let cgroup = d.cgroup("agent");
    let tag = d.ctl(&["tag", &cgroup, "--policy", "agent"]);
    assert!(tag.status.success(), "{}", String::from_utf8_lossy(&tag.stderr));
    let links = |d: &Daemon| {
        let (_, status) = d.api("GET", "/v1/status", None);
        let pins = std::path::PathBuf::from(status["daemon"]["pins"].as_str().expect("pins"));
        let tags = status["tags"].as_array().cloned().unwrap_or_default();
        let id = tags.iter().find(|t| t["cgroup"] == cgroup.as_str()).expect("tagged")["cgroup_id"].clone();
        let names = std::fs::read_dir(pins.join("net").join(id.to_string())).unwrap();
        names.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()
    };
    assert!(!links(&d).iter().any(|l| l == "tls_established"), "no judge before names are checked: {:?}", links(&d));

    d.write_policy("agent.toml", &policy("api.allowed.test"));
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 2);
    assert!(links(&d).iter().any(|l| l == "tls_established"), "the judge joined: {:?}", links(&d));
    let steps = [
        format!("resolve-connect:api.allowed.test:{port}"),
        format!("tcp-keep:127.0.0.3:{port}"),
        "kept-hello:0:other.test".to_owned(),
        format!("tcp-keep:127.0.0.3:{port}"),
        "kept-hello:1:api.allowed.test".to_owned(),
    ];
    let results = d.run_probe(&cgroup, &steps);
    assert_eq!(errno_of(&results, &steps[0]), 0, "resolved: {results:?}\n{}", d.log());
    assert_eq!(errno_of(&results, "kept-hello:0:other.test"), EACCES, "{results:?}");
    assert_eq!(errno_of(&results, "kept-hello:1:api.allowed.test"), 0, "{results:?}");
    d.wait_event("sni_mismatch", |e| e["kind"] == "sni_mismatch" && e["sni"] == "other.test");
    // Its programs go with their pins.
    d.kill9();
    let _ = std::fs::remove_dir_all(bpffs);
    drop(listener);
}
