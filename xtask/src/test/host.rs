//! Host tier: the `host` integration tests of enforcer-tests, run as root on the host
//! kernel (which cannot load BPF LSM programs, but does cgroup and tracing programs).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::{Outcome, Tier, ran};
use crate::{cargo, cmd, libtest};

const TIMEOUT: Duration = Duration::from_mins(20);

/// The enforcer's binaries the integration tests drive.
pub struct Binaries {
    pub enforcer: PathBuf,
    pub probe: PathBuf,
    pub bench: PathBuf,
}

/// Build `enforcer`, `enforcer-probe` and `enforcer-bench` (debug; the BPF programs
/// inside `enforcer` are optimised whatever the profile).
pub fn build_binaries() -> Result<Binaries> {
    let built = cargo::build(&["build", "-p", "enforcer", "-p", "enforcer-tests", "--bins"])?;
    Ok(Binaries {
        enforcer: cargo::executable(&built, "bin", "enforcer")?,
        probe: cargo::executable(&built, "bin", "enforcer-probe")?,
        bench: cargo::executable(&built, "bin", "enforcer-bench")?,
    })
}

/// Build the integration test `name` of enforcer-tests; returns its executable.
pub fn build_test(name: &str) -> Result<PathBuf> {
    let built = cargo::build(&["test", "-p", "enforcer-tests", "--test", name, "--no-run"])?;
    cargo::executable(&built, "test", name)
}

pub fn run() -> Tier {
    println!("\n== tier host ==");
    let outcome = if cmd::is_root() {
        run_tests()
            .unwrap_or_else(|e| Outcome::Ran { summary: libtest::Summary::default(), problem: Some(format!("{e:#}")) })
    } else {
        Outcome::CouldNotRun(
            "the host tests load BPF programs and create cgroups, which needs root; \
             re-run as root (e.g. `sudo -E cargo xtask test`)"
                .into(),
        )
    };
    Tier { name: "host".into(), outcome }
}

fn run_tests() -> Result<Outcome> {
    let bins = build_binaries()?;
    let tests = build_test("host")?;
    let mut command = Command::new(&tests);
    command
        .arg("--test-threads=1")
        .env("ENFORCER_BIN", &bins.enforcer)
        .env("ENFORCER_PROBE_BIN", &bins.probe)
        .current_dir(cmd::workspace_root());
    let done = libtest::run(&mut command, TIMEOUT)?;
    if done.timed_out {
        return Ok(Outcome::Ran {
            summary: done.summary,
            problem: Some(format!("the host tests did not finish within {TIMEOUT:?}")),
        });
    }
    Ok(ran(done.summary, done.success, "the host test binary"))
}
