//! `cargo xtask bench files`: what the enforcer costs file syscalls, measured inside the
//! BPF LSM kernels under qemu with `-icount shift=0,sleep=off` (the guest clock counts
//! instructions, so ratios repeat to about 0.1%).
//!
//! Per kernel, one boot: the guest script (`FILES_SCRIPT`, busybox sh) creates 10 000
//! write-tree roots and the policies on the guest's tmpfs, warms up, then runs ROUNDS
//! rounds; in each, every scenario runs right after a no-enforcer baseline of the same
//! loops (`enforcer-bench`, one line per loop). The host parses those lines and prints,
//! per scenario and loop, the median over rounds of scenario/baseline.
//!
//! Scenarios: (e) empty BPF LSM programs on the enforcer's hooks (`enforcer
//! bench-empty`: what any BPF LSM program costs, the yardstick the others
//! are counted from, in points above (e)); (a) enforcer loaded with another cgroup tagged, bench untagged, in the
//! root cgroup, in a cgroup as deep as the tagged one and one level deeper (there the
//! screen tests the cgroup or its parent against the bloom filter); (b) bench tagged, operations allowed, 1 / 100 /
//! 10 000 `files.write` rules; (b') 1 write rule plus a `read_deny` tree elsewhere (the
//! walk ends at the write root, which no `read_deny` tree holds; before
//! `FILE_NO_READ_DENY_ABOVE` it went on to the top, as a read outside every write tree
//! still does), and (b'') the same policy reading (`O_RDONLY`) a file outside every tree,
//! whose walk goes to the top; (c) tagged, open for write denied (EPERM and an event each
//! time, events to /dev/null). (a), (b) with one rule and (c) share one `enforcer run`:
//! (a) runs outside it while the tagged shell waits on a fifo, then the tagged shell runs
//! (b) and (c).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::vm::{self, VmSpec};
use crate::{cargo, cmd, kernel, setup};

/// One kernel's run: boot, 10 000 mkdirs, and per round five enforcer loads (one with
/// 10 000 rules) under icount; generous, since icount is several times slower than TCG.
const TIMEOUT: Duration = Duration::from_mins(45);

#[derive(Debug, Parser)]
pub struct Options {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// File syscalls (open+close, write, stat, read) under each scenario, as ratios to a
    /// no-enforcer baseline measured in the same boot.
    Files(FilesOptions),
    /// TCP connect+close and UDP sendto, natively on the host kernel and in the VMs, as
    /// ratios to a no-enforcer baseline measured in the same run.
    Net(crate::bench_net::NetOptions),
    /// A getpid loop and a fork+exec loop under the syscall filter, exec control and the
    /// built-in floor, natively on the host (filter only) and in the VMs, as ratios to a
    /// no-enforcer baseline measured in the same run.
    Syscalls(crate::bench_syscalls::SyscallsOptions),
    /// Instructions per call of each BPF program on the file hot path (untagged, tagged,
    /// `read_deny`), from the kernel's program statistics under icount.
    Programs(crate::bench_programs::ProgramsOptions),
    /// The instructions one `open` runs in each BPF program and trampoline, block by
    /// block (qemu's log of the executed code; one kernel, not icount).
    Path(crate::bench_path::PathOptions),
    /// The daemon on the host kernel: tag and policy file write to the first changed
    /// verdict, a denial storm's delivery, memory with many tagged cgroups.
    Daemon(crate::bench_daemon::DaemonOptions),
    /// The workload tier's coding session (clone, pip, npm, build, test, push) in the
    /// Debian root filesystem under icount, per phase, enforced against no enforcer.
    Workload(crate::bench_workload::WorkloadOptions),
}

#[derive(Debug, Parser)]
struct FilesOptions {
    /// Kernel series to measure; repeatable (default: 6.1, 6.12 and 7.3).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Interleaved rounds (baseline, scenario) per scenario; medians are taken over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Timed iterations per loop (each loop first runs a tenth of them untimed).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    iterations: u64,
    /// Do not show the guest's console while it runs (the raw lines are still saved).
    #[arg(long)]
    quiet: bool,
}

