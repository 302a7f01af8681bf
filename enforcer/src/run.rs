//! `enforcer run`: one command in a fresh agent cgroup, no daemon needed.

pub mod terminal;
mod via_daemon;
pub mod watchdog;

use std::{
    ffi::OsString,
    os::fd::OwnedFd,
    path::PathBuf,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::Duration,
};

use enforcer_common::policy::PolicyId;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    bpf::{Enforcer, LoadError},
    cgroups::{self, CgroupError, Hierarchy, Names, RunCgroup},
    dns::{
        self, DnsError, DnsEvent, Refusals,
        grants::Grants,
        names::{HostRules, TooManyHostRanges},
    },
    mounts::MountError,
    policy::{
        self, Mode, Network, Policy, PolicyError, budgets,
        compile::{CompileError, compile, needs_lsm},
        network::TooManyRanges,
    },
    run::terminal::Terminal,
    stream::{EventStream, Labels, PolicyLabel, Sink},
    syscalls::{
        self, Arch,
        filter::{FilterError, Handoff, Program},
        notify::{HANDOFF_TIMEOUT, Supervisor, SyscallEvent},
    },
};

pub struct RunOptions {
    pub policy: PathBuf,
    pub events: Option<PathBuf>,
    /// Enforce what the kernel can when it cannot enforce the whole policy.
    pub degraded: bool,
    /// Where the resolver asks for allowed names (default: the first
    /// nameserver of /etc/resolv.conf).
    pub dns_upstream: Option<std::net::SocketAddr>,
    pub command: Vec<OsString>,
    /// Load the programs for this run even where the daemon runs.
    pub standalone: bool,
    /// The daemon's socket: a run goes through the daemon answering there.
    pub socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot enforce the policy, so the command was not run: {0}")]
    Load(#[from] LoadError),
    #[error(
        "cannot enforce the policy, so the command was not run: {why}\n  not enforceable on this kernel:\n{}\n  \
         hint: run on a kernel with BPF LSM, or pass --degraded to enforce only the rest",
        parts.iter().map(|p| format!("    - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Unenforceable { why: String, parts: Vec<&'static str> },
    #[error(transparent)]
    Network(#[from] TooManyRanges),
    #[error(transparent)]
    HostRanges(#[from] TooManyHostRanges),
    #[error("cannot resolve allowed host names, so the command was not run: {0}")]
    Dns(#[from] DnsError),
    #[error("cannot set up the agent cgroup, so the command was not run: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("cannot resolve the policy's file trees: {0}")]
    Mounts(#[from] MountError),
    #[error("cannot open the events file {}: {source}", path.display())]
    Events { path: PathBuf, source: std::io::Error },
    #[error("cannot build the syscall filter, so the command was not run: {0}")]
    Filter(#[from] FilterError),
    #[error("cannot install the syscall filter in `{}`, so it was not run: {source}", command.to_string_lossy())]
    Seccomp { command: OsString, source: std::io::Error },
    #[error(
        "the enforcer daemon refused the run, so the command was not run: {0}\n  hint: fix what it says, or pass \
             --standalone to load the programs for this run alone"
    )]
    Daemon(String),
    #[error("cannot run `{}`: {source}", command.to_string_lossy())]
    Spawn { command: OsString, source: std::io::Error },
    #[error("waiting for the command failed: {0}")]
    Wait(std::io::Error),
    #[error("cannot start the run's watchdog, so the command was not run: {0}")]
    Watchdog(std::io::Error),
    #[error("cannot give the command a terminal of its own, so it was not run: {0}")]
    Terminal(std::io::Error),
}

impl From<CompileError> for RunError {
    fn from(error: CompileError) -> Self {
        match error {
            CompileError::Files(e) => Self::Mounts(e),
            CompileError::Network(e) => Self::Network(e),
        }
    }
}

impl RunError {
    /// Exit codes in the convention of `env`/`timeout`: 2 for a bad policy,
    /// 125 when the enforcer itself cannot work, 126/127 when the command
    /// cannot be run.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Policy(_) | Self::Network(_) | Self::HostRanges(_) => 2,
            Self::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            Self::Spawn { .. } => 126,
            _ => 125,
        }
    }
}

const POLICY_ID: PolicyId = PolicyId(1);

/// Runs the command under the policy; returns the command's exit code.
pub async fn run(opts: RunOptions) -> Result<i32, RunError> {
    let (policy, warnings) = policy::load(&opts.policy)?;
    for warning in warnings {
        tracing::warn!("{}: {}", warning.at, warning.message);
    }
    if !opts.standalone && opts.socket.exists() {
        if let Some(code) = via_daemon::run(&opts, &policy, &opts.socket).await? {
            return Ok(code);
        }
        tracing::info!("no daemon answers at {}: this run loads the programs itself", opts.socket.display());
    }
    if !policy.cgroups.is_empty() {
        tracing::warn!(
            "`cgroups` selectors are applied by `enforcer daemon`; `enforcer run` judges its own command only"
        );
    }
    let filter = policy.syscalls.as_ref().map(|s| Program::build(s, Arch::native())).transpose()?;
    let compiled = compile(&policy, POLICY_ID, POLICY_ID)?;
    for missing in compiled.missing_trees() {
        tracing::warn!("{missing}");
    }
    let mut enforcer = Enforcer::load()?;
    check_enforceable(&enforcer, &policy, opts.degraded)?;
    let (events_path, sink) = open_events(opts.events.as_deref())?;
    // Neither the supervisor nor its watchdog may be the OOM killer's choice;
    // the command gets the caller's value back.
    let oom_score_adj = watchdog::set_oom_score_adj(-1000).unwrap_or_else(|e| {
        tracing::warn!("cannot set oom_score_adj: {e} (the OOM killer may pick the supervisor)");
        0
    });

    let hierarchy = Hierarchy::find()?;
    let cgroup_root = hierarchy.mount_point.clone();
    let run_cgroup = RunCgroup::create(&hierarchy)?;
    let cgroup = &run_cgroup.cgroup;

    if !compiled.file_rules.is_empty() {
        enforcer.tables.add_file_rules(&compiled.file_rules)?;
    }
    let (refusals, dns_events) = Refusals::channel();
    let mut resolver = None;
    let net = match &policy.network {
        Some(network) => {
            if let Some(rules) = &compiled.net {
                enforcer.add_net_rules(rules)?;
            }
            resolver = Some(start_resolver(&mut enforcer, &policy, network, opts.dns_upstream, refusals.clone())?);
            Some(enforcer.attach_net(cgroup)?)
        }
        None => None,
    };
    let ring = enforcer.take_events().ok_or(LoadError::MissingMap("EVENTS"))?;
    let mut names = Names::new(hierarchy);
    names.add_root(cgroup);
    let label = PolicyLabel { name: policy.name.clone(), version: None, budgets: budgets::names(&policy) };
    let labels = Labels { policies: [(POLICY_ID, label)].into(), names };
    let mut stream = EventStream::new(ring, sink, Arc::new(Mutex::new(labels)))
        .map_err(|e| RunError::Events { path: "ring buffer".into(), source: e })?;
    if let Some(resolver) = &resolver {
        stream.set_grants(resolver.grants.clone());
    }
    enforcer.protected.set(&run_protected(&events_path))?;
    enforcer.tag(cgroup, compiled.tag)?;
    let watchdog = watchdog::Watchdog::start(&cgroup.path).map_err(RunError::Watchdog)?;
    // After the watchdog: it must not hold the command's terminal open.
    let mut terminal = Terminal::for_caller().map_err(RunError::Terminal)?;

    let mut dns = Dns {
        events: dns_events,
        grants: resolver.as_ref().map(|r| r.grants.clone()),
        refusals,
        cgroup: cgroup.name.clone(),
        policy: policy.name.clone(),
    };
    let seccomp = filter
        .map(|program| Seccomp::new(program, &policy, cgroup_root.clone()))
        .transpose()
        .map_err(|source| RunError::Seccomp { command: opts.command[0].clone(), source })?;
    let child = Child { command: &opts.command, seccomp, oom_score_adj, terminal: terminal.as_mut() };
    let status = spawn_and_wait(child, cgroup, &mut stream, &enforcer, &mut dns).await;
    drop(resolver);
    let refusals_dropped = dns.refusals.dropped();

    // Nothing of the agent may outlive the run unenforced: kill what is left
    // while still tagged, then collect the last events.
    let cleanup = cgroup.kill_all();
    if cleanup.is_ok() {
        drop(watchdog);
    } else {
        // It kills what is left when this process exits.
        std::mem::forget(watchdog);
    }
    let (status, denials) = match status {
        Ok((status, denials)) => (Ok(status), denials),
        Err(e) => (Err(e), None),
    };
    if let Some(denials) = denials {
        denials.finish(&mut stream);
    }
    dns.finish(&mut stream, cgroup.id);
    stream.drain();
    stream.report_lost(enforcer.lost.total()? + refusals_dropped);
    enforcer.untag(cgroup)?;
    if let Some(net) = net {
        enforcer.detach_net(net)?;
    }
    cleanup?;
    drop(run_cgroup);
    Ok(exit_code(status?))
}

/// The run's events file: `--events`, else [`default_events_path`] (said
/// on stderr).
fn open_events(chosen: Option<&std::path::Path>) -> Result<(PathBuf, Sink), RunError> {
    let path = events_path(chosen, "")?;
    let sink = Sink::open(Some(&path)).map_err(|source| RunError::Events { path: path.clone(), source })?;
    Ok((path, sink))
}

/// `--events`, else [`default_events_path`], which is said on stderr
/// (followed by `also`).
fn events_path(chosen: Option<&std::path::Path>, also: &str) -> Result<PathBuf, RunError> {
    if let Some(path) = chosen {
        return Ok(path.to_owned());
    }
    let path = default_events_path().map_err(|(path, source)| RunError::Events { path, source })?;
    tracing::info!("events go to {}{also}", path.display());
    Ok(path)
}

/// Where a run's events go without `--events`: a file of its own in a
/// directory only root reads, never a stream the command shares.
fn default_events_path() -> Result<PathBuf, (PathBuf, std::io::Error)> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = PathBuf::from("/run/enforcer");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err((dir, e)),
        _ => {}
    }
    Ok(dir.join(format!("run-{}.jsonl", std::process::id())))
}

/// What the command may not change, whatever its policy allows: the
/// enforcer's binary and the run's events file, if it is a file
/// (`--events /dev/null` must not take `> /dev/null` from the command).
fn run_protected(events: &std::path::Path) -> enforcer_common::policy::Protected {
    let events = std::fs::metadata(events).is_ok_and(|m| m.is_file()).then(|| events.to_owned());
    let paths: Vec<PathBuf> = std::env::current_exe().ok().into_iter().chain(events).collect();
    crate::mounts::protected_inodes(&paths)
}

/// Refuses a policy this kernel cannot enforce (without BPF LSM) unless
/// `degraded`; names every part it does not enforce.
fn check_enforceable(enforcer: &Enforcer, policy: &Policy, degraded: bool) -> Result<(), RunError> {
    if let Some(why) = enforcer.lsm_missing().map(ToString::to_string) {
        let parts = needs_lsm(policy);
        if !parts.is_empty() {
            if !degraded {
                return Err(RunError::Unenforceable { why, parts });
            }
            tracing::warn!("--degraded: this kernel cannot run BPF LSM programs ({why})");
            for part in parts {
                tracing::warn!("--degraded: NOT enforced: {part}");
            }
        }
    }
    for part in enforcer.not_enforced_for_missing_hooks() {
        tracing::warn!("this kernel lacks a hook: NOT enforced: {part}");
    }
    Ok(())
}

/// A running resolver (stopped when dropped) and its grants.
struct RunningResolver {
    task: tokio::task::JoinHandle<()>,
    grants: Arc<Mutex<Grants>>,
}

impl Drop for RunningResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the policy's resolver and sends the cgroup's DNS to it.
fn start_resolver(
    enforcer: &mut Enforcer,
    policy: &Policy,
    network: &Network,
    upstream: Option<std::net::SocketAddr>,
    events: Refusals,
) -> Result<RunningResolver, RunError> {
    let upstream = upstream.unwrap_or_else(dns::system_upstream);
    let sockets = dns::Sockets::bind(policy.has_sensitive_trees())?;
    let grants =
        Arc::new(Mutex::new(Grants::new(enforcer.take_dns_grants().ok_or(LoadError::MissingMap("DNS_GRANTS"))?)));
    let resolver = dns::Resolver {
        policy_id: POLICY_ID,
        audit: policy.mode == Mode::Audit,
        rules: HostRules::of(network)?,
        locked_port: sockets.locked_port(),
        upstream,
        min_ttl: network.dns_min_ttl,
        grants: grants.clone(),
        events,
        names_asked: dns::names_asked::NamesAsked::default(),
    };
    enforcer.net.set_resolver(POLICY_ID, sockets.entry())?;
    let task = tokio::spawn(dns::serve(resolver, sockets));
    Ok(RunningResolver { task, grants })
}

/// What the run loop needs of the resolver: its events, and its grants to
/// sweep.
struct Dns {
    events: tokio::sync::mpsc::Receiver<DnsEvent>,
    grants: Option<Arc<Mutex<Grants>>>,
    /// Counts the refusals the stream had no room for (they count as lost).
    refusals: Refusals,
    cgroup: String,
    policy: String,
}

impl Dns {
    /// Reports the refusals still queued: the resolver queues each before
    /// it answers, so the last ones may wait here when the command exits.
    fn finish(&mut self, stream: &mut EventStream, cgroup_id: u64) {
        while let Ok(event) = self.events.try_recv() {
            stream.dns_event(&event, &self.policy, &self.cgroup, cgroup_id);
        }
    }
}

/// The syscall filter of a run: installed by the command on itself between
/// fork and exec, its notifications answered by a supervisor thread.
struct Seccomp {
    program: Arc<Program>,
    handoff: Arc<Handoff>,
    syscalls: syscalls::Syscalls,
    audit: bool,
    cgroup_root: PathBuf,
    policy: String,
}

impl Seccomp {
    fn new(program: Program, policy: &Policy, cgroup_root: PathBuf) -> Result<Self, std::io::Error> {
        Ok(Self {
            program: Arc::new(program),
            handoff: Arc::new(Handoff::new()?),
            syscalls: policy.syscalls.clone().unwrap_or_else(|| unreachable!("a filter comes from [syscalls]")),
            audit: policy.mode == Mode::Audit,
            cgroup_root,
            policy: policy.name.clone(),
        })
    }
}

/// Answers the filter's notifications until the run ends.
struct SyscallDenials {
    events: tokio::sync::mpsc::UnboundedReceiver<SyscallEvent>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    policy: PolicyLabel,
}

/// The command to start and how.
struct Child<'a> {
    command: &'a [OsString],
    seccomp: Option<Seccomp>,
    /// The caller's, for the command to get back.
    oom_score_adj: i32,
    /// Its own terminal, when the caller is on one.
    terminal: Option<&'a mut Terminal>,
}

/// Starts the command; with a filter, waits for it to hand over its
/// listener, which a supervisor thread then serves.
fn spawn(
    child: Child<'_>,
    cgroup: &cgroups::Cgroup,
) -> Result<(tokio::process::Child, Option<SyscallDenials>), RunError> {
    let (child, listener) = start(child, cgroup)?;
    let Some((listener, seccomp)) = listener else { return Ok((child, None)) };
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let supervisor = Supervisor::new(listener, &seccomp.syscalls, seccomp.audit, seccomp.cgroup_root);
    let thread = supervisor.spawn(move |event| _ = tx.send(event), stop.clone()).map_err(RunError::Wait)?;
    let policy = PolicyLabel { name: seccomp.policy, ..PolicyLabel::default() };
    Ok((child, Some(SyscallDenials { events, stop, thread, policy })))
}

/// Starts the command in `cgroup`; with a filter, waits for it to hand over
/// its listener, and returns that.
fn start(
    Child { command, seccomp, oom_score_adj, terminal }: Child<'_>,
    cgroup: &cgroups::Cgroup,
) -> Result<(tokio::process::Child, Option<(OwnedFd, Seccomp)>), RunError> {
    let procs = cgroup.procs_file()?;
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    let filter = seccomp.as_ref().map(|s| (s.program.clone(), s.handoff.clone()));
    let pty = terminal.as_ref().map(|t| t.child_end());
    let oom_score_adj = oom_score_adj.to_string();
    // SAFETY: `join` only calls write(2) on an fd opened before fork,
    // `set_oom_score_adj_in_child` open(2) and write(2), and
    // `install_in_child` only prctl(2) and seccomp(2), then spins on memory.
    unsafe {
        cmd.pre_exec(move || {
            // Before joining: once tagged, its policy judges writes to /proc.
            watchdog::set_oom_score_adj_in_child(oom_score_adj.as_bytes());
            cgroups::join(&procs)?;
            // Off the caller's session, on its own terminal if the caller
            // is on one: it can reach nothing of the caller's terminal.
            match pty {
                Some((slave, on_tty)) => Terminal::enter_in_child(slave, on_tty)?,
                None if libc::setsid() < 0 => return Err(std::io::Error::last_os_error()),
                None => {}
            }
            match &filter {
                Some((program, handoff)) => handoff.install_in_child(program),
                None => Ok(()),
            }
        });
    }
    let started =
        |terminal: Option<&mut Terminal>| terminal.map_or(Ok(()), Terminal::start_copying).map_err(RunError::Terminal);
    let Some(seccomp) = seccomp else {
        let child = cmd.spawn().map_err(|source| RunError::Spawn { command: command[0].clone(), source })?;
        started(terminal)?;
        return Ok((child, None));
    };
    // The command waits for its listener to be taken before it execs, and
    // spawn() returns only after exec: take it from another thread.
    let handoff = seccomp.handoff.clone();
    let taker = std::thread::spawn(move || handoff.take(HANDOFF_TIMEOUT));
    let child = cmd.spawn();
    if child.is_err() {
        seccomp.handoff.cancel();
    }
    let listener = taker.join().unwrap_or_else(|_| Err(std::io::Error::other("listener thread panicked")));
    let mut child = child.map_err(|source| RunError::Spawn { command: command[0].clone(), source })?;
    started(terminal)?;
    match listener {
        Ok(listener) => Ok((child, Some((listener, seccomp)))),
        Err(source) => {
            // It may be spinning, waiting for us: it must not live on.
            let _ = child.start_kill();
            Err(RunError::Seccomp { command: command[0].clone(), source })
        }
    }
}

async fn spawn_and_wait(
    Child { command, seccomp, oom_score_adj, mut terminal }: Child<'_>,
    cgroup: &cgroups::Cgroup,
    stream: &mut EventStream,
    enforcer: &Enforcer,
    dns: &mut Dns,
) -> Result<(ExitStatus, Option<SyscallDenials>), RunError> {
    let (mut child, mut denials) =
        spawn(Child { command, seccomp, oom_score_adj, terminal: terminal.as_deref_mut() }, cgroup)?;
    let terminal = terminal.as_deref();
    let mut resize = terminal.map(|_| signal(SignalKind::window_change())).transpose().map_err(RunError::Wait)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Wait)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Wait)?;
    let mut lost_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let syscall_event = async {
            match denials.as_mut() {
                Some(d) => d.events.recv().await,
                None => std::future::pending().await,
            }
        };
        let resized = async {
            match resize.as_mut() {
                Some(resize) => resize.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return Ok((status.map_err(RunError::Wait)?, denials)),
            result = stream.next_batch() => result.map_err(RunError::Wait)?,
            _ = lost_tick.tick() => {
                stream.report_lost(enforcer.lost.total().unwrap_or(0) + dns.refusals.dropped());
                if let Some(grants) = &dns.grants
                    && let Ok(mut grants) = grants.lock()
                {
                    grants.sweep();
                }
            }
            Some(event) = dns.events.recv() => stream.dns_event(&event, &dns.policy, &dns.cgroup, cgroup.id),
            Some(event) = syscall_event => {
                let policy = denials.as_ref().map(|d| d.policy.clone()).unwrap_or_default();
                stream.syscall_event(&event, &policy);
            }
            _ = terminate.recv() => forward(&child, libc::SIGTERM),
            _ = resized => terminal.iter().for_each(|t| t.resized()),
            // The terminal already sent SIGINT to the command; do not die first.
            _ = interrupt.recv() => {}
        }
    }
}

impl SyscallDenials {
    /// After the cgroup was emptied: stops the supervisor, reports the rest.
    fn finish(mut self, stream: &mut EventStream) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
        while let Ok(event) = self.events.try_recv() {
            stream.syscall_event(&event, &self.policy);
        }
    }
}

fn forward(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid, signal) };
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
