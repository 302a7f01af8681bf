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
/// `--report-time` prints each test's time, to see where a tier's time goes
/// (libtest takes unstable options when `RUSTC_BOOTSTRAP` is set).
const SCRIPT: &str = "ENFORCER_BIN=/bin/enforcer ENFORCER_PROBE_BIN=/bin/enforcer-probe ENFORCER_TESTS_VIA=daemon \
                      RUSTC_BOOTSTRAP=1 /bin/lsm-tests --test-threads=1 -Z unstable-options --report-time";

/// `enforcer run`'s own loader (each `enforcer run` not through a daemon loads
/// and verifies every program itself: a minute and more under TCG, most of a
/// tier's time) is tested on [`STANDALONE_SERIES`] only. Elsewhere these tests
/// (matched as libtest's `--skip` does, by a substring of the name) are left
/// out, and those that judge a command both ways judge it through the daemon
/// only (`ENFORCER_TESTS_STANDALONE=0`, `Sandbox::ways`). Every kernel still
/// verifies every program, at its first daemon's load, and runs every other
/// test, `enforcer run` through the daemon included.
pub const STANDALONE_TESTS: &[&str] = &[
    "a_denial_storm_is_denied_throughout_and_every_event_is_accounted_for",
    "events_sent_to_dev_null_leave_dev_null_to_the_command",
    "syscalls::",
    "terminal::",
    "floor::require_seccomp_refuses_exec_by_a_task_without_a_filter",
    "exfiltration::tls::the_kernel_takes_the_tls_name_judge",
    "boundary::the_floor_and_the_agent_boundary_hold_under_enforcer_run",
    "boundary::a_killed_supervisor_takes_its_run_with_it",
];
/// Debian 12's kernel: the fleet's commonest, and the quickest to verify the
/// programs.
pub const STANDALONE_SERIES: &[&str] = &["6.1"];

/// A VM job for [`run_side_by_side`]: its name, the minutes it takes here
/// (to start the longest first), and what runs it.
pub struct Job<'a> {
    pub name: String,
    pub minutes: u32,
    pub run: Box<dyn Fn(String) -> Tier + Send + Sync + 'a>,
}

/// Rough minutes a VM tier takes here in a slow hour (2026-12-07: 6.12 took
/// 32 with `enforcer run`'s own loader, 19 of them in its loads).
fn expected_minutes(series: &str) -> u32 {
    let standalone = STANDALONE_SERIES.contains(&series);
    match series {
        _ if standalone => 25,
        "5.10" => 14,
        _ => 12,
    }
}

/// VMs run side by side. Each `enforcer run` in a VM verifies on one vCPU for most of
/// its time, so on this 2-core machine two VMs together take each hardly longer than
/// alone (measured: 6.1 646 s and 7.3 1013 s side by side, 575 s and 992 s alone).
/// `ENFORCER_VM_PARALLEL=1` runs them one after another.
fn side_by_side() -> usize {
    std::env::var("ENFORCER_VM_PARALLEL").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

/// The VM tier of each series, as jobs (what they run is built first, once).
pub fn jobs(series: &[String]) -> Vec<Job<'static>> {
    let files = std::sync::Arc::new(guest_files().map_err(|e| format!("{e:#}")));
    series
        .iter()
        .map(|s| {
            let (s, files) = (s.clone(), files.clone());
            Job {
                name: format!("vm {s}"),
                minutes: expected_minutes(&s),
                run: Box::new(move |prefix| run(&s, &files, prefix)),
            }
        })
        .collect()
}

/// Runs `jobs` longest first, [`side_by_side`] at a time; each prints its tier
/// line (with its time) when it ends. Returned in the order given.
pub fn run_side_by_side(jobs: Vec<Job<'_>>) -> Vec<Tier> {
    let workers = side_by_side().clamp(1, jobs.len().max(1));
    let mut order: Vec<(usize, Job<'_>)> = jobs.into_iter().enumerate().collect();
    order.sort_by_key(|(_, job)| std::cmp::Reverse(job.minutes));
    let queue = Mutex::new(order.into_iter().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue lock").pop_front();
                    let Some((index, job)) = next else { break };
                    let prefix = if workers > 1 { format!("[{}] ", job.name) } else { String::new() };
                    let tier = super::timed(&|| (job.run)(prefix.clone()));
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
    let only_elsewhere = if STANDALONE_SERIES.contains(&series) {
        String::new()
    } else {
        format!("; enforcer run's own loader tested on {} only", STANDALONE_SERIES.join(" and "))
    };
    Tier { name: format!("vm {series} ({release}{only_elsewhere})"), outcome }
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
    let mut skips = String::new();
    let mut env = env;
    if !STANDALONE_SERIES.contains(&kernel.series.as_str()) {
        env.push_str(" ENFORCER_TESTS_STANDALONE=0");
        for test in STANDALONE_TESTS {
            let _ = write!(skips, " --skip {test}");
        }
    }
    let spec = VmSpec {
        kernel,
        files,
        script: format!("{insmod}{env} {SCRIPT}{skips} {filter}"),
        icount: false,
        timeout: TIMEOUT,
        echo: Some(prefix),
        exec_log: None,
        disk: None,
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
