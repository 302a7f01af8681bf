//! Helpers for the privileged integration tests: a sandbox of directories,
//! a policy for it, and the probe run under that policy, with its results
//! and the denial events it produced.
//!
//! The binaries come from `ENFORCER_BIN` and `ENFORCER_PROBE_BIN` (set by
//! `cargo xtask test` on the host and inside the VMs), and the way a sandbox
//! puts its command under its policy from `ENFORCER_TESTS_VIA` ([`Via`]).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

pub mod daemon;

pub const EPERM: i64 = 1;

fn bin(var: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| panic!("set {var} (cargo xtask test does)"), PathBuf::from)
}

#[must_use]
pub fn enforcer_bin() -> PathBuf {
    bin("ENFORCER_BIN")
}

#[must_use]
pub fn probe_bin() -> PathBuf {
    bin("ENFORCER_PROBE_BIN")
}

/// How a sandbox puts its command under its policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `enforcer run --policy P -- COMMAND`: the programs are loaded (and
    /// verified) for every run.
    Run,
    /// A daemon of the sandbox's own tags a fresh cgroup with the policy and
    /// the command starts in it. The daemon adopts the programs the first
    /// one pinned, so the kernel verifies them once per boot, not once per
    /// run: what lets a VM tier under TCG run every test (a load takes 25 s
    /// to 10 minutes there). What the kernel enforces is the same programs'
    /// work either way.
    Daemon,
}

impl Via {
    /// `ENFORCER_TESTS_VIA=daemon` or `run` (the default).
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("ENFORCER_TESTS_VIA").as_deref() {
            Err(_) | Ok("" | "run") => Self::Run,
            Ok("daemon") => Self::Daemon,
            Ok(other) => panic!("ENFORCER_TESTS_VIA={other}: want `run` or `daemon`"),
        }
    }
}

/// The daemon and cgroup of a command started [`Via::Daemon`].
struct Tagged {
    daemon: daemon::Daemon,
    cgroup: String,
}

/// `<root>/<name>/{allowed,outside,secret}` plus a policy file; removed on drop.
pub struct Sandbox {
    pub base: PathBuf,
    pub allowed: PathBuf,
    pub outside: PathBuf,
    pub secret: PathBuf,
    pub policy: PathBuf,
    pub events: PathBuf,
    /// The enforcer's stderr (a file, not a pipe: a long error must not
    /// block it while a test waits on stdout).
    pub stderr: PathBuf,
    /// Pass `--degraded` (the host kernel: no BPF LSM), to `enforcer run` or
    /// the daemon.
    pub degraded: bool,
    /// `--dns-upstream` for the run; the daemon's `[dns] upstream`.
    pub dns_upstream: Option<std::net::SocketAddr>,
    pub via: Via,
    /// The daemon of the command started last, [`Via::Daemon`].
    tagged: std::cell::RefCell<Option<Tagged>>,
}

