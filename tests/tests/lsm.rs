//! BPF LSM file enforcement, run inside real BPF LSM kernels (the VM tier).
//!
//! Every attempt is the syscall a real program would make (by the probe, in
//! the agent cgroup); each test asserts the errno and the denial event.

use enforcer_tests::{EPERM, Sandbox, release, wait_ready};

/// BPF LSM works here: nothing is enforced in a degraded way.
const DEGRADED: bool = false;
mod boundary;
mod containers;
mod daemon;
mod exfiltration;
mod floor;
mod network;
mod syscalls;
mod terminal;

#[test]
fn writes_inside_write_trees_succeed_without_events() {
    let sb = Sandbox::new("allowed");
    let a = |n: &str| Sandbox::path(&sb.allowed, n);
    let list = [
        format!("write:{}", a("f")),
        format!("mkdir:{}", a("d")),
        format!("mknod:{}", a("fifo")),
        format!("symlink:{}:{}", a("f"), a("sl")),
        format!("link:{}:{}", a("f"), a("hl")),
        format!("rename:{}:{}", a("hl"), a("hl2")),
        format!("truncate:{}", a("f")),
        format!("chmod:{}", a("f")),
        format!("chown:{}", a("f")),
        format!("utimes:{}", a("f")),
        format!("setxattr:{}", a("f")),
        format!("removexattr:{}", a("f")),
        format!("trunc-open:{}", a("f")),
        format!("tmpfile-link:{}:{}", sb.allowed.display(), a("tmp")),
        format!("unlink:{}", a("hl2")),
        format!("rmdir:{}", a("d")),
        format!("read:{}", sb.outside_file("readable")),
        // Devices and pipes hold no file data: not file writes.
        "write:/dev/null".to_owned(),
        "pipe-reopen:".to_owned(),
    ];
    let out = sb.run(&list);
    for step in &list {
        out.assert_succeeded(step);
    }
    assert!(out.events.is_empty(), "no denials expected: {:#?}", out.events);
    assert_eq!(out.code, Some(0), "{out:#?}");
}