/// The loops of `enforcer-bench`, in table order, with their column titles.
const LOOPS: &[(&str, &str)] = &[
    ("open", "open+close"),
    ("write", "write 64B"),
    ("stat", "stat"),
    ("read", "read 64B"),
    ("open-read", "open r/o"),
];

/// Files that live in a write tree, and the one outside every write tree.
const FILE: &str = "/tmp/rules/r09999/file";
const DENIED: &str = "/tmp/outside/file";

pub(crate) struct Scenario {
    /// `scenario=` of the guest's lines.
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    /// `scenario=` of the baseline measured right before it, in the same round.
    pub(crate) baseline: &'static str,
    /// Loops that mean something here (the others print n/a).
    loops: &'static [&'static str],
    /// At most this many points above the empty programs (e), on every loop.
    target: Option<f64>,
    /// Every open is expected to fail with EPERM.
    denied: bool,
}

const ALL: &[&str] = &["open", "write", "stat", "read", "open-read"];

pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "e",
        label: "(e)  empty LSM programs",
        baseline: "base-e",
        loops: ALL,
        target: None,
        denied: false,
    },
    Scenario {
        key: "a",
        label: "(a)  untagged, root cgroup",
        baseline: "base-b1",
        loops: ALL,
        target: Some(0.5),
        denied: false,
    },
    Scenario {
        key: "a2",
        label: "(a)  untagged, level-2 cgroup",
        baseline: "base-a2",
        loops: ALL,
        target: Some(0.5),
        denied: false,
    },
    Scenario {
        key: "a3",
        label: "(a)  untagged, level-3 cgroup",
        baseline: "base-a3",
        loops: ALL,
        target: Some(0.5),
        denied: false,
    },
    Scenario {
        key: "b1",
        label: "(b)  tagged, 1 write rule",
        baseline: "base-b1",
        loops: ALL,
        target: None,
        denied: false,
    },
    Scenario {
        key: "b100",
        label: "(b)  tagged, 100 write rules",
        baseline: "base-b100",
        loops: ALL,
        target: None,
        denied: false,
    },
    Scenario {
        key: "b10k",
        label: "(b)  tagged, 10000 write rules",
        baseline: "base-b10k",
        loops: ALL,
        target: Some(4.0),
        denied: false,
    },
    Scenario {
        key: "brd",
        label: "(b') tagged, 1 rule + read_deny",
        baseline: "base-brd",
        loops: ALL,
        target: None,
        denied: false,
    },
    Scenario {
        key: "brdr",
        label: "(b'') same, read outside trees",
        baseline: "base-brdr",
        loops: &["open-read"],
        target: Some(8.0),
        denied: false,
    },
    Scenario {
        key: "c",
        label: "(c)  tagged, open denied",
        baseline: "base-c",
        loops: &["open"],
        target: None,
        denied: true,
    },
];

/// The guest script; `files_script` fills in the `@...@` parameters.
const FILES_SCRIPT: &str = r#"
# cargo xtask bench files (xtask/src/bench.rs): runs in the VM, busybox sh.
export N=@ITERATIONS@ W=/tmp/rules/r09999
export FILE=$W/file DENIED=/tmp/outside/file LOOPS="@LOOPS@"
ROUNDS=@ROUNDS@
fail() { echo "BENCH-ERROR $*"; }

echo "BENCH-PHASE setup: 10000 write-tree roots and the policies on tmpfs"
mkdir -p /tmp/rules /tmp/outside
awk 'BEGIN { for (i = 0; i < 10000; i++) printf "/tmp/rules/r%05d\n", i }' | xargs mkdir
head -c 4096 /dev/zero > $FILE
head -c 4096 /dev/zero > $DENIED

