//! The fleet daemon, in both tiers: tags through the CLI and the HTTP API,
//! enforcement that survives SIGKILL and is adopted by a restart, hot
//! reloads, followers, and an API closed to agents. Denials are network
//! ones (enforced on the host too); the VM tier adds file denials.

use std::{
    io::{BufRead, BufReader, Read as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    EPERM,
    daemon::{Daemon, errno_of, in_cgroup},
    enforcer_bin, release, wait_ready,
};
use serde_json::Value;

use super::DEGRADED;

const ECONNREFUSED: i64 = 111;
/// Nothing listens on these: an allowed connect is refused by the peer
/// (ECONNREFUSED), a denied one by the enforcer (EPERM).
const ALLOWED: &str = "tcp-connect:127.0.0.1:81";
const DENIED: &str = "tcp-connect:127.0.0.1:82";

/// The errno of a running probe's next step.
fn read_errno(stdout: &mut impl BufRead) -> i64 {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("probe result");
    serde_json::from_str::<Value>(&line).expect("result JSON")["errno"].as_i64().expect("errno")
}

fn policy(ports: &str, write_tree: &str) -> String {
    format!("name = \"agent\"\n[files]\nwrite = [\"{write_tree}\"]\n[network]\nallow = [\"127.0.0.1/32:{ports}\"]\n")
}

fn connects(daemon: &Daemon, port: u16) -> Vec<Value> {
    daemon.events().into_iter().filter(|e| e["kind"] == "connect" && e["dport"] == port).collect()
}

fn ok(out: &std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the CLI failed ({}): {text}", out.status);
    text
}

#[test]
fn daemon_tags_and_untags_through_the_cli_and_the_http_api() {
    let mut d = Daemon::start("daemon-tag", DEGRADED, &[], "");
    d.write_policy("agent.toml", &policy("81", "/tmp/enforcer-tests/daemon-tag/allowed"));
    ok(&d.ctl(&["reload"]));
    let cgroup = d.cgroup("tag");
    let out = ok(&d.ctl(&["tag", &cgroup, "--policy", "agent", "--label", "team=infra"]));
    assert!(out.contains(&format!("tagged {cgroup}")), "{out}");

    let results = d.run_probe(&cgroup, &[DENIED.to_owned(), ALLOWED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), EPERM);
    assert_eq!(errno_of(&results, ALLOWED), ECONNREFUSED);
    let event = d.wait_event("connect", |e| e["kind"] == "connect" && e["dport"] == 82);
    assert_eq!(event["policy"], "agent", "{event}");
    assert_eq!(event["policy_version"], 1, "{event}");
    assert_eq!(event["policy_hash"].as_str().map(str::len), Some(16), "{event}");
    assert_eq!(event["cgroup"], cgroup.as_str(), "{event}");
    assert!(event["seq"].as_u64().is_some_and(|s| s > 0), "every line is numbered: {event}");
    assert!(connects(&d, 81).is_empty(), "an allowed connect is not an event");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&d.events).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640, "the events file is root's and its group's alone");

    // The API is plain HTTP on the socket (curl --unix-socket works the same).
    let (code, status) = d.api("GET", "/v1/status", None);
    assert_eq!(code, 200, "{status}");
    let tags = status["tags"].as_array().expect("tags");
    assert!(tags.iter().any(|t| t["cgroup"] == cgroup.as_str() && t["labels"]["team"] == "infra"), "{status}");
    assert_eq!(status["kernel"]["bpf_lsm"], !DEGRADED, "{status}");
    let (code, answer) = d.api("DELETE", &format!("/v1/tags?cgroup={cgroup}"), None);
    assert_eq!(code, 200, "{answer}");
    let results = d.run_probe(&cgroup, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), ECONNREFUSED, "untagged: not enforced any more");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connects(&d, 82).len(), 1, "no event after untagging");

    // And back, through the API, then mistakes: each says what is wrong.
    let body = serde_json::json!({"cgroup": cgroup, "policy": "agent"});
    let (code, answer) = d.api("POST", "/v1/tags", Some(&body));
    assert_eq!(code, 200, "{answer}");
    let out = d.ctl(&["tag", &cgroup, "--policy", "no-such-policy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no policy named `no-such-policy`") && stderr.contains("agent"), "{stderr}");
    let out = d.ctl(&["tag", "/enforcer-tests/no-such-cgroup", "--policy", "agent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = ok(&d.ctl(&["untag", &cgroup]));
    assert!(out.contains("untagged"), "{out}");

    // A tag the daemon cannot save (a restart would not know it) is refused
    // and leaves the cgroup as it was.
    let blocker = d.base.join("state").join("state.json.new");
    std::fs::create_dir_all(&blocker).expect("block the state file");
    let out = d.ctl(&["tag", &cgroup, "--policy", "agent"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot save the daemon's state") && stderr.contains("not applied"),
        "{stderr}"
    );
    let results = d.run_probe(&cgroup, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), ECONNREFUSED, "the refused tag is not in force");
    let (_, status) = d.api("GET", "/v1/status", None);
    assert!(!status["tags"].as_array().expect("tags").iter().any(|t| t["cgroup"] == cgroup.as_str()), "{status}");
    std::fs::remove_dir(&blocker).expect("unblock");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
}

#[test]
fn a_killed_daemon_leaves_enforcement_and_a_restart_adopts_it() {
    // Trees outside the daemon's directory: they exist before it loads.
    let base = "/tmp/enforcer-tests/daemon-kill-trees";
    std::fs::create_dir_all(format!("{base}/allowed")).unwrap();
    std::fs::create_dir_all(format!("{base}/outside")).unwrap();
    // One line of history in memory: `--since` reads the rest from the file.
    let agent = policy("81", &format!("{base}/allowed"));
    let mut d = Daemon::start("daemon-kill", DEGRADED, &[("agent.toml", &agent)], "history = 1\n");
    let cgroup = d.cgroup("kill");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let write_outside = format!("write:{base}/outside/after-kill");
    let write_allowed = format!("write:{base}/allowed/after-kill");

    d.kill9();
    let results =
        d.run_probe(&cgroup, &[DENIED.to_owned(), ALLOWED.to_owned(), write_outside.clone(), write_allowed.clone()]);
    assert_eq!(errno_of(&results, DENIED), EPERM, "enforced with no daemon running");
    assert_eq!(errno_of(&results, ALLOWED), ECONNREFUSED);
    assert_eq!(errno_of(&results, &write_allowed), 0);
    if !DEGRADED {
        assert_eq!(errno_of(&results, &write_outside), EPERM, "file rules stay too");
    }

    d.spawn();
    let (_, status) = d.api("GET", "/v1/status", None);
    assert_eq!(status["daemon"]["adopted"], true, "{status}");
    // A follower of the restarted daemon replays what the killed one wrote
    // (from the events file, past the one line of history), and the
    // numbering goes on.
    let started = d.tail(&["--since", "1h", "--kind", "daemon_started"], 2);
    assert_eq!(started.len(), 2, "both daemons' starts: {started:#?}\n{}", d.log());
    assert_eq!(started[1]["adopted"], true, "{started:#?}");
    assert!(started[0]["seq"].as_u64() < started[1]["seq"].as_u64(), "numbered on: {started:#?}");
    assert!(status["tags"].as_array().is_some_and(|t| t.iter().any(|t| t["cgroup"] == cgroup.as_str())), "{status}");
    // The denial made while no daemon ran is delivered now.
    d.wait_event("connect", |e| e["kind"] == "connect" && e["dport"] == 82);
    if !DEGRADED {
        d.wait_event("file_write", |e| e["path"] == format!("{base}/outside/after-kill").as_str());
    }
    // One copy of the programs: one build's pins, one set of links on the cgroup.
    let pins = std::path::PathBuf::from(status["daemon"]["pins"].as_str().expect("pins"));
    let builds = std::fs::read_dir(pins.parent().unwrap()).unwrap().count();
    assert_eq!(builds, 1, "only this build's pins");
    let id = status["tags"].as_array().unwrap().iter().find(|t| t["cgroup"] == cgroup.as_str()).unwrap()["cgroup_id"]
        .clone();
    let links = std::fs::read_dir(pins.join("net").join(id.to_string())).unwrap().count();
    // Six address programs, `sock_create` (socket classes without BPF
    // LSM; agents' sockets always) and `inbound` (the TLS name judge's
    // sock_ops program joins them once a policy checks names).
    assert_eq!(links, 8, "the socket programs are attached once");
    let results = d.run_probe(&cgroup, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), EPERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connects(&d, 82).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connects(&d, 82).len(), 2, "one event per denial, no duplicates: {:#?}", connects(&d, 82));

    // SIGTERM: the daemon goes, enforcement stays.
    d.stop();
    let results = d.run_probe(&cgroup, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), EPERM);
    d.spawn();
    drop(d);
    let _ = std::fs::remove_dir_all(base);
}

