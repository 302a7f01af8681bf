//! `cargo xtask test`: every test tier, in order, with one summary line each.
//!
//! 1. lint: `cargo fmt --check` and clippy with warnings as errors (`test/lint.rs`).
//! 2. unit: `cargo test` of the workspace (no privileges).
//! 3. host: the `host` integration tests, as root, on the host kernel.
//! 4. vm: the `lsm` integration tests in a qemu VM per kernel series (BPF LSM enabled).
//! 5. gate: the file hot path's cost under icount, against fixed bounds (`test/gate.rs`).
//! 6. workload: a real coding session in a Debian root filesystem, on one kernel,
//!    with no refusal, and the demo's attacks refused (`test/workload.rs`).
//!
//! Tiers 4 to 6 are VMs, run two side by side, longest first (`test/in_vm.rs`).
//!
//! The last line is `N passed, M failed` over all tiers (`, K skipped` when a tier did
//! not run). A tier that failed without a failing test (build error, crash, no results,
//! VM boot failure) counts as one failure. The exit status is non-zero when anything
//! failed or a tier could not run; `--skip-vm` is the only skip that still exits 0.

mod gate;
mod host;
mod in_vm;
mod lint;
mod unit;
pub mod workload;

/// The kernel the workload tier boots.
pub const WORKLOAD_SERIES: &str = workload::SERIES;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use crate::libtest::Summary;
use crate::{kernel, setup};

#[derive(Debug, Parser)]
pub struct Options {
    /// Skip the VM tier (reported as SKIPPED).
    #[arg(long)]
    skip_vm: bool,
    /// Kernel series for the VM tier; repeatable (default: 5.10, 6.1, 6.12 and 7.3).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Run only these tiers (lint, unit, host, vm, gate, workload); repeatable (default: all).
    #[arg(long = "tier", value_name = "TIER", value_parser = ["lint", "unit", "host", "vm", "gate", "workload"])]
    tiers: Vec<String>,
}

/// How a tier ended.
pub enum Outcome {
    /// Tests ran. `problem` says why the tier failed beyond failing tests, if it did.
    Ran { summary: Summary, problem: Option<String> },
    /// The tier could not run (fails the whole run).
    CouldNotRun(String),
    /// Deliberately skipped.
    Skipped(String),
}

pub struct Tier {
    pub name: String,
    pub outcome: Outcome,
}

impl Tier {
    /// Failures this tier contributes to the total.
    fn failed(&self) -> u64 {
        match &self.outcome {
            Outcome::Ran { summary, problem } => summary.failed.max(u64::from(problem.is_some())),
            _ => 0,
        }
    }

    fn line(&self) -> String {
        let name = &self.name;
        match &self.outcome {
            Outcome::Ran { summary, problem } => {
                let mut line = format!("tier {name}: {} passed, {} failed", summary.passed, self.failed());
                if summary.ignored > 0 {
                    let _ = write!(line, " ({} ignored)", summary.ignored);
                }
                if !summary.failed_tests.is_empty() {
                    let _ = write!(line, "; failing: {}", summary.failed_tests.join(", "));
                }
                if let Some(problem) = problem {
                    let _ = write!(line, "; FAILED: {problem}");
                }
                line
            }
            Outcome::CouldNotRun(why) => format!("tier {name}: SKIPPED (could not run: {why})"),
            Outcome::Skipped(why) => format!("tier {name}: SKIPPED ({why})"),
        }
    }
}

pub fn run(opts: &Options) -> ExitCode {
    let series = kernel::chosen_or(&opts.kernels, kernel::FETCHED);
    // Cheap when everything is in place; on a fresh machine it installs what the tiers need.
    let setup_series = if opts.skip_vm { Vec::new() } else { series.clone() };
    if let Err(e) = setup::ensure(!opts.skip_vm, &setup_series) {
        eprintln!("test: setup failed: {e:#}\ntest: continuing; tiers that need it will fail");
    }

    let wanted = |tier: &str| opts.tiers.is_empty() || opts.tiers.iter().any(|t| t == tier);
    let mut tiers = Vec::new();
    if wanted("lint") {
        tiers.push(timed(&lint::run));
    }
    if wanted("unit") {
        tiers.push(timed(&unit::run));
    }
    if wanted("host") {
        tiers.push(timed(&host::run));
    }
    if opts.skip_vm {
        tiers.push(timed(&|| Tier { name: "vm".into(), outcome: Outcome::Skipped("--skip-vm".into()) }));
    } else {
        // Every VM tier, the gate and the workload side by side, longest first.
        let mut jobs = Vec::new();
        if wanted("vm") {
            jobs.extend(in_vm::jobs(&series));
        }
        if wanted("gate") {
            jobs.push(in_vm::Job { name: "gate".into(), minutes: gate::MINUTES, run: Box::new(|_| gate::run()) });
        }
        if wanted("workload") {
            // Its image and test binary before any VM starts (a build under a VM
            // being staged could replace what it stages); errors show in its tier.
            let _ = workload::prepare();
            jobs.push(in_vm::Job { name: "workload".into(), minutes: workload::MINUTES, run: Box::new(workload::run) });
        }
        tiers.extend(in_vm::run_side_by_side(jobs));
    }

    println!("\nsummary:");
    for tier in &tiers {
        println!("{}", tier.line());
    }
    let passed: u64 = tiers
        .iter()
        .map(|t| match &t.outcome {
            Outcome::Ran { summary, .. } => summary.passed,
            _ => 0,
        })
        .sum();
    let failed: u64 = tiers.iter().map(Tier::failed).sum();
    let skipped = tiers.iter().filter(|t| !matches!(t.outcome, Outcome::Ran { .. })).count();
    let could_not_run = tiers.iter().any(|t| matches!(t.outcome, Outcome::CouldNotRun(_)));
    let mut total = format!("{passed} passed, {failed} failed");
    if skipped > 0 {
        let _ = write!(total, ", {skipped} skipped");
    }
    println!("{total}");
    if failed > 0 || could_not_run { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Runs a tier and prints its line, its time in its name.
fn timed(run: &dyn Fn() -> Tier) -> Tier {
    let start = Instant::now();
    let mut tier = run();
    let _ = write!(tier.name, " [{:.0}s]", start.elapsed().as_secs_f64());
    println!("{}", tier.line());
    tier
}

/// Outcome of a tier whose test process ran: failed when it exited non-zero or printed
/// no libtest result.
pub fn ran(summary: Summary, exit_ok: bool, what: &str) -> Outcome {
    let problem = if summary.results == 0 {
        Some(format!("{what} printed no `test result:` line"))
    } else if !exit_ok && summary.failed == 0 {
        Some(format!("{what} exited non-zero without a failing test (see its output above)"))
    } else {
        None
    };
    Outcome::Ran { summary, problem }
}