# policy NAME FIRST LAST [READ_DENY]: write trees /tmp/rules/r<FIRST>..r<LAST>.
policy() {
    {
        cat <<EOF
name = "bench-$1"
mode = "enforce"
[files]
EOF
        awk -v first=$2 -v last=$3 'BEGIN {
            print "write = ["
            for (i = first; i <= last; i++) printf "  \"/tmp/rules/r%05d\",\n", i
            print "]"
        }'
        if [ -n "$4" ]; then echo "read_deny = [\"$4\"]"; fi
    } > /tmp/policy-$1.toml
}
policy b1 9999 9999
policy b100 9900 9999
policy b10k 0 9999
policy brd 9999 9999 /root/.aws
enforcer policy check /tmp/policy-brd.toml || fail "policy brd"

# loops.sh ROUND SCENARIO PATH LOOP...: one timed run per loop, one line each. It idles
# a second first (free with sleep=off), so work the kernel deferred after attaching or
# detaching programs (RCU, workqueues) is done before the clock runs.
cat > /tmp/loops.sh <<'EOF'
r=$1 s=$2 p=$3
shift 3
sleep 1
for l in "$@"; do
    if out=$(/bin/enforcer-bench $l $p $N); then
        echo "BENCH round=$r scenario=$s $out"
    else
        echo "BENCH-ERROR round=$r scenario=$s loop=$l: enforcer-bench failed"
    fi
done
EOF
# The tagged shell of the shared session: waits while (a) runs outside, then (b), (c).
cat > /tmp/inside-b1.sh <<'EOF'
echo ready > $W/ready
read x < $W/go
sh /tmp/loops.sh $1 b1 $FILE $LOOPS
sh /tmp/loops.sh $1 c $DENIED open
EOF

# in_cgroup DIR SCRIPT ARGS...: runs a script in cgroup /bench/DIR: `untagged` is at the
# depth of the tagged one (/enforcer/run-PID), as a service would be (system.slice/x);
# `untagged/deeper` one below, as a login session would be (user.slice/user-0/session-1).
mkdir -p /sys/fs/cgroup/bench/untagged/deeper
in_cgroup() {
    dir=$1
    shift
    sh -c 'echo $$ > /sys/fs/cgroup/bench/'$dir'/cgroup.procs && exec sh "$@"' sh "$@"
}

session_b1() {
    rm -f $W/ready $W/go
    mkfifo $W/ready $W/go
    exec 3<>$W/ready 4<>$W/go
    enforcer run --policy /tmp/policy-b1.toml --events /dev/null -- sh /tmp/inside-b1.sh $1 &
    pid=$!
    if read -t 300 x <&3; then
        sh /tmp/loops.sh $1 a $FILE $LOOPS
        in_cgroup untagged /tmp/loops.sh $1 a2 $FILE $LOOPS
        in_cgroup untagged/deeper /tmp/loops.sh $1 a3 $FILE $LOOPS
    else
        fail "round=$1: the tagged shell of (a), (b) 1 rule, (c) never started"
    fi
    echo go >&4
    wait $pid || fail "round=$1: enforcer run (policy b1) exited $?"
    exec 3<&- 4<&-
}

# Same addresses in every run: where ASLR puts buffers changes the instructions a copy
# takes (about 0.5% on the 64-byte loops).
echo 0 > /proc/sys/kernel/randomize_va_space
# Warm up: the first seconds after boot run about 2x slow (idle them away: with
# sleep=off an idle guest costs no host time), then repeat the open loop until two runs
# in a row agree within 0.5%, then run every loop once.
sleep 5
echo "BENCH-PHASE warm-up (cgroup controllers enabled at the root: '$(cat /sys/fs/cgroup/cgroup.subtree_control)')"
prev=0 i=0
while [ $i -lt 40 ]; do
    cur=$(/bin/enforcer-bench open $FILE $N | sed 's/.*ns_per_op=\([0-9.]*\).*/\1/')
    awk -v a=$prev -v b=$cur 'BEGIN { d = (a - b) / b; exit !(d < 0.005 && d > -0.005) }' && break
    prev=$cur i=$((i + 1))
