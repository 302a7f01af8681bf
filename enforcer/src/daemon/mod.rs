//! `enforcer daemon`: loads the programs once (or adopts those an earlier
//! daemon pinned), serves the orchestrator API on a unix socket, reloads
//! policies when their files change, and streams every event to its sinks
//! and followers.

pub mod api;
pub mod config;
pub mod core;
pub mod fanout;
pub mod metrics;
mod net_versions;
pub mod policies;
mod reload;
mod replay;
mod resolvers;
mod runs;
pub(crate) mod seccomp_agent;
mod selection;
mod server;
mod stdout_lines;
mod tagging;
mod watch;
pub mod wire;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{
    config::{Config, ConfigError},
    core::ReloadReport,
    server::Daemon,
};
use crate::{
    bpf::{Enforcer, LoadError, Start},
    cgroups::CgroupError,
    events::{DaemonEvent, DaemonLine, PolicyVersion},
};

pub struct DaemonOptions {
    pub config: Option<PathBuf>,
    pub degraded: bool,
    pub uninstall: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load the programs: {0}")]
    Load(#[from] LoadError),
    #[error(
        "this kernel cannot run BPF LSM programs ({why}), so the daemon would not enforce:\n{}\n  \
         hint: boot with BPF LSM (`lsm=...,bpf` on the kernel command line), or pass --degraded to enforce only \
         the network destinations",
        NOT_ENFORCED_WITHOUT_LSM.iter().map(|p| format!("    - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Unenforceable { why: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("another enforcer daemon is running (it holds the lock on {}); stop it first", path.display())]
    Running { path: PathBuf },
    #[error("the daemon needs root (it loads BPF programs)")]
    NotRoot,
    #[error(transparent)]
    Key(#[from] crate::evidence::keys::KeyError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io { path: path.to_owned(), source }
}

/// What only BPF LSM programs enforce, whatever the policies say.
pub const NOT_ENFORCED_WITHOUT_LSM: &[&str] = &[
    "the built-in floor (BPF, perf, modules, mounts, user namespaces, ptrace, signals, limits and scheduling of \
     processes outside the agent, leaving the cgroup, terminal injection, kernel interfaces, devices, fileless \
     execution)",
    "[files]: file writes and reads",
    "[exec]: which programs may run; syscalls.require_seccomp",
    "network.unix and socket classes other than raw/ICMP/SCTP/MPTCP IP sockets",
];

/// Runs the daemon until SIGTERM or SIGINT; returns the exit code.
#[must_use]
pub fn main(opts: DaemonOptions) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            match e {
                DaemonError::Config(_) => 2,
                _ => 1,
            }
        }
    }
}

/// What this kernel does not enforce, each named on stderr; without BPF
/// LSM, an error unless `degraded` (and the pins just made are removed).
fn not_enforced(enforcer: &Enforcer, start: &Start, degraded: bool) -> Result<Vec<&'static str>, DaemonError> {
    let mut not_enforced = Vec::new();
    if let Some(why) = enforcer.lsm_missing().map(ToString::to_string) {
        if !degraded {
            if let Some(dir) = enforcer.pin_dir().filter(|_| *start != Start::Adopted) {
                let _ = crate::bpf::remove_pins(dir);
            }
            return Err(DaemonError::Unenforceable { why });
        }
        tracing::warn!("--degraded: this kernel cannot run BPF LSM programs ({why})");
        for part in NOT_ENFORCED_WITHOUT_LSM {
            tracing::warn!("--degraded: NOT enforced: {part}");
        }
        not_enforced = NOT_ENFORCED_WITHOUT_LSM.to_vec();
    }
    for part in enforcer.not_enforced_for_missing_hooks() {
        tracing::warn!("this kernel lacks a hook: NOT enforced: {part}");
        not_enforced.push(part);
    }
    Ok(not_enforced)
}

async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let config = Config::load(opts.config.as_deref())?;
    if !rustix::process::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    std::fs::create_dir_all(&config.state_dir).map_err(io_err(&config.state_dir))?;
    // One daemon per state and per pins: two would publish over each other.
    let _state_lock = lock(&config.state_dir.join("daemon.lock"))?;
    mount_bpffs(&config.bpffs)?;
    let _pins_lock = lock(&config.bpffs)?;
    keep_memory_returnable();
    if opts.uninstall {
        return uninstall(&config);
    }
    let daemon = Daemon::start(&opts, config)?;
    let listener = bind_socket(&daemon.config.socket, daemon.config.socket_gid())?;
    listener.set_nonblocking(true).map_err(io_err(&daemon.config.socket))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io_err(&daemon.config.socket))?;
    daemon.run(listener, shutdown_signal()?).await
}

