//! Containers tagged by the OCI hook, in both tiers: Debian's `runc` runs a
//! container (a busybox root filesystem, the probe bound in) whose
//! `createRuntime` hook is `enforcer oci-hook`. The hook tags the container's
//! cgroup through the daemon with the policy its annotation names, armed at
//! the container's first exec: runc's own setup in the cgroup (mounts,
//! `pivot_root`) passes, and the container's first instruction is judged.
//! A container the hook cannot tag does not start. A container whose
//! seccomp profile `enforcer export seccomp --listener` wrote has its
//! syscalls outside the allowlist judged by the daemon (its seccomp agent).
//! The VM tier adds file writes and the floor.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    EPERM,
    daemon::{Daemon, errno_of},
    enforcer_bin, probe_bin, release, wait_ready,
};
use serde_json::{Value, json};

use super::DEGRADED;

const ECONNREFUSED: i64 = 111;
const ALLOWED: &str = "tcp-connect:127.0.0.1:81";
const DENIED: &str = "tcp-connect:127.0.0.1:82";
const POLICY_ANNOTATION: &str = "enforcer.dev/policy";

/// A runc bundle and state directory under the daemon's test directory.
struct Container {
    id: String,
    bundle: PathBuf,
    runc_root: PathBuf,
    /// Its cgroup, below the cgroup2 mount.
    cgroup: String,
}

impl Container {
    /// A container `name` that runs the probe with `steps` as its first
    /// program, with `annotations`, the daemon's socket in its hook, and
    /// `writable` (a host directory) bound at `/work`.
    fn new(daemon: &Daemon, name: &str, annotations: &[(&str, &str)], writable: &Path, steps: &[String]) -> Self {
        Self::with_seccomp(daemon, name, annotations, writable, steps, None)
    }

    /// [`Self::new`], with `seccomp` as the spec's `linux.seccomp`.
    fn with_seccomp(
        daemon: &Daemon,
        name: &str,
        annotations: &[(&str, &str)],
        writable: &Path,
        steps: &[String],
        seccomp: Option<Value>,
    ) -> Self {
        let id = format!("enforcer-test-{name}");
        let bundle = daemon.base.join("containers").join(name);
        let rootfs = bundle.join("rootfs");
        for dir in ["bin", "etc", "proc", "dev", "tmp", "work", "mnt"] {
            std::fs::create_dir_all(rootfs.join(dir)).expect("create the root filesystem");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        std::fs::write(rootfs.join("probe"), b"").expect("the probe's mount point");
        let cgroup = format!("/enforcer-tests/ctr-{name}");
        let mut config = config(&cgroup, annotations, writable, steps, &daemon.socket);
        if let Some(seccomp) = seccomp {
            config["linux"]["seccomp"] = seccomp;
        }
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).expect("config.json");
        let runc_root = daemon.base.join("runc");
        let container = Self { id, bundle, runc_root, cgroup };
        container.delete();
        container
    }

    /// `runc run`: creates the container (running the hook), starts it and
    /// waits for it.
    fn run(&self) -> Output {
        let mut child = self.spawn();
        drop(child.stdin.take());
        child.wait_with_output().expect("wait for runc")
    }

    /// Registers its hook for one policy (`oci-hook --policy`), as a
    /// per-policy hooks.d file does.
    fn hook_registered_for(self, policy: &str) -> Self {
        let path = self.bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let args = config["hooks"]["createRuntime"][0]["args"].as_array_mut().unwrap();
        args.extend([json!("--policy"), json!(policy)]);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        self
    }

