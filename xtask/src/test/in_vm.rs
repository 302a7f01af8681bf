//! VM tier: the `lsm` integration tests of enforcer-tests inside a qemu VM booted with a
//! Debian kernel and `lsm=...,bpf`, once per kernel series.

use std::time::Duration;

use anyhow::Result;

use super::host::{build_binaries, build_test};
use super::{Outcome, Tier, ran};
use crate::libtest::Summary;
use crate::vm::{self, VmSpec};
use crate::{cmd, kernel};

// The 6.12 tier takes about 21 minutes under TCG (each `enforcer run` verifies
// its programs for ~45 s there); leave room for a slower machine.
const TIMEOUT: Duration = Duration::from_mins(40);
const SCRIPT: &str = "ENFORCER_BIN=/bin/enforcer ENFORCER_PROBE_BIN=/bin/enforcer-probe /bin/lsm-tests --test-threads=1";

/// 5.10 loads the compat build of the programs (no `bpf_loop`), whose
/// verification takes about five minutes per `enforcer run` under TCG
/// (seconds on real hardware): its tier runs the test that covers what that
/// build does differently for files (every write hook, owner changes judged
/// in `inode_setattr`, the xattr hooks' older signature), not all of them.
const SUBSETS: &[(&str, &str)] = &[("5.10", "every_write_like_operation_outside_is_denied_with_one_event")];

pub fn run(series: &str) -> Tier {
    println!("\n== tier vm {series} ==");
    let kernel = match kernel::cached(series) {
        Ok(k) => k,
        Err(e) => {
            return Tier {
                name: format!("vm {series}"),
                outcome: Outcome::CouldNotRun(format!("{e:#}")),
            };
        }
    };
    let release = kernel
        .package
        .trim_start_matches("linux-image-")
        .to_string();
    let subset = SUBSETS.iter().find(|(s, _)| *s == series).map(|(_, tests)| *tests);
    if let Some(tests) = subset {
        println!("vm {series}: a subset (the compat build loads for minutes under TCG): {tests}");
    }
    let (release, outcome) = match run_tests(kernel, subset) {
        Ok((booted, outcome)) => (booted.unwrap_or(release), outcome),
        Err(e) => (
            release,
            Outcome::Ran {
                summary: Summary::default(),
                problem: Some(format!("{e:#}")),
            },
        ),
    };
    let scope = if subset.is_some() { ", subset" } else { "" };
    Tier {
        name: format!("vm {series} ({release}{scope})"),
        outcome,
    }
}

fn run_tests(kernel: kernel::Kernel, subset: Option<&str>) -> Result<(Option<String>, Outcome)> {
    let bins = build_binaries()?;
    let tests = build_test("lsm")?;
    let mut files = vec![
        (bins.enforcer, "/bin/enforcer".to_string()),
        (bins.probe, "/bin/enforcer-probe".to_string()),
        (tests, "/bin/lsm-tests".to_string()),
    ];
    let policies = cmd::workspace_root().join("policies");
    if policies.is_dir() {
        files.push((policies, "/policies".to_string()));
    }
    // While developing: ENFORCER_VM_TESTS=NAME runs only the tests whose name contains NAME.
    let filter = std::env::var("ENFORCER_VM_TESTS").unwrap_or_else(|_| subset.unwrap_or_default().to_owned());
    let spec = VmSpec {
        kernel,
        files,
        script: format!("{SCRIPT} {filter}"),
        icount: false,
        timeout: TIMEOUT,
        echo: true,
    };
    let run = vm::run(&spec)?;
    let summary = Summary::parse(&run.output);
    let exit_ok = run.exit_code == Some(0);
    let outcome = if run.timed_out {
        Outcome::Ran {
            summary,
            problem: Some(format!("the VM did not finish within {TIMEOUT:?}")),
        }
    } else if run.exit_code.is_none() {
        let problem =
            "the VM stopped before the tests finished (kernel crash? see the console above)";
        Outcome::Ran {
            summary,
            problem: Some(problem.into()),
        }
    } else {
        ran(summary, exit_ok, "the lsm test binary in the VM")
    };
    println!(
        "vm: kernel {} booted to userspace in {:.1}s; run took {:.0}s",
        run.kernel_release.as_deref().unwrap_or("?"),
        run.boot_time.as_secs_f64(),
        run.elapsed.as_secs_f64()
    );
    Ok((run.kernel_release, outcome))
}
