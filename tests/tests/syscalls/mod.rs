//! Syscall allowlists: the filter `enforcer run` installs on the command,
//! its denials answered and reported by the enforcer, in both tiers (the
//! filter needs no BPF LSM). The including test binary says which tier with
//! `super::DEGRADED`.

use enforcer_tests::{Outcome, Sandbox};
use serde_json::Value;

const DEFAULT_AGENT: &str = "[syscalls]\nallow = [\"@default-agent\"]\n";
const EPERM: i64 = 1;
const ENOSYS: i64 = 38;
const CLONE_NEWUSER: &str = "0x10000000";
const CLONE_FS: &str = "0x200";

/// Syscall filters are installed by `enforcer run` in the command it starts.
fn sandbox(name: &str) -> Sandbox {
    let mut sb = Sandbox::under_enforcer_run(name);
    sb.degraded = super::DEGRADED;
    sb
}

/// The `syscall` events about syscall `name` (`None`: an unnamed number).
fn events_about<'a>(out: &'a Outcome, name: Option<&str>) -> Vec<&'a Value> {
    out.events.iter().filter(|e| e["kind"] == "syscall" && e["syscall"].as_str() == name).collect()
}

/// Asserts `step` failed with `errno` and produced exactly one `syscall`
/// event about `name` with `reason`; returns it.
fn assert_refused<'a>(out: &'a Outcome, step: &str, errno: i64, name: Option<&str>, reason: &str) -> &'a Value {
    assert_eq!(out.errno(step), errno, "step `{step}`:\n{out:#?}");
    let events = events_about(out, name);
    assert_eq!(events.len(), 1, "step `{step}`: want one event about {name:?}, got {events:#?}\n{out:#?}");
    let event = events[0];
    assert_eq!(event["action"], "deny", "{event}");
    assert_eq!(event["errno"], errno, "{event}");
    assert_eq!(event["reason"], reason, "{event}");
    assert_eq!(event["policy"], "test-policy", "{event}");
    assert!(event["exe"].as_str().is_some_and(|e| e.ends_with("enforcer-probe")), "{event}");
    assert!(event["cgroup"].as_str().is_some_and(|c| c.starts_with("/enforcer/run-")), "{event}");
    event
}

#[test]
fn syscalls_outside_the_allowlist_fail_and_are_reported_once_each() {
    let sb = sandbox("syscalls-denied");
    sb.write_policy_with("enforce", DEFAULT_AGENT);
    let mount_point = Sandbox::path(&sb.allowed, "");
    let mut steps: Vec<String> = [
        "getpid".to_owned(),
        "keyctl".to_owned(),
        format!("unshare:{CLONE_NEWUSER}"),
        // unshare without namespace flags is allowed.
        format!("unshare:{CLONE_FS}"),
        "bpf-prog-load".to_owned(),
        format!("mount:{mount_point}"),
        // pid 1 is outside the agent's cgroup.
        "ptrace-attach:1".to_owned(),
        // A number no kernel has: ENOSYS, as libc expects of a new syscall.
        "syscall:1000".to_owned(),
    ]
    .into();
    if cfg!(target_arch = "x86_64") {
        steps.push("int80-getpid".to_owned());
    }
    let out = sb.run(&steps);
    out.assert_succeeded("getpid");
    out.assert_succeeded(&format!("unshare:{CLONE_FS}"));
    let keyctl = assert_refused(&out, "keyctl", EPERM, Some("keyctl"), "not_allowed");
    assert_eq!(keyctl["arch"], std::env::consts::ARCH, "{keyctl}");
    assert!(keyctl["nr"].as_i64().is_some_and(|nr| nr > 0), "{keyctl}");
    assert_refused(&out, &format!("unshare:{CLONE_NEWUSER}"), EPERM, Some("unshare"), "args_not_allowed");
    assert_refused(&out, "bpf-prog-load", EPERM, Some("bpf"), "not_allowed");
    assert_refused(&out, &format!("mount:{mount_point}"), EPERM, Some("mount"), "not_allowed");
    assert_refused(&out, "ptrace-attach:1", EPERM, Some("ptrace"), "not_allowed");
    assert_refused(&out, "syscall:1000", ENOSYS, None, "unknown_syscall");
    let mut expected = 6;
    if cfg!(target_arch = "x86_64") {
        // The i386 ABI's getpid: another numbering, refused as a whole.
        let other = assert_refused(&out, "int80-getpid", EPERM, Some("getpid"), "other_abi");
        assert_eq!(other["arch"], "x86", "{other}");
        expected += 1;
    }
    let syscall_events = out.events.iter().filter(|e| e["kind"] == "syscall").count();
    assert_eq!(syscall_events, expected, "one event per refusal: {:#?}", out.events);
    assert_eq!(out.code, Some(0), "{out:#?}");
}

#[test]
fn kill_mode_kills_the_process_at_its_first_refused_syscall() {
    let sb = sandbox("syscalls-kill");
    sb.write_policy_with("enforce", &format!("{DEFAULT_AGENT}deny_action = \"kill\"\n"));
    let out = sb.run(&["getpid".to_owned(), "keyctl".to_owned(), "sleep-ms:1".to_owned()]);
    out.assert_succeeded("getpid");
    assert!(
        out.results.iter().all(|r| r["step"] != "keyctl" && r["step"] != "sleep-ms:1"),
        "killed at keyctl: {out:#?}"
    );
    assert_eq!(out.code, Some(128 + 9), "SIGKILL: {out:#?}");
    let events = events_about(&out, Some("keyctl"));
    assert_eq!(events.len(), 1, "{out:#?}");
    assert_eq!(events[0]["action"], "kill", "{}", events[0]);
}

#[test]
fn audit_mode_lets_refused_syscalls_run_and_reports_them() {
    let sb = sandbox("syscalls-audit");
    sb.write_policy_with("audit", DEFAULT_AGENT);
    let out = sb.run(&["keyctl".to_owned(), format!("unshare:{CLONE_FS}")]);
    assert_ne!(out.errno("keyctl"), EPERM, "the kernel ran it: {out:#?}");
    let events = events_about(&out, Some("keyctl"));
    assert_eq!(events.len(), 1, "{out:#?}");
    assert_eq!((events[0]["action"].as_str(), events[0]["errno"].as_i64()), (Some("audit"), Some(0)), "{}", events[0]);
    assert_eq!(out.events.iter().filter(|e| e["kind"] == "syscall").count(), 1, "{out:#?}");
}

#[test]
fn an_unknown_syscall_name_is_refused_with_its_location() {
    let sb = sandbox("syscalls-bad-name");
    sb.write_policy_with("enforce", "[syscalls]\nallow = [\"@default-agent\",\n  \"opne\"]\n");
    let out = sb.run(&["getpid".to_owned()]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("policy.toml:8:3: error: syscalls.allow: unknown syscall `opne`"), "{}", out.stderr);
    assert!(out.results.is_empty(), "the command must not run: {out:#?}");
}
