//! Upload budgets (`network.upload`), attacked from inside the agent: the
//! send that would cross a budget fails with `EDQUOT` (an error the sender
//! sees), for every process of the agent and every way bytes leave; a
//! name's budget counts its addresses; the count outlives the daemon.

use std::net::TcpListener;

use enforcer_tests::{Outcome, Sandbox};
use serde_json::Value;

use super::{Places, TwoNames, kernel_version, probe, sandbox_via};

const EDQUOT: i64 = 122;

/// The errno of each step, in order.
fn errnos(out: &Outcome) -> Vec<i64> {
    out.results.iter().map(|r| r["errno"].as_i64().unwrap_or(-1)).collect()
}

/// The one `budget_exceeded` event of `out`, checked against the budget.
fn exceeded<'a>(out: &'a Outcome, budget: &str, used: u64, limit: u64, send: u64) -> &'a Value {
    let events: Vec<&Value> = out.events.iter().filter(|e| e["kind"] == "budget_exceeded").collect();
    assert_eq!(events.len(), 1, "one budget_exceeded event: {out:#?}");
    let e = events[0];
    assert_eq!(
        (e["budget"].as_str(), e["bytes_used"].as_u64(), e["bytes_limit"].as_u64(), e["send_bytes"].as_u64()),
        (Some(budget), Some(used), Some(limit), Some(send)),
        "{e}"
    );
    assert_eq!((e["reason"].as_str(), e["proto"].as_str()), (Some("budget_exceeded"), Some("tcp")), "{e}");
    e
}

/// `*: 48KiB/1h`: one process sends 40000 bytes; a second (the same agent)
/// cannot send 16 KiB more to another allowed place, yet sends what still
/// fits, by `write`, `send` and (from Linux 6.5, as the README says)
/// `sendfile`, until the byte that would cross it.
#[test]
fn an_upload_budget_holds_for_every_process_of_the_agent_and_every_way_bytes_leave() {
    for mode in ["enforce", "audit"] {
        let sb = Sandbox::new(&format!("budget-all-{mode}"));
        let places = Places::new();
        sb.write_policy_with(
            mode,
            &format!(
                "[network]\nallow = [\"127.0.0.1:{}/tcp\", \"127.0.0.1:{}/tcp\", \"127.0.0.1:{}/udp\"]\nupload = \
                 [\"*: 48KiB/1h\"]\n",
                places.open.port(),
                places.kept.port(),
                places.udp.port()
            ),
        );
        let notes = sb.outside_file("notes");
        std::fs::write(&notes, [b'n'; 64]).unwrap();
        let first = [format!("tcp-keep:{}", places.open), "kept-upload:0:40000".to_owned()];
        let second = [
            format!("tcp-keep:{}", places.kept),
            "kept-upload:0:16384".to_owned(),
            format!("udp-keep:{}", places.udp),
            "kept-send:1".to_owned(),
            "kept-upload:0:9000".to_owned(),
            format!("kept-sendfile:0:{notes}"),
            "kept-upload:0:100".to_owned(),
            "kept-upload:0:10".to_owned(),
        ];
        let script = format!("{p} {}; {p} {}", first.join(" "), second.join(" "), p = probe());
        let out = sb.finish(sb.spawn_command(&["/bin/sh".into(), "-c".into(), script.into()]));
        let errnos_of_steps = errnos(&out);
        // 40000, then 16384 more would be 56384 of 49152; 40000 + 1 + 9000
        // + 64 (sendfile, counted from 6.5) + 100 crosses it from 6.5 only.
        let sendfile_counted = kernel_version() >= (6, 5);
        let hundred_more = if sendfile_counted { EDQUOT } else { 0 };
        let refused = if mode == "enforce" { EDQUOT } else { 0 };
        let expected = [0, 0, 0, refused, 0, 0, 0, 0, if mode == "enforce" { hundred_more } else { 0 }, 0];
        assert_eq!(errnos_of_steps, expected, "{mode} on {:?}: {out:#?}", kernel_version());
        let events: Vec<&Value> = out.events.iter().filter(|e| e["kind"] == "budget_exceeded").collect();
        let first_refusal = events.first().unwrap_or_else(|| panic!("{mode}: no budget_exceeded event: {out:#?}"));
        assert_eq!(
            (first_refusal["budget"].as_str(), first_refusal["bytes_used"].as_u64()),
            (Some("*"), Some(40000)),
            "{first_refusal}"
        );
        assert_eq!(
            (first_refusal["bytes_limit"].as_u64(), first_refusal["window_s"].as_u64()),
            (Some(49152), Some(3600)),
            "{first_refusal}"
        );
        assert_eq!(
            (first_refusal["daddr"].as_str(), first_refusal["dport"].as_u64()),
            (Some("127.0.0.1"), Some(u64::from(places.kept.port()))),
            "{first_refusal}"
        );
        if mode == "enforce" {
            assert_eq!(
                (first_refusal["action"].as_str(), first_refusal["errno"].as_i64()),
                (Some("deny"), Some(EDQUOT))
            );
            assert_eq!(events.len(), 1 + usize::from(sendfile_counted), "{events:#?}");
        } else {
            // Audit: every send past the budget is reported, and sent.
            assert!(events.iter().all(|e| e["action"] == "audit" && e["errno"] == 0), "{events:#?}");
            assert!(events.len() >= 2, "{events:#?}");
        }
    }
}