/// The daemon's resolver across what a fleet does to it: a reload keeps
/// the addresses agents resolved for names the new version still allows
/// (and only those); with the daemon down, lookups fail closed while the
/// grants made keep their TTL; a restarted daemon answers again without
/// anything tagged anew.
#[test]
fn host_names_outlive_a_reload_and_a_restart_and_fail_closed_in_between() {
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = enforcer_tests::DnsServer::start(&[
        ("api.allowed.test", "127.0.0.3".parse().unwrap(), 300),
        ("evil.test", "127.0.0.5".parse().unwrap(), 300),
    ]);
    let policy = |extra: &str| format!("name = \"agent\"\n[network]\nallow = [\"api.allowed.test:{port}\"{extra}]\n");
    let upstream = format!("[dns]\nupstream = \"{}\"\n", dns.addr);
    let mut d = Daemon::start("daemon-dns", DEGRADED, &[("agent.toml", &policy(""))], &upstream);
    let cgroup = d.cgroup("dns");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let resolve = format!("resolve-connect:api.allowed.test:{port}");
    let connect = format!("tcp-connect:127.0.0.3:{port}");
    let results = d.run_probe(&cgroup, std::slice::from_ref(&resolve));
    assert_eq!(errno_of(&results, &resolve), 0, "resolved and connected: {results:?}\n{}", d.log());

    // Version 2 still allows the name: the address it resolved to connects
    // with no new lookup.
    d.write_policy("agent.toml", &policy(", \"127.0.0.1/32:81\""));
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 2);
    let results = d.run_probe(&cgroup, std::slice::from_ref(&connect));
    assert_eq!(errno_of(&results, &connect), 0, "the grant came along with the reload");

    // No daemon: what was granted still connects; no name resolves.
    d.kill9();
    let ask_tcp = "dns-tcp:api.allowed.test@127.0.0.77:53".to_owned();
    let results = d.run_probe(&cgroup, &[connect.clone(), ask_tcp.clone(), resolve.clone()]);
    assert_eq!(errno_of(&results, &connect), 0, "a grant keeps its TTL with the daemon gone");
    assert_eq!(errno_of(&results, &ask_tcp), ECONNREFUSED, "lookups fail closed: {results:?}");
    assert_eq!(errno_of(&results, &resolve), 1000, "nothing resolves: {results:?}");

    // Restarted: it answers again, for the same tag.
    d.spawn();
    let refused = "dns-udp:evil.test@127.0.0.77:53".to_owned();
    let results = d.run_probe(&cgroup, &[resolve.clone(), refused.clone()]);
    assert_eq!(errno_of(&results, &resolve), 0, "served again: {results:?}\n{}", d.log());
    assert_eq!(errno_of(&results, &refused), 103, "NXDOMAIN for a name not allowed");
    let event = d.wait_event("dns", |e| e["kind"] == "dns" && e["qname"] == "evil.test");
    assert_eq!(event["cgroup"], cgroup.as_str(), "names the asking cgroup: {event}");
    assert_eq!(event["policy"], "agent", "{event}");

    // Version 3 drops the name: its address no longer connects.
    d.write_policy("agent.toml", "name = \"agent\"\n[network]\nallow = [\"127.0.0.1/32:81\"]\n");
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 3);
    let results = d.run_probe(&cgroup, std::slice::from_ref(&connect));
    assert_eq!(errno_of(&results, &connect), EPERM, "a name no longer allowed keeps no address");
    drop(listener);
}

