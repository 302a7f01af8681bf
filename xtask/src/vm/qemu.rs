//! One boot of qemu: start it, follow the serial console line by line, enforce deadlines.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::VmSpec;
use crate::cmd;

/// A boot that has not reached userspace by then is counted as failed.
pub const BOOT_TIMEOUT: Duration = Duration::from_mins(2);
/// How long qemu may take to power off after the script finished.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

pub const USERSPACE_MARKER: &str = "ENFORCER-VM-USERSPACE";
pub const READY_MARKER: &str = "ENFORCER-VM-READY";
pub const EXIT_MARKER: &str = "ENFORCER-VM-EXIT";

/// What one boot produced.
pub struct Attempt {
    /// Console lines, `\r` stripped (qemu's own stderr included).
    pub lines: Vec<String>,
    /// Time from start until init printed its first line, if it did.
    pub userspace_after: Option<Duration>,
    /// The script's exit code, if init reported one.
    pub exit_code: Option<i32>,
    /// Which deadline killed qemu, if any.
    pub timed_out: Option<&'static str>,
    pub elapsed: Duration,
}

/// Boot `spec.kernel` with `initrd` and follow the console until qemu exits or a deadline.
pub fn boot(spec: &VmSpec, initrd: &Path) -> Result<Attempt> {
    let mut qemu = command(spec, initrd)?;
    let mut child = qemu.spawn().context("could not start qemu-system-x86_64; run `cargo xtask setup`")?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let readers = [
        cmd::forward_lines(child.stdout.take().expect("stdout is piped"), tx.clone()),
        cmd::forward_lines(child.stderr.take().expect("stderr is piped"), tx),
    ];

    let mut attempt =
        Attempt { lines: Vec::new(), userspace_after: None, exit_code: None, timed_out: None, elapsed: Duration::ZERO };
    let mut deadline = (start + spec.timeout, "the VM timeout");
    let boot_deadline = (start + BOOT_TIMEOUT, "the boot timeout");
    loop {
        let (limit, what) =
            if attempt.userspace_after.is_some() || boot_deadline.0 > deadline.0 { deadline } else { boot_deadline };
        match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let line = strip_escapes(&line);
                if let Some(prefix) = &spec.echo {
                    println!("{prefix}{line}");
                }
                if attempt.userspace_after.is_none() && line.contains(USERSPACE_MARKER) {
                    attempt.userspace_after = Some(start.elapsed());
                }
                if let Some(code) = exit_code(&line) {
                    attempt.exit_code = Some(code);
                    deadline = (Instant::now() + POWEROFF_GRACE, "the power-off grace period");
                }
                attempt.lines.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {
                attempt.timed_out = Some(what);
                kill(&mut child);
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context("could not wait for qemu")?;
    for reader in readers {
        let _ = reader.join();
    }
    attempt.elapsed = start.elapsed();
    if attempt.timed_out.is_none() && attempt.userspace_after.is_none() {
        attempt.lines.push(format!("(qemu exited: {status})"));
    }
    Ok(attempt)
}

fn command(spec: &VmSpec, initrd: &Path) -> Result<Command> {
    let mut qemu = Command::new("qemu-system-x86_64");
    // KVM is opt-in: on the development and CI machines /dev/kvm exists but guests die
    // with "KVM internal error ... emulation failure" (or qemu aborts on MSR 0x10a), so
    // detecting it by opening /dev/kvm would pick a broken accelerator. TCG always works.
    let accel = std::env::var("ENFORCER_VM_ACCEL").unwrap_or_default();
    match accel.as_str() {
        "" | "tcg" => {
            qemu.args(["-accel", "tcg", "-cpu", "max"]);
        }
        "kvm" => {
            if spec.icount {
                bail!("--icount needs TCG; unset ENFORCER_VM_ACCEL=kvm");
            }
            qemu.args(["-accel", "kvm", "-cpu", "host"]);
        }
        other => bail!("ENFORCER_VM_ACCEL={other:?} is not supported; use tcg (default) or kvm"),
    }
    if spec.icount {
        // The guest clock counts instructions (1 ns each): stable timing for benchmarks.
        qemu.args(["-icount", "shift=0,sleep=off", "-smp", "1"]);
    } else {
        qemu.args(["-smp", "2"]);
    }
    if let Some((range, log)) = &spec.exec_log {
        // Every block run in the range, with its instructions (`nochain`: one line per run).
        qemu.args(["-d", "nochain,exec,in_asm", "-dfilter", range, "-D"]).arg(log);
    }
    if let Some(disk) = &spec.disk {
        let mut drive = std::ffi::OsString::from("if=virtio,format=raw,snapshot=on,file=");
        drive.push(&disk.image);
        qemu.arg("-drive").arg(drive);
    }
    // No NIC: the guest needs only loopback, and it spares the iPXE option ROM at boot.
    qemu.args(["-m", "2048", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&spec.kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 lsm=lockdown,capability,landlock,bpf panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // If we die (Ctrl-C, SIGTERM, SIGKILL), take qemu with us rather than leave it running.
    // SAFETY: prctl is async-signal-safe and only changes this child's own settings.
    unsafe {
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(qemu)
}

/// The line without terminal control sequences (the firmware clears the screen).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // ESC [ params final-byte, or ESC and one character.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

fn exit_code(line: &str) -> Option<i32> {
    let rest = line.split(EXIT_MARKER).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn kill(child: &mut Child) {
    if let Err(e) = child.kill() {
        eprintln!("warning: could not kill qemu (pid {}): {e}", child.id());
    }
}