impl Sandbox {
    /// A sandbox under `/tmp/enforcer-tests` (a tmpfs in the VMs, so walks
    /// cross a mount) with the default policy: write `allowed`, deny `secret`;
    /// its commands run [`Via::from_env`].
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self::new_via(name, Via::from_env())
    }

    /// The ways a test that judges a command both ways runs it: `run`
    /// (`enforcer run`'s own loader and resolver) and `daemon`. The VM
    /// tiers of kernels that leave `enforcer run`'s own loader to other
    /// kernels (each of its loads verifies every program: a minute under
    /// TCG) set `ENFORCER_TESTS_STANDALONE=0`: then `daemon` only.
    #[must_use]
    pub fn ways() -> &'static [&'static str] {
        if std::env::var("ENFORCER_TESTS_STANDALONE").as_deref() == Ok("0") { &["daemon"] } else { &["run", "daemon"] }
    }

    /// A sandbox whose commands always run under `enforcer run`: for tests
    /// of `enforcer run` itself (its exit codes, messages, seccomp filter,
    /// resolver, event accounting, the cgroup it makes).
    #[must_use]
    pub fn under_enforcer_run(name: &str) -> Self {
        Self::new_via(name, Via::Run)
    }

    /// A sandbox whose commands always run in a cgroup a daemon tagged:
    /// for tests of what the daemon itself serves (its resolvers).
    #[must_use]
    pub fn under_daemon(name: &str) -> Self {
        Self::new_via(name, Via::Daemon)
    }

    fn new_via(name: &str, via: Via) -> Self {
        let base = Path::new("/tmp/enforcer-tests").join(name);
        let _ = std::fs::remove_dir_all(&base);
        let sandbox = Self {
            allowed: base.join("allowed"),
            outside: base.join("outside"),
            secret: base.join("secret"),
            policy: base.join("policy.toml"),
            events: base.join("events.jsonl"),
            stderr: base.join("stderr.log"),
            degraded: false,
            dns_upstream: None,
            via,
            tagged: std::cell::RefCell::new(None),
            base,
        };
        for dir in [&sandbox.allowed, &sandbox.outside, &sandbox.secret] {
            std::fs::create_dir_all(dir).expect("create sandbox dir");
        }
        std::fs::write(sandbox.secret.join("credentials"), "aws_secret_access_key=x\n").expect("write secret");
        sandbox.write_policy("enforce");
        sandbox
    }

    pub fn write_policy(&self, mode: &str) {
        self.write_policy_with(mode, "");
    }

    /// The default policy plus `more` (e.g. a `[network]` section).
    pub fn write_policy_with(&self, mode: &str, sections: &str) {
        let policy = format!(
            "name = \"test-policy\"\nmode = \"{mode}\"\n[files]\nwrite = [\"{}\"]\nread_deny = [\"{}\"]\n{sections}",
            self.allowed.display(),
            self.secret.display()
        );
        std::fs::write(&self.policy, policy).expect("write policy");
    }

    /// A file under `outside`, created now (unenforced).
    #[must_use]
    pub fn outside_file(&self, name: &str) -> String {
        let path = self.outside.join(name);
        std::fs::write(&path, "original\n").expect("create outside file");
        path.display().to_string()
    }

    #[must_use]
    pub fn path(dir: &Path, name: &str) -> String {
        dir.join(name).display().to_string()
    }

    /// Starts `enforcer run` of the probe with `steps`, stdin and stdout piped.
    #[must_use]
    pub fn spawn(&self, steps: &[String]) -> Child {
        let mut command = vec![probe_bin().into_os_string()];
        command.extend(steps.iter().map(Into::into));
        self.spawn_command(&command)
    }

    /// Starts `command` under the policy, stdin and stdout piped.
    #[must_use]
    pub fn spawn_command(&self, command: &[std::ffi::OsString]) -> Child {
        match self.via {
            Via::Run => self.spawn_enforcer_run(command),
            Via::Daemon => self.spawn_tagged(command),
        }
    }

    fn spawn_enforcer_run(&self, command: &[std::ffi::OsString]) -> Child {
        let _ = std::fs::remove_file(&self.events);
        Command::new(enforcer_bin())
            .arg("run")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--events")
            .arg(&self.events)
            .args(self.degraded.then_some("--degraded"))
            .args(self.dns_upstream.iter().flat_map(|a| ["--dns-upstream".to_owned(), a.to_string()]))
            .arg("--")
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&self.stderr).expect("create stderr log"))
            .spawn()
            .expect("spawn enforcer")
    }

    /// [`Via::Daemon`]: a daemon with the sandbox's policy, a cgroup it tags
    /// with it, and `command` started in that cgroup.
    fn spawn_tagged(&self, command: &[std::ffi::OsString]) -> Child {
        let text = std::fs::read_to_string(&self.policy).expect("read policy");
        let policy = enforcer::policy::parse(&text, &self.policy)
            .unwrap_or_else(|e| panic!("the test's policy does not parse: {e}"))
            .0;
        let name = self.base.file_name().expect("sandbox name").to_string_lossy().into_owned();
        // Dropped (stopped, its cgroups removed) before the next one starts.
        drop(self.tagged.borrow_mut().take());
        let dns = self.dns_upstream.map(|a| format!("[dns]\nupstream = \"{a}\"\n")).unwrap_or_default();
        let mut daemon =
            daemon::Daemon::start(&format!("{name}.daemon"), self.degraded, &[("policy.toml", &text)], &dns);
        let cgroup = daemon.cgroup(&name);
        let tag = daemon.ctl(&["tag", &cgroup, "--policy", &policy.name]);
        assert!(tag.status.success(), "tag {cgroup}: {}\n{}", String::from_utf8_lossy(&tag.stderr), daemon.log());
        let (program, args) = command.split_first().expect("a command");
        let mut spawn = Command::new(program);
        spawn
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&self.stderr).expect("create stderr log"));
        let child = daemon::in_cgroup(&mut spawn, &cgroup).spawn().expect("spawn the command in the tagged cgroup");
        *self.tagged.borrow_mut() = Some(Tagged { daemon, cgroup });
        child
    }

    /// Runs the probe under the policy and collects everything.
    #[must_use]
    pub fn run(&self, steps: &[String]) -> Outcome {
        let child = self.spawn(steps);
        self.finish(child)
    }

    #[must_use]
    pub fn finish(&self, child: Child) -> Outcome {
        let output = child.wait_with_output().expect("wait for enforcer");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tagged = self.tagged.borrow_mut().take();
        let (events, cgroup) = if let Some(tagged) = tagged {
            (tagged.daemon.agent_events(&tagged.cgroup), Some(tagged.cgroup))
        } else {
            let events = std::fs::read_to_string(&self.events).unwrap_or_default();
            (events.lines().map(|l| conforming(serde_json::from_str(l).expect("event is JSON"))).collect(), None)
        };
        Outcome { code: output.status.code(), results: probe_results(&stdout), events, stdout, stderr, cgroup }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The probe's `{"step","errno"}` lines in `stdout`, in order.
#[must_use]
pub fn probe_results(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get("step").is_some()).collect()
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    /// One `{"step","errno"}` per probe step, in order.
    pub results: Vec<Value>,
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    /// [`Via::Daemon`]: the cgroup the command ran in (`enforcer run` makes
    /// its own, `/enforcer/run-*`).
    pub cgroup: Option<String>,
}

