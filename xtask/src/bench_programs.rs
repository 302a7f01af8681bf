//! `cargo xtask bench programs`: instructions per call of each BPF program on the
//! file hot path, in the BPF LSM kernels under qemu's `-icount`.
//!
//! With `kernel.bpf_stats_enabled=1` the kernel counts, per program, the time spent in
//! it (`run_time_ns`) and its runs (`run_cnt`), shown in the fdinfo of the loader's
//! program descriptors. Under icount one guest ns is one instruction, so the quotient
//! of their growth over a loop of `enforcer-bench open` is the exact cost of a call
//! (stats upkeep included: the empty programs of `enforcer bench-empty` show it). Where
//! `bench files` says how much the enforcer costs an `open`, this says which program
//! costs it; build variants that return early to split a program further.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use crate::kernel;
use crate::vm::{self, VmSpec};

#[derive(Debug, Parser)]
pub struct ProgramsOptions {
    /// Kernel series to measure; repeatable (default: 6.1, 6.12 and 7.3).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Opens per measured loop.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    iterations: u64,
}

const TIMEOUT: Duration = Duration::from_mins(20);

/// The guest script: per scenario, program statistics before and after one open loop,
/// read from outside the tagged cgroup (its tasks may not read the enforcer's fdinfo).
const SCRIPT: &str = r#"
N=@ITERATIONS@ W=/tmp/rules/r09999
echo 1 > /proc/sys/kernel/bpf_stats_enabled
echo 0 > /proc/sys/kernel/randomize_va_space
mkdir -p /tmp/rules /root/.aws
awk 'BEGIN { for (i = 9900; i < 10000; i++) printf "/tmp/rules/r%05d\n", i }' | xargs mkdir
head -c 4096 /dev/zero > $W/file
printf 'name = "b1"\n[files]\nwrite = ["%s"]\n' $W > /tmp/b1.toml
printf 'name = "brd"\n[files]\nwrite = ["%s"]\nread_deny = ["/root/.aws"]\n' $W > /tmp/brd.toml
mkfifo /tmp/ready /tmp/go
# snap FILE: "prog_id run_time_ns run_cnt verified_insns" of every program the enforcer holds.
snap() {
    for pid in $(pidof enforcer); do
        for f in /proc/$pid/fdinfo/*; do
            awk '/^prog_id/ {id = $2} /^run_time_ns/ {t = $2} /^run_cnt/ {c = $2} /^verified_insns/ {v = $2}
                 END { if (id && c != "") print id, t, c, v }' $f
        done
    done | sort -u -n > $1
}
# measure LABEL WHERE COMMAND...: one open loop, tagged (inside COMMAND) or outside it.
measure() {
    label=$1 where=$2
    shift 2
    "$@" -- sh -c 'echo r > /tmp/ready; read x < /tmp/go
        [ '$where' = inside ] && /bin/enforcer-bench open '$W'/file '$N' > /dev/null
        echo r > /tmp/ready; read x < /tmp/go' 2> /dev/null &
    read x < /tmp/ready
    sleep 1
    snap /tmp/before
    echo go > /tmp/go
    [ $where = outside ] && /bin/enforcer-bench open $W/file $N > /dev/null
    read x < /tmp/ready
    snap /tmp/after
    echo go > /tmp/go
    wait
    awk -v label=$label -v n=$N 'NR == FNR { t[$1] = $2; c[$1] = $3; next }
        { runs = $3 - c[$1]; if (runs >= n) printf "PROGRAM scenario=%s prog_id=%s runs=%d insns_per_run=%.1f verified=%s\n", label, $1, runs, ($2 - t[$1]) / runs, $4 }' \
        /tmp/before /tmp/after
}
sleep 3
/bin/enforcer-bench open $W/file $N > /dev/null
measure empty inside enforcer bench-empty
measure untagged outside enforcer run --policy /tmp/b1.toml --events /dev/null
measure tagged inside enforcer run --policy /tmp/b1.toml --events /dev/null
measure read_deny inside enforcer run --policy /tmp/brd.toml --events /dev/null
echo PROGRAMS-DONE
"#;

const SCENARIOS: [(&str, &str); 4] = [
    ("empty", "empty programs (stats upkeep)"),
    ("untagged", "untagged, root cgroup"),
    ("tagged", "tagged, 1 write rule"),
    ("read_deny", "tagged, 1 rule + read_deny"),
];

pub fn run(opts: &ProgramsOptions) -> Result<ExitCode> {
    let series = kernel::chosen(&opts.kernels);
    let files = crate::bench::guest_binaries(&series)?;
    let mut ok = true;
    for s in &series {
        println!("\n== bench programs: kernel {s} (icount) ==");
        let spec = VmSpec {
            kernel: kernel::cached(s)?,
            files: files.clone(),
            script: SCRIPT.replace("@ITERATIONS@", &opts.iterations.to_string()),
            icount: true,
            timeout: TIMEOUT,
            echo: None,
            exec_log: None,
            disk: None,
        };
        let run = vm::run(&spec)?;
        println!(
            "kernel {}: instructions per call of each program that ran on every open ({} opens)",
            run.kernel_release.as_deref().unwrap_or(s),
            opts.iterations
        );
        for (key, label) in SCENARIOS {
            let lines: Vec<&str> =
                run.output.lines().filter(|l| l.contains(&format!("PROGRAM scenario={key} "))).collect();
            if lines.is_empty() {
                println!("  {label:<32} no program ran on every open");
            }
            for line in lines {
                let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap_or("?");
                println!(
                    "  {label:<32} program {:>4}: {:>8} instructions per call (verifier: {} instructions)",
                    field("prog_id="),
                    field("insns_per_run="),
                    field("verified=")
                );
            }
        }
        if !run.output.contains("PROGRAMS-DONE") {
            ok = false;
            println!("!! the guest script did not finish (timed out: {})", run.timed_out);
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
