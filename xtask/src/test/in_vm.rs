//! VM tier: the `lsm` integration tests of enforcer-tests inside a qemu VM booted with a
//! Debian kernel and `lsm=...,bpf`, once per kernel series, two VMs side by side.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use super::host::{build_binaries, build_test};
use super::{Outcome, Tier, ran};
use crate::libtest::Summary;
use crate::vm::{self, VmSpec};
use std::fmt::Write as _;

use crate::{cmd, kernel};

// A tier takes 10 to 25 minutes under TCG (one load of the programs for the
// tests in daemon-tagged cgroups, one per test of `enforcer run` itself, each
// 25 to 90 s); the limit only catches a hang.
const TIMEOUT: Duration = Duration::from_mins(55);
/// `ENFORCER_TESTS_VIA=daemon`: a test's command runs in a cgroup a daemon
/// of its own tagged, and every daemon after the first adopts the programs
/// the first pinned, so the kernel verifies them once per boot; the tests of
/// `enforcer run` itself (`Sandbox::under_enforcer_run`) load them each time.
const SCRIPT: &str = "ENFORCER_BIN=/bin/enforcer ENFORCER_PROBE_BIN=/bin/enforcer-probe ENFORCER_TESTS_VIA=daemon \
                      /bin/lsm-tests --test-threads=1";

/// Rough minutes a tier takes here, for starting the longest first
/// (measured side by side on 2026-12-05, every test on every kernel: 5.10
/// 21-22, 7.3 18-19, 6.12 19, 6.1 15; 6.12 gets 18 so 7.3 starts first):
/// the worker that ends 5.10 takes 6.1 and the one that ends 7.3 takes
/// 6.12, so the two finish close together.
fn expected_minutes(series: &str) -> u32 {
    match series {
        "5.10" => 22,
        "7.3" => 19,
        "6.12" => 18,
        _ => 15,
    }
}

/// VMs run side by side. Each `enforcer run` in a VM verifies on one vCPU for most of
/// its time, so on this 2-core machine two VMs together take each hardly longer than
/// alone (measured: 6.1 646 s and 7.3 1013 s side by side, 575 s and 992 s alone).
/// `ENFORCER_VM_PARALLEL=1` runs them one after another.
fn side_by_side() -> usize {
    std::env::var("ENFORCER_VM_PARALLEL").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

/// The tiers of `series`, longest first, taken by [`side_by_side`] workers; each
/// prints its tier line (with its time) when it ends. Returned in `series` order.
pub fn run_all(series: &[String]) -> Vec<Tier> {
    let files = guest_files().map_err(|e| format!("{e:#}"));
    let workers = side_by_side().clamp(1, series.len().max(1));
    let mut order: Vec<(usize, &String)> = series.iter().enumerate().collect();
    order.sort_by_key(|(_, s)| std::cmp::Reverse(expected_minutes(s)));
    let queue = Mutex::new(order.into_iter().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue lock").pop_front();
                    let Some((index, s)) = next else { break };
                    let prefix = if workers > 1 { format!("[vm {s}] ") } else { String::new() };
                    let tier = super::timed(&|| run(s, &files, prefix.clone()));
                    done.lock().expect("results lock").push((index, tier));
                }
            });
        }
    });
    let mut done = done.into_inner().expect("results lock");
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, tier)| tier).collect()
}

/// What every VM gets: the enforcer, the probe, the `lsm` test binary and
/// the example policies, runc. Built once, before any VM starts: a build while
/// another VM's initramfs is being staged could replace a binary under it.
fn guest_files() -> Result<Vec<(PathBuf, String)>> {
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
    // The containers tests run Debian's runc (with its libraries) in the guest.
    files.push((runc()?, "/bin/runc".to_string()));
    // The TLS name tests: a real TLS server and client.
    for tool in ["curl", "openssl"] {
        let path =
            cmd::which(tool).ok_or_else(|| anyhow::anyhow!("{tool} is not installed: run `cargo xtask setup`"))?;
        files.push((path, format!("/bin/{tool}")));
    }
    Ok(files)
}

/// One tier; `prefix` goes before each console line it prints.
fn run(series: &str, files: &Result<Vec<(PathBuf, String)>, String>, prefix: String) -> Tier {
    println!("\n== tier vm {series} ==");
    let kernel = match kernel::cached(series) {
        Ok(k) => k,
        Err(e) => {
            return Tier { name: format!("vm {series}"), outcome: Outcome::CouldNotRun(format!("{e:#}")) };
        }
    };
    let release = kernel.package.trim_start_matches("linux-image-").to_string();
    // While developing: ENFORCER_VM_TESTS=NAME runs only the tests whose name
    // contains NAME (empty or unset: every test).
    let filter = std::env::var("ENFORCER_VM_TESTS").unwrap_or_default();
    let built = files.as_ref().map_err(|e| anyhow::anyhow!("building what the VM runs failed: {e}"));
    let (release, outcome) = match built.and_then(|files| run_tests(kernel, files.clone(), &filter, prefix)) {
        Ok((booted, outcome)) => (booted.unwrap_or(release), outcome),
        Err(e) => (release, Outcome::Ran { summary: Summary::default(), problem: Some(format!("{e:#}")) }),
    };
    Tier { name: format!("vm {series} ({release})"), outcome }
}

/// Runs the `lsm` tests whose names `filter` (libtest filters) selects.
fn run_tests(
    kernel: kernel::Kernel,
    files: Vec<(PathBuf, String)>,
    filter: &str,
    prefix: String,
) -> Result<(Option<String>, Outcome)> {
    // ENFORCER_VM_ENV="NAME=VALUE ..." sets variables for the tests (e.g.
    // ENFORCER_PROGRAMS=compat, to try the compat build on a newer kernel).
    let env = std::env::var("ENFORCER_VM_ENV").unwrap_or_default();
    let mut files = files;
    let mut insmod = String::new();
    for module in &kernel.modules {
        let guest = format!("/enforcer-vm/modules/{}", module.file_name().unwrap_or_default().to_string_lossy());
        let _ = write!(insmod, "insmod {guest} || echo 'vm: cannot load {guest}'; ");
        files.push((module.clone(), guest));
    }
    let spec = VmSpec {
        kernel,
        files,
        script: format!("{insmod}{env} {SCRIPT} {filter}"),
        icount: false,
        timeout: TIMEOUT,
        echo: Some(prefix),
        exec_log: None,
    };
    let run = vm::run(&spec)?;
    let summary = Summary::parse(&run.output);
    let exit_ok = run.exit_code == Some(0);
    let outcome = if run.timed_out {
        Outcome::Ran { summary, problem: Some(format!("the VM did not finish within {TIMEOUT:?}")) }
    } else if run.exit_code.is_none() {
        let problem = "the VM stopped before the tests finished (kernel crash? see the console above)";
        Outcome::Ran { summary, problem: Some(problem.into()) }
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

/// Where runc is on the host.
fn runc() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("runc"))
        .find(|runc| runc.is_file())
        .ok_or_else(|| anyhow::anyhow!("runc is not installed: run `cargo xtask setup`"))
}
