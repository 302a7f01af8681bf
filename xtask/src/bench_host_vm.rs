//! The driver `bench net` and `bench syscalls` share: build the release binaries, run one
//! script natively on the host kernel (wall clock) and in each BPF LSM kernel under qemu
//! (`-icount`, instruction-exact), save the raw lines, print a table per kernel and, with
//! more than one, all of them at the end.

use std::fs;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::vm::{self, VmSpec};
use crate::{cmd, kernel, setup};

const TIMEOUT: Duration = Duration::from_mins(40);

/// Where to measure, from the command line.
pub struct Targets<'a> {
    /// Kernel series for the VMs (empty: every cached series).
    pub kernels: &'a [String],
    pub host_only: bool,
    pub skip_host: bool,
    /// Rounds in the VMs and on the host.
    pub rounds: u32,
    pub host_rounds: u32,
}

/// (mode line, console output, rounds, log path, on the host) to a table, and whether the
/// measurements are complete.
pub type Report<'a> = &'a dyn Fn(&str, &str, u32, &str, bool) -> (String, bool);

/// One benchmark: its name (banners, `target/bench/<name>-<where>.log`), what the host's
/// measurement leaves out, its script and its table.
pub struct Bench<'a> {
    pub name: &'static str,
    pub host_note: &'static str,
    /// (rounds, enforcer-bench path, enforcer path, on the host) to the script.
    pub script: &'a dyn Fn(u32, &str, &str, bool) -> String,
    pub report: Report<'a>,
}

pub fn run(bench: &Bench<'_>, targets: &Targets<'_>) -> Result<ExitCode> {
    let name = bench.name;
    let series: Vec<String> = if targets.host_only { Vec::new() } else { kernel::chosen(targets.kernels) };
    setup::ensure(!series.is_empty(), &series)?;
    let (enforcer, bench_bin) = crate::bench::release_binaries()?;
    let mut reports = Vec::new();
    let mut ok = true;

    if !targets.skip_host {
        println!("\n== bench {name}: host kernel (native, wall clock) ==");
        anyhow::ensure!(cmd::is_root(), "the {name} benchmark loads BPF programs: run it as root");
        let text = (bench.script)(
            targets.host_rounds,
            &bench_bin.display().to_string(),
            &enforcer.display().to_string(),
            true,
        );
        let output = Command::new("bash").arg("-c").arg(&text).output().context("could not run the host script")?;
        let output = String::from_utf8_lossy(&output.stdout).into_owned();
        let log = cmd::save_bench_output(&format!("{name}-host.log"), &output);
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mode = format!("host kernel {} (native; {})", release.trim(), bench.host_note);
        let (table, complete) = (bench.report)(&mode, &output, targets.host_rounds, &log.display().to_string(), true);
        ok &= complete;
        println!("\n{table}");
        reports.push(table);
    }

    for s in &series {
        println!("\n== bench {name}: kernel {s} (icount) ==");
        let spec = VmSpec {
            kernel: kernel::cached(s)?,
            files: vec![
                (enforcer.clone(), "/bin/enforcer".to_string()),
                (bench_bin.clone(), "/bin/enforcer-bench".to_string()),
            ],
            script: (bench.script)(targets.rounds, "/bin/enforcer-bench", "/bin/enforcer", false),
            icount: true,
            timeout: TIMEOUT,
            echo: None,
            exec_log: None,
            disk: None,
        };
        let table = match vm::run(&spec) {
            Ok(run) => {
                let log = cmd::save_bench_output(&format!("{name}-{s}.log"), &run.output);
                let release = run.kernel_release.as_deref().unwrap_or("?");
                let mode =
                    format!("kernel {release} ({s}) under qemu -icount shift=0,sleep=off (1 guest ns = 1 instruction)");
                let (table, complete) =
                    (bench.report)(&mode, &run.output, targets.rounds, &log.display().to_string(), false);
                ok &= complete;
                table
            }
            Err(e) => {
                ok = false;
                format!("kernel {s}: could not run: {e:#}\n")
            }
        };
        println!("\n{table}");
        reports.push(table);
    }
    if reports.len() > 1 {
        println!("\n== bench {name}: all kernels ==\n");
        for report in &reports {
            println!("{report}");
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