/// `--events /dev/null` (a quick try, the benchmarks) protects no device: the
/// command's `> /dev/null` is not a write of the run's events.
#[test]
fn events_sent_to_dev_null_leave_dev_null_to_the_command() {
    let sb = Sandbox::new("events-dev-null");
    let steps = ["write:/dev/null", "trunc-open:/dev/null"];
    let output = std::process::Command::new(enforcer_tests::enforcer_bin())
        .args(["run", "--policy"])
        .arg(&sb.policy)
        .args(["--events", "/dev/null", "--"])
        .arg(enforcer_tests::probe_bin())
        .args(steps)
        .output()
        .expect("run enforcer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results = enforcer_tests::probe_results(&stdout);
    for step in steps {
        let result = results.iter().find(|r| r["step"] == step);
        assert_eq!(
            result.map(|r| r["errno"].clone()),
            Some(0.into()),
            "{step}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn every_write_like_operation_outside_is_denied_with_one_event() {
    let sb = Sandbox::new("outside");
    let o = |n: &str| Sandbox::path(&sb.outside, n);
    let a = |n: &str| Sandbox::path(&sb.allowed, n);
    let existing = sb.outside_file("existing");
    let truncated = sb.outside_file("truncated");
    // A fresh victim per operation, so each event is unambiguous in one run.
    let v = |n: &str| sb.outside_file(n);
    std::fs::create_dir(sb.outside.join("emptydir")).unwrap();
    std::fs::write(sb.allowed.join("mine"), "x").unwrap();
    // (step, op, path the event must name)
    let cases = [
        (format!("write:{}", o("new")), "create", o("new")),
        (format!("write:{existing}"), "open", existing.clone()),
        (format!("trunc-open:{truncated}"), "open", truncated.clone()),
        (format!("mknod:{}", o("fifo")), "mknod", o("fifo")),
        (format!("mkdir:{}", o("d")), "mkdir", o("d")),
        (format!("rmdir:{}", o("emptydir")), "rmdir", o("emptydir")),
        (format!("unlink:{}", v("unlinked")), "unlink", o("unlinked")),
        (format!("rename:{}:{}", a("mine"), o("moved")), "rename", o("moved")),
        (format!("rename:{}:{}", v("renamed"), a("stolen")), "rename", o("renamed")),
        (format!("link:{}:{}", a("mine"), o("hl")), "link", o("hl")),
        (format!("symlink:/etc/passwd:{}", o("sl")), "symlink", o("sl")),
        (format!("truncate:{}", v("truncate")), "truncate", o("truncate")),
        (format!("chmod:{}", v("chmod")), "chmod", o("chmod")),
        (format!("chown:{}", v("chown")), "chown", o("chown")),
        (format!("utimes:{}", v("utimes")), "setattr", o("utimes")),
        (format!("setxattr:{}", v("setxattr")), "setxattr", o("setxattr")),
        (format!("removexattr:{}", v("removexattr")), "removexattr", o("removexattr")),
    ];
    let out = sb.run(&cases.iter().map(|(s, _, _)| s.clone()).collect::<Vec<_>>());
    for (step, op, path) in &cases {
        out.assert_denied(step, op, path);
    }
    assert_eq!(out.events.len(), cases.len(), "one event per attempt: {:#?}", out.events);
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "original\n", "the file must be untouched");
    assert_eq!(std::fs::read_to_string(&truncated).unwrap(), "original\n", "the file must be untouched");
    assert!(sb.outside.join("unlinked").exists() && sb.outside.join("renamed").exists());
}

#[test]
fn events_carry_the_contract_fields() {
    let sb = Sandbox::new("fields");
    let target = Sandbox::path(&sb.outside, "bashrc");
    let step = format!("write:{target}");
    let out = sb.run(std::slice::from_ref(&step));
    let e = out.assert_denied(&step, "create", &target);
    assert_eq!(e["kind"], "file_write");
    assert_eq!(e["policy"], "test-policy");
    assert_eq!(e["comm"], "enforcer-probe");
    assert_eq!(e["reason"], "outside_write_trees");
    assert!(e["exe"].as_str().unwrap().ends_with("enforcer-probe"), "{e}");
    match &out.cgroup {
        Some(tagged) => assert_eq!(e["cgroup"], tagged.as_str(), "{e}"),
        None => assert!(e["cgroup"].as_str().unwrap().starts_with("/enforcer/run-"), "{e}"),
    }
    assert!(e["cgroup_id"].as_u64().unwrap() > 0);
    assert!(e["pid"].as_u64().unwrap() > 0 && e["pid"] == e["tgid"]);
    let ts = e["ts"].as_str().unwrap();
    assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "RFC 3339 with microseconds: {ts}");
}

#[test]
fn escapes_through_links_proc_fd_tmpfile_and_dotdot_are_denied() {
    let sb = Sandbox::new("escapes");
    let a = |n: &str| Sandbox::path(&sb.allowed, n);
    let target = sb.outside_file("target");
    let via_proc = sb.outside_file("via-proc");
    let via_dotdot = sb.outside_file("via-dotdot");
    std::os::unix::fs::symlink(&target, sb.allowed.join("link-out")).unwrap();
    let dotdot = format!("{}/../outside/via-dotdot", sb.allowed.display());
    let cases = [
        (format!("write:{}", a("link-out")), "open", target.clone()),
        (format!("reopen-write:{via_proc}"), "open", via_proc.clone()),
        (format!("write:{dotdot}"), "open", via_dotdot.clone()),
        (
            format!("tmpfile-link:{}:{}", sb.allowed.display(), Sandbox::path(&sb.outside, "planted")),
            "link",
            Sandbox::path(&sb.outside, "planted"),
        ),
    ];
    let out = sb.run(&cases.iter().map(|(s, _, _)| s.clone()).collect::<Vec<_>>());
    for (step, op, path) in &cases {
        out.assert_denied(step, op, path);
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original\n");
}

#[test]
fn a_path_deeper_than_the_walk_is_denied_not_allowed() {
    let sb = Sandbox::new("deep");
    let mut deep = sb.allowed.clone();
    for _ in 0..80 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let file = deep.join("f").display().to_string();
    let step = format!("write:{file}");
    let out = sb.run(std::slice::from_ref(&step));
    assert_eq!(out.errno(&step), EPERM, "{out:#?}");
    assert_eq!(out.events.len(), 1, "{out:#?}");
    assert_eq!(out.events[0]["reason"], "path_too_deep");
}

#[test]
fn read_deny_blocks_reads_even_through_symlinks_and_links() {
    let sb = Sandbox::new("readdeny");
    let secret = Sandbox::path(&sb.secret, "credentials");
    std::os::unix::fs::symlink(&secret, sb.allowed.join("innocent")).unwrap();
    let read = format!("read:{secret}");
    let via_symlink = format!("read:{}", Sandbox::path(&sb.allowed, "innocent"));
    let out = sb.run(std::slice::from_ref(&read));
    let e = out.assert_denied(&read, "open", &secret);
    assert_eq!(e["kind"], "file_read");
    assert_eq!(e["reason"], "read_deny");
    let out = sb.run(std::slice::from_ref(&via_symlink));
    out.assert_denied(&via_symlink, "open", &secret);
    let link = format!("link:{secret}:{}", Sandbox::path(&sb.allowed, "copy"));
    let out = sb.run(std::slice::from_ref(&link));
    assert_eq!(out.errno(&link), EPERM, "{out:#?}");
}

/// A write tree's root ends a walk early only where no `read_deny` tree
/// holds it (`FILE_NO_READ_DENY_ABOVE`): a write tree inside a `read_deny`
/// tree is still denied, and a `read_deny` tree inside a write tree still
/// refuses reads, writes, and a directory moved into it.
#[test]
fn write_and_read_deny_trees_nested_either_way_still_deny() {
    let sb = Sandbox::new("nested-trees");
    let (write_in_deny, deny_in_write) = (sb.secret.join("inner"), sb.allowed.join(".aws"));
    for dir in [&write_in_deny, &deny_in_write, &sb.allowed.join("proj")] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(deny_in_write.join("key"), "x\n").unwrap();
    std::fs::write(write_in_deny.join("old"), "x\n").unwrap();
    let policy = format!(
        "name = \"test-policy\"\n[files]\nwrite = [\"{}\", \"{}\"]\nread_deny = [\"{}\", \"{}\"]\n",
        sb.allowed.display(),
        write_in_deny.display(),
        sb.secret.display(),
        deny_in_write.display()
    );
    std::fs::write(&sb.policy, policy).unwrap();
    let (key, old) = (Sandbox::path(&deny_in_write, "key"), Sandbox::path(&write_in_deny, "old"));
    let denied = [
        (format!("read:{key}"), "open", key.clone()),
        (format!("write:{key}"), "open", key.clone()),
        (format!("write:{old}"), "open", old.clone()),
        (format!("read:{old}"), "open", old.clone()),
        (
            format!("rename:{}:{}", Sandbox::path(&sb.allowed, "proj"), Sandbox::path(&deny_in_write, "proj")),
            "rename",
            Sandbox::path(&deny_in_write, "proj"),
        ),
    ];
    let fine = format!("write:{}", Sandbox::path(&sb.allowed, "notes"));
    let mut steps: Vec<String> = denied.iter().map(|(step, _, _)| step.clone()).collect();
    steps.push(fine.clone());
    let out = sb.run(&steps);
    out.assert_succeeded(&fine);
    for (step, op, path) in &denied {
        assert_eq!(out.errno(step), EPERM, "step `{step}`: {out:#?}");
        let events = out.events_for(path);
        assert!(
            events.iter().any(|e| e["op"] == *op && e["reason"] == "read_deny"),
            "step `{step}`: no read_deny event for {path}: {out:#?}"
        );
    }
}

/// Trees may be single files: `~/.netrc` in `read_deny`, one config file in
/// `write`. The walk of an open starts at the file's directory only under a
/// policy that names no regular file (`TAG_NO_REGULAR_FILE_ROOTS`), so here
/// the file itself must still be judged: its read refused, its write
/// allowed, and its sibling's write refused.
#[test]
fn files_named_as_trees_are_judged_as_their_own_roots() {
    let sb = Sandbox::new("file-roots");
    let (netrc, config) = (sb.secret.join(".netrc"), sb.allowed.join("config.toml"));
    std::fs::write(&netrc, "machine example.com password x\n").unwrap();
    std::fs::write(&config, "x = 1\n").unwrap();
    let policy = format!(
        "name = \"test-policy\"\n[files]\nwrite = [\"{}\"]\nread_deny = [\"{}\"]\n",
        config.display(),
        netrc.display()
    );
    std::fs::write(&sb.policy, policy).unwrap();
    let (netrc, config) = (netrc.display().to_string(), config.display().to_string());
    let sibling = Sandbox::path(&sb.allowed, "other.toml");
    let (read_secret, write_config, write_sibling) =
        (format!("read:{netrc}"), format!("write:{config}"), format!("write:{sibling}"));
    let out = sb.run(&[read_secret.clone(), write_config.clone(), write_sibling.clone()]);
    out.assert_succeeded(&write_config);
    let e = out.assert_denied(&read_secret, "open", &netrc);
    assert_eq!(e["reason"], "read_deny", "{out:#?}");
    assert_eq!(out.errno(&write_sibling), EPERM, "{out:#?}");
    assert!(out.events_for(&sibling).iter().any(|e| e["reason"] == "outside_write_trees"), "{out:#?}");
}

/// Mounts a tmpfs at `dir` (made first), tagged `source` in the mount table.
fn mount_tmpfs(dir: std::path::PathBuf, source: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", source]).arg(&dir).status().expect("run mount");
    assert!(mounted.success(), "mount a tmpfs at {}", dir.display());
    dir
}

/// An open walks the first levels above its file's mount inline and the
/// rest in a loop (`enforcer-ebpf/src/walk.rs`): files on mounts right
/// below the tree that judges them and three directories below it (past
/// the inline levels), and below no tree.
#[test]
fn opens_are_judged_by_the_trees_above_their_mount() {
    let sb = Sandbox::new("above-mount");
    let mounted_file = |dir: std::path::PathBuf, name: &str| {
        let dir = mount_tmpfs(dir, "above-mount");
        std::fs::write(dir.join(name), "x\n").unwrap();
        let file = Sandbox::path(&dir, name);
        (dir, file)
    };
    let mounts = [
        mounted_file(sb.allowed.join("m"), "near"),
        mounted_file(sb.allowed.join("x/y/m"), "far"),
        mounted_file(sb.outside.join("m"), "out"),
        mounted_file(sb.secret.join("m"), "key"),
        mounted_file(sb.secret.join("x/y/m"), "deep-key"),
    ];
    let [near, far, out, key, deep_key] = mounts.each_ref().map(|(_, file)| file.clone());
    let steps = [
        format!("write:{near}"),
        format!("write:{far}"),
        format!("write:{out}"),
        format!("read:{key}"),
        format!("read:{deep_key}"),
    ];
    let result = sb.run(&steps);
    for (dir, _) in mounts.iter().rev() {
        let _ = std::process::Command::new("umount").arg(dir).status();
    }
    result.assert_succeeded(&steps[0]);
    result.assert_succeeded(&steps[1]);
    assert_eq!(result.assert_denied(&steps[2], "open", &out)["reason"], "outside_write_trees", "{result:#?}");
    assert_eq!(result.assert_denied(&steps[3], "open", &key)["reason"], "read_deny", "{result:#?}");
    assert_eq!(result.assert_denied(&steps[4], "open", &deep_key)["reason"], "read_deny", "{result:#?}");
}

/// The walk above a file's mount keeps its state in a per-CPU slot
/// (`enforcer-ebpf/src/walk.rs`), and 7.x kernels (`PREEMPT_LAZY`) preempt
/// BPF programs. An agent runs two walks on one CPU, a denied read and an
/// allowed one, so that walks are preempted mid-walk: one must never finish
/// on the other's state, so the secret is never read. (A walk that finds
/// no free slot is denied as `walk_interrupted`, which the allowed one may be.)
#[test]
fn two_walks_sharing_a_cpu_never_finish_on_each_others_state() {
    let sb = Sandbox::new("shared-cpu");
    // Each file on a mount of its own, two directories below the tree it
    // is judged by (the secret's `read_deny` tree; for the notes, outside
    // every tree, the top), so both walks go on above their mount past the
    // levels an open walks inline, into the loop that uses the shared slot.
    let (mount, notes_mount) =
        (mount_tmpfs(sb.secret.join("a/b/mnt"), "shared-cpu"), mount_tmpfs(sb.outside.join("a/b/mnt"), "shared-cpu"));
    std::fs::write(mount.join("key"), "secret\n").unwrap();
    std::fs::write(notes_mount.join("notes"), "fine\n").unwrap();
    let (secret, notes) = (Sandbox::path(&mount, "key"), Sandbox::path(&notes_mount, "notes"));
    let n = 10_000;
    let probe = enforcer_tests::probe_bin().display().to_string();
    let script = format!("{probe} pin:0 opens-ok:{n}:{secret} & {probe} pin:0 opens-ok:{n}:{notes}; wait");
    let out = sb.finish(sb.spawn_command(&["/bin/sh".into(), "-c".into(), script.into()]));
    for dir in [&mount, &notes_mount] {
        let _ = std::process::Command::new("umount").arg(dir).status();
    }
    let opened = |path: &str| {
        let step = format!("opens-ok:{n}:{path}");
        out.results
            .iter()
            .find(|r| r["step"] == step)
            .and_then(|r| r["errno"].as_i64())
            .unwrap_or_else(|| panic!("no result for {step}: {out:#?}"))
    };
    let events = |reason: &str| out.events.iter().filter(|e| e["reason"] == reason).count();
    assert!(out.results.iter().filter(|r| r["step"] == "pin:0").all(|r| r["errno"] == 0), "{:?}", out.results);
    assert_eq!(opened(&secret), 0, "the secret was read; {} interrupted walks", events("walk_interrupted"));
    let refused = n + (n - usize::try_from(opened(&notes)).unwrap());
    // Refusals are on record (a flood may lose some events, never add any).
    let recorded = events("read_deny") + events("walk_interrupted");
    assert!(recorded > 0 && recorded <= refused, "{recorded} denials recorded of {refused} refused: {:?}", out.stderr);
    eprintln!("shared CPU: {} walks interrupted of {}", events("walk_interrupted"), 2 * n);
}

#[test]
fn audit_mode_allows_and_reports() {
    let sb = Sandbox::new("audit");
    sb.write_policy("audit");
    let target = Sandbox::path(&sb.outside, "audited");
    let step = format!("write:{target}");
    let out = sb.run(std::slice::from_ref(&step));
    out.assert_succeeded(&step);
    // Audit reports every check that would have denied: the create, then
    // the open of what was created.
    let events = out.events_for(&target);
    let ops: Vec<_> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "open"], "{out:#?}");
    for event in events {
        assert_eq!(event["action"], "audit", "{event}");
        assert_eq!(event["errno"], 0, "{event}");
    }
    assert!(std::path::Path::new(&target).exists());
}

