//! `cargo xtask bench syscalls`: what the syscall filter, exec control and the built-in floor cost.
//!
//! Two loops of `enforcer-bench`: `getpid` (the raw syscall: allowed by `@default-agent`,
//! so the kernel's per-number seccomp cache answers it) and `fork-exec` (fork, execve
//! `/bin/true`, wait: the exec hooks and the filter's inheritance). Scenarios, each right
//! after a no-enforcer baseline in the same round: (a) untagged, while an `enforcer run`
//! holds another cgroup tagged (its BPF LSM programs are loaded; untagged processes carry
//! no filter); (b) tagged: inside `enforcer run` with `@default-agent`, `[exec]` trees and
//! the built-in floor. The host kernel runs natively (`--degraded`: the filter only, wall clock);
//! the VMs under `-icount` (every hook, instruction-exact).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::bench::{Samples, median};
use crate::bench_host_vm::{self, Bench, Targets};

#[derive(Debug, Parser)]
pub struct SyscallsOptions {
    /// Kernel series to measure in qemu; repeatable (default: 6.1, 6.12 and 7.3).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Measure on the host kernel only (no VMs).
    #[arg(long, conflicts_with = "skip_host")]
    host_only: bool,
    /// Measure in the VMs only.
    #[arg(long)]
    skip_host: bool,
    /// Interleaved rounds in the VMs (instruction counts: few are needed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Interleaved rounds on the host (wall clock: more are needed).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    host_rounds: u32,
    /// Timed `getpid` iterations per loop (`fork-exec` runs a fiftieth of them).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1000..))]
    iterations: u64,
}

const LOOPS: [(&str, &str); 2] = [("getpid", "getpid"), ("fork-exec", "fork+exec")];

/// (key, label, baseline).
const SCENARIOS: [(&str, &str, &str); 2] =
    [("a", "(a) untagged", "base-a"), ("b", "(b) tagged, filter + exec + built-in floor", "base-b")];

const SCRIPT: &str = r#"
# cargo xtask bench syscalls (xtask/src/bench_syscalls.rs)
N=@ITERATIONS@ NX=@EXEC_ITERATIONS@ ROUNDS=@ROUNDS@ BENCH=@BENCH@ ENFORCER=@ENFORCER@ DEGRADED="@DEGRADED@" CPU="@CPU@"
fail() { echo "BENCH-ERROR $*"; }
T=$(mktemp -d /tmp/enforcer-bench-sys.XXXXXX)
cat > $T/policy.toml <<EOF
name = "bench-syscalls"
[syscalls]
allow = ["@default-agent"]
[exec]
allow = ["/bin", "/usr", "/sbin", "$(dirname $BENCH)"]
EOF
# loops ROUND SCENARIO: one line per loop.
cat > $T/loops.sh <<EOF
out=\$($CPU $BENCH getpid x $N) && echo "BENCH round=\$1 scenario=\$2 \$out" || echo "BENCH-ERROR round=\$1 scenario=\$2 getpid failed"
out=\$($CPU $BENCH fork-exec /bin/true $NX) && echo "BENCH round=\$1 scenario=\$2 \$out" || echo "BENCH-ERROR round=\$1 scenario=\$2 fork-exec failed"
EOF
cat > $T/inside.sh <<EOF
echo ready > $T/ready
read x < $T/go
sh $T/loops.sh \$1 b
EOF
session() {
    rm -f $T/ready $T/go
    mkfifo $T/ready $T/go
    exec 3<>$T/ready 4<>$T/go
    $ENFORCER run $DEGRADED --policy $T/policy.toml --events /dev/null -- sh $T/inside.sh $1 2>$T/err &
    pid=$!
    if read -t 300 x <&3; then
        sh $T/loops.sh $1 a
    else
        fail "round=$1: the tagged shell never started: $(cat $T/err)"
    fi
    sh $T/loops.sh $1 base-b
    echo go >&4
    wait $pid || fail "round=$1: enforcer run exited $?: $(cat $T/err)"
    exec 3<&- 4<&-
}
sh $T/loops.sh 0 warm-up > /dev/null
r=1
while [ $r -le $ROUNDS ]; do
    echo "BENCH-PHASE round $r of $ROUNDS"
    sh $T/loops.sh $r base-a
    session $r
    r=$((r + 1))
done
rm -rf $T
echo "BENCH-DONE"
"#;

