//! The seccomp filter of a `[syscalls]` section, and installing it in the
//! agent between fork and exec.
//!
//! libseccomp builds the filter (a binary search over the allowed numbers,
//! with the argument checks of `arg_rules`). Allowed syscalls return ALLOW
//! in the kernel without leaving it; everything else returns `USER_NOTIF`, so
//! the enforcer answers it (EPERM, or a kill) and reports it
//! (`syscalls::notify`). If the enforcer is gone, the kernel fails those
//! calls with ENOSYS itself: a denial stays a denial.

use std::{
    io::{Read as _, Seek as _},
    os::fd::{OwnedFd, RawFd},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use super::{Arch, FALLBACK_ENOSYS, Syscalls, arg_rules};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot build the seccomp filter with libseccomp: {0}")]
    Build(#[from] libseccomp::error::SeccompError),
    #[error("cannot export the seccomp filter: {0}")]
    Export(#[from] std::io::Error),
    #[error("the seccomp filter has {0} instructions, more than the kernel's 4096; allow fewer syscalls")]
    TooLong(usize),
}

/// A compiled filter: classic BPF for one architecture.
pub struct Program {
    instructions: Vec<libc::sock_filter>,
}

impl Program {
    /// Builds the filter of `syscalls` for `arch`.
    pub fn build(syscalls: &Syscalls, arch: Arch) -> Result<Self, FilterError> {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Notify)?;
        if arch != Arch::native() {
            ctx.add_arch(arch.scmp())?;
            ctx.remove_arch(Arch::native().scmp())?;
        }
        // Another ABI on the same CPU (i386 `int 0x80`, x32) would use other
        // numbers: refuse it and report it like any other denial.
        ctx.set_act_badarch(ScmpAction::Notify)?;
        for name in &syscalls.allow {
            let Some(nr) = arch.number(name) else { continue };
            match arg_rules(name, syscalls.namespaces) {
                None => {
                    ctx.add_rule(ScmpAction::Allow, ScmpSyscall::from(nr))?;
                }
                Some(rules) => {
                    for rule in rules {
                        let compare = ScmpArgCompare::new(rule.arg, ScmpCompareOp::MaskedEqual(rule.mask), rule.value);
                        ctx.add_rule_conditional(ScmpAction::Allow, ScmpSyscall::from(nr), &[compare])?;
                    }
                }
            }
        }
        for name in FALLBACK_ENOSYS.iter().filter(|name| !syscalls.allow.contains(**name)) {
            if let Some(nr) = arch.number(name) {
                ctx.add_rule(ScmpAction::Errno(libc::ENOSYS), ScmpSyscall::from(nr))?;
            }
        }
        // libseccomp 2.5 exports only to a file descriptor.
        let memfd = rustix::fs::memfd_create("enforcer-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        ctx.export_bpf(&memfd)?;
        let mut file = std::fs::File::from(memfd);
        file.rewind()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let instructions: Vec<libc::sock_filter> = bytes
            .chunks_exact(size_of::<libc::sock_filter>())
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        if instructions.len() > 4096 {
            return Err(FilterError::TooLong(instructions.len()));
        }
        Ok(Self { instructions })
    }

    /// Its length in instructions (the tests bound it).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.instructions.len()
    }

    /// Sets `no_new_privs` and installs the filter on the calling thread;
    /// returns the listener for its notifications. Only raw syscalls, no
    /// allocation: safe between fork and exec.
    fn install(&self) -> std::io::Result<RawFd> {
        // SAFETY: prctl and seccomp with valid arguments; `prog` points into
        // `self`, which outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: u16::try_from(self.instructions.len()).unwrap_or(u16::MAX),
                filter: self.instructions.as_ptr().cast_mut(),
            };
            let fd = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const prog,
            );
            if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(RawFd::try_from(fd).unwrap_or(-1)) }
        }
    }
}