#[test]
fn a_hot_reload_applies_to_a_running_process_and_a_bad_file_changes_nothing() {
    let tree = "/tmp/enforcer-tests/daemon-reload/allowed";
    let mut d = Daemon::start("daemon-reload", DEGRADED, &[("agent.toml", &policy("82", tree))], "");
    let cgroup = d.cgroup("reload");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let wait = "wait-stdin:".to_owned();
    let steps = [DENIED.to_owned(), wait.clone(), DENIED.to_owned(), wait, DENIED.to_owned()];
    let mut probe = d.spawn_probe(&cgroup, &steps);
    let (_, mut stdout) = wait_ready(&mut probe);
    let mut next_errno = || read_errno(&mut stdout);
    assert_eq!(next_errno(), ECONNREFUSED, "version 1 allows port 82");

    // Tighten: the same running process is denied on its next connect.
    d.write_policy("agent.toml", &policy("81", tree));
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 2);
    release(&mut probe);
    assert_eq!(next_errno(), 0, "wait-stdin");
    assert_eq!(next_errno(), EPERM, "version 2 denies port 82");
    let event = d.wait_event("connect", |e| e["kind"] == "connect" && e["dport"] == 82);
    assert_eq!(event["policy_version"], 2, "{event}");

    // A broken file is rejected, reported, and version 2 stays in force.
    d.write_policy("agent.toml", "name = \"agent\"\n[network]\nallow = [\n");
    let rejected =
        d.wait_event("rejected reload", |e| e["kind"] == "policy_reload" && e["rejected"][0]["error"].is_string());
    assert!(rejected["rejected"][0]["error"].as_str().unwrap().contains("agent.toml:3:"), "{rejected}");
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "reload reports the rejection");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.toml:3:"));
    let policies = ok(&d.ctl(&["policies"]));
    assert!(policies.contains("agent  version 2"), "{policies}");
    release(&mut probe);
    assert_eq!(next_errno(), 0, "wait-stdin");
    assert_eq!(next_errno(), EPERM, "still version 2");
    let (_, status) = d.api("GET", "/v1/status", None);
    assert!(status["rejected"][0]["error"].as_str().is_some_and(|e| e.contains("agent.toml")), "{status}");
    let _ = probe.wait();
}

