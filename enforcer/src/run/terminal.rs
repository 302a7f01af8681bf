//! The command's own terminal: when `enforcer run` is started on a terminal,
//! the command gets a new pseudo-terminal in a session of its own, and the
//! supervisor copies bytes between the two.
//!
//! Sharing the caller's terminal would let the agent act on the caller's
//! session: read what is typed after it exits (in a background job), change
//! the terminal's modes, or, where `TIOCSTI` is open to the terminal's
//! owner, type commands into the caller's shell. On its own pty the agent can
//! only reach the pty; job control (Ctrl-C, Ctrl-Z) works inside it as on any
//! terminal, since the caller's terminal is put in raw mode and every key is
//! passed through.

use std::{
    fs::File,
    io::{self, IsTerminal as _, Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    },
    thread::JoinHandle,
    time::Duration,
};

use rustix::{
    pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt},
    termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr, tcsetwinsize},
};

/// How long the output copy may take to drain once the command is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The command's pty, and the caller's terminal mode to restore.
pub struct Terminal {
    master: OwnedFd,
    /// The command's end, until it is started (then only the command holds it).
    slave: Option<OwnedFd>,
    /// Which of the caller's stdin, stdout, stderr are the terminal (the
    /// others stay as the caller redirected them).
    on_tty: [bool; 3],
    saved: Termios,
    output: Option<JoinHandle<()>>,
}

impl Terminal {
    /// A new pty for the command if the caller's stdin is a terminal.
    pub fn for_caller() -> io::Result<Option<Self>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = tcgetattr(stdin.as_fd())?;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave: OwnedFd = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?
            .into();
        // The command starts with the caller's modes and size.
        tcsetattr(&slave, OptionalActions::Now, &saved)?;
        if let Ok(size) = tcgetwinsize(stdin.as_fd()) {
            let _ = tcsetwinsize(&master, size);
        }
        let on_tty = [true, io::stdout().is_terminal(), io::stderr().is_terminal()];
        Ok(Some(Self { master, slave: Some(slave), on_tty, saved, output: None }))
    }

    /// The command's end and which standard descriptors it replaces, for
    /// [`Terminal::enter_in_child`].
    pub fn child_end(&self) -> (RawFd, [bool; 3]) {
        (self.slave.as_ref().map_or(-1, AsRawFd::as_raw_fd), self.on_tty)
    }

    /// Between fork and exec: a new session whose controlling terminal is
    /// the pty, on the standard descriptors that were the caller's terminal.
    /// Only async-signal-safe calls.
    pub fn enter_in_child(slave: RawFd, on_tty: [bool; 3]) -> io::Result<()> {
        // SAFETY: setsid, ioctl and dup2 on descriptors this process holds.
        unsafe {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            for (fd, on) in (0..).zip(on_tty) {
                if on && libc::dup2(slave, fd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }

    /// Once the command started: the caller's terminal goes raw and the
    /// copying begins. The supervisor's copy of the command's end is closed,
    /// so the output ends when the command's processes are all gone.
    pub fn start_copying(&mut self) -> io::Result<()> {
        self.slave = None;
        let mut raw = self.saved.clone();
        raw.make_raw();
        tcsetattr(io::stdin().as_fd(), OptionalActions::Now, &raw)?;
        let mut to_command = File::from(self.master.try_clone()?);
        // Blocked in read(2) on the caller's stdin until a key comes; it is
        // left behind when the run ends (the process exits soon after).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = io::stdin().lock().read(&mut buf) {
                if to_command.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut from_command = File::from(self.master.try_clone()?);
        self.output = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut out = io::stdout();
            // EIO once no process holds the command's end any more.
            while let Ok(n @ 1..) = from_command.read(&mut buf) {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }

    /// The caller's terminal was resized: so is the command's.
    pub fn resized(&self) {
        if let Ok(size) = tcgetwinsize(io::stdin().as_fd()) {
            let _ = tcsetwinsize(&self.master, size);
        }
    }
}

impl Drop for Terminal {
    /// Lets the command's last output through, then gives the caller its
    /// terminal back as it was.
    fn drop(&mut self) {
        if let Some(output) = self.output.take() {
            let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
            while !output.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = tcsetattr(io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}
