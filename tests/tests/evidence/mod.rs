//! Evidence an auditor can trust, in both tiers: the daemon's event files
//! (rotated, across a SIGKILL and a restart) verify against the host key,
//! and every way of editing them is found by `enforcer verify`; a daemon
//! given `policy_keys` loads only the policies they signed, a run's own too.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use enforcer_tests::{
    EPERM,
    daemon::{Daemon, errno_of},
    enforcer_bin,
};

use super::DEGRADED;

const DENIED: &str = "tcp-connect:127.0.0.1:82";
const POLICY: &str = "name = \"agent\"\n[network]\nallow = [\"127.0.0.1/32:81\"]\n";

fn enforcer(args: &[&str]) -> Output {
    Command::new(enforcer_bin()).args(args).output().expect("run enforcer")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The events file and its rotations in `dir`.
fn event_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("events dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.jsonl")))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    files
}

fn verify(key: &Path, dir: &Path) -> Output {
    let mut args = vec!["verify".to_owned(), "--key".to_owned(), key.display().to_string()];
    args.extend(event_files(dir));
    Command::new(enforcer_bin()).args(&args).output().expect("run enforcer verify")
}

/// A copy of the events files in `dir/name`, with `edit` applied to the
/// lines of the file `file` (`events.jsonl`, `events.jsonl.1`...).
fn tampered(from: &Path, name: &str, file: &str, edit: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let dir = from.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for source in event_files(from) {
        let source = Path::new(&source);
        std::fs::copy(source, dir.join(source.file_name().unwrap())).unwrap();
    }
    let path = dir.join(file);
    let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    edit(&mut lines);
    let text: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    std::fs::write(&path, text).unwrap();
    dir
}

/// `count` connects refused in `cgroup`.
fn denials(d: &Daemon, cgroup: &str, count: usize) {
    let results = d.run_probe(cgroup, &vec![DENIED.to_owned(); count]);
    assert_eq!(errno_of(&results, DENIED), EPERM, "{results:?}");
}

fn connects(d: &Daemon) -> usize {
    d.events().iter().filter(|e| e["kind"] == "connect").count()
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_event_files_verify_against_the_host_key_and_every_edit_is_found() {
    let base = Path::new("/tmp/enforcer-tests/evidence");
    let key = base.join("keys/host.key");
    let extra = format!("file_max_bytes = 4096\nsign_every = \"1s\"\nsigning_key = \"{}\"\n", key.display());
    let mut d = Daemon::start("evidence", DEGRADED, &[("agent.toml", POLICY)], &extra);
    let public = base.join("keys/host.key.pub");
    assert!(public.exists(), "the daemon made its host key: {}", d.log());
    let cgroup = d.cgroup("evidence");
    assert!(d.ctl(&["tag", &cgroup, "--policy", "agent"]).status.success());

    denials(&d, &cgroup, 20);
    wait_for("20 denials", || connects(&d) >= 20);
    // Signed every second while lines come: a head follows the denials.
    wait_for("a signed head", || d.events().last().is_some_and(|e| e["kind"] == "chain_head"));
    // Killed (its last lines unsigned), restarted: the chain goes on.
    d.kill9();
    d.spawn();
    denials(&d, &cgroup, 10);
    wait_for("30 denials", || connects(&d) >= 30);
    d.stop();

    let events = d.events();
    assert!(events.iter().all(|e| e["prev_hash"].as_str().is_some_and(|h| h.len() == 64)), "every line is chained");
    assert_eq!(events.last().map(|e| e["kind"].clone()), Some("chain_head".into()), "signed at stop");
    assert!(event_files(base).len() >= 4, "rotated at 4 KiB: {:?}", event_files(base));
    let out = verify(&public, base);
    assert!(out.status.success() && text(&out).starts_with("intact"), "{}", text(&out));
    assert!(text(&out).contains("the last line"), "signed through the end: {}", text(&out));
    assert!(text(&out).contains("events.jsonl.head: seq"), "checked the copy of the last head: {}", text(&out));

    // An auditor's checks: each edit is found, where it is.
    let denial_at = |lines: &Vec<String>| lines.iter().position(|l| l.contains("\"dport\":82")).expect("a denial");
    let changed = tampered(base, "changed", "events.jsonl.1", |lines| {
        let at = denial_at(lines);
        lines[at] = lines[at].replace("\"dport\":82", "\"dport\":83");
    });
    let removed = tampered(base, "removed", "events.jsonl.2", |lines| drop(lines.remove(1)));
    let moved = tampered(base, "moved", "events.jsonl.1", |lines| lines.swap(1, 2));
    // The newest lines: the current file's, or the last rotated file's if
    // the daemon rotated as it stopped.
    let newest = if std::fs::metadata(&d.events).unwrap().len() > 0 { "events.jsonl" } else { "events.jsonl.1" };
    let cut = tampered(base, "cut", newest, |lines| lines.truncate(lines.len() - 2));
    for (dir, says) in
        [(changed, "was changed"), (removed, "lines were removed"), (moved, "moved"), (cut, "the tail was cut")]
    {
        let out = verify(&public, &dir);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).starts_with("BROKEN at ") && text(&out).contains(says), "{says}: {}", text(&out));
    }
    // The digest of the same files: the 30 denials are one row.
    let mut args = vec!["report".to_owned(), "--format".to_owned(), "json".to_owned()];
    args.extend(event_files(base));
    let out = Command::new(enforcer_bin()).args(&args).output().expect("enforcer report");
    assert!(out.status.success(), "{}", text(&out));
    let digest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON digest");
    let agent = &digest["policies"][0]["agents"][0];
    assert_eq!((agent["cgroup"].as_str(), agent["refusals"].as_u64()), (Some(cgroup.as_str()), Some(30)), "{digest}");
    let row = &agent["groups"][0];
    assert_eq!((row["target"].as_str(), row["count"].as_u64()), (Some("127.0.0.1:82"), Some(30)), "{digest}");
    assert_eq!((row["kind"].as_str(), row["reason"].as_str()), (Some("connect"), Some("not_allowed")), "{digest}");

    // Heads are the host key's: another key is refused.
    let other = base.join("keys/other.key");
    assert!(enforcer(&["keygen", &other.display().to_string()]).status.success());
    let out = verify(&base.join("keys/other.key.pub"), base);
    assert!(out.status.code() == Some(1) && text(&out).contains("not the key given"), "{}", text(&out));
}