done
echo "BENCH-PHASE warmed up after $((i + 1)) open loops ($(cut -d' ' -f1 /proc/uptime)s guest uptime)"
sh /tmp/loops.sh 0 warm-up $FILE $LOOPS > /dev/null
sh /tmp/loops.sh 0 warm-up $DENIED open > /dev/null

r=1
while [ $r -le $ROUNDS ]; do
    echo "BENCH-PHASE round $r of $ROUNDS ($(cut -d' ' -f1 /proc/uptime)s guest uptime)"
    sh /tmp/loops.sh $r base-e $FILE $LOOPS
    enforcer bench-empty -- sh /tmp/loops.sh $r e $FILE $LOOPS || fail "round=$r: enforcer bench-empty exited $?"
    sh /tmp/loops.sh $r base-b1 $FILE $LOOPS
    in_cgroup untagged /tmp/loops.sh $r base-a2 $FILE $LOOPS
    in_cgroup untagged/deeper /tmp/loops.sh $r base-a3 $FILE $LOOPS
    sh /tmp/loops.sh $r base-c $DENIED open
    session_b1 $r
    for p in @POLICIES@; do
        sh /tmp/loops.sh $r base-$p $FILE $LOOPS
        enforcer run --policy /tmp/policy-$p.toml --events /dev/null -- sh /tmp/loops.sh $r $p $FILE $LOOPS \
            || fail "round=$r: enforcer run (policy $p) exited $?"
    done
    # (b''): a read outside every write tree walks to the top.
    sh /tmp/loops.sh $r base-brdr $DENIED open-read
    enforcer run --policy /tmp/policy-brd.toml --events /dev/null -- sh /tmp/loops.sh $r brdr $DENIED open-read \
        || fail "round=$r: enforcer run (policy brd, reads) exited $?"
    r=$((r + 1))
done
echo "BENCH-DONE ($(cut -d' ' -f1 /proc/uptime)s guest uptime)"
"#;

/// The guest script: `rounds` rounds of `iterations` per loop, the loops named in
/// `loops`, and the policies in `policies` (besides `b1`, which (a) and (c) share).
pub(crate) fn files_script(rounds: u32, iterations: u64, loops: &[&str], policies: &[&str]) -> String {
    FILES_SCRIPT
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@ITERATIONS@", &iterations.to_string())
        .replace("@LOOPS@", &loops.join(" "))
        .replace("@POLICIES@", &policies.join(" "))
}

pub fn run(opts: &Options) -> Result<ExitCode> {
    match &opts.what {
        What::Files(files) => run_files(files),
        What::Net(net) => crate::bench_net::run(net),
        What::Syscalls(syscalls) => crate::bench_syscalls::run(syscalls),
        What::Programs(programs) => crate::bench_programs::run(programs),
        What::Path(path) => crate::bench_path::run(path),
        What::Daemon(daemon) => crate::bench_daemon::run(daemon),
        What::Workload(workload) => crate::bench_workload::run(workload),
    }
}

/// `enforcer` and `enforcer-bench`, built for release: what every benchmark runs.
pub(crate) fn release_binaries() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let built = cargo::build(&[
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "enforcer-tests",
        "--bin",
        "enforcer",
        "--bin",
        "enforcer-bench",
    ])?;
    Ok((cargo::executable(&built, "bin", "enforcer")?, cargo::executable(&built, "bin", "enforcer-bench")?))
}

/// Sets up the kernels of `series`, builds `enforcer` and `enforcer-bench` (release)
/// and names them as the guest sees them.
pub(crate) fn guest_binaries(series: &[String]) -> Result<Vec<(std::path::PathBuf, String)>> {
    setup::ensure(true, series)?;
    let (enforcer, bench) = release_binaries()?;
    Ok(vec![(enforcer, "/bin/enforcer".to_string()), (bench, "/bin/enforcer-bench".to_string())])
}