/// A name's budget counts the addresses the resolver gave for it (and no
/// other name's); `*` is absent, so other places are not counted.
#[test]
fn a_names_budget_counts_its_addresses_only() {
    let mut sb = Sandbox::under_daemon("budget-name");
    let names = TwoNames::serve(&mut sb);
    let port = names.port;
    sb.write_policy_with(
        "enforce",
        &format!("[network]\nallow = [\"*.allowed.test:{port}\"]\nupload = [\"upload.allowed.test: 20000B/10m\"]\n"),
    );
    let steps = [
        format!("resolve-connect:upload.allowed.test:{port}"),
        format!("resolve-connect:api.allowed.test:{port}"),
        format!("tcp-keep:127.0.0.4:{port}"),
        format!("tcp-keep:127.0.0.3:{port}"),
        "kept-upload:0:16384".to_owned(),
        "kept-upload:1:16384".to_owned(),
        "kept-upload:1:16385".to_owned(),
        "kept-upload:0:4000".to_owned(),
        "kept-upload:0:3616".to_owned(),
    ];
    let out = sb.run(&steps);
    assert_eq!(errnos(&out), [0, 0, 0, 0, 0, 0, 0, EDQUOT, 0], "{out:#?}");
    let e = exceeded(&out, "upload.allowed.test", 16384, 20000, 4000);
    assert_eq!((e["daddr"].as_str(), e["resolved_from"].as_str()), (Some("127.0.0.4"), Some("upload.allowed.test")));
}

/// The counts are the kernel's, in a pinned map: a daemon killed and
/// started again lists them (status and metrics) and goes on refusing.
#[test]
fn an_upload_budget_outlives_the_daemon_and_is_listed() {
    use enforcer_tests::daemon::{Daemon, errno_of};
    let places = Places::new();
    let policy = format!(
        "name = \"agent\"\n[network]\nallow = [\"127.0.0.1:{}/tcp\"]\nupload = [\"*: 32KiB/1h\"]\n",
        places.open.port()
    );
    let mut d = Daemon::start("budget-restart", false, &[("agent.toml", &policy)], "");
    let cgroup = d.cgroup("agent");
    let tag = d.ctl(&["tag", &cgroup, "--policy", "agent"]);
    assert!(tag.status.success(), "{}", String::from_utf8_lossy(&tag.stderr));
    let keep = format!("tcp-keep:{}", places.open);
    let results = d.run_probe(&cgroup, &[keep.clone(), "kept-upload:0:30000".to_owned()]);
    assert_eq!(errno_of(&results, "kept-upload:0:30000"), 0, "{results:?}");

    d.kill9();
    d.spawn();
    let (_, status) = d.api("GET", "/v1/status", None);
    let listed = status["upload_budgets"].as_array().cloned().unwrap_or_default();
    assert!(listed.len() == 1, "{status}");
    assert_eq!(
        (listed[0]["cgroup"].as_str(), listed[0]["budget"].as_str(), listed[0]["bytes_used"].as_u64()),
        (Some(cgroup.as_str()), Some("*"), Some(30000)),
        "{status}"
    );
    assert_eq!(listed[0]["bytes_limit"], 32768, "{status}");
    let metrics = d.http("GET", "/metrics", None).1;
    let sample =
        format!("enforcer_upload_budget_used_bytes{{cgroup=\"{cgroup}\",policy=\"agent\",budget=\"*\"}} 30000");
    assert!(metrics.contains(&sample), "{metrics}");
    let results = d.run_probe(&cgroup, &[keep.clone(), "kept-upload:0:4000".to_owned()]);
    assert_eq!(errno_of(&results, "kept-upload:0:4000"), EDQUOT, "{results:?}");
    let refused = d.wait_event("budget_exceeded", |e| e["kind"] == "budget_exceeded");
    assert_eq!((refused["bytes_used"].as_u64(), refused["cgroup"].as_str()), (Some(30000), Some(cgroup.as_str())));
}