impl Outcome {
    /// The errno of the step that was exactly `step`.
    #[must_use]
    pub fn errno(&self, step: &str) -> i64 {
        let result = self.results.iter().find(|r| r["step"] == step);
        let result = result.unwrap_or_else(|| panic!("no result for step `{step}`:\n{self:#?}"));
        result["errno"].as_i64().expect("errno")
    }

    /// Events about `path` (or, for hooks without a mount, its tail).
    #[must_use]
    pub fn events_for(&self, path: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| {
                let p = e["path"].as_str().unwrap_or_default();
                p == path || (e["path_from_fs_root"] == true && path.ends_with(p))
            })
            .collect()
    }

    /// Asserts `step` failed with EPERM and produced exactly one deny event
    /// about `path` with operation `op`; returns that event.
    #[expect(clippy::must_use_candidate, reason = "an assertion; returning the event is a convenience")]
    pub fn assert_denied(&self, step: &str, op: &str, path: &str) -> &Value {
        assert_eq!(self.errno(step), EPERM, "step `{step}` should fail with EPERM:\n{self:#?}");
        let events = self.events_for(path);
        assert_eq!(events.len(), 1, "step `{step}`: want exactly one event for {path}, got {events:#?}\n{self:#?}");
        let event = events[0];
        assert_eq!(event["op"], op, "step `{step}`: {event}");
        assert_eq!(event["action"], "deny", "step `{step}`: {event}");
        assert_eq!(event["errno"], EPERM, "step `{step}`: {event}");
        event
    }

    /// Asserts `step` failed with EPERM and produced exactly one deny event
    /// of `kind` for which `about` holds; returns that event.
    pub fn assert_denied_net(&self, step: &str, kind: &str, about: impl Fn(&Value) -> bool) -> &Value {
        assert_eq!(self.errno(step), EPERM, "step `{step}` should fail with EPERM:\n{self:#?}");
        let events: Vec<&Value> = self.events.iter().filter(|e| e["kind"] == kind && about(e)).collect();
        assert_eq!(events.len(), 1, "step `{step}`: want exactly one {kind} event, got {events:#?}\n{self:#?}");
        let event = events[0];
        assert_eq!(event["action"], "deny", "step `{step}`: {event}");
        assert_eq!(event["errno"], EPERM, "step `{step}`: {event}");
        assert_eq!(event["policy"], "test-policy", "step `{step}`: {event}");
        event
    }

    pub fn assert_succeeded(&self, step: &str) {
        assert_eq!(self.errno(step), 0, "step `{step}` should succeed:\n{self:#?}");
    }
}

