//! Run a shell script in a qemu VM booted with a cached Debian kernel and BPF LSM enabled;
//! used by `test`, `demo` and the `vm` subcommand (which is defined here too).
//!
//! The guest is a busybox initramfs whose `/init` (vm/init.sh) mounts proc, sys, devtmpfs,
//! securityfs, bpffs, cgroup2 and tmpfs, creates `/workspace` and a home with fake secrets,
//! then runs the script in `/workspace` and powers off. A boot that never reaches
//! userspace is retried once; a run that reached userspace is never retried.

pub mod initramfs;
mod qemu;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;

use crate::kernel::{self, Kernel};
use crate::setup;

/// What to run in a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: Kernel,
    /// (host path, absolute guest path). Executables get their shared libraries (as `ldd`
    /// lists them) at the same paths; a directory is copied with its contents.
    pub files: Vec<(PathBuf, String)>,
    /// Shell script (busybox sh) init runs in `/workspace`, stdin from /dev/null.
    pub script: String,
    /// Count instructions for the guest clock (`-icount shift=0,sleep=off`, one vCPU):
    /// slow but repeatable timing, for benchmarks.
    pub icount: bool,
    /// Limit for the whole boot plus script; qemu is killed when it is reached.
    pub timeout: Duration,
    /// Print the console live on our stdout while it runs, each line after this prefix
    /// (which names the VM when several run side by side).
    pub echo: Option<String>,
    /// Log every block of guest code run in an address range (`qemu -dfilter` syntax)
    /// to a file, with its instructions: see `bench path`. Slows the guest down.
    pub exec_log: Option<(String, PathBuf)>,
    /// Boot into this root filesystem instead of staying in the initramfs.
    pub disk: Option<Disk>,
}

/// A root filesystem image the initramfs mounts and switches to. The spec's files
/// are copied into it (their shared libraries only where the image has none) and
/// the script runs there; the image itself is opened with `snapshot=on`, so what
/// the VM writes is gone when it stops.
#[derive(Debug, Clone)]
pub struct Disk {
    /// An ext4 image (`setup::rootfs`).
    pub image: PathBuf,
    /// Kernel modules to load, in order, before the disk appears (`kernel::disk_modules`).
    pub modules: Vec<PathBuf>,
}

/// What a VM run produced.
#[derive(Debug)]
pub struct VmRun {
    /// The console output, one line per line, `\r` stripped.
    pub output: String,
    /// The script's exit code; None if the VM died or timed out before reporting it.
    pub exit_code: Option<i32>,
    /// `uname -r` of the guest, from init's READY line.
    pub kernel_release: Option<String>,
    /// Time from starting qemu until init printed its first line.
    pub boot_time: Duration,
    /// Time from starting qemu until it exited.
    pub elapsed: Duration,
    /// Set when the run was cut short by the timeout.
    pub timed_out: bool,
}

/// Boot the VM and run the script (see the module docs).
pub fn run(spec: &VmSpec) -> Result<VmRun> {
    let initrd =
        initramfs::build(&spec.files, &spec.script, spec.disk.as_ref()).context("could not build the initramfs")?;
    let kernel = &spec.kernel;
    let mut failures = Vec::new();
    for attempt in 1..=2 {
        let a = qemu::boot(spec, &initrd.path())?;
        if let Some(boot_time) = a.userspace_after {
            let kernel_release = a.lines.iter().find_map(|l| {
                let rest = l.split(qemu::READY_MARKER).nth(1)?;
                Some(rest.split("kernel=").nth(1)?.split_whitespace().next()?.to_string())
            });
            return Ok(VmRun {
                output: a.lines.join("\n"),
                exit_code: a.exit_code,
                kernel_release,
                boot_time,
                elapsed: a.elapsed,
                timed_out: a.timed_out.is_some(),
            });
        }
        let why = match a.timed_out {
            Some(what) => format!("killed by {what} after {:.0?}", a.elapsed),
            None => format!("qemu exited after {:.1?}", a.elapsed),
        };
        let tail = a.lines.len().saturating_sub(30);
        failures.push(format!("attempt {attempt}: {why}; last lines:\n{}", a.lines[tail..].join("\n")));
        if attempt == 1 {
            eprintln!("vm: kernel {} never reached userspace ({why}); retrying the boot once", kernel.series);
        }
    }
    bail!(
        "VM boot failure: kernel {} ({}) never reached userspace in 2 attempts. Early \
         crashes under TCG are rare but possible: re-run; if it repeats, check the output \
         below, the kernel cache and the qemu version (`cargo xtask setup`){}\n{}",
        kernel.series,
        kernel.package,
        if std::env::var("ENFORCER_VM_ACCEL").is_ok_and(|a| a == "kvm") {
            "; KVM is selected (ENFORCER_VM_ACCEL=kvm): unset it to use TCG"
        } else {
            ""
        },
        failures.join("\n")
    )
}

/// `cargo xtask vm`: boot a cached kernel and run a shell command in it.
#[derive(Debug, Parser)]
pub struct Options {
    /// Kernel series to boot (cached by `cargo xtask setup`).
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Count instructions for the guest clock (stable timing; one vCPU).
    #[arg(long)]
    icount: bool,
    /// Kill the VM after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// Copy a host file or directory into the guest, e.g. target/debug/enforcer:/bin/enforcer.
    #[arg(long = "file", value_name = "HOST:GUEST")]
    files: Vec<String>,
    /// Boot into the workload tier's Debian root filesystem (`cargo xtask setup`
    /// builds it), where the command runs with Debian's tools.
    #[arg(long)]
    rootfs: bool,
    /// Shell command run in the guest (busybox sh, in /workspace).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run_command(opts: &Options) -> Result<ExitCode> {
    let files = opts
        .files
        .iter()
        .map(|f| {
            let (host, guest) = f.rsplit_once(':').with_context(|| format!("--file {f:?}: expected HOST:GUEST"))?;
            Ok((PathBuf::from(host), guest.to_string()))
        })
        .collect::<Result<_>>()?;
    let spec = VmSpec {
        kernel: kernel::cached(&opts.kernel)?,
        files,
        script: opts.command.join(" "),
        icount: opts.icount,
        timeout: Duration::from_secs(opts.timeout),
        echo: Some(String::new()),
        exec_log: None,
        disk: if opts.rootfs {
            Some(Disk { image: setup::rootfs_image()?, modules: kernel::disk_modules(&opts.kernel)? })
        } else {
            None
        },
    };
    let run = run(&spec)?;
    let release = run.kernel_release.as_deref().unwrap_or("?");
    let boot = run.boot_time.as_secs_f64();
    let total = run.elapsed.as_secs_f64();
    match run.exit_code {
        Some(code) => {
            eprintln!("vm: kernel {release}: userspace after {boot:.1}s, command exited {code}, total {total:.1}s");
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        None if run.timed_out => bail!("kernel {release}: the command did not finish within {}s", opts.timeout),
        None => bail!("kernel {release}: the VM stopped before the command finished (see the output above)"),
    }
}