fn script(opts: &SyscallsOptions, rounds: u32, bench: &str, enforcer: &str, host: bool) -> String {
    SCRIPT
        .replace("@ITERATIONS@", &opts.iterations.to_string())
        .replace("@EXEC_ITERATIONS@", &(opts.iterations / 50).to_string())
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@BENCH@", bench)
        .replace("@ENFORCER@", enforcer)
        .replace("@DEGRADED@", if host { "--degraded" } else { "" })
        .replace("@CPU@", if host { "taskset -c 1" } else { "" })
}

pub fn run(opts: &SyscallsOptions) -> Result<ExitCode> {
    let script = |rounds, bench: &str, enforcer: &str, host| script(opts, rounds, bench, enforcer, host);
    let report = |mode: &str, output: &str, rounds, log: &str, host| {
        report(mode, if host { "ns" } else { "insns" }, output, rounds, log)
    };
    let bench =
        Bench { name: "syscalls", host_note: "wall clock; no BPF LSM: filter only", script: &script, report: &report };
    let targets = Targets {
        kernels: &opts.kernels,
        host_only: opts.host_only,
        skip_host: opts.skip_host,
        rounds: opts.rounds,
        host_rounds: opts.host_rounds,
    };
    bench_host_vm::run(&bench, &targets)
}

/// Median over rounds of scenario - baseline of the same round, per op.
fn delta(samples: &Samples, key: &str, baseline: &str, op: &str) -> Option<f64> {
    let base: Vec<(u32, f64)> = samples.of(baseline, op).map(|s| (s.round, s.ns_per_op)).collect();
    let mut deltas: Vec<f64> = samples
        .of(key, op)
        .filter_map(|s| base.iter().find(|(r, _)| *r == s.round).map(|(_, b)| s.ns_per_op - b))
        .collect();
    median(&mut deltas)
}

/// The table of one kernel; `false` when the measurements are incomplete.
fn report(mode: &str, unit: &str, output: &str, rounds: u32, log: &str) -> (String, bool) {
    let samples = Samples::parse(output);
    let mut out = String::new();
    let mut problems: Vec<String> = Vec::new();
    let _ = writeln!(out, "{mode}");
    let _ = writeln!(
        out,
        "ratio (and difference, {unit}/op) to the no-enforcer baseline of the same round; median of {rounds} rounds"
    );
    let _ = writeln!(out, "{:<36}{:>22}{:>22}   target", "scenario", LOOPS[0].1, LOOPS[1].1);
    let mut line = format!("{:<36}", format!("baseline, {unit}/op"));
    for (op, _) in LOOPS {
        let mut values: Vec<f64> =
            ["base-a", "base-b"].iter().flat_map(|k| samples.of(k, op)).map(|s| s.ns_per_op).collect();
        let _ = match median(&mut values) {
            Some(v) => write!(line, "{v:>22.1}"),
            None => write!(line, "{:>22}", "-"),
        };
    }
    let _ = writeln!(out, "{line}");
    for (key, label, baseline) in SCENARIOS {
        let mut line = format!("{label:<36}");
        let mut verdicts = Vec::new();
        for (op, _) in LOOPS {
            let (Some(cell), Some(delta)) = (samples.ratio(key, baseline, op), delta(&samples, key, baseline, op))
            else {
                let _ = write!(line, "{:>22}", "-");
                problems.push(format!("no samples for {key} {op}"));
                continue;
            };
            let _ = write!(line, "{:>22}", format!("{:.3} ({delta:+.1})", cell.ratio));
            let (what, met) = match (key, op) {
                ("a", _) => (format!("{op} 1.00"), (cell.ratio * 100.0).round() <= 100.0),
                ("b", "getpid") => (format!("getpid +50 {unit}"), delta <= 50.0),
                _ => (format!("{op} <= 1.03"), (cell.ratio * 1000.0).round() <= 1030.0),
            };
            verdicts.push(format!("{what} {}", if met { "PASS" } else { "MISS" }));
            for sample in samples.of(key, op).filter(|s| s.failures > 0) {
                problems.push(format!(
                    "round {} {key} {op}: {} failures, first errno {}",
                    sample.round, sample.failures, sample.first_errno
                ));
            }
        }
        let _ = writeln!(out, "{line}   {}", verdicts.join(", "));
    }
    for line in output.lines().filter(|l| l.contains("BENCH-ERROR")) {
        problems.push(line.trim().to_string());
    }
    if !output.contains("BENCH-DONE") {
        problems.push("the script did not finish (see the log)".to_string());
    }
    let _ = writeln!(out, "raw lines: {log}");
    for problem in &problems {
        let _ = writeln!(out, "!! {problem}");
    }
    (out, problems.is_empty())
}
