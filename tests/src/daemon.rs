//! A daemon for the tests: its own config, policy directory, socket, state
//! and events file under `/tmp/enforcer-tests/<name>`, the shared pins
//! under `/sys/fs/bpf/enforcer` (a daemon adopts those an earlier test left,
//! with this test's own, empty state), and agent cgroups to tag.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{enforcer_bin, probe_bin};

/// How long a daemon may take to load: 6.12 under TCG verifies for 25 to
/// 65 s, 5.10 (the compat build) for about a minute, more on a slower
/// machine. A daemon that dies while loading is seen at once (`try_wait`),
/// so this only bounds a hang.
const START_TIMEOUT: Duration = Duration::from_mins(10);

pub struct Daemon {
    pub base: PathBuf,
    pub config: PathBuf,
    pub policies: PathBuf,
    pub socket: PathBuf,
    pub events: PathBuf,
    pub stderr: PathBuf,
    degraded: bool,
    child: Option<Child>,
    cgroups: Vec<PathBuf>,
    /// A pipe nobody reads, given as stdout and named as the journal.
    stalled_journal: Option<(std::io::PipeReader, std::io::PipeWriter)>,
}

impl Daemon {
    /// A daemon with `config_extra` appended to its configuration (after its
    /// `[events]` table: keys alone are events keys, e.g. `history`; keys
    /// before a table of `config_extra`, e.g. `bpffs`, go first, as the
    /// configuration's own) and the policy files `policies` (name, text).
    #[must_use]
    pub fn start(name: &str, degraded: bool, policies: &[(&str, &str)], config_extra: &str) -> Self {
        let mut daemon = Self::prepare(name, degraded, policies, config_extra);
        daemon.spawn();
        daemon
    }

    /// [`Self::start`], with stdout a pipe nobody reads that
    /// `JOURNAL_STREAM` names, as systemd names the journal's: a journal
    /// that stopped reading.
    #[must_use]
    pub fn start_with_stalled_journal(name: &str, degraded: bool, policies: &[(&str, &str)], extra: &str) -> Self {
        let mut daemon = Self::prepare(name, degraded, policies, extra);
        daemon.stalled_journal = Some(std::io::pipe().expect("a pipe"));
        daemon.spawn();
        daemon
    }

