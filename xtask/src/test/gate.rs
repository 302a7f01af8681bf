//! Tier `gate`: the cost of the file hot path, asserted. Under qemu's `-icount` the
//! guest clock counts instructions, so one short round of `cargo xtask bench files`
//! (open+close only, one kernel) gives exact figures: a change that makes the
//! untagged screen, the tagged walk or the `read_deny` walk dearer than its bound
//! fails the run, with the figures.

use std::time::Duration;

use anyhow::Result;

use super::host::build_binaries;
use super::{Outcome, Tier};
use crate::bench::{self, Samples};
use crate::libtest::Summary;
use crate::vm::{self, VmSpec};
use crate::{cmd, kernel};

const SERIES: &str = "6.12";
const ITERATIONS: u64 = 4_000;
/// Boot, 10 000 mkdirs, five enforcer loads under icount: 7 to 11 minutes here
/// alone, 20 and more beside two other VMs (a benchmark run meanwhile). The
/// figures count instructions, so only this limit feels a slow host.
const TIMEOUT: Duration = Duration::from_mins(40);
/// Minutes it takes here beside another VM (to schedule the VMs).
pub const MINUTES: u32 = 13;

/// Points above the empty programs (bench scenario (e)) each gated scenario may cost on `SERIES`, and the loop
/// measured (`open`: open for writing + close; `open-read`: the same read-only).
/// Untagged in the root cgroup and at level 2, tagged with 10 000 rules, and a read
/// outside every tree (`brdr`) are issue 15's targets (+0.5, +0.5, +4, +8; they
/// measure +0.20 to +0.26, +0.48 to +0.51, +3.90 to +3.94, +6.93 to +6.94 with
/// Debian's 6.12.95, whose baseline put the untagged figures 0.05 above the point
/// release before it with the same programs).
/// Setup fetches the suite's newest point release (the mirror keeps no other), so
/// the bounds at a target leave 0.1 for the next one: tagged 4.1; a figure past its
/// target shows as `MISS` in `cargo xtask bench files`. Level 2 leaves 0.2 (0.7):
/// with the same programs and kernel it measured +0.48, +0.50 and +0.51 alone and
/// +0.58 at the end of a full run (2026-12-06), a spread 0.6 left 0.02 of. The others are
/// today's figures with a little room (level 3 +0.69, its target +0.5 not met; `brd`
/// +3.81 to +3.89): lower them as the hot path gets cheaper. Past bounds: `brdr` 14.5
/// to 8.0 when the walk above a mount began typing its pointers with
/// `bpf_rdonly_cast` (plain loads where five probe reads cost about 500
/// instructions) and an open began walking more levels inline (no slot, copy or
/// loop for a file in a directory of a mount below `/`): +13.89 to +6.93.
/// Earlier: `b10k` 5.4 to 5.0 and `brd` 5.6 to 5.3
/// when an open's walk began at the file's directory and kept its state off the
/// stack for its first two levels; 5.0 to 4.0, 5.3 to 4.1, level 2 0.8 to 0.5 and level 3 1.0 to 0.9
/// when an open read its inode from the file (plain loads, where the dentry's cost
/// a fault guard each), the table probes compared whole words, and the screen
/// tested a level by its bit and both bloom filters with one test.
///
/// `brd` (a write in a write tree, with a `read_deny` tree elsewhere) walked to the top
/// until the walk began ending at a write root no `read_deny` tree holds
/// (`FILE_NO_READ_DENY_ABOVE`): +15.6 to +5.0, bound 16.5 to 5.6. The walk to the top
/// is now `brdr`'s (a read outside every tree, +15.5), with the bound `brd` had: it was
/// raised from 18.0 once, when the walk above a mount began claiming a per-CPU slot
/// (safe under preemption, and what lets the programs load on 7.x; about 70
/// instructions per walk that crosses a mount), lowered to 16.5 when that walk's
/// probe reads were batched and the pending climb began skipping filesystems without a
/// pending directory (+18.3 to +15.6), and to 14.5 with the changes above.
const BOUNDS: &[(&str, &str, f64)] = &[
    ("a", "open", 0.5),
    ("a2", "open", 0.7),
    ("a3", "open", 0.9),
    ("b10k", "open", 4.1),
    ("brd", "open", 4.1),
    ("brdr", "open-read", 8.0),
];

pub fn run() -> Tier {
    println!("\n== tier gate (bench files, open+close, kernel {SERIES}, icount) ==");
    let outcome =
        gate().unwrap_or_else(|e| Outcome::Ran { summary: Summary::default(), problem: Some(format!("{e:#}")) });
    Tier { name: format!("gate {SERIES}"), outcome }
}

fn gate() -> Result<Outcome> {
    let bins = build_binaries()?;
    let spec = VmSpec {
        kernel: kernel::cached(SERIES)?,
        files: vec![(bins.enforcer, "/bin/enforcer".to_string()), (bins.bench, "/bin/enforcer-bench".to_string())],
        script: bench::files_script(1, ITERATIONS, &["open", "open-read"], &["b10k", "brd"]),
        icount: true,
        timeout: TIMEOUT,
        echo: None,
        exec_log: None,
        disk: None,
    };
    let run = vm::run(&spec)?;
    cmd::save_bench_output(&format!("gate-{SERIES}.log"), &run.output);
    let samples = Samples::parse(&run.output);
    // The raw figures, so a failure in CI can be told from a noisy (e).
    for line in run.output.lines().filter(|l| l.contains("BENCH round=")) {
        println!("gate: {}", line.trim());
    }
    let mut summary = Summary { results: 1, ..Summary::default() };
    let mut problems: Vec<String> =
        run.output.lines().filter(|l| l.contains("BENCH-ERROR")).map(|l| l.trim().to_string()).collect();
    if !run.output.contains("BENCH-DONE") {
        problems.push(format!(
            "the guest script did not finish in {:.0}s (timed out: {})",
            run.elapsed.as_secs_f64(),
            run.timed_out
        ));
    }
    for (key, op, bound) in BOUNDS {
        let scenario = bench::SCENARIOS.iter().find(|s| s.key == *key).expect("gated scenarios exist");
        bench::check_errors(&samples, scenario, &mut problems);
        let empty = samples.ratio("e", "base-e", op);
        let points = empty.zip(samples.ratio(key, scenario.baseline, op)).map(|(f, s)| 100.0 * (s.ratio - f.ratio));
        let name = format!("{} ({op})", scenario.label.trim());
        match points {
            Some(points) if points <= *bound => {
                println!("gate: {name}: {points:+.2} points above the empty programs (bound {bound:.1}): ok");
                summary.passed += 1;
            }
            Some(points) => {
                println!(
                    "gate: {name}: {points:+.2} points above the empty programs, more than its bound {bound:.1}: FAILED"
                );
                summary.failed += 1;
                summary.failed_tests.push(format!("{name} {points:+.2} > {bound:.1}"));
            }
            None => {
                println!("gate: {name}: not measured: FAILED");
                summary.failed += 1;
                summary.failed_tests.push(format!("{name} not measured"));
            }
        }
    }
    println!("gate: run took {:.0}s (boot {:.1}s)", run.elapsed.as_secs_f64(), run.boot_time.as_secs_f64());
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    Ok(Outcome::Ran { summary, problem })
}