    /// `runc run` with the container's stdin, stdout and stderr piped.
    fn spawn(&self) -> std::process::Child {
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.runc_root).arg("run");
        if root_is_initramfs() {
            command.arg("--no-pivot");
        }
        command.arg("--bundle").arg(&self.bundle).arg(&self.id);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run runc")
    }

    fn delete(&self) {
        let _ = Command::new("runc").arg("--root").arg(&self.runc_root).args(["delete", "--force", &self.id]).output();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The runtime spec: the probe as the container's program, the host's
/// libraries for it, a createRuntime hook, and `CAP_SYS_ADMIN`, so that a
/// refused mount is the enforcer's refusal and not the capability's.
fn config(cgroup: &str, annotations: &[(&str, &str)], writable: &Path, steps: &[String], socket: &Path) -> Value {
    let caps = ["CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_KILL", "CAP_AUDIT_WRITE"];
    let mut args = vec!["/probe".to_owned()];
    args.extend(steps.iter().cloned());
    let bind_ro = |path: &str| json!({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]});
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
        json!({"destination": "/probe", "type": "bind", "source": probe_bin(), "options": ["bind", "ro"]}),
        json!({"destination": "/work", "type": "bind", "source": writable, "options": ["rbind", "rw"]}),
    ];
    mounts.extend(["/lib", "/lib64", "/usr"].into_iter().filter(|p| Path::new(p).exists()).map(bind_ro));
    let annotations: serde_json::Map<String, Value> =
        annotations.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "agent",
        "mounts": mounts,
        "annotations": annotations,
        "hooks": {"createRuntime": [packaged_hook(socket)]},
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
}

/// The hook as `packaging/oci-hooks.d/enforcer.json` registers it (for
/// CRI-O and podman), with this build's binary and the test daemon's socket.
fn packaged_hook(socket: &Path) -> Value {
    let text = include_str!("../../../packaging/oci-hooks.d/enforcer.json");
    let packaged: Value = serde_json::from_str(text).expect("the packaged hook is JSON");
    assert_eq!(packaged["stages"], json!(["createRuntime"]), "{packaged}");
    let when = packaged["when"]["annotations"].as_object().expect("it runs for an annotation");
    let pattern = when.keys().next().expect("one annotation");
    assert_eq!(pattern.trim_start_matches('^').trim_end_matches('$').replace("\\.", "."), POLICY_ANNOTATION);
    let mut hook = packaged["hook"].clone();
    hook["path"] = json!(enforcer_bin());
    hook["args"].as_array_mut().expect("args").extend([json!("--socket"), json!(socket)]);
    hook
}

/// An initramfs root (the VMs') cannot be pivoted away from.
fn root_is_initramfs() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"/") && matches!(fields.get(2), Some(&"rootfs" | &"ramfs" | &"tmpfs"))
    })
}

fn probe_results(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("step").is_some())
        .collect()
}

