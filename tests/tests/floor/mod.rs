//! Exec control, `require_seccomp` and the built-in floor: BPF LSM, so the
//! VM tier only. Each attempt is the syscall a real program makes; each
//! refusal is EPERM with exactly one event.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use enforcer_tests::{EPERM, Outcome, Sandbox, probe_bin, release, wait_ready};
use serde_json::Value;

/// The daemon's host key where test daemons that name none keep it.
const HOST_KEY: &str = "/var/lib/enforcer/host.key";

/// The events of `kind` for which `about` holds.
fn events<'a>(out: &'a Outcome, kind: &str, about: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    out.events.iter().filter(|e| e["kind"] == kind && about(e)).collect()
}

/// Asserts `step` failed with EPERM and produced exactly one `kind` event
/// with `reason` for which `about` holds; returns it.
fn assert_refused<'a>(
    out: &'a Outcome,
    step: &str,
    kind: &str,
    reason: &str,
    about: impl Fn(&Value) -> bool,
) -> &'a Value {
    assert_eq!(out.errno(step), EPERM, "step `{step}`:\n{out:#?}");
    let found = events(out, kind, |e| e["reason"] == reason && about(e));
    assert_eq!(found.len(), 1, "step `{step}`: want one {kind}/{reason} event, got {found:#?}\n{out:#?}");
    assert_eq!((found[0]["action"].as_str(), found[0]["errno"].as_i64()), (Some("deny"), Some(EPERM)), "{}", found[0]);
    found[0]
}

fn write_script(path: &str, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

#[test]
fn programs_run_only_from_exec_trees_and_never_fileless() {
    let sb = Sandbox::new("exec-trees");
    let tools = sb.allowed.join("bin");
    std::fs::create_dir_all(&tools).unwrap();
    let probe_dir = probe_bin().parent().expect("probe dir").to_owned();
    sb.write_policy_with(
        "enforce",
        &format!("[exec]\nallow = [\"/bin\", \"{}\", \"{}\"]\n", probe_dir.display(), tools.display()),
    );
    let tool = |name: &str| Sandbox::path(&tools, name);
    // A cloned repository's hook, outside every exec tree.
    let hook = Sandbox::path(&sb.outside, "post-checkout");
    write_script(&hook, "#!/bin/sh\nexit 0\n");
    // A symlink in an exec tree does not lend the tree to its target.
    std::os::unix::fs::symlink(&hook, tool("linked-hook")).unwrap();
    // A script in an exec tree whose interpreter is not.
    let interpreter = Sandbox::path(&sb.outside, "sh");
    std::fs::copy("/bin/busybox", &interpreter).unwrap();
    write_script(&tool("script-with-outside-interpreter"), &format!("#!{interpreter}\nexit 0\n"));
    write_script(&tool("ok-script"), "#!/bin/sh\nexit 0\n");
    let steps = [
        "exec:/bin/true".to_owned(),
        format!("exec:{}", tool("ok-script")),
        format!("exec:{hook}"),
        format!("exec:{}", tool("linked-hook")),
        format!("exec:{}", tool("script-with-outside-interpreter")),
        "memfd-exec".to_owned(),
    ];
    let out = sb.run(&steps);
    out.assert_succeeded("exec:/bin/true");
    out.assert_succeeded(&format!("exec:{}", tool("ok-script")));
    let on = |path: &str| {
        let path = path.to_owned();
        move |e: &Value| e["path"] == path.as_str()
    };
    // The hook, directly and through the symlink: one event each, both
    // naming the file the kernel resolved.
    assert_eq!(out.errno(&format!("exec:{hook}")), EPERM, "{out:#?}");
    assert_eq!(out.errno(&format!("exec:{}", tool("linked-hook"))), EPERM, "{out:#?}");
    let hook_events = events(&out, "exec", on(&hook));
    assert_eq!(hook_events.len(), 2, "{out:#?}");
    assert!(hook_events.iter().all(|e| e["reason"] == "outside_exec_trees" && e["op"] == "exec"), "{hook_events:#?}");
    assert_refused(
        &out,
        &format!("exec:{}", tool("script-with-outside-interpreter")),
        "exec",
        "outside_exec_trees",
        on(&interpreter),
    );
    // A memfd has no directory: its path is its name.
    assert_refused(&out, "memfd-exec", "exec", "fileless", on("/memfd:agent-payload"));
    assert_eq!(out.events.len(), 4, "{out:#?}");
}

#[test]
fn require_seccomp_refuses_exec_by_a_task_without_a_filter() {
    let sb = Sandbox::under_enforcer_run("require-seccomp");
    sb.write_policy_with("enforce", "[syscalls]\nallow = [\"@default-agent\"]\nrequire_seccomp = true\n");
    let mut child = sb.spawn(&["wait-stdin:".to_owned(), "exec:/bin/true".to_owned()]);
    let (pid, stdout) = wait_ready(&mut child);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim().to_owned();
    // A process an orchestrator put in the agent's cgroup without the
    // profile: joins it, then tries to exec.
    let procs = std::fs::OpenOptions::new().write(true).open(format!("/sys/fs/cgroup{cgroup}/cgroup.procs")).unwrap();
    let procs = std::os::fd::OwnedFd::from(procs);
    let mut unfiltered = Command::new("/bin/true");
    // SAFETY: join only calls write(2).
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut unfiltered, move || enforcer::cgroups::join(&procs)) };
    let refused = unfiltered.status().expect_err("exec without a seccomp filter must fail");
    assert_eq!(refused.raw_os_error(), Some(1), "{refused}");
    release(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout.into_inner(), &mut rest).unwrap();
    let out = sb.finish(child);
    // The agent itself carries the enforcer's filter: its exec works.
    assert!(rest.contains("{\"errno\":0,\"step\":\"exec:/bin/true\"}"), "{rest}\n{out:#?}");
    let found = events(&out, "exec", |e| e["reason"] == "no_seccomp");
    assert_eq!(found.len(), 1, "{out:#?}");
    assert_eq!(found[0]["path"], "/bin/busybox", "{}", found[0]);
    assert_eq!(out.events.len(), 1, "{out:#?}");
}