fn run_files(opts: &FilesOptions) -> Result<ExitCode> {
    let series = kernel::chosen(&opts.kernels);
    let files = guest_binaries(&series)?;
    let loops: Vec<&str> = LOOPS.iter().map(|(op, _)| *op).collect();
    let script = files_script(opts.rounds, opts.iterations, &loops, &["b100", "b10k", "brd"]);
    let mut reports = Vec::new();
    let mut ok = true;
    for s in &series {
        println!("\n== bench files: kernel {s} (icount; this takes several minutes) ==");
        let spec = VmSpec {
            kernel: kernel::cached(s)?,
            files: files.clone(),
            script: script.clone(),
            icount: true,
            timeout: TIMEOUT,
            echo: (!opts.quiet).then(String::new),
            exec_log: None,
            disk: None,
        };
        let report = match vm::run(&spec) {
            Ok(run) => {
                let log = cmd::save_bench_output(&format!("files-{s}.log"), &run.output);
                let (report, complete) = report(s, &run, opts, &log.display().to_string());
                ok &= complete;
                report
            }
            Err(e) => {
                ok = false;
                format!("kernel {s}: could not run: {e:#}\n")
            }
        };
        println!("\n{report}");
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("\n== bench files: all kernels ==\n");
        for report in &reports {
            println!("{report}");
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One `BENCH ...` line of the guest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) round: u32,
    scenario: String,
    op: String,
    pub(crate) ns_per_op: f64,
    pub(crate) failures: u64,
    pub(crate) first_errno: i32,
}

fn parse_line(line: &str) -> Option<Sample> {
    let rest = line.split("BENCH ").nth(1)?;
    let mut words = rest.split_whitespace();
    let field = |word: Option<&str>, key: &str| -> Option<String> {
        Some(word?.strip_prefix(key)?.strip_prefix('=')?.to_string())
    };
    let round = field(words.next(), "round")?.parse().ok()?;
    let scenario = field(words.next(), "scenario")?;
    let op = words.next()?.to_string();
    let ns_per_op = field(words.next(), "ns_per_op")?.parse().ok()?;
    let failures = field(words.next(), "failures")?.parse().ok()?;
    let first_errno = field(words.next(), "first_errno")?.parse().ok()?;
    Some(Sample { round, scenario, op, ns_per_op, failures, first_errno })
}

pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { f64::midpoint(values[mid - 1], values[mid]) })
}

/// What the samples say about one scenario and loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cell {
    /// Median over rounds of scenario / baseline of the same round.
    pub(crate) ratio: f64,
    /// (max - min) / median of those ratios.
    spread: f64,
    rounds: usize,
}

/// Samples keyed by (scenario, loop, round).
pub(crate) struct Samples(BTreeMap<(String, String, u32), Sample>);

impl Samples {
    pub(crate) fn parse(output: &str) -> Self {
        Self(
            output
                .lines()
                .filter_map(parse_line)
                .filter(|s| s.round > 0)
                .map(|s| ((s.scenario.clone(), s.op.clone(), s.round), s))
                .collect(),
        )
    }

    pub(crate) fn of<'a>(&'a self, scenario: &'a str, op: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.0.values().filter(move |s| s.scenario == scenario && s.op == op)
    }

    fn cell(&self, scenario: &Scenario, op: &str) -> Option<Cell> {
        self.ratio(scenario.key, scenario.baseline, op)
    }

    /// Scenario `key` against `baseline`, loop `op`, over rounds.
    pub(crate) fn ratio(&self, key: &str, baseline: &str, op: &str) -> Option<Cell> {
        let mut ratios: Vec<f64> = self
            .of(key, op)
            .filter_map(|s| {
                let key = (baseline.to_string(), op.to_string(), s.round);
                let base = self.0.get(&key)?;
                Some(s.ns_per_op / base.ns_per_op)
            })
            .collect();
        let rounds = ratios.len();
        let ratio = median(&mut ratios)?;
        let spread = (ratios[rounds - 1] - ratios[0]) / ratio;
        Some(Cell { ratio, spread, rounds })
    }

    /// Median ns/op of the baselines of the scenarios in `keys`.
    fn baseline_ns(&self, keys: &[&str], op: &str) -> Option<f64> {
        let mut values: Vec<f64> = keys.iter().flat_map(|k| self.of(k, op)).map(|s| s.ns_per_op).collect();
        median(&mut values)
    }
}