/// Reads the probe's `{"ready": pid}` line from a spawned run.
pub fn wait_ready(child: &mut Child) -> (u32, BufReader<std::process::ChildStdout>) {
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read ready line");
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("probe did not start: `{line}`"));
    let pid = ready["ready"].as_u64().expect("ready pid");
    (u32::try_from(pid).expect("pid"), stdout)
}

/// Sends the line a `wait-stdin` step waits for.
pub fn release(child: &mut Child) {
    let stdin = child.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"go\n").expect("release probe");
    stdin.flush().expect("flush");
}

/// A DNS server on loopback for the tests (the enforcer's upstream): A and
/// AAAA answers from a table, NXDOMAIN for other names, over UDP and TCP.
/// Runs until dropped.
pub struct DnsServer {
    pub addr: std::net::SocketAddr,
    queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DnsServer {
    /// Serves `records`: (name, address, TTL seconds).
    #[must_use]
    pub fn start(records: &[(&str, std::net::IpAddr, u32)]) -> Self {
        Self::start_at("127.0.0.1:0", records)
    }

    /// [`Self::start`] at `bind` (UDP and TCP).
    #[must_use]
    pub fn start_at(bind: &str, records: &[(&str, std::net::IpAddr, u32)]) -> Self {
        use std::sync::{Arc, Mutex, atomic::AtomicBool};
        let udp = std::net::UdpSocket::bind(bind).expect("bind DNS server");
        let addr = udp.local_addr().expect("DNS server address");
        let tcp = std::net::TcpListener::bind(addr).expect("bind DNS server (TCP)");
        udp.set_read_timeout(Some(std::time::Duration::from_millis(100))).expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        let records: Vec<(String, std::net::IpAddr, u32)> =
            records.iter().map(|(n, a, t)| ((*n).to_owned(), *a, *t)).collect();
        let records = Arc::new(records);
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, q, s) = (records.clone(), queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((len, from)) = udp.recv_from(&mut buf)
                    && let Some(reply) = dns_reply(&buf[..len], &r, &q)
                {
                    let _ = udp.send_to(&reply, from);
                }
                while let Ok((mut stream, _)) = tcp.accept() {
                    use std::io::Read as _;
                    let _ = stream.set_nonblocking(false);
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).is_ok()
                        && let Some(reply) = dns_reply(&query, &r, &q)
                    {
                        let len = u16::try_from(reply.len()).unwrap_or(0).to_be_bytes();
                        let _ = stream.write_all(&[&len[..], &reply].concat());
                    }
                }
            }
        });
        Self { addr, queries, stop }
    }

    /// The names asked so far (lower case, no trailing dot).
    #[must_use]
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().map(|q| q.clone()).unwrap_or_default()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn dns_reply(
    query: &[u8],
    records: &[(String, std::net::IpAddr, u32)],
    queries: &std::sync::Mutex<Vec<String>>,
) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::{RData, Record, RecordType, rdata},
    };
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if let Ok(mut q) = queries.lock() {
        q.push(name.clone());
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    let known: Vec<_> = records.iter().filter(|(n, _, _)| *n == name).collect();
    if known.is_empty() {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    for (_, addr, ttl) in known {
        let data = match (addr, question.query_type()) {
            (std::net::IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(*v4)),
            (std::net::IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(question.name().clone(), *ttl, data));
    }
    reply.to_vec().ok()
}

/// A new pseudo-terminal: its master end and the path of the other end.
#[must_use]
pub fn pty() -> (std::os::fd::OwnedFd, String) {
    use std::os::fd::FromRawFd as _;
    // SAFETY: posix_openpt and friends on a descriptor of our own.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
        )
    }
}