/// A reload changes a policy's destinations in place, entry by entry: a
/// destination both versions allow is never refused while versions change
/// under a connect loop (its entry's ports change, the entries around it
/// do not), one the new version drops is refused as soon as the reload is
/// reported, one it adds is allowed by then; a version without
/// `[network]` and the one after it start clean.
#[test]
fn a_reload_changes_destinations_in_place_and_never_refuses_what_both_versions_allow() {
    let version = |odd: bool| {
        let mut allow: Vec<String> = (0..300).map(|i| format!("\"10.9.{}.{}/32:443\"", i / 256, i % 256)).collect();
        allow.push("\"127.0.0.0/8:83\"".to_owned());
        allow.push("\"127.0.0.1/32:82\"".to_owned());
        if !odd {
            allow.push("\"127.0.0.1/32:90\"".to_owned());
        }
        allow.push(format!("\"127.0.0.{}/32:82\"", if odd { 3 } else { 4 }));
        format!("name = \"agent\"\n[network]\nallow = [{}]\n", allow.join(", "))
    };
    let mut d = Daemon::start("daemon-in-place", DEGRADED, &[("agent.toml", &version(true))], "");
    let cgroup = d.cgroup("in-place");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let steps = ["tcp-loop-bg:127.0.0.1:82", "wait-stdin:", "tcp-loop-tries:", "tcp-loop-refused:"].map(String::from);
    let mut looper = d.spawn_probe(&cgroup, &steps);
    let (_, mut stdout) = wait_ready(&mut looper);
    let mut next_errno = || read_errno(&mut stdout);
    assert_eq!(next_errno(), 0, "the loop started");
    let (dropped, added) = ("tcp-connect:127.0.0.3:82".to_owned(), "tcp-connect:127.0.0.4:82".to_owned());
    for n in 2..=7 {
        let odd = n % 2 == 1;
        d.write_policy("agent.toml", &version(odd));
        d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == n);
        let results = d.run_probe(&cgroup, &[dropped.clone(), added.clone(), "tcp-connect:127.0.0.1:90".to_owned()]);
        let (was_dropped, was_added) = if odd { (&added, &dropped) } else { (&dropped, &added) };
        assert_eq!(errno_of(&results, was_dropped), EPERM, "version {n} dropped {was_dropped}");
        assert_eq!(errno_of(&results, was_added), ECONNREFUSED, "version {n} added {was_added}");
        let port_90 = errno_of(&results, "tcp-connect:127.0.0.1:90");
        assert_eq!(port_90, if odd { EPERM } else { ECONNREFUSED }, "version {n}: its entry's ports changed");
    }
    // A version without [network] judges no connect; the next one with it
    // starts from its own entries, none left of the versions before.
    d.write_policy("agent.toml", "name = \"agent\"\n");
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 8);
    assert_eq!(errno_of(&d.run_probe(&cgroup, std::slice::from_ref(&dropped)), &dropped), ECONNREFUSED);
    d.write_policy("agent.toml", &version(false));
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["version"] == 9);
    let results = d.run_probe(&cgroup, &[dropped.clone(), added.clone()]);
    assert_eq!((errno_of(&results, &dropped), errno_of(&results, &added)), (EPERM, ECONNREFUSED));
    release(&mut looper);
    assert_eq!(next_errno(), 0, "wait-stdin");
    let tries = next_errno();
    assert!(tries > 6, "the loop ran through the reloads ({tries} connects)");
    assert_eq!(next_errno(), 0, "a destination both versions allow was refused while they changed");
    let _ = looper.wait();
}

