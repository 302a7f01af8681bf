//! Unit tier: `cargo test` over the workspace, minus the eBPF crate (bpf target only)
//! and the integration tests (they need root or a VM).

use std::process::Command;
use std::time::Duration;

use super::{Outcome, Tier, ran};
use crate::{cmd, libtest};

const TIMEOUT: Duration = Duration::from_mins(20);

pub fn run() -> Tier {
    println!("\n== tier unit ==");
    let mut cargo = Command::new("cargo");
    cargo
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(["--exclude", "enforcer-ebpf", "--exclude", "enforcer-tests"])
        .current_dir(cmd::workspace_root());
    let outcome = match libtest::run(&mut cargo, TIMEOUT) {
        Ok(done) if done.timed_out => Outcome::Ran {
            summary: done.summary,
            problem: Some(format!("cargo test did not finish within {TIMEOUT:?}")),
        },
        Ok(done) => ran(done.summary, done.success, "cargo test"),
        Err(e) => Outcome::CouldNotRun(format!("{e:#}")),
    };
    Tier { name: "unit".into(), outcome }
}
