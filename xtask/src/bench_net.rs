//! `cargo xtask bench net`: what the enforcer costs connects and sends.
//!
//! One script (`NET_SCRIPT`: bash on the host, busybox sh in the VMs) runs natively on the host kernel (the cgroup
//! programs work there: `enforcer run --degraded`, wall-clock time, so more rounds) and
//! in each BPF LSM kernel under qemu (`-icount`, instruction-exact). Loops of
//! `enforcer-bench`: `connect` (TCP socket + connect + close to a loopback listener that
//! accepts and closes), `sendto` (64-byte UDP datagrams on one unconnected socket) and
//! `upload` (64 KiB writes on one TCP connection to a reader that discards them).
//! Each scenario runs right after a no-enforcer baseline of the same loops, in the same
//! round; the table shows the median over rounds of scenario / baseline.
//!
//! Scenarios: (a) untagged (an `enforcer run` holds another cgroup tagged), with no
//! upload budget loaded and with one (every send then passes the tag screen); (b) tagged,
//! destinations allowed, with 1 / 100 / 10 000 / 100 000 CIDR rules (the others are
//! other /32s); (c) tagged, destinations denied (EPERM and an event each time, events to
//! /dev/null; its baseline is the same loops to ports nobody listens on); (d) tagged, 1
//! rule, an upload budget (`*`, never reached: every send is checked and counted) and a
//! budget of new destinations (never reached: every connect and `sendto` is checked);
//! (e) tagged, as (d) with a host entry whose TLS names are required: the upload goes
//! to an address granted for `bench.test` (resolved through the enforcer's resolver,
//! from `enforcer-bench listen`'s DNS server) on a connection that opened with a
//! ClientHello naming it, judged in the kernel.
//! `upload` runs where its ratio is asked for (a, b1, d, e).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::bench::{Samples, median};
use crate::bench_host_vm::{self, Bench, Targets};

#[derive(Debug, Parser)]
pub struct NetOptions {
    /// Kernel series to measure in qemu; repeatable (default: 6.1, 6.12 and 7.3).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Measure on the host kernel only (no VMs).
    #[arg(long, conflicts_with = "skip_host")]
    host_only: bool,
    /// Measure in the VMs only (e.g. while the host is busy: their clock counts
    /// instructions, the host's is the wall clock).
    #[arg(long)]
    skip_host: bool,
    /// Interleaved rounds in the VMs (instruction counts: few are needed).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Interleaved rounds on the host (wall clock: more are needed).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    host_rounds: u32,
    /// Timed iterations per loop.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    iterations: u64,
}

struct Scenario {
    key: &'static str,
    label: &'static str,
    baseline: &'static str,
    /// At most this ratio, per loop (`connect`, `sendto`, `upload`).
    targets: [Option<f64>; 3],
    /// Whether the scenario runs the `upload` loop.
    uploads: bool,
}

const LOOPS: [(&str, &str); 3] = [("connect", "connect+close"), ("sendto", "UDP sendto"), ("upload", "64KiB write")];

