//! `cargo xtask bench path`: the instructions a file operation runs in each BPF program
//! and trampoline, block by block. qemu logs every translation block the guest runs in
//! the module area (where the JIT puts programs and trampolines) and how it was
//! translated; the guest names the programs (`/proc/kallsyms` with
//! `bpf_jit_kallsyms`). Blocks run once (or k times) per operation of the loop make its
//! path, counted exactly per operation: other processes' runs of the same blocks (a few
//! hundred against the loop's thousands) round away. `bench programs` says which
//! program costs an operation; this says which instructions of it do (checked loads,
//! spills, lookups). Helpers the programs call run in kernel text, which is not logged:
//! their cost is in `bench programs`' figures only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::vm::{self, VmSpec};
use crate::{cmd, kernel};

#[derive(Debug, Parser)]
pub struct PathOptions {
    /// Kernel series to trace.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Whose open is traced.
    #[arg(long, value_enum, default_value_t = PathScenario::Tagged)]
    scenario: PathScenario,
    /// Operations in the traced loop.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    iterations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PathScenario {
    /// Open for writing (+ close) of a file in the policy's one write tree.
    Tagged,
    /// Open read-only of a file outside every tree, the policy having a `read_deny` tree:
    /// the walk to the top.
    ReadDeny,
    /// Open for writing from an untagged level-2 cgroup while a policy is enforced.
    Untagged,
}

/// The logged address range: the kernel's module area (x86-64, `MODULES_VADDR` to
/// `MODULES_END`). Kernel text lies below it, whatever KASLR picks.
const MODULE_AREA: &str = "0xffffffffc0000000..0xfffffffffeffffff";

const TIMEOUT: Duration = Duration::from_mins(15);

const SCRIPT: &str = r#"
export W=/tmp/rules/r09999
mkdir -p /run $W /root/.aws /tmp/outside /sys/fs/cgroup/bench/untagged
head -c 4096 /dev/zero > $W/file
head -c 4096 /dev/zero > /tmp/outside/file
printf 'name = "trace"\n[files]\nwrite = ["%s"]\n' $W > /tmp/p.toml
[ @SCENARIO@ = read-deny ] && echo 'read_deny = ["/root/.aws"]' >> /tmp/p.toml
echo 0 > /proc/sys/kernel/kptr_restrict
echo 1 > /proc/sys/net/core/bpf_jit_kallsyms
echo 0 > /proc/sys/kernel/randomize_va_space
LOOP="/bin/enforcer-bench open $W/file @ITERATIONS@"
[ @SCENARIO@ = read-deny ] && LOOP="/bin/enforcer-bench open-read /tmp/outside/file @ITERATIONS@"
if [ @SCENARIO@ = untagged ]; then
    enforcer run --policy /tmp/p.toml --events /dev/null -- sh -c 'echo r > $W/ready; sleep 600' &
    while [ ! -e $W/ready ]; do sleep 1; done
    sh -c 'echo $$ > /sys/fs/cgroup/bench/untagged/cgroup.procs; grep "\[bpf\]" /proc/kallsyms | sed "s/^/SYM /"; exec '"$LOOP"
else
    enforcer run --policy /tmp/p.toml --events /dev/null -- sh -c 'grep "\[bpf\]" /proc/kallsyms | sed "s/^/SYM /"; exec '"$LOOP"
fi
echo PATH-DONE
"#;

pub fn run(opts: &PathOptions) -> Result<ExitCode> {
    let series = [opts.kernel.clone()];
    let files = crate::bench::guest_binaries(&series)?;
    let scenario = opts.scenario.to_possible_value().expect("no skipped values").get_name().to_string();
    let dir = cmd::bench_dir()?;
    let log = dir.join(format!("path-{}-{scenario}.qemu.log", opts.kernel));
    let spec = VmSpec {
        kernel: kernel::cached(&opts.kernel)?,
        files,
        script: SCRIPT.replace("@SCENARIO@", &scenario).replace("@ITERATIONS@", &opts.iterations.to_string()),
        icount: false,
        timeout: TIMEOUT,
        echo: None,
        exec_log: Some((MODULE_AREA.to_string(), log.clone())),
        disk: None,
    };
    println!(
        "== bench path: kernel {}, {scenario}, {} opens (TCG, every block in the module area logged) ==",
        opts.kernel, opts.iterations
    );
    let run = vm::run(&spec)?;
    if !run.output.contains("PATH-DONE") || !run.output.contains("ns_per_op=") {
        bail!("the guest script did not finish (timed out: {}); console:\n{}", run.timed_out, run.output);
    }
    let symbols = Symbols::parse(&run.output);
    let trace = Trace::parse(&fs::read_to_string(&log).with_context(|| format!("could not read {}", log.display()))?);
    let report = trace.report(&symbols, opts.iterations);
    let listing = dir.join(format!("path-{}-{scenario}.txt", opts.kernel));
    fs::write(&listing, &report.listing).with_context(|| format!("could not write {}", listing.display()))?;
    println!("{}", report.summary);
    println!("blocks with their instructions and counts: {} (qemu's log: {})", listing.display(), log.display());
    Ok(ExitCode::SUCCESS)
}

