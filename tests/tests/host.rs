//! What the host kernel supports: it runs cgroup v2 but refuses BPF LSM
//! programs, so `enforcer run` must refuse plainly and never run the command
//! unenforced. Runs as root on the host (the host tier).

use std::process::Command;

use enforcer::cgroups::{Cgroup, Hierarchy, RunCgroup};
use enforcer_tests::enforcer_bin;

/// The host kernel runs the cgroup programs but not BPF LSM ones.
const DEGRADED: bool = true;
mod network;

#[test]
fn run_refuses_to_start_the_command_when_bpf_lsm_cannot_load() {
    let marker = std::env::temp_dir().join(format!("enforcer-host-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/coding-agent.toml");
    let out = Command::new(enforcer_bin())
        .args(["run", "--policy", policy, "--", "touch"])
        .arg(&marker)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("the command was not run"), "{stderr}");
    assert!(
        stderr.contains("cannot attach BPF trampolines") || stderr.contains("BPF LSM is not active"),
        "says what the kernel lacks: {stderr}"
    );
    assert!(!marker.exists(), "the command must not have run");
    assert!(stderr.contains("not enforceable on this kernel:") && stderr.contains("[files]"), "lists the parts: {stderr}");
    assert!(stderr.contains("pass --degraded"), "says what to do: {stderr}");
}

#[test]
fn run_cgroups_are_created_joined_and_removed() {
    let hierarchy = Hierarchy::find().expect("cgroup2 mounted");
    let run = RunCgroup::create(&hierarchy).expect("create run cgroup");
    let cgroup = run.cgroup.clone();
    assert!(cgroup.name.starts_with("/enforcer/run-"), "{}", cgroup.name);
    assert!(cgroup.level >= 2, "level {}", cgroup.level);
    let reopened = Cgroup::open(&hierarchy, &cgroup.path).unwrap();
    assert_eq!(reopened.id, cgroup.id);

    // A process started in it, and one in a child cgroup, are killed and the
    // tree removed when the run ends.
    let procs = cgroup.procs_file().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    // SAFETY: join only calls write(2).
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || enforcer::cgroups::join(&procs)) };
    let mut child = cmd.spawn().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(own.contains(&format!("0::{}", cgroup.name)), "{own}");
    std::fs::create_dir(cgroup.path.join("nested")).unwrap();
    drop(run);
    assert!(!cgroup.path.exists(), "run cgroup removed");
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed with the cgroup");
}