#[test]
fn a_child_cgroup_created_after_tagging_is_enforced() {
    let sb = Sandbox::new("childcg");
    let target = Sandbox::path(&sb.outside, "from-child");
    let step = format!("write:{target}");
    let mut child = sb.spawn(&["wait-stdin:".to_owned(), step.clone()]);
    let (pid, stdout) = wait_ready(&mut child);
    // The test (untagged) creates cgroups below the tagged one, after
    // tagging, and moves the probe into the deepest: six levels down, past
    // the levels the programs' screen looks at inline, so the tag is found
    // by the climb's loop.
    let cgroup_rel = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = cgroup_rel.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim().to_owned();
    let new_cgroup = format!("/sys/fs/cgroup{rel}/late-child/a/b/c/d/e");
    std::fs::create_dir_all(&new_cgroup).unwrap();
    std::fs::write(format!("{new_cgroup}/cgroup.procs"), pid.to_string()).unwrap();
    // Untagged processes stay unaffected meanwhile.
    let untagged = sb.outside_file("untagged-write");
    std::fs::write(&untagged, "still writable\n").unwrap();
    release(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout.into_inner(), &mut rest).unwrap();
    let out = sb.finish(child);
    assert!(rest.contains(&format!("{{\"errno\":{EPERM},\"step\":\"{step}\"}}")), "{rest}\n{out:#?}");
    let events = out.events_for(&target);
    assert_eq!(events.len(), 1, "{out:#?}");
    assert!(events[0]["cgroup"].as_str().unwrap().ends_with("/late-child/a/b/c/d/e"), "{}", events[0]);
    assert!(out.events_for(&untagged).is_empty());
    assert!(!std::path::Path::new(&target).exists());
}