/// Self-protection: with a policy that restricts only the network, a tagged
/// process still cannot touch the daemon's configuration, policies, state,
/// socket, binary or pins, move itself out of its cgroup, or signal or
/// trace the daemon; the daemon keeps running its policy.
#[test]
fn the_daemon_and_its_files_are_out_of_an_agents_reach() {
    use enforcer_tests::daemon::{Daemon, errno_of};
    let policy = "name = \"agent\"\n[network]\nallow = [\"127.0.0.1/32:81\"]\n";
    let mut d = Daemon::start("daemon-protect", false, &[("agent.toml", policy)], "");
    let cgroup = d.cgroup("protect");
    let out = d.ctl(&["tag", &cgroup, "--policy", "agent"]);
    assert!(out.status.success(), "{out:?}");
    let (_, status) = d.api("GET", "/v1/status", None);
    let daemon_pid = status["daemon"]["pid"].as_u64().expect("pid");
    let pins = status["daemon"]["pins"].as_str().expect("pins").to_owned();
    let path = |p: &std::path::Path| p.display().to_string();
    let cgroup_root = enforcer::cgroups::Hierarchy::find().expect("cgroup2").mount_point;
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("overwrite:{}", path(&d.config)), "file_write", "enforcer_protected"),
        (format!("write:{}/evil.toml", path(&d.policies)), "file_write", "enforcer_protected"),
        (format!("unlink:{}/agent.toml", path(&d.policies)), "file_write", "enforcer_protected"),
        (
            format!("rename:{}/agent.toml:{}/moved.toml", path(&d.policies), path(&d.base)),
            "file_write",
            "enforcer_protected",
        ),
        (format!("overwrite:{}/state/state.json", path(&d.base)), "file_write", "enforcer_protected"),
        // `chattr +i`: the daemon could no longer save its state.
        (format!("chattr:{}/state/state.json", path(&d.base)), "file_write", "enforcer_protected"),
        (format!("unlink:{}", path(&d.socket)), "file_write", "enforcer_protected"),
        // chmod: a running binary cannot be opened for writing anyway (ETXTBSY).
        (format!("chmod:{}", enforcer_tests::enforcer_bin().display()), "file_write", "enforcer_protected"),
        (format!("unlink:{pins}/maps/EVENTS"), "file_write", "enforcer_protected"),
        // The evidence: the events file, and the host key that signs it.
        (format!("overwrite:{}", path(&d.events)), "file_write", "enforcer_protected"),
        (format!("overwrite:{HOST_KEY}"), "file_write", "enforcer_protected"),
        // In its own directory: a rename to another filesystem is EXDEV anyway.
        (format!("rename:{HOST_KEY}.pub:{HOST_KEY}.forged"), "file_write", "enforcer_protected"),
        (format!("overwrite:{}/cgroup.procs", cgroup_root.display()), "file_write", "floor"),
        (format!("kill:{daemon_pid}:9"), "floor", "floor"),
        (format!("ptrace-attach:{daemon_pid}"), "floor", "floor"),
    ];
    let steps: Vec<String> = cases.iter().map(|(s, _, _)| s.clone()).collect();
    let results = d.run_probe(&cgroup, &steps);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let events = d.events();
    for (step, kind, reason) in &cases {
        assert_eq!(errno_of(&results, step), EPERM, "step `{step}`: {results:#?}");
        let target = step.split_once(':').map_or("", |(_, rest)| rest.split(':').next().unwrap_or_default());
        let matching: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == *kind && e["reason"] == *reason)
            .filter(|e| e["path"].as_str().is_some_and(|p| p == target) || e["target_pid"].as_u64() == Some(daemon_pid))
            .collect();
        assert!(!matching.is_empty(), "step `{step}`: no {kind}/{reason} event about {target}; events: {events:#?}");
    }
    // A policy in audit mode allows and reports, but not this.
    d.write_policy("audit.toml", "name = \"audit\"\nmode = \"audit\"\n[network]\nallow = []\n");
    d.wait_event("policy_reload", |e| e["kind"] == "policy_reload" && e["applied"][0]["name"] == "audit");
    let audit_cgroup = d.cgroup("protect-audit");
    assert!(d.ctl(&["tag", &audit_cgroup, "--policy", "audit"]).status.success());
    let step = format!("overwrite:{}", path(&d.config));
    let results = d.run_probe(&audit_cgroup, std::slice::from_ref(&step));
    assert_eq!(errno_of(&results, &step), EPERM, "audit mode does not open the daemon's files");
    let event = d.wait_event("audit-mode refusal", |e| {
        e["cgroup"] == audit_cgroup.as_str() && e["reason"] == "enforcer_protected"
    });
    assert_eq!(event["action"], "deny", "{event}");

    // Still running, same policy, same tag.
    let (code, status) = d.api("GET", "/v1/status", None);
    assert_eq!(code, 200, "the daemon survived");
    assert_eq!(status["daemon"]["pid"].as_u64(), Some(daemon_pid));
    let agent = status["policies"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "agent")).cloned();
    assert_eq!(agent.map(|p| p["version"].clone()), Some(Value::from(1)), "{status}");
    assert!(d.policies.join("agent.toml").exists() && d.socket.exists());
}