#[test]
fn a_daemon_with_policy_keys_loads_only_the_policies_they_signed() {
    // Not below the daemon's directory, which it empties when it starts.
    let keys = Path::new("/tmp/enforcer-tests/signing-keys");
    let _ = std::fs::remove_dir_all(keys);
    let team = keys.join("team.key");
    let out = enforcer(&["keygen", &team.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let stranger = keys.join("stranger.key");
    assert!(enforcer(&["keygen", &stranger.display().to_string()]).status.success());
    // A top-level key: before a table of its own.
    let extra = format!("policy_keys = [\"{}.pub\"]\n[dns]\n", team.display());
    let mut d = Daemon::prepare("policy-keys", DEGRADED, &[], &extra);
    let policies = d.policies.clone();
    let file = |name: &str| policies.join(name).display().to_string();
    let write = |name: &str, text: &str| std::fs::write(file(name), text).unwrap();
    let sign = |key: &Path, file: &str| {
        let out = enforcer(&["policy", "sign", "--key", &key.display().to_string(), file]);
        assert!(out.status.success(), "{}", text(&out));
    };
    write("signed.toml", POLICY);
    sign(&team, &file("signed.toml"));
    write("changed.toml", &POLICY.replace("agent", "changed"));
    sign(&team, &file("changed.toml"));
    write("changed.toml", &POLICY.replace("agent", "changed").replace(":81", ":1-65535"));
    write("stranger.toml", &POLICY.replace("agent", "stranger"));
    sign(&stranger, &file("stranger.toml"));
    write("unsigned.toml", &POLICY.replace("agent", "unsigned"));
    d.spawn();

    let (_, status) = d.api("GET", "/v1/status", None);
    let names: Vec<&str> = status["policies"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["agent"], "{status}");
    let errors: Vec<String> =
        status["rejected"].as_array().unwrap().iter().map(|r| r["error"].as_str().unwrap().to_owned()).collect();
    let error = |file: &str| errors.iter().find(|e| e.contains(file)).cloned().unwrap_or_default();
    assert!(error("changed.toml").contains("does not match its text"), "{errors:#?}");
    assert!(error("stranger.toml").contains("not one of the trusted `policy_keys`"), "{errors:#?}");
    assert!(error("unsigned.toml").contains("is not signed") && error("unsigned.toml").contains("policy sign"));
    let team_public = format!("{}.pub", team.display());
    let out = enforcer(&["policy", "check", "--key", &team_public, &file("changed.toml")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = enforcer(&["policy", "check", "--key", &team_public, &file("signed.toml")]);
    assert!(out.status.success() && text(&out).contains("signed by key"), "{}", text(&out));

    // Signed now: the watcher loads it.
    sign(&team, &file("unsigned.toml"));
    d.wait_event("the signed policy loads", |e| e["kind"] == "policy_reload" && e["applied"][0]["name"] == "unsigned");

    // A run's own policy: refused unsigned, run once signed.
    let run_policy = d.base.join("run.toml");
    std::fs::write(&run_policy, POLICY.replace("agent", "run")).unwrap();
    let run = || {
        Command::new(enforcer_bin())
            .args(["run", "--policy", &run_policy.display().to_string(), "--socket", &d.socket.display().to_string()])
            .args(DEGRADED.then_some("--degraded"))
            .args(["--", &enforcer_tests::probe_bin().display().to_string(), DENIED])
            .output()
            .expect("enforcer run")
    };
    let out = run();
    assert!(!out.status.success() && text(&out).contains("is not signed"), "{}", text(&out));
    sign(&team, &run_policy.display().to_string());
    let out = run();
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\"errno\":{EPERM}")), "{}", text(&out));
}