fn text_of(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn policy(writable: &Path) -> String {
    format!(
        "name = \"container\"\n[files]\nwrite = [\"{}\"]\n[network]\nallow = [\"127.0.0.1/32:81\"]\n",
        writable.display()
    )
}

/// A daemon `name` with the `container` policy (plus `extra`) in force, and
/// the directory that policy lets containers write (bound at `/work`).
fn daemon_with_policy(name: &str, extra: &str) -> (Daemon, PathBuf) {
    let d = Daemon::start(name, DEGRADED, &[], "");
    let writable = d.base.join("work");
    std::fs::create_dir_all(&writable).unwrap();
    d.write_policy("container.toml", &format!("{}{extra}", policy(&writable)));
    assert!(d.ctl(&["reload"]).status.success(), "{}", d.log());
    (d, writable)
}

#[test]
fn the_oci_hook_tags_a_container_before_its_first_instruction() {
    let (d, writable) = daemon_with_policy("containers-tag", "");

    // The program's first instruction is judged: its first step is refused.
    let mut steps = vec![DENIED.to_owned(), ALLOWED.to_owned()];
    if !DEGRADED {
        steps.extend([
            "write:/work/allowed".to_owned(),
            "write:/etc/outside".to_owned(),
            // Root in the container, with CAP_SYS_ADMIN, tries what runc did
            // before its first exec: the floor refuses it now.
            "mount:/mnt".to_owned(),
        ]);
    }
    let annotations = [(POLICY_ANNOTATION, "container"), ("io.kubernetes.pod.name", "agent-7")];
    let container = Container::new(&d, "tagged", &annotations, &writable, &steps);
    let out = container.run();
    assert!(out.status.success(), "runc: {}\ndaemon log:\n{}", text_of(&out), d.log());
    let results = probe_results(&out);
    assert_eq!(errno_of(&results, DENIED), EPERM, "{results:?}");
    assert_eq!(errno_of(&results, ALLOWED), ECONNREFUSED, "{results:?}");

    let tagged = d.wait_event("tagged", |e| e["kind"] == "tagged" && e["cgroup"] == container.cgroup.as_str());
    assert_eq!(tagged["policy"], "container", "{tagged}");
    assert_eq!(tagged["labels"]["container"], container.id.as_str(), "{tagged}");
    assert_eq!(tagged["labels"]["pod"], "agent-7", "{tagged}");
    let connect = d.wait_event("connect", |e| e["kind"] == "connect" && e["dport"] == 82);
    assert_eq!(connect["cgroup"], container.cgroup.as_str(), "{connect}");
    assert_eq!(connect["policy"], "container", "{connect}");
    assert_eq!(connect["action"], "deny", "{connect}");

    if !DEGRADED {
        assert_eq!(errno_of(&results, "write:/work/allowed"), 0, "{results:?}");
        assert_eq!(errno_of(&results, "write:/etc/outside"), EPERM, "{results:?}");
        assert_eq!(errno_of(&results, "mount:/mnt"), EPERM, "{results:?}");
        let write = d.wait_event("file write", |e| {
            e["cgroup"] == container.cgroup.as_str() && e["path"].as_str().is_some_and(|p| p.ends_with("/outside"))
        });
        assert_eq!(write["action"], "deny", "{write}");
        d.wait_event("mount", |e| e["cgroup"] == container.cgroup.as_str() && e["op"] == "mount");
    }
}

#[test]
fn a_container_the_hook_cannot_tag_never_starts_and_one_without_the_annotation_is_not_an_agent() {
    let (mut d, writable) = daemon_with_policy("containers-refused", "");
    let steps = [DENIED.to_owned()];

    // A policy the daemon does not have: the runtime refuses the container.
    let unknown = Container::new(&d, "unknown", &[(POLICY_ANNOTATION, "no-such-policy")], &writable, &steps);
    let out = unknown.run();
    assert!(!out.status.success(), "the container ran: {}", text_of(&out));
    assert!(probe_results(&out).is_empty(), "its program ran: {}", text_of(&out));
    assert!(text_of(&out).contains("no-such-policy"), "runc shows the hook's reason: {}", text_of(&out));

    // No annotation: the hook lets it start untagged.
    let plain = Container::new(&d, "plain", &[], &writable, &steps);
    let out = plain.run();
    assert!(out.status.success(), "runc: {}", text_of(&out));
    assert_eq!(errno_of(&probe_results(&out), DENIED), ECONNREFUSED, "{}", text_of(&out));

    // A hook registered for one policy (CRI-O matches the pod's annotations,
    // which it may not copy into the container's): it tags a container
    // without the annotation, and refuses one whose annotation names another.
    let registered = Container::new(&d, "registered", &[], &writable, &steps).hook_registered_for("container");
    let out = registered.run();
    assert!(out.status.success(), "runc: {}", text_of(&out));
    assert_eq!(errno_of(&probe_results(&out), DENIED), EPERM, "{}", text_of(&out));
    let other = [(POLICY_ANNOTATION, "other")];
    let conflict = Container::new(&d, "conflict", &other, &writable, &steps).hook_registered_for("container");
    let out = conflict.run();
    assert!(!out.status.success(), "the container ran: {}", text_of(&out));
    assert!(probe_results(&out).is_empty(), "its program ran: {}", text_of(&out));
    assert!(text_of(&out).contains("registered for `container`"), "{}", text_of(&out));

    // No daemon: an agent container does not start unenforced.
    d.stop();
    let orphan = Container::new(&d, "no-daemon", &[(POLICY_ANNOTATION, "container")], &writable, &steps);
    let out = orphan.run();
    assert!(!out.status.success(), "the container ran: {}", text_of(&out));
    assert!(probe_results(&out).is_empty(), "its program ran: {}", text_of(&out));
    assert!(text_of(&out).contains("cannot reach the enforcer daemon"), "{}", text_of(&out));
}

#[test]
fn the_daemon_judges_a_containers_syscalls_through_its_seccomp_listener() {
    let (d, writable) = daemon_with_policy("containers-seccomp", "[syscalls]\nallow = [\"@default-agent\"]\n");
    let listener = d.seccomp_listener();

    // The profile an operator installs: what `export` writes, unchanged.
    let policy_file = d.policies.join("container.toml");
    let export = Command::new(enforcer_bin())
        .args(["export", "seccomp", "--format", "oci", "--policy"])
        .arg(&policy_file)
        .arg("--listener")
        .arg(&listener)
        .output()
        .expect("run enforcer export");
    assert!(export.status.success(), "{}", text_of(&export));
    let profile: Value = serde_json::from_slice(&export.stdout).expect("the profile is JSON");
    let notified = profile["syscalls"].as_array().unwrap().iter().find(|r| r["action"] == "SCMP_ACT_NOTIFY");
    assert!(notified.is_some_and(|r| r["names"].as_array().unwrap().iter().any(|n| n == "keyctl")), "{profile}");
    assert_eq!(profile["listenerMetadata"], "container", "{profile}");

    let steps = ["getpid".to_owned(), "keyctl".to_owned(), DENIED.to_owned()];
    let annotations = [(POLICY_ANNOTATION, "container")];
    let container = Container::with_seccomp(&d, "seccomp", &annotations, &writable, &steps, Some(profile));
    let out = container.run();
    assert!(out.status.success(), "runc: {}\ndaemon log:\n{}", text_of(&out), d.log());
    let results = probe_results(&out);
    assert_eq!(errno_of(&results, "getpid"), 0, "{results:?}");
    assert_eq!(errno_of(&results, "keyctl"), EPERM, "{results:?}\ndaemon log:\n{}", d.log());
    assert_eq!(errno_of(&results, DENIED), EPERM, "the tag judges it as well: {results:?}");

    let refused = d.wait_event("syscall", |e| e["kind"] == "syscall" && e["syscall"] == "keyctl");
    assert_eq!(refused["action"], "deny", "{refused}");
    assert_eq!(refused["reason"], "not_allowed", "{refused}");
    assert_eq!(refused["cgroup"], container.cgroup.as_str(), "{refused}");
    assert_eq!(refused["policy"], "container", "{refused}");
    assert_eq!(refused["policy_version"], 1, "{refused}");
    assert_eq!(refused["policy_hash"].as_str().map(str::len), Some(16), "{refused}");
    assert!(refused["seq"].as_u64().is_some(), "{refused}");
}

#[test]
fn a_container_stays_judged_when_the_daemon_is_killed_restarted_and_reloaded() {
    let (mut d, writable) = daemon_with_policy("containers-restart", "");
    let later = "tcp-connect:127.0.0.1:83";
    let newly_allowed = "tcp-connect:127.0.0.1:84";
    let after_sweep = "tcp-connect:127.0.0.1:85";
    let steps = [DENIED, "wait-stdin", after_sweep, "wait-stdin", later, newly_allowed].map(str::to_owned);
    let container = Container::new(&d, "restart", &[(POLICY_ANNOTATION, "container")], &writable, &steps);
    let mut runc = container.spawn();
    let (_, mut stdout) = wait_ready(&mut runc);
    let mut next_line = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let first = next_line();
    assert_eq!(first["errno"], EPERM, "judged from its first step: {first}");

    // The daemon's sweep (every 5 s) keys the armed tag by the cgroup's id,
    // where the tag check looks first: still judged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains(&format!("{}: a first exec armed its tag", container.cgroup)) {
        assert!(Instant::now() < deadline, "the sweep did not key the armed tag by its id:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    release(&mut runc);
    let (_, swept) = (next_line(), next_line());
    assert_eq!(swept["errno"], EPERM, "judged once keyed by its id: {swept}");

    // The agent's cgroup outlives the daemon; the restarted daemon adopts
    // the tag (still armed) and a new version of the policy reaches it.
    d.kill9();
    d.spawn();
    let (_, status) = d.api("GET", "/v1/status", None);
    let tag = status["tags"].as_array().unwrap().iter().find(|t| t["cgroup"] == container.cgroup.as_str()).cloned();
    assert!(tag.is_some_and(|t| t["from_exec"] == true), "{status}");
    let text = policy(&writable).replace("\"127.0.0.1/32:81\"", "\"127.0.0.1/32:81\", \"127.0.0.1/32:84\"");
    d.write_policy("container.toml", &text);
    assert!(d.ctl(&["reload"]).status.success(), "{}", d.log());

    release(&mut runc);
    let rest: Vec<Value> = stdout.lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect();
    assert!(runc.wait().unwrap().success());
    assert_eq!(errno_of(&rest, later), EPERM, "still judged: {rest:?}\n{}", d.log());
    assert_eq!(errno_of(&rest, newly_allowed), ECONNREFUSED, "by the new version: {rest:?}");
}