/// The table of one kernel; `false` when the measurements are incomplete or wrong.
fn report(series: &str, run: &vm::VmRun, opts: &FilesOptions, log: &str) -> (String, bool) {
    let samples = Samples::parse(&run.output);
    let release = run.kernel_release.as_deref().unwrap_or("?");
    let mut out = String::new();
    let mut problems = Vec::new();
    let _ = writeln!(
        out,
        "kernel {release} ({series}): mode icount (qemu -icount shift=0,sleep=off, TCG, 1 vCPU: \
         1 guest ns = 1 instruction)"
    );
    let _ = writeln!(
        out,
        "ratio = ns/op / no-enforcer baseline of the same round; median of {} interleaved \
         rounds, {} iterations per loop",
        opts.rounds, opts.iterations
    );
    let _ = writeln!(out, "file {FILE} (tmpfs; the denied open: {DENIED}); points = 100 x (ratio - ratio of (e))");
    let _ = writeln!(out);

    let mut header = format!("{:<33}", "scenario");
    for (_, title) in LOOPS {
        let _ = write!(header, "{title:>11}");
    }
    let _ = write!(header, "   points above (e) (o/w/s/r/or) target");
    let _ = writeln!(out, "{}", header.trim_end());

    let mut line = format!("{:<33}", "baseline, ns/op");
    let file_bases: Vec<&str> = SCENARIOS.iter().filter(|s| !s.denied).map(|s| s.baseline).collect();
    for (op, _) in LOOPS {
        match samples.baseline_ns(&file_bases, op) {
            Some(ns) => {
                let _ = write!(line, "{ns:>11.1}");
            }
            None => {
                let _ = write!(line, "{:>11}", "-");
            }
        }
    }
    let _ = writeln!(out, "{}", line.trim_end());

    let empty = SCENARIOS.iter().find(|s| s.key == "e").expect("the empty programs' scenario");
    let empty_cells: BTreeMap<&str, Cell> =
        LOOPS.iter().filter_map(|(op, _)| Some((*op, samples.cell(empty, op)?))).collect();
    let mut widest: Option<(f64, String)> = None;
    for scenario in SCENARIOS {
        let line = scenario_row(&samples, scenario, &empty_cells, opts, &mut problems, &mut widest);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(ns) = samples.baseline_ns(&["base-c"], "open") {
        let _ = writeln!(
            out,
            "(c) is relative to its own baseline: open+close of {DENIED}, {ns:.1} ns/op; \
             every open failed with EPERM and sent an event (to /dev/null)"
        );
    }
    if let Some((spread, what)) = widest {
        let _ = writeln!(out, "widest spread of a ratio across rounds: {:.2}% ({what})", 100.0 * spread);
    }
    for line in run.output.lines().filter(|l| l.contains("BENCH-ERROR")) {
        problems.push(line.trim().to_string());
    }
    if !run.output.contains("BENCH-DONE") {
        problems.push(if run.timed_out {
            format!("the VM did not finish within {TIMEOUT:?}")
        } else {
            "the guest script did not finish (see the console)".to_string()
        });
    }
    let _ = writeln!(
        out,
        "run took {:.0}s (boot {:.1}s); raw lines: {log}",
        run.elapsed.as_secs_f64(),
        run.boot_time.as_secs_f64()
    );
    for problem in &problems {
        let _ = writeln!(out, "!! {problem}");
    }
    (out, problems.is_empty())
}

/// One scenario's line of the table: ratios, points above (e), target.
fn scenario_row(
    samples: &Samples,
    scenario: &Scenario,
    empty: &BTreeMap<&str, Cell>,
    opts: &FilesOptions,
    problems: &mut Vec<String>,
    widest: &mut Option<(f64, String)>,
) -> String {
    let name = scenario.label.trim();
    let mut line = format!("{:<33}", scenario.label);
    let mut points = Vec::new();
    let mut complete = true;
    for (op, _) in LOOPS {
        if !scenario.loops.contains(op) {
            let _ = write!(line, "{:>11}", "n/a");
            continue;
        }
        let Some(cell) = samples.cell(scenario, op) else {
            let _ = write!(line, "{:>11}", "-");
            complete = false;
            continue;
        };
        let _ = write!(line, "{:>11.3}", cell.ratio);
        if cell.rounds != opts.rounds as usize {
            problems.push(format!("{name} {op}: {} of {} rounds measured", cell.rounds, opts.rounds));
        }
        if widest.as_ref().is_none_or(|(w, _)| cell.spread > *w) {
            *widest = Some((cell.spread, format!("{name} {op}")));
        }
        if let Some(f) = empty.get(op).filter(|_| scenario.key != "e") {
            points.push(100.0 * (cell.ratio - f.ratio));
        }
    }
    if !complete {
        problems.push(format!("{name}: measurements missing"));
    }
    check_errors(samples, scenario, problems);
    if scenario.key == "e" || scenario.denied {
        return line;
    }
    let shown: Vec<String> = points.iter().map(|p| format!("{p:+.1}")).collect();
    let _ = write!(line, "   {:<30}", shown.join(" "));
    if let Some(target) = scenario.target {
        let worst = points.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let measured = complete && points.len() == scenario.loops.len();
        let verdict = if measured && worst <= target { "PASS" } else { "MISS" };
        let _ = write!(line, " <= {target:.1}  {verdict}");
    }
    line
}

/// Allowed scenarios must not fail; the denied one must fail every open with EPERM.
pub(crate) fn check_errors(samples: &Samples, scenario: &Scenario, problems: &mut Vec<String>) {
    for op in scenario.loops {
        for s in samples.of(scenario.key, op) {
            let wrong = if scenario.denied { s.first_errno != libc::EPERM } else { s.failures > 0 };
            if wrong {
                problems.push(format!(
                    "{} {op} round {}: {} failures, first errno {} (expected {})",
                    scenario.label.trim(),
                    s.round,
                    s.failures,
                    s.first_errno,
                    if scenario.denied { "EPERM" } else { "none" }
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines_amid_console_noise() {
        let s = parse_line("x BENCH round=2 scenario=b10k open ns_per_op=10.50 failures=3 first_errno=1").unwrap();
        assert_eq!(s.round, 2);
        assert_eq!(s.scenario, "b10k");
        assert_eq!(s.op, "open");
        assert!((s.ns_per_op - 10.5).abs() < 1e-9);
        assert_eq!((s.failures, s.first_errno), (3, 1));
        assert!(parse_line("BENCH-PHASE round 1 of 3").is_none());
    }

    #[test]
    fn ratios_are_medians_of_same_round_ratios() {
        let output = "BENCH round=1 scenario=base-e open ns_per_op=100 failures=0 first_errno=0\n\
                      BENCH round=1 scenario=e open ns_per_op=102 failures=0 first_errno=0\n\
                      BENCH round=2 scenario=base-e open ns_per_op=200 failures=0 first_errno=0\n\
                      BENCH round=2 scenario=e open ns_per_op=206 failures=0 first_errno=0\n\
                      BENCH round=3 scenario=base-e open ns_per_op=100 failures=0 first_errno=0\n\
                      BENCH round=3 scenario=e open ns_per_op=104 failures=0 first_errno=0\n";
        let samples = Samples::parse(output);
        let cell = samples.cell(&SCENARIOS[0], "open").unwrap();
        assert!((cell.ratio - 1.03).abs() < 1e-9, "{}", cell.ratio);
        assert_eq!(cell.rounds, 3);
    }
}
