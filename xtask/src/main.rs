//! Developer tasks for the enforcer workspace: `cargo xtask <command>`.
//!
//! One module per subcommand (setup, test, demo, vm, bench); `vm` also holds the
//! VM runner the other commands use, `kernel` the kernel cache and `cargo`
//! and `cmd` the process helpers.

mod bench;
mod bench_daemon;
mod bench_host_vm;
mod bench_net;
mod bench_path;
mod bench_programs;
mod bench_syscalls;
mod bench_workload;
mod cargo;
mod cmd;
mod demo;
mod kernel;
mod libtest;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Developer tasks for the enforcer workspace")]
pub struct XtaskOptions {
    #[command(subcommand)]
    command: Subcommand,
}

#[derive(Debug, Parser)]
enum Subcommand {
    /// Install the tools and download the kernels the tests need (idempotent, cached).
    Setup(setup::Options),
    /// Run every test tier: unit, host (root) and BPF LSM in VMs.
    Test(test::Options),
    /// Boot a VM and show the enforcer stopping a misbehaving scripted agent.
    Demo(demo::Options),
    /// Boot a VM with a cached kernel and run a shell command in it (for debugging).
    Vm(vm::Options),
    /// Measure what the enforcer costs, in the BPF LSM kernels under qemu (icount).
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let XtaskOptions { command } = Parser::parse();

    let result = match command {
        Subcommand::Setup(opts) => setup::run(&opts).map(|()| ExitCode::SUCCESS),
        Subcommand::Test(opts) => Ok(test::run(&opts)),
        Subcommand::Demo(opts) => demo::run(&opts),
        Subcommand::Vm(opts) => vm::run_command(&opts),
        Subcommand::Bench(opts) => bench::run(&opts),
    };

    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