#[test]
fn a_malformed_policy_is_refused_with_a_located_error() {
    let sb = Sandbox::under_enforcer_run("badpolicy");
    std::fs::write(&sb.policy, "name = \"x\"\n[files]\nwrite = [\"relative/path\"]\n").unwrap();
    let marker = Sandbox::path(&sb.allowed, "ran");
    let out = sb.run(&[format!("write:{marker}")]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("policy.toml:3:10: error: relative path `relative/path`"), "{}", out.stderr);
    assert!(!std::path::Path::new(&marker).exists(), "the command must not run");
}

#[test]
fn a_denial_storm_is_denied_throughout_and_every_event_is_accounted_for() {
    let sb = Sandbox::under_enforcer_run("storm");
    let target = sb.outside_file("storm");
    let attempts = 20_000;
    let step = format!("storm:{target}:{attempts}");
    let out = sb.run(std::slice::from_ref(&step));
    assert_eq!(out.errno(&step), EPERM, "stderr: {}", out.stderr);
    let delivered = out.events_for(&target).len();
    let lost: u64 = out.events.iter().filter(|e| e["kind"] == "lost").map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(delivered as u64 + lost, attempts, "delivered {delivered} + lost {lost}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original\n");
}

#[test]
fn unix_sockets_outside_the_policy_are_denied_however_they_are_reached() {
    use std::os::{linux::net::SocketAddrExt as _, unix::net};
    let sb = Sandbox::new("net-unix");
    let at = |name: &str| sb.base.join(name).display().to_string();
    let (allowed, runtime, log, link) = (at("agent.sock"), at("runtime.sock"), at("log.sock"), at("link.sock"));
    let abstract_listener =
        |name: &str| net::UnixListener::bind_addr(&net::SocketAddr::from_abstract_name(name).unwrap()).unwrap();
    let _held = (
        net::UnixListener::bind(&allowed).unwrap(),
        net::UnixListener::bind(&runtime).unwrap(),
        net::UnixDatagram::bind(&log).unwrap(),
        abstract_listener("enforcer-test-ok"),
        abstract_listener("enforcer-test-no"),
    );
    std::os::unix::fs::symlink(&runtime, &link).unwrap();
    sb.write_policy_with("enforce", &format!("[network]\nunix = [\"{allowed}\", \"@enforcer-test-ok\"]\n"));
    let steps = [
        format!("unix-connect:{allowed}"),
        "unix-connect:@enforcer-test-ok".to_owned(),
        format!("unix-connect:{runtime}"),
        // Through a symlink: judged by the name the listener is bound to.
        format!("unix-connect:{link}"),
        "unix-connect:@enforcer-test-no".to_owned(),
        format!("unix-sendto:{log}"),
        // Packet and netlink audit sockets: classes the policy did not allow.
        "socket:17:3:768".to_owned(),
        "socket:16:3:9".to_owned(),
        // Netlink route queries (getaddrinfo, `ip addr`) are always allowed.
        "socket:16:3:0".to_owned(),
    ];
    let out = sb.run(&steps);
    for step in [&steps[0], &steps[1], &steps[8]] {
        out.assert_succeeded(step);
    }
    for step in [&steps[2], &steps[3]] {
        assert_eq!(out.errno(step), EPERM, "{step}: {out:#?}");
    }
    let to_runtime: Vec<_> = out.events.iter().filter(|e| e["path"] == runtime.as_str()).collect();
    assert_eq!(to_runtime.len(), 2, "one event per attempt, both naming the bound socket: {out:#?}");
    assert!(to_runtime.iter().all(|e| e["kind"] == "unix_connect" && e["family"] == "unix"), "{to_runtime:#?}");
    out.assert_denied_net(&steps[4], "unix_connect", |e| e["path"] == "@enforcer-test-no");
    out.assert_denied_net(&steps[5], "unix_connect", |e| e["path"] == log.as_str());
    let packet = out.assert_denied_net(&steps[6], "socket", |e| e["family"] == "packet");
    assert_eq!(packet["class"], "packet", "{packet}");
    let netlink = out.assert_denied_net(&steps[7], "socket", |e| e["family"] == "netlink");
    assert_eq!(netlink["class"], "netlink", "{netlink}");
    assert_eq!(out.events.len(), 6, "{:#?}", out.events);
}