/// A window starts at the first send after the last one ended: a send
/// refused at the end of one goes in the next. IPv6 sends count the same
/// (after `inet6_sendmsg`).
#[test]
fn a_new_window_starts_after_the_last_one_ended() {
    let sb = Sandbox::new("budget-window");
    let places = Places::new();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let v6_port = v6.local_addr().unwrap().port();
    sb.write_policy_with(
        "enforce",
        &format!(
            "[network]\nallow = [\"127.0.0.1:{}/tcp\", \"[::1]:{v6_port}/tcp\"]\nupload = [\"*: 20000B/2s\"]\n",
            places.open.port()
        ),
    );
    let steps = [
        format!("tcp-keep:{}", places.open),
        format!("tcp-keep:[::1]:{v6_port}"),
        "kept-upload:0:16384".to_owned(),
        "kept-upload:1:16383".to_owned(),
        "sleep-ms:2100".to_owned(),
        "kept-upload:1:16382".to_owned(),
        "kept-upload:1:3618".to_owned(),
        "kept-upload:0:1".to_owned(),
    ];
    let out = sb.run(&steps);
    assert_eq!(errnos(&out), [0, 0, 0, EDQUOT, 0, 0, 0, EDQUOT], "{out:#?}");
    let refused: Vec<(Option<u64>, Option<u64>)> = out
        .events
        .iter()
        .filter(|e| e["kind"] == "budget_exceeded")
        .map(|e| (e["bytes_used"].as_u64(), e["send_bytes"].as_u64()))
        .collect();
    assert_eq!(refused, [(Some(16384), Some(16383)), (Some(20000), Some(1))], "{out:#?}");
}

/// Data in names under an allowed wildcard leaves one query at a time:
/// `dns_names` cuts the tunnel after its count of distinct names per
/// window (a name asked again is answered; letter case makes a new name),
/// under `enforcer run`'s resolver and the daemon's (which tells agents
/// apart by the asking socket's cgroup).
#[test]
fn a_tunnel_of_distinct_names_is_cut_at_the_names_budget() {
    for &via in Sandbox::ways() {
        let mut sb = sandbox_via(via, "budget-names");
        let names = TwoNames::serve(&mut sb);
        sb.write_policy_with("enforce", "[network]\nallow = [\"*.allowed.test:443\"]\ndns_names = \"3/1h\"\n");
        let ask = |name: &str| format!("dns-udp:{name}@127.0.0.77:53");
        let steps = [
            ask("c2VjcmV0.allowed.test"),
            ask("dG9rZW4.allowed.test"),
            ask("api.allowed.test"),
            ask("Z2hwXw.allowed.test"),
            ask("c2VjcmV0.allowed.test"),
            ask("C2VjcmV0.allowed.test"),
        ];
        let out = sb.run(&steps);
        // 103: NXDOMAIN from upstream; 105: REFUSED by the budget.
        assert_eq!(errnos(&out), [103, 103, 0, 105, 103, 105], "{via}: {out:#?}");
        let queries = names.dns.queries();
        // The upstream sees names in lower case: the first one twice (asked
        // again), its upper-case variant and the fourth name never.
        let asked = |name: &str| queries.iter().filter(|q| *q == name).count();
        assert_eq!(
            (asked("c2vjcmv0.allowed.test"), asked("z2hwxw.allowed.test")),
            (2, 0),
            "{via}: refused names never leave: {queries:?}"
        );
        let refused: Vec<&str> = out
            .events
            .iter()
            .filter(|e| e["kind"] == "dns" && e["reason"] == "dns_names_exceeded")
            .filter_map(|e| e["qname"].as_str())
            .collect();
        assert_eq!(refused, ["Z2hwXw.allowed.test", "C2VjcmV0.allowed.test"], "{via}: {out:#?}");
    }
}