/// Makes `command` start as a shell on the terminal at `tty` would: leading
/// a session of its own whose controlling terminal that is, on its standard
/// descriptors.
pub fn on_terminal(command: &mut Command, tty: &str) {
    let tty = std::ffi::CString::new(tty).expect("a terminal path");
    // SAFETY: setsid, open, ioctl and dup2 between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(tty.as_ptr(), libc::O_RDWR);
            if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            Ok(())
        });
    }
}

/// `line`, after checking it against the event schema the enforcer publishes
/// (`enforcer/schemas/events.schema.json`): every line a test reads is one.
#[must_use]
pub fn conforming(line: Value) -> Value {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = SCHEMA.get_or_init(|| validator(include_str!("../../enforcer/schemas/events.schema.json"), None));
    check(validator, &line, "event line");
    line
}

/// Checks a daemon API answer against its type's definition in the schema
/// the enforcer publishes (`enforcer/schemas/api.schema.json`).
pub fn check_api_answer(method: &str, path: &str, status: u16, answer: &Value) {
    const API: &str = include_str!("../../enforcer/schemas/api.schema.json");
    const DEFINITIONS: [&str; 6] =
        ["ReloadReport", "ErrorAnswer", "StatusAnswer", "PoliciesAnswer", "TagsAnswer", "Tag"];
    static SCHEMAS: std::sync::OnceLock<Vec<jsonschema::Validator>> = std::sync::OnceLock::new();
    let route = path.split('?').next().unwrap_or(path);
    let definition = match (method, route, status) {
        (_, "/v1/reload", 200 | 422) => "ReloadReport",
        (_, _, 400..) => "ErrorAnswer",
        ("GET", "/v1/status", _) => "StatusAnswer",
        ("GET", "/v1/policies", _) => "PoliciesAnswer",
        ("GET", "/v1/tags", _) => "TagsAnswer",
        ("POST" | "DELETE", "/v1/tags", _) => "Tag",
        _ => return,
    };
    let validators = SCHEMAS.get_or_init(|| DEFINITIONS.iter().map(|d| validator(API, Some(d))).collect());
    let validator = &validators[DEFINITIONS.iter().position(|d| *d == definition).expect("a known definition")];
    check(validator, answer, &format!("answer to {method} {path} ({definition})"));
}

/// A validator for `schema`, or for its definition `definition`.
fn validator(schema: &str, definition: Option<&str>) -> jsonschema::Validator {
    let mut schema: Value = serde_json::from_str(schema).expect("the published schema is JSON");
    if let Some(definition) = definition {
        assert!(schema["$defs"].get(definition).is_some(), "no {definition} in the published schema");
        schema.as_object_mut().expect("an object").remove("anyOf");
        schema["$ref"] = Value::from(format!("#/$defs/{definition}"));
    }
    jsonschema::validator_for(&schema).expect("the published schema is a JSON Schema")
}

fn check(validator: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not match the published schema: {value}\n{}", errors.join("\n"));
}

/// The smallest TLS 1.3 ClientHello that names `name`: one cipher suite,
/// the server name extension only (what the TLS name check reads).
#[must_use]
pub fn client_hello(name: &str) -> Vec<u8> {
    let be16 = |n: usize| u16::try_from(n).expect("short").to_be_bytes();
    let mut sni = vec![0, 0];
    sni.extend(be16(name.len() + 5));
    sni.extend(be16(name.len() + 3));
    sni.push(0);
    sni.extend(be16(name.len()));
    sni.extend(name.as_bytes());
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend(be16(sni.len()));
    body.extend(sni);
    let mut handshake = vec![1, 0];
    handshake.extend(be16(body.len()));
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend(be16(handshake.len()));
    record.extend(handshake);
    record
}
