//! The built-in floor and the agent boundary (BPF LSM, so the VM tier only):
//! what a root agent with no seccomp filter tries against the host and the
//! enforcer, with and without `kill()` or `ptrace`. Every attack is made
//! twice, under `enforcer run` and in a cgroup the daemon tagged (whose
//! processes carry no filter of ours), and each refusal is the exact errno
//! with exactly one event.

use std::{
    ffi::CString,
    io::Read as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use enforcer_tests::{
    EPERM, Sandbox,
    daemon::{Daemon, errno_of},
    release, wait_ready,
};
use serde_json::Value;

/// One attack: the probe step, the errno it must get, and the event it must
/// produce (`kind`, `op`, `reason`, and the `target_pid` or `path` it names).
struct Attack {
    step: String,
    errno: i64,
    event: Option<Want>,
}

struct Want {
    kind: &'static str,
    op: &'static str,
    reason: &'static str,
    about: About,
}

enum About {
    Target(u32),
    Path(String),
    /// A field of the event and its value.
    Field(&'static str, u32),
    Nothing,
}

impl Want {
    fn matches(&self, e: &Value) -> bool {
        let about = match &self.about {
            About::Target(pid) => e["target_pid"] == *pid,
            About::Path(path) => e["path"] == path.as_str(),
            About::Field(name, value) => e[*name] == *value,
            About::Nothing => true,
        };
        e["kind"] == self.kind && e["op"] == self.op && e["reason"] == self.reason && about
    }
}

fn refused(step: String, kind: &'static str, op: &'static str, reason: &'static str, about: About) -> Attack {
    Attack { step, errno: EPERM, event: Some(Want { kind, op, reason, about }) }
}

fn floor(step: String, op: &'static str, about: About) -> Attack {
    refused(step, "floor", op, "floor", about)
}

fn allowed(step: String) -> Attack {
    Attack { step, errno: 0, event: None }
}

/// Creating a user namespace (`CLONE_NEWUSER`).
const USERNS: &str = "unshare:0x10000000";

/// Whether this kernel has the `userns_create` LSM hook (Linux 6.1).
fn has_userns_hook() -> bool {
    enforcer::btf::Btf::from_sys_fs().expect("kernel BTF").has_function("bpf_lsm_userns_create")
}

/// Without the `userns_create` hook, the enforcer names what it cannot enforce.
fn userns_hook_or_warning(stderr: &str) {
    if !has_userns_hook() {
        assert!(
            stderr.contains("NOT enforced: creating user namespaces"),
            "no warning about user namespaces:\n{stderr}"
        );
    }
}

/// Processes and files outside the agent for the attacks to aim at.
struct Targets {
    /// A host process (outside every agent).
    host: Child,
    /// A host process whose controlling terminal is `operator_tty`: the
    /// operator's shell.
    operator: Child,
    operator_tty: String,
    /// A SCSI generic node (`/dev/sg0`): `SG_IO` reaches every disk block.
    sg: String,
    /// A block device node (ramdisk 1:0).
    block: String,
    /// A node of `/dev/kmsg`'s device that the policy's `[devices]` names
    /// (the allowance is the node's, not the device number's).
    named_device: String,
    /// An empty directory to mount on.
    mount_point: String,
    cgroup_root: String,
}

impl Targets {
    fn new(dir: &std::path::Path) -> Self {
        let host = Command::new("sleep").arg(TARGET_LIFETIME).spawn().expect("start a host process");
        let (operator, operator_tty) = operator_shell();
        let sg = dir.join("sg0").display().to_string();
        let c_sg = CString::new(sg.clone()).unwrap();
        // SAFETY: mknod(2) of a NUL-terminated path.
        assert_eq!(unsafe { libc::mknod(c_sg.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(21, 0)) }, 0, "mknod sg0");
        let block = dir.join("blockdev").display().to_string();
        let c_block = CString::new(block.clone()).unwrap();
        // SAFETY: mknod(2) of a NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(c_block.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(1, 0)) },
            0,
            "mknod blockdev"
        );
        let named_device = dir.join("named-kmsg").display().to_string();
        let c_named = CString::new(named_device.clone()).unwrap();
        // SAFETY: mknod(2) of a NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(c_named.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 11)) },
            0,
            "mknod named-kmsg"
        );
        let mount_point = dir.join("mount-point");
        std::fs::create_dir_all(&mount_point).expect("mount point");
        let mount_point = mount_point.display().to_string();
        let cgroup_root = enforcer::cgroups::Hierarchy::find().expect("cgroup2").mount_point.display().to_string();
        Self { host, operator, operator_tty, sg, block, named_device, mount_point, cgroup_root }
    }

    /// Every attack, and what the agent may still do to itself. `supervisor`
    /// is the pid `ppid` stands for, if the agent's parent is the enforcer.
    fn attacks(&self, sb: &Sandbox, supervisor: Option<u32>) -> Vec<Attack> {
        let host = self.host.id();
        let outside_file = Sandbox::path(&sb.outside, "immutable-me");
        let secret = Sandbox::path(&sb.secret, "credentials");
        let (later, kube) = Self::later_secrets(sb);
        let mut attacks = vec![
            // What breaks out of any sandbox.
            floor("bpf-prog-load".to_owned(), "bpf", About::Nothing),
            floor("perf".to_owned(), "perf_event_open", About::Nothing),
            floor(format!("mount:{}", self.mount_point), "mount", About::Nothing),
            floor(USERNS.to_owned(), "user_namespace", About::Nothing),
            floor(format!("ptrace-attach:{host}"), "ptrace", About::Target(host)),
            floor(format!("kill:{host}:9"), "signal", About::Target(host)),
            floor("init-module".to_owned(), "kernel_module", About::Nothing),
            refused("read:/dev/mem".to_owned(), "file_read", "open", "floor", About::Path("/dev/mem".to_owned())),
            refused("read:/proc/kcore".to_owned(), "file_read", "open", "floor", About::Path("/proc/kcore".to_owned())),
            refused(format!("read:{}", self.block), "file_read", "open", "floor", About::Path(self.block.clone())),
            refused(
                "overwrite:/proc/sys/kernel/domainname".to_owned(),
                "file_write",
                "open",
                "floor",
                About::Path("/proc/sys/kernel/domainname".to_owned()),
            ),
            refused(
                "overwrite:/sys/kernel/uevent_seqnum".to_owned(),
                "file_write",
                "open",
                "floor",
                About::Path("/sys/kernel/uevent_seqnum".to_owned()),
            ),
            allowed("kill-child".to_owned()),
            // What reaches another process without a signal or ptrace.
            floor(format!("prlimit-cpu:{host}"), "rlimit", About::Target(host)),
            floor(format!("setpriority:{host}"), "setnice", About::Target(host)),
            floor(format!("sched-idle:{host}"), "setscheduler", About::Target(host)),
            floor(format!("ioprio-idle:{host}"), "setioprio", About::Target(host)),
            // The write goes through; the SIGKILL it raises does not.
            Attack {
                step: format!("sigio-kill:{host}"),
                errno: 0,
                event: Some(Want { kind: "floor", op: "sigio", reason: "floor", about: About::Target(host) }),
            },
            floor(format!("clone-into-cgroup:{}", self.cgroup_root), "clone_into_cgroup", About::Nothing),
            floor("tiocsti-pty".to_owned(), "tty_inject", About::Nothing),
            refused(
                format!("open:{}", self.operator_tty),
                "file_read",
                "open",
                "floor",
                About::Path(self.operator_tty.clone()),
            ),
            refused(format!("open:{}", self.sg), "file_read", "open", "floor", About::Path(self.sg.clone())),
            refused("open:/dev/kmsg".to_owned(), "file_read", "open", "floor", About::Path("/dev/kmsg".to_owned())),
            refused(
                format!("chattr:{outside_file}"),
                "file_write",
                "setflags",
                "outside_write_trees",
                About::Path(outside_file.clone()),
            ),
            // Secrets that did not exist when the policy loaded: one made
            // since by someone else, one the agent tries to make itself.
            refused(
                format!("read:{later}/token"),
                "file_read",
                "open",
                "read_deny",
                About::Path(format!("{later}/token")),
            ),
            refused(format!("mkdir:{kube}"), "file_write", "mkdir", "read_deny", About::Path(kube.clone())),
            // A secret reached through a detached copy of its mount: no tree
            // above it to judge by.
            refused(format!("open-tree-read:{secret}"), "file_read", "open", "path_disconnected", About::Nothing),
            refused("fsmount-write".to_owned(), "file_write", "create", "path_disconnected", About::Nothing),
            // Source routes: the packet's first hop is one no connect hook saw.
            floor("ip-options".to_owned(), "source_route", About::Field("option", 4)),
            floor("ipv6-rthdr".to_owned(), "source_route", About::Field("option", 57)),
            floor("sendmsg-source-route:127.0.0.1:9".to_owned(), "source_route", About::Field("option", 7)),
            // Its own limits, priority and devices stay its own.
            allowed("prlimit-core:self".to_owned()),
            allowed("setpriority:self".to_owned()),
            allowed("open:/dev/null".to_owned()),
            allowed("open:/dev/urandom".to_owned()),
            allowed("open:/dev/ptmx".to_owned()),
            allowed(format!("open:{}", self.named_device)),
            allowed("bpf-fds".to_owned()),
        ];
        if let Some(supervisor) = supervisor {
            attacks.extend([
                floor("prlimit-cpu:ppid".to_owned(), "rlimit", About::Target(supervisor)),
                Attack {
                    step: "sigio-kill:ppid".to_owned(),
                    errno: 0,
                    event: Some(Want { kind: "floor", op: "sigio", reason: "floor", about: About::Target(supervisor) }),
                },
            ]);
        }
        // Last: it leaves the probe with a non-root effective uid.
        attacks.push(floor("seteuid-back".to_owned(), "setuid", About::Nothing));
        // Before Linux 6.1 no LSM hook sees a user namespace made: the
        // enforcer says so (`userns_hook_or_warning`), and the probe stays
        // out of one (inside, the capability module would refuse what the
        // floor judges, without an event).
        if !has_userns_hook() {
            attacks.retain(|attack| attack.step != USERNS);
        }
        attacks
    }

    /// `read_deny` trees that do not exist when the policy loads: a
    /// credentials directory a tool creates later, one inside a write tree.
    fn later_secrets(sb: &Sandbox) -> (String, String) {
        (Sandbox::path(&sb.outside, "gcloud"), Sandbox::path(&sb.allowed, ".kube"))
    }

    /// The policy: writes in `allowed`, the secrets (the later ones too),
    /// and the device the tests name.
    fn policy(&self, sb: &Sandbox, name: &str) -> String {
        let (later, kube) = Self::later_secrets(sb);
        format!(
            "name = \"{name}\"\n[files]\nwrite = [\"{}\"]\nread_deny = [\"{}\", \"{later}\", \"{kube}\"]\n\
             [devices]\nallow = [\"{}\"]\n",
            sb.allowed.display(),
            sb.secret.display(),
            self.named_device
        )
    }

    /// Once the policy is in force: a tool outside the agent writes the
    /// credentials it names but that did not exist.
    fn create_later_secret(sb: &Sandbox) {
        let (later, _) = Self::later_secrets(sb);
        std::fs::create_dir_all(&later).expect("create the later secret's directory");
        std::fs::write(format!("{later}/token"), "token\n").expect("write the later secret");
    }

    /// Asserts every attack's errno and event, that no other event was
    /// written, and that the targets are alive.
    fn check(&mut self, attacks: &[Attack], results: &[Value], events: &[Value]) {
        for attack in attacks {
            assert_eq!(errno_of(results, &attack.step), attack.errno, "step `{}`: {results:#?}", attack.step);
            if let Some(want) = &attack.event {
                let found: Vec<&Value> = events.iter().filter(|e| want.matches(e)).collect();
                assert_eq!(
                    found.len(),
                    1,
                    "step `{}`: want one {}/{} event, got {found:#?}\nall: {events:#?}",
                    attack.step,
                    want.kind,
                    want.op
                );
                assert_eq!(
                    (found[0]["action"].as_str(), found[0]["errno"].as_i64()),
                    (Some("deny"), Some(EPERM)),
                    "{}",
                    found[0]
                );
            }
        }
        let wanted = attacks.iter().filter(|a| a.event.is_some()).count();
        let denials: Vec<&Value> = events.iter().filter(|e| e["action"] == "deny").collect();
        assert_eq!(denials.len(), wanted, "one event per refusal: {denials:#?}");
        assert!(self.host.try_wait().unwrap().is_none(), "the host process must be alive");
        assert!(self.operator.try_wait().unwrap().is_none(), "the operator's shell must be alive");
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for child in [&mut self.host, &mut self.operator] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Seconds the target processes live (they are killed when the test ends):
/// longer than any load, so they are still there when the agent attacks.
/// With two minutes, the operator's terminal had lost its session by the
/// time the compat build had loaded on 5.10 (about five minutes under TCG),
/// so opening it was rightly allowed (a terminal of no session).
const TARGET_LIFETIME: &str = "3600";

/// A host process in a session of its own whose controlling terminal is a
/// new pseudo-terminal (the operator's shell); returns it and the terminal's
/// path. The master end stays open (leaked) as long as the test runs.
fn operator_shell() -> (Child, String) {
    let (master, tty) = enforcer_tests::pty();
    std::mem::forget(master);
    let mut command = Command::new("sleep");
    command.arg(TARGET_LIFETIME).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    enforcer_tests::on_terminal(&mut command, &tty);
    (command.spawn().expect("start the operator's shell"), tty)
}

fn steps_of(attacks: &[Attack]) -> Vec<String> {
    attacks.iter().map(|a| a.step.clone()).collect()
}

#[test]
fn the_floor_and_the_agent_boundary_hold_under_enforcer_run() {
    let sb = Sandbox::under_enforcer_run("boundary-run");
    let mut targets = Targets::new(&sb.base);
    std::fs::write(&sb.policy, targets.policy(&sb, "test-policy")).expect("write the policy");
    let _ = sb.outside_file("immutable-me");
    // The steps do not depend on the supervisor's pid (`ppid` stands for it).
    let mut steps = vec!["wait-stdin:".to_owned()];
    steps.extend(steps_of(&targets.attacks(&sb, Some(0))));
    let mut child = sb.spawn(&steps);
    let attacks = targets.attacks(&sb, Some(child.id()));
    // The probe runs: the policy is in force. Now the secret appears.
    let (_, stdout) = wait_ready(&mut child);
    Targets::create_later_secret(&sb);
    release(&mut child);
    let mut rest = String::new();
    stdout.into_inner().read_to_string(&mut rest).expect("the probe's results");
    let out = sb.finish(child);
    assert_eq!(out.code, Some(0), "the supervisor survived and the run ended normally:\n{out:#?}");
    let results: Vec<Value> = rest.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    targets.check(&attacks, &results, &out.events);
    userns_hook_or_warning(&out.stderr);
}

#[test]
fn the_floor_and_the_agent_boundary_hold_in_a_daemon_tagged_cgroup() {
    // No [syscalls]: a daemon-tagged process has no filter of ours anyway.
    let sb = Sandbox::new("boundary-daemon");
    // The targets first: the device the policy names must exist when it loads.
    let mut targets = Targets::new(&sb.base);
    let policy = targets.policy(&sb, "agent");
    let mut d = Daemon::start("daemon-boundary", false, &[("agent.toml", &policy)], "");
    let _ = sb.outside_file("immutable-me");
    Targets::create_later_secret(&sb);
    let cgroup = d.cgroup("boundary");
    assert!(d.ctl(&["tag", &cgroup, "--policy", "agent"]).status.success());
    let attacks = targets.attacks(&sb, None);
    let results = d.run_probe(&cgroup, &steps_of(&attacks));
    let wanted = attacks.iter().filter(|a| a.event.is_some()).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events: Vec<Value> = d.events().into_iter().filter(|e| e["cgroup"] == cgroup.as_str()).collect();
        if events.iter().filter(|e| e["action"] == "deny").count() >= wanted || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    targets.check(&attacks, &results, &events);
    userns_hook_or_warning(&std::fs::read_to_string(&d.stderr).unwrap_or_default());
}

/// `enforcer run` killed (`SIGKILL`) while its command runs: the command does not go
/// on unenforced. Its watchdog kills the run's cgroup and removes it; the
/// command never held a BPF descriptor it could use meanwhile.
#[test]
fn a_killed_supervisor_takes_its_run_with_it() {
    let sb = Sandbox::under_enforcer_run("supervisor-killed");
    let mut child = sb.spawn(&["bpf-fds".to_owned(), "wait-stdin:".to_owned()]);
    let (pid, mut stdout) = wait_ready(&mut child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("bpf-fds result");
    assert_eq!(line.trim(), "{\"errno\":0,\"step\":\"bpf-fds\"}", "the command holds no BPF descriptor");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("probe cgroup");
    let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup2 line").trim().to_owned();
    let dir = enforcer::cgroups::Hierarchy::find().expect("cgroup2").mount_point.join(cgroup.trim_start_matches('/'));
    assert!(dir.exists(), "{}", dir.display());
    child.kill().expect("SIGKILL the supervisor");
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (alive(pid) || dir.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the command outlived its supervisor");
    assert!(!dir.exists(), "the run's cgroup {} is left behind", dir.display());
    let stderr = std::fs::read_to_string(&sb.stderr).unwrap_or_default();
    assert!(stderr.contains("watchdog: the supervisor of"), "{stderr}");
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}