/// A bulk upload under a budget keeps 0.95 of the untagged throughput: time per write at
/// most 1 / 0.95 of the baseline's.
const UPLOAD_TARGET: f64 = 1.0 / 0.95;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "a",
        label: "(a) untagged",
        baseline: "base-b1",
        targets: [Some(1.00), Some(1.00), Some(1.01)],
        uploads: true,
    },
    Scenario {
        key: "a-budget",
        label: "(a) untagged, budgets loaded",
        baseline: "base-b1",
        targets: [None, None, Some(1.01)],
        uploads: true,
    },
    Scenario {
        key: "b1",
        label: "(b) tagged, 1 rule",
        baseline: "base-b1",
        targets: [Some(1.02), None, None],
        uploads: true,
    },
    Scenario {
        key: "b100",
        label: "(b) tagged, 100 rules",
        baseline: "base-b100",
        targets: [Some(1.02), None, None],
        uploads: false,
    },
    Scenario {
        key: "b10k",
        label: "(b) tagged, 10 000 rules",
        baseline: "base-b10k",
        targets: [Some(1.02), None, None],
        uploads: false,
    },
    Scenario {
        key: "b100k",
        label: "(b) tagged, 100 000 rules",
        baseline: "base-b100k",
        targets: [Some(1.02), Some(1.05), None],
        uploads: false,
    },
    Scenario { key: "c", label: "(c) tagged, denied", baseline: "base-c", targets: [None, None, None], uploads: false },
    Scenario {
        key: "d",
        label: "(d) tagged, budgets",
        baseline: "base-b1",
        targets: [Some(1.02), None, Some(UPLOAD_TARGET)],
        uploads: true,
    },
    Scenario {
        key: "e",
        label: "(e) tagged, TLS name + budgets",
        baseline: "base-b1",
        targets: [Some(1.02), None, Some(UPLOAD_TARGET)],
        uploads: true,
    },
];

/// The script, for the host (`sh`) and the guest (busybox `sh`). `@...@` are filled in.
const NET_SCRIPT: &str = r#"
# cargo xtask bench net (xtask/src/bench_net.rs)
export N=@ITERATIONS@
ROUNDS=@ROUNDS@ BENCH=@BENCH@ ENFORCER=@ENFORCER@ DEGRADED="@DEGRADED@"
# The loops on one CPU and the listener on another (host: the wall clock
# varied by a third between CPUs otherwise).
LOOP_CPU="@LOOP_CPU@" LISTEN_CPU="@LISTEN_CPU@"
fail() { echo "BENCH-ERROR $*"; }
T=$(mktemp -d /tmp/enforcer-bench-net.XXXXXX)
OK=127.0.0.1:47001 OK_UDP=127.0.0.1:47002 OK_UP=127.0.0.1:47003 NO=127.0.0.1:47004 NO_UDP=127.0.0.1:47005
# Upload writes per loop: a twentieth (each moves 64 KiB).
UP_N=$((N / 20))

# policy NAME COUNT [UPLOAD [HOST]]: the bench destinations plus COUNT - 1 other /32s
# (and HOST, its TLS names required); with UPLOAD, a budget of new destinations too.
policy() {
    {
        echo "name = \"bench-$1\""
        echo "[network]"
        [ -z "$3" ] || echo "upload = [\"$3\"]"
        [ -z "$3" ] || echo "new_destinations = \"100000/1h\""
        echo "allow = [\"$OK/tcp\", \"$OK_UDP/udp\", \"$OK_UP/tcp\","
        [ -z "$4" ] || echo "  { to = \"$4\", tls = \"require\" },"
        awk -v n=$2 'BEGIN { for (i = 1; i < n; i++) printf "  \"10.%d.%d.%d/32:443\",\n", int(i / 65536) % 256, int(i / 256) % 256, i % 256 }'
        echo "]"
    } > $T/policy-$1.toml
}
for p in "b1 1" "b100 100" "b10k 10000" "b100k 100000"; do policy $p; done
policy d 1 "*: 1000GiB/1h"
policy e 1 "*: 1000GiB/1h" bench.test:47003/tcp

