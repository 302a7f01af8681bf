//! Answering the filter's notifications: each one is a syscall the policy
//! does not allow, made by a task waiting in the kernel for the answer.
//!
//! The answer is the denial (EPERM, ENOSYS for syscalls newer than the
//! enforcer knows, a SIGKILL in `kill` mode, the syscall itself in audit
//! mode); the event says who asked for what. A thread of its own serves the
//! listener: the receive ioctl blocks, and nothing here may wait for the
//! async runtime.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use libseccomp::{ScmpArch, ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags, notify_id_valid};
use serde::Serialize;

use super::{Arch, DenyAction, Syscalls};

/// A `syscall` event (the stream adds `ts` and `policy`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SyscallEvent {
    pub kind: &'static str,
    pub action: &'static str,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The syscall's name, `null` if the enforcer does not know the number.
    pub syscall: Option<String>,
    pub nr: i32,
    pub arch: String,
    pub errno: u32,
    /// `not_allowed`, `args_not_allowed` (an allowed syscall with arguments
    /// it is not allowed with, e.g. `clone` with namespace flags),
    /// `unknown_syscall`, `other_abi` (e.g. i386 `int 0x80` on x86-64).
    pub reason: &'static str,
}

/// Serves one filter's listener.
pub struct Supervisor {
    pub listener: OwnedFd,
    pub allow: BTreeSet<String>,
    pub deny_action: DenyAction,
    pub audit: bool,
    /// Where the cgroup v2 hierarchy is mounted (to name cgroup ids).
    pub cgroup_root: PathBuf,
}

impl Supervisor {
    #[must_use]
    pub fn new(listener: OwnedFd, syscalls: &Syscalls, audit: bool, cgroup_root: PathBuf) -> Self {
        Self { listener, allow: syscalls.allow.clone(), deny_action: syscalls.deny_action, audit, cgroup_root }
    }

    /// Serves until every task carrying the filter is gone or `stop` is set;
    /// each answer's event goes to `report`.
    pub fn spawn(
        self,
        mut report: impl FnMut(SyscallEvent) + Send + 'static,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("enforcer-seccomp".into()).spawn(move || self.serve(&mut report, &stop))
    }

    fn serve(&self, report: &mut impl FnMut(SyscallEvent), stop: &AtomicBool) {
        let fd = self.listener.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            let mut poll = [rustix::event::PollFd::new(&self.listener, rustix::event::PollFlags::IN)];
            let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
            match rustix::event::poll(&mut poll, Some(&timeout)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot wait for seccomp notifications: {e}");
                    return;
                }
            }
            let revents = poll[0].revents();
            if revents.contains(rustix::event::PollFlags::IN) {
                match ScmpNotifReq::receive(fd) {
                    Ok(req) => {
                        if let Some(event) = self.answer(&req) {
                            report(event);
                        }
                    }
                    // The task was interrupted before we read it: nothing to answer.
                    Err(e) if e.errno().is_some_and(|e| e == libseccomp::error::SeccompErrno::ENOENT) => {}
                    Err(e) => tracing::warn!("cannot read a seccomp notification: {e}"),
                }
            } else if revents.intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR) {
                // No task carries the filter any more.
                return;
            }
        }
    }

    /// Answers one notification; the event to report, unless the task went
    /// away before it could be answered.
    fn answer(&self, req: &ScmpNotifReq) -> Option<SyscallEvent> {
        let fd = self.listener.as_raw_fd();
        let nr = i32::from(req.data.syscall);
        let native = req.data.arch == Arch::native().scmp();
        let name = req.data.syscall.get_name_by_arch(req.data.arch).ok();
        let reason = match &name {
            _ if !native => "other_abi",
            None => "unknown_syscall",
            Some(name) if self.allow.contains(name) => "args_not_allowed",
            Some(_) => "not_allowed",
        };
        let mut event = self.describe(req.pid);
        // The pid is only this task's while the notification is pending.
        notify_id_valid(fd, req.id).ok()?;
        event.syscall = name;
        event.nr = nr;
        event.arch = arch_name(req.data.arch);
        event.reason = reason;

        let (action, errno) = if self.audit {
            ("audit", 0)
        } else if reason == "unknown_syscall" {
            // Newer than this enforcer: libc falls back on ENOSYS, never on EPERM.
            ("deny", libc::ENOSYS)
        } else if self.deny_action == DenyAction::Kill {
            // Killed before it is answered: it never returns to user space.
            self.kill(req, event.tgid);
            ("kill", 0)
        } else {
            ("deny", libc::EPERM)
        };
        let response = match action {
            "audit" => ScmpNotifResp::new_continue(req.id, ScmpNotifRespFlags::CONTINUE),
            "kill" => ScmpNotifResp::new_error(req.id, -libc::EPERM, ScmpNotifRespFlags::empty()),
            _ => ScmpNotifResp::new_error(req.id, -errno, ScmpNotifRespFlags::empty()),
        };
        // A killed task may be gone already; any other task got its answer
        // unless it went away first (then nothing happened to report).
        if response.respond(fd).is_err() && action != "kill" {
            return None;
        }
        event.action = action;
        event.errno = errno.unsigned_abs();
        Some(event)
    }

    /// SIGKILL to the task's process, if the notification is still its own.
    fn kill(&self, req: &ScmpNotifReq, tgid: u32) {
        let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(tgid).unwrap_or(0)) else { return };
        let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else { return };
        // The pidfd names the process that was waiting when it was opened.
        if notify_id_valid(self.listener.as_raw_fd(), req.id).is_ok() {
            let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), rustix::process::Signal::KILL);
        }
    }

    /// Who the task is, from /proc (checked afterwards with `notify_id_valid`).
    fn describe(&self, tid: u32) -> SyscallEvent {
        let proc = PathBuf::from(format!("/proc/{tid}"));
        let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
        let process =
            status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(tid);
        let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default().trim_end().to_owned();
        let exe = std::fs::read_link(proc.join("exe")).ok().map(|p| p.display().to_string());
        let cgroup = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned));
        let cgroup_id = cgroup.as_deref().map_or(0, |name| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(self.cgroup_root.join(name.trim_start_matches('/'))).map_or(0, |m| m.ino())
        });
        SyscallEvent {
            kind: "syscall",
            action: "deny",
            pid: tid,
            tgid: process,
            comm,
            exe,
            cgroup_id,
            cgroup,
            syscall: None,
            nr: 0,
            arch: String::new(),
            errno: 0,
            reason: "not_allowed",
        }
    }
}

fn arch_name(arch: ScmpArch) -> String {
    Arch::ALL
        .iter()
        .find(|a| a.scmp() == arch)
        .map_or_else(|| format!("{arch:?}").to_lowercase(), |a| a.name().to_owned())
}

/// How long `enforcer run` waits for the command to hand over its listener.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);
