//! `cargo xtask bench workload`: what the enforcer costs a real coding session.
//!
//! The workload tier's session (`tests/workload/session.sh`: clone, pip, npm,
//! build, test, push) in the Debian root filesystem on one kernel under qemu's
//! `-icount`, where the guest clock counts instructions: first with no enforcer
//! at all, then in a cgroup the daemon tagged with policies/coding-agent.toml
//! adapted to the session's hosts. Each phase's figure is the guest time it
//! took, i.e. the instructions the whole VM ran meanwhile (the servers' and
//! the daemon's included), as a ratio against the baseline of the same boot.
//! One session before the rounds warms the page cache.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::test::workload::{self, ADAPTED_POLICY, BIN};
use crate::{bench, cmd, setup};

#[derive(Debug, Parser)]
pub struct WorkloadOptions {
    /// Sessions of each kind: the baseline rounds first, before the daemon
    /// loads anything (its programs stay attached once loaded).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

/// The guest script: the servers, a warm-up session, the baseline rounds, the
/// daemon, the enforced rounds. `BENCH-PHASE KIND ROUND NAME NS` lines.
const SCRIPT: &str = r#"
python3 /enforcer-workload/servers.py /enforcer-workload /tmp/world > /tmp/servers.log 2>&1 &
until grep -q 'servers: ready' /tmp/servers.log 2>/dev/null; do sleep 1; done
echo 'nameserver 127.0.0.1' > /etc/resolv.conf
session() { # KIND ROUND [CGROUP]: the session, in CGROUP if given
    sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs" && exec sh /enforcer-workload/session.sh' sh "$3" \
        > /tmp/session.log 2>&1 || { echo "BENCH-ERROR $1 session failed"; cat /tmp/session.log; }
    awk -v kind=$1 -v round=$2 '/^phase: / { if ($3 == "start") s[$2] = $4; else print "BENCH-PHASE", kind, round, $2, $4 - s[$2] }' /tmp/session.log
}
session warmup 0 > /dev/null
for round in $(seq @ROUNDS@); do session base $round; done
mkdir -p /etc/enforcer/policies /var/lib/enforcer
cp @POLICY@ /etc/enforcer/policies/
printf 'policies = "/etc/enforcer/policies"\nsocket = "/run/enforcer.sock"\n[dns]\nupstream = "127.0.0.1:53"\n' > /etc/enforcer/enforcer.toml
mkdir -p /run
@BIN@/enforcer daemon --config /etc/enforcer/enforcer.toml > /tmp/daemon.log 2>&1 &
until @BIN@/enforcer status --socket /run/enforcer.sock > /dev/null 2>&1; do sleep 1; done
mkdir /sys/fs/cgroup/agent
@BIN@/enforcer tag /agent --policy coding-agent --socket /run/enforcer.sock > /dev/null || echo "BENCH-ERROR tag failed"
for round in $(seq @ROUNDS@); do session enforced $round /sys/fs/cgroup/agent; done
refusals=$(grep -c '"action":"deny"' /var/log/enforcer/events.jsonl 2>/dev/null)
echo "BENCH-REFUSALS ${refusals:-0}"
grep '"action":"deny"' /var/log/enforcer/events.jsonl | head -20 | sed 's/^/BENCH-REFUSAL /'

echo BENCH-DONE
"#;

pub fn run(opts: &WorkloadOptions) -> Result<ExitCode> {
    setup::ensure_workload(workload::SERIES)?;
    let (release, _) = bench::release_binaries()?;
    let mut spec = workload::spec(vec![], "")?;
    // The release build: the daemon's own work counts, and counts as it runs in production.
    spec.files.retain(|(_, guest)| guest != &format!("{BIN}/enforcer"));
    spec.files.push((release, format!("{BIN}/enforcer")));
    spec.script =
        SCRIPT.replace("@ROUNDS@", &opts.rounds.to_string()).replace("@POLICY@", ADAPTED_POLICY).replace("@BIN@", BIN);
    spec.icount = true;
    spec.timeout = Duration::from_mins(30 + 12 * u64::from(opts.rounds));
    spec.echo = None;
    println!("bench workload: {} rounds of the session without and with the enforcer, under icount", opts.rounds);
    let run = crate::vm::run(&spec)?;
    let saved = cmd::save_bench_output(&format!("workload-{}.log", workload::SERIES), &run.output);
    for line in run.output.lines().filter(|l| l.contains("BENCH-ERROR")) {
        eprintln!("{line}");
    }
    if !run.output.contains("BENCH-DONE") {
        bail!("the guest did not finish (see {})", saved.display());
    }
    // (kind, phase) -> instructions of each round.
    let mut figures: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for line in run.output.lines() {
        let Some(rest) = line.split("BENCH-PHASE ").nth(1) else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [kind, _round, phase, ns] = words[..] else { continue };
        let Ok(ns) = ns.parse::<f64>() else { continue };
        if !order.iter().any(|p| p == phase) {
            order.push(phase.to_string());
        }
        figures.entry((kind.to_string(), phase.to_string())).or_default().push(ns);
    }
    let refusals = run.output.lines().find_map(|l| l.split("BENCH-REFUSALS ").nth(1)).unwrap_or("?").trim().to_string();
    println!("\n| phase | no enforcer (M instructions) | enforced | ratio |\n| --- | --- | --- | --- |");
    let (mut base_total, mut enforced_total) = (0.0, 0.0);
    for phase in &order {
        let mean = |kind: &str| {
            let v = figures.get(&(kind.to_string(), phase.clone())).cloned().unwrap_or_default();
            if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / f64::from(u32::try_from(v.len()).unwrap_or(1)) }
        };
        let (base, enforced) = (mean("base"), mean("enforced"));
        base_total += base;
        enforced_total += enforced;
        println!("| {phase} | {:.0} | {:.0} | {:.3} |", base / 1e6, enforced / 1e6, enforced / base);
    }
    println!("| all | {:.0} | {:.0} | {:.3} |", base_total / 1e6, enforced_total / 1e6, enforced_total / base_total);
    println!("\nrefusals under the policy: {refusals}; raw output: {}", saved.display());
    for line in run.output.lines().filter_map(|l| l.split("BENCH-REFUSAL ").nth(1)) {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}