/// Resolves at the first SIGTERM or SIGINT (the handlers are in place on
/// return).
fn shutdown_signal() -> Result<impl Future<Output = ()>, DaemonError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(io_err(Path::new("SIGTERM")))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err(Path::new("SIGINT")))?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// glibc raises its mmap threshold after freeing large blocks, after which
/// the 2 MiB policy tables of every publish come from the heap and are never
/// given back; a fixed threshold keeps them in their own mappings.
fn keep_memory_returnable() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Gives freed heap memory back to the kernel (after loading, whose BTF
/// parsing and verifier logs are transient, and once reloads stop).
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sends a reload's outcome to the stream (and the log).
pub fn announce_reload(notices: &mpsc::UnboundedSender<DaemonLine>, report: &ReloadReport) {
    for rejected in &report.rejected {
        tracing::warn!("policy rejected, what was in force stays: {}", rejected.error);
    }
    for warning in &report.warnings {
        // A policy file's warnings name their place: `file: warning: ...`.
        tracing::warn!("{}", warning.replacen(": warning: ", ": ", 1));
    }
    for (name, version, hash) in &report.applied {
        tracing::info!("policy `{name}` version {version} ({hash}) in force");
    }
    if report.applied.is_empty() && report.rejected.is_empty() && report.unloaded.is_empty() {
        return;
    }
    let applied = report
        .applied
        .iter()
        .map(|(name, version, hash)| PolicyVersion { name: name.clone(), version: *version, hash: hash.clone() })
        .collect();
    let reload =
        DaemonEvent::PolicyReload { applied, unloaded: report.unloaded.clone(), rejected: report.rejected.clone() };
    let _ = notices.send(DaemonLine::now(reload));
}

/// A socket of the daemon's (the API's, the seccomp agent's): root's, and
/// the socket group's if `gid` is given.
fn bind_socket(path: &Path, gid: Option<u32>) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // A socket left by a daemon that was killed: nobody listens on it.
    if path.exists() {
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err(path))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(io_err(path))?;
    }
    Ok(listener)
}

/// Holds `path` (a file, created if missing, or a directory) locked for as
/// long as the value lives.
fn lock(path: &Path) -> Result<std::fs::File, DaemonError> {
    let file = if path.is_dir() {
        std::fs::File::open(path)
    } else {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)
    }
    .map_err(io_err(path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(DaemonError::Running { path: path.to_owned() }),
        Err(e) => Err(io_err(path)(e.into())),
    }
}

/// Mounts a bpffs on the pins' parent if none is there (as systemd does at
/// boot on most distributions), and creates the pins' directory.
fn mount_bpffs(pins: &Path) -> Result<(), DaemonError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = pins.parent().unwrap_or(pins);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let is_bpffs = rustix::fs::statfs(parent).is_ok_and(|s| s.f_type == BPF_FS_MAGIC);
    if !is_bpffs {
        rustix::mount::mount("bpf", parent, "bpf", rustix::mount::MountFlags::empty(), None).map_err(|e| {
            io_err(parent)(std::io::Error::other(format!("no bpffs here and mounting one failed: {e}")))
        })?;
    }
    std::fs::create_dir_all(pins).map_err(io_err(pins))
}

/// `enforcer daemon --uninstall`: removes the pins (every agent is then
/// unenforced), the saved state and the socket.
fn uninstall(config: &Config) -> Result<(), DaemonError> {
    let builds = crate::bpf::adopted_build(&config.bpffs);
    crate::bpf::remove_pins(&config.bpffs).map_err(|e| io_err(&config.bpffs)(std::io::Error::other(e.to_string())))?;
    for file in [config.state_dir.join("state.json"), config.socket.clone()] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&file)(e)),
        }
    }
    tracing::info!(
        "uninstalled: removed the pins of {} build(s) under {}; no cgroup is enforced now",
        builds.len(),
        config.bpffs.display()
    );
    Ok(())
}