#[test]
fn followers_get_every_line_and_a_stalled_one_is_cut_off() {
    // More lines than the follower buffer plus the socket and pipe buffers
    // of the stalled follower (about 700 lines), but a buffer a reader keeps
    // within even under TCG.
    const STORM: u64 = 5000;
    // Its journal stopped reading too: the stream must not wait for it.
    let agent = policy("81", "/tmp/none");
    let mut d = Daemon::start_with_stalled_journal(
        "daemon-tail",
        DEGRADED,
        &[("agent.toml", &agent)],
        "follower_buffer = 2048",
    );
    let cgroup = d.cgroup("tail");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let tail = |kind: &str| {
        Command::new(enforcer_bin())
            .args(["tail", "--kind", kind, "--socket"])
            .arg(&d.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tail")
    };
    let mut reader = tail("connect");
    let mut stalled = tail("connect");
    let reader_lines = reader.stdout.take().unwrap();
    let counted = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        for line in BufReader::new(reader_lines).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).expect("follower line is JSON");
            assert_ne!(v["kind"], "follower_cut", "the reading follower was cut off after {} lines: {v}", seqs.len());
            seqs.push(v["seq"].as_u64().unwrap_or(0));
            if seqs.len() as u64 == STORM {
                break;
            }
        }
        seqs
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.api("GET", "/v1/status", None).1["counters"]["followers"] != 2 {
        assert!(Instant::now() < deadline, "the followers did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The kernel's count is since the programs were loaded (pins are shared).
    let lost_before = d.api("GET", "/v1/status", None).1["counters"]["lost_events"].as_u64().unwrap_or(0);
    let results = d.run_probe(&cgroup, &[format!("tcp-storm:{STORM}:127.0.0.1:82")]);
    assert_eq!(results[0]["errno"], EPERM);
    // The reader gets every line while the other one reads nothing.
    let seqs = counted.join().unwrap();
    let lost = d.api("GET", "/v1/status", None).1["counters"]["lost_events"].as_u64().unwrap_or(0) - lost_before;
    assert_eq!(seqs.len() as u64 + lost, STORM, "every denial delivered or counted lost");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    let _ = reader.kill();
    let _ = reader.wait();

    // The stalled follower, read at last, ends with why it was cut off.
    let mut rest = String::new();
    stalled.stdout.take().unwrap().read_to_string(&mut rest).unwrap();
    let exit = stalled.wait().unwrap();
    let final_line: Value = serde_json::from_str(rest.lines().last().expect("lines")).expect("JSON");
    assert_eq!(final_line["kind"], "follower_cut", "{final_line}");
    assert_eq!(exit.code(), Some(3));
    let (_, status) = d.api("GET", "/v1/status", None);
    assert!(status["counters"]["follower_cuts"].as_u64() >= Some(1), "{status}");
    let (code, metrics) = d.http("GET", "/metrics", None);
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("enforcer_follower_cuts_total 1"), "{metrics}");
    // The journal took a pipe's worth and the queue, the rest was counted.
    let journal_dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("enforcer_stdout_dropped_lines_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(journal_dropped > Some(0), "{metrics}");
    assert!(metrics.contains("enforcer_ring_buffer_size_bytes 4194304"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "enforcer_events_total{{kind=\"connect\",policy=\"agent\",action=\"deny\"}} {}",
            STORM - lost
        )),
        "{metrics}"
    );
    assert!(metrics.contains("enforcer_policy_info{policy=\"agent\",version=\"1\""), "{metrics}");
}