/// The programs' and trampolines' addresses, from the guest's `SYM` lines.
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    fn parse(console: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = console
            .lines()
            .filter_map(|l| {
                let mut words = l.split("SYM ").nth(1)?.split_whitespace();
                let address = u64::from_str_radix(words.next()?, 16).ok()?;
                Some((address, words.nth(1)?.to_string()))
            })
            .collect();
        symbols.sort();
        Symbols(symbols)
    }

    /// The symbol `address` is in, and its offset there.
    fn of(&self, address: u64) -> Option<(&str, u64)> {
        let i = self.0.partition_point(|(start, _)| *start <= address).checked_sub(1)?;
        let (start, name) = &self.0[i];
        Some((name.as_str(), address - start))
    }
}

/// What qemu logged: each block's instructions, and how often each block ran.
#[derive(Default)]
struct Trace {
    blocks: HashMap<u64, Vec<(u64, String)>>,
    runs: BTreeMap<u64, u64>,
}

struct Report {
    summary: String,
    listing: String,
}

impl Trace {
    /// `-d in_asm` prints a block as `IN:` then `0xADDR:  bytes  instruction` lines;
    /// `-d exec` with `nochain` prints `Trace N: host [flags/ADDR/...]` per run.
    fn parse(log: &str) -> Self {
        let mut trace = Trace::default();
        let mut block: Option<Vec<(u64, String)>> = None;
        for line in log.lines() {
            if line.starts_with("IN:") {
                block = Some(Vec::new());
                continue;
            }
            let instruction = line
                .strip_prefix("0x")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(address, text)| Some((u64::from_str_radix(address, 16).ok()?, text.trim().to_string())));
            if let (Some(b), Some(instruction)) = (block.as_mut(), instruction.clone()) {
                b.push(instruction);
                continue;
            }
            if let Some(b) = block.take_if(|b| !b.is_empty()) {
                trace.blocks.insert(b[0].0, b);
            }
            let address = line
                .strip_prefix("Trace ")
                .and_then(|rest| rest.split('[').nth(1))
                .and_then(|flags| flags.split('/').nth(1))
                .and_then(|a| u64::from_str_radix(a, 16).ok());
            if let Some(address) = address {
                *trace.runs.entry(address).or_default() += 1;
            }
        }
        trace
    }

    /// The blocks run once or more per operation of the loop, per symbol.
    fn report(&self, symbols: &Symbols, iterations: u64) -> Report {
        let mut per_symbol: BTreeMap<&str, (u64, String)> = BTreeMap::new();
        for (&address, &runs) in &self.runs {
            let (Some((name, offset)), Some(block)) = (symbols.of(address), self.blocks.get(&address)) else {
                continue;
            };
            // Times per operation: other processes' runs (a few hundred) round away.
            let times = (runs + iterations / 2) / iterations;
            if times == 0 {
                continue;
            }
            let (instructions, listing) = per_symbol.entry(name).or_default();
            *instructions += times * block.len() as u64;
            let _ = writeln!(
                listing,
                "  block +{offset:#x}: {} instructions, run {runs} times ({times} per operation)",
                block.len()
            );
            for (at, text) in block {
                let _ = writeln!(listing, "      +{:#06x}  {text}", at - (address - offset));
            }
        }
        let mut rows: Vec<(&str, u64, String)> =
            per_symbol.into_iter().map(|(name, (n, listing))| (name, n, listing)).collect();
        rows.sort_by_key(|(_, n, _)| std::cmp::Reverse(*n));
        let total: u64 = rows.iter().map(|(_, n, _)| n).sum();
        let mut summary =
            String::from("instructions per operation, by program or trampoline (x86-64, as the JIT emitted them):\n");
        let mut listing = String::new();
        for (name, n, blocks) in &rows {
            let _ = writeln!(summary, "  {n:>6}  {name}");
            let _ = writeln!(listing, "{name}: {n} instructions per operation\n{blocks}");
        }
        let _ = write!(summary, "  {total:>6}  in all (helpers in kernel text not counted)");
        Report { summary, listing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_run_per_operation_counts_per_symbol() {
        let log = "IN: \n0xffffffffc0001000:  55  pushq %rbp\n0xffffffffc0001001:  c3  retq\n\n\
                   Trace 0: 0x7f [00000000/ffffffffc0001000/0000c2b0/ff028200] \n"
            .repeat(4);
        let trace = Trace::parse(&log);
        let symbols = Symbols::parse("SYM ffffffffc0000ff0 t bpf_prog_1_file_open\t[bpf]\n");
        let report = trace.report(&symbols, 4);
        assert!(report.summary.contains("     2  bpf_prog_1_file_open"), "{}", report.summary);
        assert!(
            report.listing.contains("block +0x10: 2 instructions, run 4 times (1 per operation)"),
            "{}",
            report.listing
        );
    }
}
