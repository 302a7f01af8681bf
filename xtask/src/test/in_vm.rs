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
use crate::{cmd, kernel};

// The 6.12 tier, every test with a load of its own, takes 17 to 36 minutes
// under TCG (each `enforcer run` verifies its programs for 25 to 65 s: these
// machines differ that much, CI's too); the limit only catches a hang.
const TIMEOUT: Duration = Duration::from_mins(55);
const SCRIPT: &str = "ENFORCER_BIN=/bin/enforcer ENFORCER_PROBE_BIN=/bin/enforcer-probe /bin/lsm-tests --test-threads=1";

/// 5.10 loads the compat build of the programs (no `bpf_loop`), whose
/// verification takes five to ten minutes per `enforcer run` (or daemon
/// start) under TCG, seconds on real hardware. Its tier runs one test per
/// part that build does differently, each with one load, as many as fit: every
/// write hook (owner changes judged in `inode_setattr`, the xattr hooks'
/// older signature), the floor and agent boundary under `enforcer run`
/// (tasks read by probe, tags by the cgroup's ancestor ids), reads of a
/// `read_deny` tree across a mount (the walk's slots claimed by atomic add,
/// two walks on one CPU) and connects (judged without `bpf_get_retval`).
/// libtest filters, separated by spaces.
const FIVE_TEN: &str = "every_write_like_operation_outside_is_denied_with_one_event \
     the_floor_and_the_agent_boundary_hold_under_enforcer_run \
     two_walks_sharing_a_cpu_never_finish_on_each_others_state \
     allowed_destinations_connect_and_everything_else_is_denied_with_one_event";

/// 6.1 and 7.3 load the same programs as 6.12, which runs every test: they
/// run the tests of what differs between kernels (hook signatures and
/// hooks that came later, the walks' reads of kernel structures, preemption
/// of programs on 7.x, the exec, socket and cgroup hooks, the tracepoint
/// that tags new cgroups), not the daemon's, the events' or the policy
/// file's logic, which is the same on every kernel. A full tier takes 25 to
/// 40 minutes, and four of them do not fit CI's 90 (`ENFORCER_VM_TESTS=`,
/// empty, runs every test on any kernel).
const KERNEL_PARTS: &str = "every_write_like_operation_outside_is_denied_with_one_event \
     read_deny_blocks_reads_even_through_symlinks_and_links \
     two_walks_sharing_a_cpu_never_finish_on_each_others_state \
     a_child_cgroup_created_after_tagging_is_enforced \
     unix_sockets_outside_the_policy_are_denied_however_they_are_reached \
     the_floor_and_the_agent_boundary_hold_under_enforcer_run \
     the_floor_and_the_agent_boundary_hold_in_a_daemon_tagged_cgroup \
     programs_run_only_from_exec_trees_and_never_fileless \
     allowed_destinations_connect_and_everything_else_is_denied_with_one_event \
     connections_and_datagrams_from_outside_need_a_listen_entry \
     selectors_tag_new_cgroups_in_the_kernel_before_their_first_process";

const SUBSETS: &[(&str, &str)] = &[("5.10", FIVE_TEN), ("6.1", KERNEL_PARTS), ("7.3", KERNEL_PARTS)];

/// Rough minutes a tier takes on the slower of these machines (measured:
/// 6.12 35, 5.10 31, 7.3 12, 6.1 7), for starting the longest first: the
/// worker that ends 5.10 takes 7.3 and the one that ends 6.12 takes 6.1, so
/// the two finish together.
fn expected_minutes(series: &str) -> u32 {
    match series {
        "6.12" => 35,
        "5.10" => 31,
        "7.3" => 12,
        _ => 7,
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
/// the example policies. Built once, before any VM starts: a build while
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
    Ok(files)
}

/// One tier; `prefix` goes before each console line it prints.
fn run(series: &str, files: &Result<Vec<(PathBuf, String)>, String>, prefix: String) -> Tier {
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
    // While developing: ENFORCER_VM_TESTS=NAME runs only the tests whose name
    // contains NAME (empty: every test), instead of the kernel's subset.
    let chosen = std::env::var("ENFORCER_VM_TESTS").ok();
    let subset = if chosen.is_some() { None } else { SUBSETS.iter().find(|(s, _)| *s == series).map(|(_, tests)| *tests) };
    let filter = chosen.unwrap_or_else(|| subset.unwrap_or_default().to_owned());
    if let Some(tests) = subset {
        println!("vm {series}: a subset (what differs on this kernel; 6.12 runs every test): {tests}");
    }
    let built = files.as_ref().map_err(|e| anyhow::anyhow!("building what the VM runs failed: {e}"));
    let (release, outcome) = match built.and_then(|files| run_tests(kernel, files.clone(), &filter, prefix)) {
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

/// Runs the `lsm` tests whose names `filter` (libtest filters) selects.
fn run_tests(kernel: kernel::Kernel, files: Vec<(PathBuf, String)>, filter: &str, prefix: String) -> Result<(Option<String>, Outcome)> {
    // ENFORCER_VM_ENV="NAME=VALUE ..." sets variables for the tests (e.g.
    // ENFORCER_PROGRAMS=compat, to try the compat build on a newer kernel).
    let env = std::env::var("ENFORCER_VM_ENV").unwrap_or_default();
    let spec = VmSpec {
        kernel,
        files,
        script: format!("{env} {SCRIPT} {filter}"),
        icount: false,
        timeout: TIMEOUT,
        echo: Some(prefix),
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