#[test]
fn agents_may_not_use_the_api() {
    let mut d = Daemon::start("daemon-agent", DEGRADED, &[("agent.toml", &policy("81", "/tmp/none"))], "");
    let cgroup = d.cgroup("agent");
    ok(&d.ctl(&["tag", &cgroup, "--policy", "agent"]));
    let mut untag = Command::new(enforcer_bin());
    untag.args(["untag", &cgroup, "--socket"]).arg(&d.socket);
    let out = in_cgroup(&mut untag, &cgroup).output().expect("run enforcer in the agent cgroup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an agent untagged itself: {stderr}");
    assert!(
        stderr.contains("agents may not use the enforcer's API") || stderr.contains("Operation not permitted"),
        "{stderr}"
    );
    let (_, status) = d.api("GET", "/v1/status", None);
    assert_eq!(status["tags"].as_array().map(Vec::len), Some(1), "still tagged: {status}");
}

#[test]
fn daemon_config_errors_name_the_file_and_line() {
    let dir = std::path::Path::new("/tmp/enforcer-tests/daemon-config");
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("enforcer.toml");
    std::fs::write(&config, "socket = \"/tmp/x.sock\"\n[events]\nstdot = true\n").unwrap();
    let out = Command::new(enforcer_bin()).args(["daemon", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", config.display())) && stderr.contains("stdot"), "{stderr}");
    let out =
        Command::new(enforcer_bin()).args(["daemon", "--config", "/tmp/enforcer-tests/no-such.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such.toml"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn selectors_tag_new_cgroups_in_the_kernel_before_their_first_process() {
    let base = "/tmp/enforcer-tests/daemon-select-trees";
    std::fs::create_dir_all(format!("{base}/allowed")).unwrap();
    std::fs::create_dir_all(format!("{base}/outside")).unwrap();
    let selected = format!(
        "name = \"selected\"\ncgroups = [\"/enforcer-tests/sel-*/agent-*\", \"/enforcer-tests/sel-deep/**/job-?\"]\n\
         [files]\nwrite = [\"{base}/allowed\"]\n[network]\nallow = [\"127.0.0.1/32:81\"]\n"
    );
    let mut d = Daemon::start("daemon-select", DEGRADED, &[], "");
    // Existing before the selector: tagged when the policy loads.
    d.cgroup("sel-a");
    let old = d.cgroup("sel-a/agent-old");
    d.write_policy("selected.toml", &selected);
    ok(&d.ctl(&["reload"]));
    let first_steps = |name: &str| vec![DENIED.to_owned(), ALLOWED.to_owned(), format!("write:{base}/outside/{name}")];
    let check = |d: &Daemon, cgroup: &str, name: &str| {
        let results = d.run_probe(cgroup, &first_steps(name));
        assert_eq!(errno_of(&results, DENIED), EPERM, "{cgroup}: the first connect is judged");
        assert_eq!(errno_of(&results, ALLOWED), ECONNREFUSED, "{cgroup}");
        if !DEGRADED {
            assert_eq!(
                errno_of(&results, &format!("write:{base}/outside/{name}")),
                EPERM,
                "{cgroup}: the first write is judged"
            );
        }
    };
    check(&d, &old, "old");

    // Created while the daemon runs: the probe is the cgroup's first process,
    // started at once, and its first connect and write are judged.
    let new = d.cgroup("sel-a/agent-new");
    check(&d, &new, "new");
    let event = d.wait_event("connect from the new cgroup", |e| e["kind"] == "connect" && e["cgroup"] == new.as_str());
    assert_eq!(event["policy"], "selected", "{event}");
    assert_eq!(event["policy_version"], 1, "{event}");
    if !DEGRADED {
        d.wait_event("write from the new cgroup", |e| e["kind"] == "file_write" && e["cgroup"] == new.as_str());
    }
    d.cgroup("sel-deep");
    d.cgroup("sel-deep/x");
    d.cgroup("sel-deep/x/y");
    let deep = d.cgroup("sel-deep/x/y/job-1");
    check(&d, &deep, "deep");
    // A sibling no selector names is not judged.
    let other = d.cgroup("sel-a/other");
    let results = d.run_probe(&other, &[DENIED.to_owned()]);
    std::thread::sleep(Duration::from_millis(500));
    let why: Vec<Value> = d.events().into_iter().filter(|e| e["cgroup"] == other.as_str()).collect();
    assert_eq!(errno_of(&results, DENIED), ECONNREFUSED, "a cgroup no selector matches is left alone: {why:?}");

    // Reported: `selected` lines, status, and untag says why it cannot.
    d.wait_event("selected line", |e| {
        e["kind"] == "selected" && e["cgroup"] == new.as_str() && e["policy"] == "selected"
    });
    let listed = |status: &Value, c: &str| {
        status["selected"].as_array().is_some_and(|s| s.iter().any(|s| s["cgroup"] == c && s["policy"] == "selected"))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let (_, status) = d.api("GET", "/v1/status", None);
        if [&old, &new, &deep].iter().all(|c| listed(&status, c)) || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!([&old, &new, &deep].iter().all(|c| listed(&status, c)) && !listed(&status, &other), "{status}");
    let (_, metrics) = d.http("GET", "/metrics", None);
    assert!(metrics.contains("enforcer_selected_cgroups 3"), "{metrics}");
    let out = d.ctl(&["untag", &new]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("selector of policy `selected`"), "{out:?}");
    // An agent in a selected cgroup may not use the API either.
    let mut curl = Command::new(enforcer_bin());
    curl.args(["status", "--socket"]).arg(&d.socket).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = in_cgroup(&mut curl, &new).output().expect("run status in the selected cgroup");
    assert!(!out.status.success(), "a selected agent used the API: {out:?}");

    // A socket the agent made, taken by a process outside it, stays judged.
    let mut holder = d.spawn_probe(&new, &["socket-keep:2:1:0".to_owned(), "wait-stdin".to_owned()]);
    assert_eq!(connect_taken_socket(holder.id(), "127.0.0.1:82"), EPERM, "an agent's socket used outside it");
    drop(holder.stdin.take());
    let _ = holder.wait();
    d.wait_event("taken socket", |e| {
        e["kind"] == "connect" && e["reason"] == "socket_used_outside_agent" && e["dport"] == 82
    });

    // No daemon at all: the kernel alone tags a new cgroup.
    d.kill9();
    let orphan = d.cgroup("sel-a/agent-while-no-daemon");
    check(&d, &orphan, "orphan");
    d.spawn();
    let (_, status) = d.api("GET", "/v1/status", None);
    assert_eq!(status["daemon"]["adopted"], true, "{status}");
    d.wait_event("the denial made while no daemon ran", |e| e["kind"] == "connect" && e["cgroup"] == orphan.as_str());

    // A selector taken out of the policy releases the cgroups it tagged.
    let narrowed = selected.replace("\"/enforcer-tests/sel-*/agent-*\", ", "");
    d.write_policy("selected.toml", &narrowed);
    ok(&d.ctl(&["reload"]));
    let results = d.run_probe(&new, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), ECONNREFUSED, "released by the reload");
    let results = d.run_probe(&deep, &[DENIED.to_owned()]);
    assert_eq!(errno_of(&results, DENIED), EPERM, "the remaining selector still holds, now as version 2");
    d.wait_event("version 2", |e| e["kind"] == "connect" && e["cgroup"] == deep.as_str() && e["policy_version"] == 2);
}

/// Takes the first socket process `pid` holds (`pidfd_getfd`) and connects it
/// to `to` from this process; the errno.
fn connect_taken_socket(pid: u32, to: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let fd = loop {
        let socket = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                target
                    .to_string_lossy()
                    .starts_with("socket:")
                    .then(|| e.file_name().to_string_lossy().parse::<i32>().ok())
                    .flatten()
            })
        });
        if let Some(fd) = socket {
            break fd;
        }
        assert!(Instant::now() < deadline, "process {pid} made no socket");
        std::thread::sleep(Duration::from_millis(20));
    };
    let to: std::net::SocketAddrV4 = to.parse().expect("address");
    // SAFETY: pidfd_open, pidfd_getfd and connect(2) with a sockaddr_in of its size; the fds are closed.
    #[expect(clippy::cast_possible_truncation, reason = "fds")]
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let taken = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        assert!(taken >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let r = libc::connect(taken, (&raw const addr).cast(), size_of::<libc::sockaddr_in>() as u32);
        let errno = if r < 0 { i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { 0 };
        libc::close(taken);
        libc::close(pidfd);
        errno
    }
}

/// A run's policy file, outside the daemon's directory: the run's own.
fn run_policy(d: &Daemon) -> std::path::PathBuf {
    let file = d.base.join("run-policy.toml");
    let text = format!("{}[syscalls]\nallow = [\"@default-agent\"]\n", policy("81", "/tmp/enforcer-tests/daemon-run"));
    std::fs::write(&file, text).unwrap();
    file
}

fn enforcer_run(d: &Daemon, policy: &std::path::Path, events: &std::path::Path, steps: &[&str]) -> Command {
    let mut command = Command::new(enforcer_bin());
    command.arg("run").arg("--policy").arg(policy).arg("--socket").arg(&d.socket).arg("--events").arg(events);
    command.args(DEGRADED.then_some("--degraded")).arg("--").arg(enforcer_tests::probe_bin()).args(steps);
    command
}

#[test]
fn enforcer_run_goes_through_the_daemon_which_answers_and_streams_its_refusals() {
    let d = Daemon::start("daemon-run", DEGRADED, &[], "");
    let policy = run_policy(&d);
    let events = d.base.join("run-events.jsonl");
    let out = enforcer_run(&d, &policy, &events, &[DENIED, "keyctl"]).output().expect("enforcer run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", d.log());
    assert!(stderr.contains("the daemon at"), "went through the daemon: {stderr}");
    let results: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(errno_of(&results, DENIED), EPERM, "{results:?}");
    assert_eq!(errno_of(&results, "keyctl"), EPERM, "{results:?}");

    // The daemon answered the syscall and streamed it, under the run's own
    // policy, with the run's cgroup.
    let refused = d.wait_event("syscall", |e| e["kind"] == "syscall" && e["syscall"] == "keyctl");
    let name = refused["policy"].as_str().expect("policy").to_owned();
    assert!(name.starts_with("agent@run-"), "{refused}");
    assert_eq!(refused["policy_version"], 1, "{refused}");
    let cgroup = refused["cgroup"].as_str().expect("cgroup").to_owned();
    assert!(cgroup.starts_with("/enforcer/runs/run-"), "{refused}");
    let connect = d.wait_event("connect", |e| e["kind"] == "connect" && e["dport"] == 82);
    assert_eq!(connect["cgroup"], cgroup.as_str(), "{connect}");
    assert_eq!(connect["policy"], name.as_str(), "{connect}");
    // The run's file has its lines of the daemon's stream.
    let copied = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(copied.lines().any(|l| l.contains("\"syscall\":\"keyctl\"")), "{copied}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&events).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the run's events are root's alone");

    // Ended: no tag, no cgroup, no policy of its own left.
    let (_, status) = d.api("GET", "/v1/status", None);
    assert!(status["tags"].as_array().unwrap().iter().all(|t| t["cgroup"] != cgroup.as_str()), "{status}");
    let hierarchy = enforcer::cgroups::Hierarchy::find().unwrap();
    assert!(!hierarchy.mount_point.join(cgroup.trim_start_matches('/')).exists(), "the run's cgroup is removed");
    let (_, policies) = d.api("GET", "/v1/policies", None);
    assert!(!policies.to_string().contains(&name), "{policies}");
}

#[test]
fn a_killed_enforcer_run_leaves_nothing_of_its_command_and_the_daemon_ends_the_run() {
    let d = Daemon::start("daemon-run-kill", DEGRADED, &[], "");
    let policy = run_policy(&d);
    let events = d.base.join("run-events.jsonl");
    let mut run = enforcer_run(&d, &policy, &events, &["wait-stdin", DENIED])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("enforcer run");
    let (probe, _) = wait_ready(&mut run);
    let cgroup = std::fs::read_to_string(format!("/proc/{probe}/cgroup")).unwrap();
    let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
    assert!(cgroup.starts_with("/enforcer/runs/"), "{cgroup}");

    // The attacker kills the supervising `enforcer run`.
    run.kill().unwrap();
    run.wait().unwrap();
    // The daemon notices within its 5-second sweep; a slow VM takes longer
    // to republish its tables.
    let deadline = Instant::now() + Duration::from_mins(1);
    let hierarchy = enforcer::cgroups::Hierarchy::find().unwrap();
    let dir = hierarchy.mount_point.join(cgroup.trim_start_matches('/'));
    let tagged = || {
        let (_, status) = d.api("GET", "/v1/status", None);
        status["tags"].as_array().unwrap().iter().any(|t| t["cgroup"] == cgroup.as_str())
    };
    while (std::path::Path::new(&format!("/proc/{probe}")).exists() || dir.exists() || tagged())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!std::path::Path::new(&format!("/proc/{probe}")).exists(), "the command died with its supervisor");
    assert!(!dir.exists() && !tagged(), "the daemon ended the run:\n{}", d.log());
    let untagged = d.wait_event("untagged", |e| e["kind"] == "untagged" && e["cgroup"] == cgroup.as_str());
    assert_eq!(untagged["kind"], "untagged");
}