$LISTEN_CPU $BENCH listen $OK 0 &
LISTENER=$!
# loops ROUND SCENARIO TCP_TO UDP_TO [UPLOAD_TO]: one line per loop.
cat > $T/loops.sh <<EOF
sleep 1
out=\$($LOOP_CPU $BENCH connect \$3 \$N) && echo "BENCH round=\$1 scenario=\$2 \$out" || echo "BENCH-ERROR round=\$1 scenario=\$2 connect failed"
out=\$($LOOP_CPU $BENCH sendto \$4 \$N) && echo "BENCH round=\$1 scenario=\$2 \$out" || echo "BENCH-ERROR round=\$1 scenario=\$2 sendto failed"
# An upload to a name opens with a ClientHello naming it.
case "\$5" in [0-9]*) up=upload ;; *) up=upload-tls ;; esac
[ -z "\$5" ] || { out=\$($LOOP_CPU $BENCH \$up \$5 $UP_N) && echo "BENCH round=\$1 scenario=\$2 \$out" || echo "BENCH-ERROR round=\$1 scenario=\$2 upload failed"; }
EOF
# inside.sh ROUND [SCENARIO TCP_TO UDP_TO UPLOAD_TO]...: the tagged loops, once told to go
# (UPLOAD_TO `-`: none).
cat > $T/inside.sh <<EOF
echo ready > $T/ready
read x < $T/go
r=\$1; shift
while [ \$# -ge 4 ]; do
    up=\$4; [ "\$up" = - ] && up=
    sh $T/loops.sh \$r \$1 \$2 \$3 \$up
    shift 4
done
EOF

# session ROUND POLICY UNTAGGED [SCENARIO TCP_TO UDP_TO UPLOAD_TO]...: the untagged loops
# (scenario UNTAGGED) run outside while the tagged shell waits, then the tagged ones inside.
session() {
    r=$1 p=$2 a=$3
    shift 3
    rm -f $T/ready $T/go
    mkfifo $T/ready $T/go
    exec 3<>$T/ready 4<>$T/go
    $ENFORCER run $DEGRADED --policy $T/policy-$p.toml --events /dev/null -- sh $T/inside.sh $r "$@" 2>$T/err &
    pid=$!
    if read -t 300 x <&3; then
        sh $T/loops.sh $r $a $OK $OK_UDP $OK_UP
    else
        fail "round=$r: the tagged shell never started: $(cat $T/err)"
    fi
    echo go >&4
    wait $pid || fail "round=$r: enforcer run (policy $p) exited $?: $(cat $T/err)"
    exec 3<&- 4<&-
}

sh $T/loops.sh 0 warm-up $OK $OK_UDP $OK_UP > /dev/null
r=1
while [ $r -le $ROUNDS ]; do
    echo "BENCH-PHASE round $r of $ROUNDS"
    sh $T/loops.sh $r base-b1 $OK $OK_UDP $OK_UP
    sh $T/loops.sh $r base-c $NO $NO_UDP
    session $r b1 a b1 $OK $OK_UDP $OK_UP c $NO $NO_UDP -
    session $r d a-budget d $OK $OK_UDP $OK_UP
    $ENFORCER run $DEGRADED --dns-upstream 127.0.0.1:47010 --policy $T/policy-e.toml --events /dev/null \
        -- sh $T/loops.sh $r e $OK $OK_UDP bench.test:47003 2>$T/err || fail "round=$r: enforcer run (policy e) exited $?: $(cat $T/err)"
    for p in b100 b10k b100k; do
        sh $T/loops.sh $r base-$p $OK $OK_UDP
        $ENFORCER run $DEGRADED --policy $T/policy-$p.toml --events /dev/null -- sh $T/loops.sh $r $p $OK $OK_UDP 2>$T/err \
            || fail "round=$r: enforcer run (policy $p) exited $?: $(cat $T/err)"
    done
    r=$((r + 1))
done
kill $LISTENER
rm -rf $T
echo "BENCH-DONE"
"#;

/// The script for the host (`--degraded`: no BPF LSM there; two CPUs) or a VM.
fn script(opts: &NetOptions, rounds: u32, bench: &str, enforcer: &str, host: bool) -> String {
    NET_SCRIPT
        .replace("@ITERATIONS@", &opts.iterations.to_string())
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@BENCH@", bench)
        .replace("@ENFORCER@", enforcer)
        .replace("@DEGRADED@", if host { "--degraded" } else { "" })
        .replace("@LOOP_CPU@", if host { "taskset -c 1" } else { "" })
        .replace("@LISTEN_CPU@", if host { "taskset -c 0" } else { "" })
}

pub fn run(opts: &NetOptions) -> Result<ExitCode> {
    let script = |rounds, bench: &str, enforcer: &str, host| script(opts, rounds, bench, enforcer, host);
    let report =
        |mode: &str, output: &str, rounds, log: &str, _host| report(mode, output, rounds, opts.iterations, log);
    let bench = Bench { name: "net", host_note: "wall clock, CLOCK_MONOTONIC", script: &script, report: &report };
    let targets = Targets {
        kernels: &opts.kernels,
        host_only: opts.host_only,
        skip_host: opts.skip_host,
        rounds: opts.rounds,
        host_rounds: opts.host_rounds,
    };
    bench_host_vm::run(&bench, &targets)
}

/// The table of one kernel; `false` when the measurements are incomplete.
fn report(mode: &str, output: &str, rounds: u32, iterations: u64, log: &str) -> (String, bool) {
    let samples = Samples::parse(output);
    let mut out = String::new();
    let mut problems: Vec<String> = Vec::new();
    let _ = writeln!(out, "{mode}");
    let _ = writeln!(
        out,
        "ratio = ns/op / no-enforcer baseline of the same round; median of {rounds} interleaved rounds, \
         {iterations} iterations per loop"
    );
    let mut header = format!("{:<30}", "scenario");
    for (_, title) in LOOPS {
        let _ = write!(header, "{title:>15}");
    }
    let _ = writeln!(out, "{header}   target");
    let mut line = format!("{:<30}", "baseline, ns/op");
    for (op, _) in LOOPS {
        let mut values: Vec<f64> = ["base-b1", "base-b100", "base-b10k", "base-b100k"]
            .iter()
            .flat_map(|k| samples.of(k, op))
            .map(|s| s.ns_per_op)
            .collect();
        let _ = match median(&mut values) {
            Some(ns) => write!(line, "{ns:>15.1}"),
            None => write!(line, "{:>15}", "-"),
        };
    }
    let _ = writeln!(out, "{line}");
    for scenario in SCENARIOS {
        let mut line = format!("{:<30}", scenario.label);
        let mut verdicts = Vec::new();
        for ((op, _), target) in LOOPS.iter().zip(scenario.targets) {
            if *op == "upload" && !scenario.uploads {
                let _ = write!(line, "{:>15}", "");
                continue;
            }
            let Some(cell) = samples.ratio(scenario.key, scenario.baseline, op) else {
                let _ = write!(line, "{:>15}", "-");
                problems.push(format!("no samples for {} {op}", scenario.key));
                continue;
            };
            let _ = write!(line, "{:>15.3}", cell.ratio);
            if let Some(target) = target {
                // Ratios are reported to three places; a target is met at that precision.
                let met = (cell.ratio * 1000.0).round() <= (target * 1000.0).round();
                verdicts.push(format!("{op} <= {target:.2} {}", if met { "PASS" } else { "MISS" }));
            }
            let denied = scenario.key == "c";
            for sample in samples.of(scenario.key, op) {
                let expected = i32::from(denied);
                if (sample.failures > 0) != denied || (denied && sample.first_errno != expected) {
                    problems.push(format!(
                        "round {} {} {op}: {} failures, first errno {} ({})",
                        sample.round,
                        scenario.key,
                        sample.failures,
                        sample.first_errno,
                        if denied { "every attempt should fail with EPERM" } else { "none should fail" }
                    ));
                }
            }
        }
        let _ = writeln!(out, "{line}   {}", verdicts.join(", "));
    }
    let _ = writeln!(out, "(c) is relative to the same loops to ports nobody listens on (TCP: refused; UDP: sent)");
    let _ = writeln!(out, "upload target {UPLOAD_TARGET:.3}: 0.95 of the untagged throughput");
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