/// Hands the listener from the agent (which installs the filter on itself)
/// to the enforcer, through a shared page.
///
/// Once the filter is on, every syscall the agent makes is judged by it,
/// and one it denies waits for an answer from the listener: so the agent
/// must not make a syscall until the enforcer holds the listener. It
/// publishes its pid and the listener's fd number in the page, and spins on
/// the page (no syscall) until the enforcer took a copy with
/// `pidfd_getfd`. The agent's own copy is close-on-exec.
pub struct Handoff {
    page: std::ptr::NonNull<Slots>,
}

#[repr(C)]
struct Slots {
    state: AtomicU32,
    pid: AtomicI32,
    fd: AtomicI32,
    errno: AtomicI32,
}

const WAITING: u32 = 0;
const INSTALLING: u32 = 1;
const READY: u32 = 2;
const TAKEN: u32 = 3;
const FAILED: u32 = 4;
const CANCELLED: u32 = 5;

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for Handoff {}
// SAFETY: as above.
unsafe impl Sync for Handoff {}

impl Handoff {
    /// Maps the shared page (before fork: the child inherits it shared).
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: a fresh anonymous mapping, checked below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // The mapping is zeroed: every slot starts WAITING / 0.
        Ok(Self { page: std::ptr::NonNull::new(page.cast()).ok_or_else(std::io::Error::last_os_error)? })
    }

    fn slots(&self) -> &Slots {
        // SAFETY: the page stays mapped while `self` lives.
        unsafe { self.page.as_ref() }
    }

    /// In the agent, between fork and exec, as its last step: installs
    /// `program` and waits until the enforcer holds the listener.
    pub fn install_in_child(&self, program: &Program) -> std::io::Result<()> {
        let slots = self.slots();
        slots.pid.store(i32::try_from(std::process::id()).unwrap_or(0), Ordering::Release);
        // The enforcer gave up waiting: leave without a filter (and unrun).
        if slots.state.compare_exchange(WAITING, INSTALLING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(std::io::Error::other("the enforcer stopped waiting for the filter"));
        }
        match program.install() {
            Ok(fd) => {
                slots.fd.store(fd, Ordering::Relaxed);
                slots.state.store(READY, Ordering::Release);
            }
            Err(e) => {
                slots.errno.store(e.raw_os_error().unwrap_or(libc::EINVAL), Ordering::Relaxed);
                slots.state.store(FAILED, Ordering::Release);
                return Err(e);
            }
        }
        // No syscall until the enforcer answers (it kills us if it cannot).
        while slots.state.load(Ordering::Acquire) == READY {
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// In the enforcer: waits for the agent's listener and takes a copy. On
    /// failure the agent never runs its command: it leaves before installing
    /// the filter, or is killed (once the filter is on, it could not even
    /// exit without an answer).
    pub fn take(&self, timeout: Duration) -> std::io::Result<OwnedFd> {
        let slots = self.slots();
        let deadline = Instant::now() + timeout;
        loop {
            match slots.state.load(Ordering::Acquire) {
                READY => break,
                FAILED => return Err(std::io::Error::from_raw_os_error(slots.errno.load(Ordering::Relaxed))),
                CANCELLED => return Err(std::io::Error::other("the command was not started")),
                _ if Instant::now() > deadline => {
                    self.abandon();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the command did not install its filter",
                    ));
                }
                _ => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        self.copy_listener().inspect_err(|_| self.abandon())
    }

    fn copy_listener(&self) -> std::io::Result<OwnedFd> {
        let slots = self.slots();
        let pid = rustix::process::Pid::from_raw(slots.pid.load(Ordering::Acquire))
            .ok_or_else(|| std::io::Error::other("no pid published"))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let listener = rustix::process::pidfd_getfd(
            &pidfd,
            slots.fd.load(Ordering::Relaxed),
            rustix::process::PidfdGetfdFlags::empty(),
        )?;
        slots.state.store(TAKEN, Ordering::Release);
        Ok(listener)
    }

    /// Stops the agent from going on without us.
    fn abandon(&self) {
        let slots = self.slots();
        if slots.state.compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            let pid = slots.pid.load(Ordering::Acquire);
            if pid > 0 {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// The command could not be started: stop waiting for it.
    pub fn cancel(&self) {
        let _ = self.slots().state.compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`.
        unsafe { libc::munmap(self.page.as_ptr().cast(), 4096) };
    }
}