    /// [`Self::start`] without starting it: the test writes files first,
    /// then calls [`Self::spawn`].
    #[must_use]
    pub fn prepare(name: &str, degraded: bool, policies: &[(&str, &str)], config_extra: &str) -> Self {
        let base = Path::new("/tmp/enforcer-tests").join(name);
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("policies")).expect("create daemon dirs");
        let daemon = Self {
            config: base.join("enforcer.toml"),
            policies: base.join("policies"),
            socket: base.join("enforcer.sock"),
            events: base.join("events.jsonl"),
            stderr: base.join("daemon.log"),
            base,
            degraded,
            child: None,
            cgroups: Vec::new(),
            stalled_journal: None,
        };
        // The seccomp agent's socket of its own, unless the test names one.
        let seccomp = if config_extra.contains("[seccomp]") {
            String::new()
        } else {
            format!("[seccomp]\nlistener = \"{}\"\n", daemon.seccomp_listener().display())
        };
        // Keys before the first table of `config_extra` go before ours.
        let tables_at = config_extra.find("\n[").map_or(0, |at| at + 1);
        let tables_at = if config_extra.starts_with('[') { 0 } else { tables_at };
        let (own_keys, config_extra) = config_extra.split_at(tables_at);
        let config = format!(
            "{own_keys}policies = \"{}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n{seccomp}[events]\nfile = \"{}\"\n{config_extra}\n",
            daemon.policies.display(),
            daemon.socket.display(),
            daemon.base.join("state").display(),
            daemon.events.display()
        );
        std::fs::write(&daemon.config, config).expect("write config");
        for (file, text) in policies {
            daemon.write_policy(file, text);
        }
        daemon
    }

    /// Where its seccomp agent listens.
    #[must_use]
    pub fn seccomp_listener(&self) -> PathBuf {
        self.base.join("seccomp.sock")
    }

    pub fn write_policy(&self, file: &str, text: &str) {
        // Written beside and renamed in, as editors and config managers do.
        let tmp = self.base.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policies.join(file)).expect("move policy in");
    }

    /// Starts the daemon and waits until its API answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr).expect("daemon log");
        let mut command = Command::new(enforcer_bin());
        command.args(["daemon", "--config"]).arg(&self.config).args(self.degraded.then_some("--degraded"));
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        if let Some((_, writer)) = &self.stalled_journal {
            use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
            let stat = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).expect("stat the pipe");
            command.env("JOURNAL_STREAM", format!("{}:{}", stat.dev(), stat.ino()));
            command.stdout(writer.try_clone().expect("the pipe's write end"));
        }
        let child = command.spawn().expect("spawn enforcer daemon");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the daemon exited ({status}) while starting:\n{}", self.log());
            }
            if self.api("GET", "/v1/status", None).0 == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not answer within {START_TIMEOUT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first `count` lines `enforcer tail ARGS` prints within 20 s.
    #[must_use]
    pub fn tail(&self, args: &[&str], count: usize) -> Vec<Value> {
        let mut tail = Command::new(enforcer_bin())
            .arg("tail")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn enforcer tail");
        let out = tail.stdout.take().expect("tail's stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else { break };
            got.push(serde_json::from_str(&line).expect("tail prints JSON lines"));
        }
        let _ = tail.kill();
        let _ = tail.wait();
        got
    }

    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILLs the daemon (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
            let status = child.wait().expect("wait for daemon");
            assert!(status.success(), "the daemon exited with {status} on SIGTERM:\n{}", self.log());
        }
    }

    /// Runs `enforcer ARGS --socket <ours>`.
    #[must_use]
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(enforcer_bin()).args(args).arg("--socket").arg(&self.socket).output().expect("run enforcer CLI")
    }

    /// One HTTP request on the socket, written by hand as `curl
    /// --unix-socket` would: the API is plain HTTP/1.1 and JSON.
    #[must_use]
    /// Every JSON answer is checked against the published API schema.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, text) = self.http(method, path, body);
        let answer = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !answer.is_null() {
            crate::check_api_answer(method, path, status, &answer);
        }
        (status, answer)
    }

    /// The status and body text of one request.
    #[must_use]
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let Ok(mut stream) = UnixStream::connect(&self.socket) else { return (0, String::new()) };
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: enforcer\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned())
    }

    /// The lines of the events file so far.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        // Rotated files first, oldest (highest number) first.
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", self.events.display()));
        let mut files: Vec<PathBuf> = (1..100).map(rotated).take_while(|f| f.exists()).collect();
        files.reverse();
        files.push(self.events.clone());
        files
            .iter()
            .flat_map(|f| {
                whole_lines(&std::fs::read_to_string(f).unwrap_or_default())
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
            .map(crate::conforming)
            .collect()
    }

    /// Waits until an event for which `want` holds is in the file.
    pub fn wait_event(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.events().into_iter().find(|e| want(e)) {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event within 10 s; events:\n{:#?}\nlog:\n{}",
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every kernel event of the agent in `cgroup` (and the cgroups below
    /// it) so far, once the daemon has written them all: a marker denial made in
    /// `cgroup` now comes after them in the ring buffer (one queue, in the
    /// order events were made) and so in the file. The marker itself is
    /// left out.
    ///
    /// A degraded daemon (no BPF LSM: no `bpf` events) marks with a connect
    /// to [`SYNC_ADDRESS`] instead, which needs a policy with a network
    /// section that does not allow it.
    #[must_use]
    pub fn agent_events(&self, cgroup: &str) -> Vec<Value> {
        let marker = if self.degraded {
            format!("tcp-connect:{SYNC_ADDRESS}:{SYNC_PORT}")
        } else {
            format!("bpf-cmd:{SYNC_BPF_CMD}")
        };
        let degraded = self.degraded;
        let is_marker = |e: &Value| {
            if degraded {
                e["kind"] == "connect" && e["daddr"] == SYNC_ADDRESS && e["dport"] == SYNC_PORT
            } else {
                e["op"] == "bpf" && e["bpf_cmd"] == SYNC_BPF_CMD
            }
        };
        let inside = format!("{cgroup}/");
        // The kernel's events (the daemon's own lines, such as `tagged`, carry no cgroup id).
        let below = |e: &Value| {
            e.get("cgroup_id").is_some() && e["cgroup"].as_str().is_some_and(|c| c == cgroup || c.starts_with(&inside))
        };
        // A marker lost to a full ring buffer (counted, not written) is made again.
        for _ in 0..20 {
            let _ = self.run_probe(cgroup, std::slice::from_ref(&marker));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let events = self.events();
                if events.iter().any(|e| is_marker(e) && below(e)) {
                    return events.into_iter().filter(|e| below(e) && !is_marker(e)).collect();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("the daemon wrote no marker event for {cgroup}; events:\n{:#?}\nlog:\n{}", self.events(), self.log());
    }

    /// A new cgroup `<cgroup2>/enforcer-tests/<name>`; returns its path
    /// below the mount (`/enforcer-tests/<name>`). Removed on drop.
    pub fn cgroup(&mut self, name: &str) -> String {
        let hierarchy = enforcer::cgroups::Hierarchy::find().expect("cgroup2 mounted");
        let dir = hierarchy.mount_point.join("enforcer-tests").join(name);
        let _ = std::fs::create_dir_all(&dir);
        self.cgroups.push(dir.clone());
        hierarchy.name_of(&dir)
    }

    /// Runs the probe with `steps` in cgroup `cgroup` (a path below the
    /// mount); stdin and stdout piped.
    #[must_use]
    pub fn spawn_probe(&self, cgroup: &str, steps: &[String]) -> Child {
        let mut command = Command::new(probe_bin());
        command.args(steps).stdin(Stdio::piped()).stdout(Stdio::piped());
        in_cgroup(&mut command, cgroup).spawn().expect("spawn probe")
    }

    /// Runs the probe to the end in `cgroup`; its `{"step","errno"}` lines.
    #[must_use]
    pub fn run_probe(&self, cgroup: &str, steps: &[String]) -> Vec<Value> {
        let output = self.spawn_probe(cgroup, steps).wait_with_output().expect("wait for probe");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("step").is_some())
            .collect()
    }
}

/// `text` up to its last newline: a line the daemon is writing at this
/// moment is not there yet.
fn whole_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |end| &text[..=end])
}

/// The `bpf` command of [`Daemon::agent_events`]'s marker: no such command
/// exists, so it does nothing even where a policy's audit mode allows it.
const SYNC_BPF_CMD: u32 = 0x5e17;

/// The marker of a degraded daemon's [`Daemon::agent_events`]: a loopback
/// address nothing listens on, which no test policy allows.
const SYNC_ADDRESS: &str = "127.0.94.23";
const SYNC_PORT: u16 = 9;

/// Removes `dir` and the cgroups below it, deepest first, killing what runs
/// in them (a test may have made cgroups below the one it was given).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) of a leftover test process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `command` start in `cgroup` (a path below the cgroup2 mount).
pub fn in_cgroup<'a>(command: &'a mut Command, cgroup: &str) -> &'a mut Command {
    let hierarchy = enforcer::cgroups::Hierarchy::find().expect("cgroup2 mounted");
    let procs = hierarchy.mount_point.join(cgroup.trim_start_matches('/')).join("cgroup.procs");
    let procs = std::fs::OpenOptions::new().write(true).open(&procs).expect("open cgroup.procs");
    let procs = std::os::fd::OwnedFd::from(procs);
    // SAFETY: write(2) to an fd opened before fork.
    unsafe { std::os::unix::process::CommandExt::pre_exec(command, move || enforcer::cgroups::join(&procs)) }
}

/// The errno the probe reported for `step`.
#[must_use]
pub fn errno_of(results: &[Value], step: &str) -> i64 {
    results
        .iter()
        .find(|r| r["step"] == step)
        .unwrap_or_else(|| panic!("no result for `{step}` in {results:#?}"))["errno"]
        .as_i64()
        .expect("errno")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(i32::try_from(child.id()).unwrap_or(0), libc::SIGTERM) };
            let _ = child.wait();
        }
        for dir in self.cgroups.iter().rev() {
            remove_cgroup_tree(dir);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
