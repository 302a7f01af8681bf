//! The watchdog of `enforcer run`: nothing of a run goes on unenforced when
//! its supervisor dies.
//!
//! The supervisor (`enforcer run`) holds the only descriptors of its
//! programs, links and maps: if it is killed (SIGKILL, the OOM killer, a
//! crash), the kernel detaches everything while the command keeps running.
//! So, once everything is attached and before the command starts, the
//! supervisor forks this watchdog. It inherits a copy of every descriptor,
//! which keeps the programs attached and the cgroup tagged, and blocks on a
//! pipe whose write end only the supervisor holds. A byte on the pipe means
//! the supervisor cleaned up and the watchdog exits; end of file means the
//! supervisor is gone: the watchdog kills every process in the run's cgroup
//! (`cgroup.kill`), waits for it to empty, removes it and exits, dropping the
//! programs last.
//!
//! The watchdog is outside the agent's cgroup, so the floor keeps the agent
//! from signalling, tracing, limiting or re-prioritising it, like the
//! supervisor; neither is a target for the OOM killer (`oom_score_adj`).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// How long the watchdog waits for a killed cgroup to empty before it
/// removes what it can and exits.
const EMPTY_WAIT_STEPS: u32 = 500;
const EMPTY_WAIT_STEP_NS: i64 = 10_000_000;

/// A running watchdog; dropping it (once the run's cgroup is empty) ends it.
pub struct Watchdog {
    pid: libc::pid_t,
    /// The only write end of the watchdog's pipe.
    alive: OwnedFd,
}

/// What the forked watchdog needs, prepared before `fork` (after it, only
/// async-signal-safe calls: the supervisor has other threads).
struct Paths {
    kill: CString,
    procs: CString,
    events: CString,
    dir: CString,
    message: Vec<u8>,
}

impl Watchdog {
    /// Forks the watchdog of the run cgroup at `cgroup_dir`.
    pub fn start(cgroup_dir: &Path) -> io::Result<Self> {
        let c = |name: &str| CString::new(cgroup_dir.join(name).as_os_str().as_bytes()).map_err(io::Error::other);
        let paths = Paths {
            kill: c("cgroup.kill")?,
            procs: c("cgroup.procs")?,
            events: c("cgroup.events")?,
            dir: CString::new(cgroup_dir.as_os_str().as_bytes()).map_err(io::Error::other)?,
            message: format!(
                "enforcer: watchdog: the supervisor of {} died; killed every process of the run\n",
                cgroup_dir.display()
            )
            .into_bytes(),
        };
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are new descriptors owned here.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child runs `watch`, which makes only async-signal-safe
        // calls and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => unsafe { watch(read_end.as_raw_fd(), write_end.as_raw_fd(), &paths) },
            pid => {
                drop(read_end);
                Ok(Self { pid, alive: write_end })
            }
        }
    }
}

impl Drop for Watchdog {
    /// The supervisor cleans up itself: the watchdog exits without acting.
    fn drop(&mut self) {
        // SAFETY: a one-byte write to our pipe, then waiting for our child.
        unsafe {
            libc::write(self.alive.as_raw_fd(), b"x".as_ptr().cast(), 1);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Sets the calling process's `oom_score_adj` (-1000: never chosen by the
/// OOM killer). Returns the previous value, for the command to get back.
pub fn set_oom_score_adj(value: i32) -> io::Result<i32> {
    let path = "/proc/self/oom_score_adj";
    let old = std::fs::read_to_string(path)?.trim().parse().map_err(io::Error::other)?;
    std::fs::write(path, value.to_string())?;
    Ok(old)
}

/// Gives the command back the caller's `oom_score_adj`, between fork and
/// exec (open(2) and write(2) only).
pub fn set_oom_score_adj_in_child(value: &[u8]) {
    // SAFETY: a NUL-terminated path and a live buffer.
    unsafe { write_proc(c"/proc/self/oom_score_adj", value) };
}

/// The watchdog's whole life, in the forked child.
///
/// # Safety
/// Only after `fork`; never returns.
unsafe fn watch(read_end: i32, write_end: i32, paths: &Paths) -> ! {
    unsafe {
        libc::close(write_end);
        // The operator's Ctrl-C or a hangup must not end it before the
        // supervisor: it acts when the supervisor is gone.
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Its `oom_score_adj` is the supervisor's (-1000), inherited.
        let mut byte = 0u8;
        let read = loop {
            let n = libc::read(read_end, (&raw mut byte).cast(), 1);
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if read != 1 {
            kill_run(paths);
        }
        libc::_exit(0)
    }
}

/// Kills every process of the run, waits for the cgroup to empty, removes it.
unsafe fn kill_run(paths: &Paths) {
    unsafe {
        libc::write(2, paths.message.as_ptr().cast(), paths.message.len());
        let kill_file = write_proc(&paths.kill, b"1");
        let pause = libc::timespec { tv_sec: 0, tv_nsec: EMPTY_WAIT_STEP_NS };
        for _ in 0..EMPTY_WAIT_STEPS {
            if !populated(&paths.events) {
                break;
            }
            if !kill_file {
                kill_each(&paths.procs); // before Linux 5.14
            }
            libc::nanosleep(&raw const pause, std::ptr::null_mut());
        }
        libc::rmdir(paths.dir.as_ptr());
    }
}

/// Writes `value` to a kernel file; whether the write was taken whole.
unsafe fn write_proc(path: &std::ffi::CStr, value: &[u8]) -> bool {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let written = libc::write(fd, value.as_ptr().cast(), value.len());
        libc::close(fd);
        usize::try_from(written) == Ok(value.len())
    }
}

/// SIGKILL to every pid listed in `cgroup.procs` (the first 4 KiB of it: the
/// caller repeats until the cgroup is empty).
unsafe fn kill_each(procs: &std::ffi::CStr) {
    let mut buf = [0u8; 4096];
    let n = unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else { return };
    let mut pid: libc::pid_t = 0;
    for &b in &buf[..n] {
        if b.is_ascii_digit() {
            pid = pid.saturating_mul(10).saturating_add(libc::pid_t::from(b - b'0'));
        } else {
            if pid > 0 {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            pid = 0;
        }
    }
}

/// Whether `cgroup.events` says `populated 1` (or cannot be read: keep waiting).
unsafe fn populated(events: &std::ffi::CStr) -> bool {
    let mut buf = [0u8; 128];
    let n = unsafe {
        let fd = libc::open(events.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else { return true };
    !buf[..n].windows(b"populated 0".len()).any(|w| w == b"populated 0")
}
