//! `cargo xtask bench daemon`: how fast the daemon changes a verdict and
//! streams denials, and its memory with many tagged cgroups. On the host
//! kernel (`--degraded`: verdicts are the cgroup socket programs', the same
//! tables the BPF LSM programs read), with pins of its own under
//! `/sys/fs/bpf/enforcer-bench`, removed at the end.
//!
//! - memory: the daemon's RSS before and after tagging `--cgroups` cgroups
//!   (first: the latencies below are a fleet host's, with them tagged).
//! - tag: a process connecting in a loop to a denied address in an
//!   untagged cgroup; the time from just before `POST /v1/tags` to its first
//!   EPERM, with a policy of `--rules` destinations.
//! - file write: the same process under a policy that allows the address;
//!   the time from renaming in a version that does not to its first EPERM.
//! - storm: two processes denied as fast as they can for `--storm-secs`;
//!   events delivered per second, lost events, and events per second of the
//!   daemon's own CPU time (what it could take with the CPU to itself).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;

use crate::cmd;

#[derive(Debug, Parser)]
pub struct DaemonOptions {
    /// Measurements of each latency.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// Destinations in the policy.
    #[arg(long, default_value_t = 10_000)]
    rules: u32,
    /// Cgroups tagged for the memory measurement.
    #[arg(long, default_value_t = 1_000)]
    cgroups: u32,
    /// How long the denial storm lasts.
    #[arg(long, default_value_t = 3)]
    storm_secs: u64,
}

const BASE: &str = "/tmp/enforcer-bench-daemon";
const PINS: &str = "/sys/fs/bpf/enforcer-bench";
const DENIED: &str = "127.0.0.1:82";

pub fn run(opts: &DaemonOptions) -> Result<ExitCode> {
    if !cmd::is_root() {
        bail!("cargo xtask bench daemon loads BPF programs: run it as root");
    }
    let (enforcer, bench) = crate::bench::release_binaries()?;
    let _ = std::fs::remove_dir_all(BASE);
    let base = Path::new(BASE);
    std::fs::create_dir_all(base.join("policies"))?;
    std::fs::write(
        base.join("enforcer.toml"),
        format!(
            "policies = \"{BASE}/policies\"\nsocket = \"{BASE}/enforcer.sock\"\nstate_dir = \"{BASE}/state\"\nbpffs \
             = \"{PINS}\"\n\
             [events]\nfile = \"{BASE}/events.jsonl\"\nfile_max_bytes = 1073741824\n"
        ),
    )?;
    write_policy(base, "big.toml", &policy("big", opts.rules, false))?;
    write_policy(base, "reload.toml", &policy("reload", opts.rules, true))?;
    let cgroups = Cgroups::new()?;
    let mut daemon = Daemon::start(&enforcer, base)?;
    let result = measure(opts, &daemon, &cgroups, &bench, base);
    daemon.stop();
    cgroups.remove_all();
    let _ =
        Command::new(&enforcer).args(["daemon", "--uninstall", "--config"]).arg(base.join("enforcer.toml")).output();
    let report = result?;
    cmd::save_bench_output("daemon-host.log", &report);
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// A policy of `rules` /32 destinations on port 443 (none of them loopback),
/// plus the benchmark's address if `allow_target`.
fn policy(name: &str, rules: u32, allow_target: bool) -> String {
    let mut text = format!("name = \"{name}\"\n[network]\nallow = [\n");
    if allow_target {
        let _ = writeln!(text, "  \"{}/32:82\",", DENIED.split(':').next().unwrap_or_default());
    }
    for i in 0..rules {
        let _ = writeln!(text, "  \"10.{}.{}.{}/32:443\",", i >> 16 & 255, i >> 8 & 255, i & 255);
    }
    text.push_str("]\n");
    text
}

fn write_policy(base: &Path, file: &str, text: &str) -> Result<()> {
    let (tmp, path) = stage_policy(base, file, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Writes a policy file beside the directory: the rename that puts it in
/// (as editors and configuration tools do) is the change the daemon sees.
fn stage_policy(base: &Path, file: &str, text: &str) -> Result<(PathBuf, PathBuf)> {
    let tmp = base.join(format!("{file}.tmp"));
    std::fs::write(&tmp, text)?;
    Ok((tmp, base.join("policies").join(file)))
}

fn measure(opts: &DaemonOptions, daemon: &Daemon, cgroups: &Cgroups, bench: &Path, base: &Path) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench daemon (host kernel {}, --degraded: network verdicts), policies of {} destinations",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        opts.rules
    );
    // The fleet host first: the latencies are measured with `--cgroups`
    // cgroups tagged already.
    memory(opts, daemon, cgroups, &mut out)?;
    let tag_us = tag_latencies(opts, daemon, cgroups, bench)?;
    let _ = writeln!(
        out,
        "tag -> first denied connect, {} cgroups tagged already: {} (target < 2 ms)",
        opts.cgroups,
        stats_us(&tag_us)
    );
    let reload_us = reload_latencies(opts, daemon, cgroups, bench, base)?;
    let _ = writeln!(out, "policy file rename -> first denied connect: {} (target < 10 ms)", stats_us(&reload_us));
    let _ = writeln!(out, "RSS after the latency rounds: {}", mib(daemon.rss_kib()?));
    storm(opts, daemon, cgroups, bench, &mut out)?;
    Ok(out)
}

/// Tag to verdict, per round (microseconds).
fn tag_latencies(opts: &DaemonOptions, daemon: &Daemon, cgroups: &Cgroups, bench: &Path) -> Result<Vec<f64>> {
    let mut tag_us = Vec::new();
    for round in 0..opts.rounds {
        let cgroup = cgroups.create(&format!("tag-{round}"))?;
        let mut looper = spawn_in(&cgroup.1, Command::new(bench).args(["until-denied", DENIED, "100000000"]))?;
        let mut lines = BufReader::new(looper.stdout.take().context("looper stdout")?).lines();
        lines.next().context("looper did not start")??;
        let started = now_ns();
        daemon.api("POST", "/v1/tags", &format!("{{\"cgroup\":\"{}\",\"policy\":\"big\"}}", cgroup.0))?;
        let denied_at = denied_at(&lines.next().context("looper ended")??)?;
        let _ = looper.wait();
        tag_us.push(micros(denied_at.saturating_sub(started)));
        daemon.api("DELETE", &format!("/v1/tags?cgroup={}", cgroup.0), "")?;
    }
    Ok(tag_us)
}

/// Policy file rename to verdict, per round.
fn reload_latencies(
    opts: &DaemonOptions,
    daemon: &Daemon,
    cgroups: &Cgroups,
    bench: &Path,
    base: &Path,
) -> Result<Vec<f64>> {
    let cgroup = cgroups.create("reload")?;
    daemon.api("POST", "/v1/tags", &format!("{{\"cgroup\":\"{}\",\"policy\":\"reload\"}}", cgroup.0))?;
    let mut reload_us = Vec::new();
    for _ in 0..opts.rounds {
        let allowing = daemon.version("reload")?;
        let mut looper = spawn_in(&cgroup.1, Command::new(bench).args(["until-denied", DENIED, "100000000"]))?;
        let mut lines = BufReader::new(looper.stdout.take().context("looper stdout")?).lines();
        lines.next().context("looper did not start")??;
        let (tmp, path) = stage_policy(base, "reload.toml", &policy("reload", opts.rules, false))?;
        let started = now_ns();
        std::fs::rename(tmp, path)?;
        let denied_at = denied_at(&lines.next().context("looper ended")??)?;
        let _ = looper.wait();
        reload_us.push(micros(denied_at.saturating_sub(started)));
        // Back to allowing, and wait until that version is in force.
        write_policy(base, "reload.toml", &policy("reload", opts.rules, true))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.version("reload")? < allowing + 2 {
            if Instant::now() > deadline {
                bail!("the daemon did not apply the policy again within 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(reload_us)
}

/// RSS with `--cgroups` cgroups tagged, and the time each tag took.
fn memory(opts: &DaemonOptions, daemon: &Daemon, cgroups: &Cgroups, out: &mut String) -> Result<()> {
    let rss_before = daemon.rss_kib()?;
    let started = Instant::now();
    for i in 0..opts.cgroups {
        let cgroup = cgroups.create(&format!("many-{i}"))?;
        daemon.api("POST", "/v1/tags", &format!("{{\"cgroup\":\"{}\",\"policy\":\"big\"}}", cgroup.0))?;
    }
    let per_tag = started.elapsed().as_secs_f64() * 1e3 / f64::from(opts.cgroups.max(1));
    let rss_after = daemon.rss_kib()?;
    let _ = writeln!(
        out,
        "memory: RSS {} at start, {} with {} cgroups tagged (target < 50 MiB); {per_tag:.2} ms per tag (API call \
         to answer)",
        mib(rss_before),
        mib(rss_after),
        opts.cgroups
    );
    Ok(())
}

/// Two processes denied as fast as they can: what the daemon delivers.
fn storm(opts: &DaemonOptions, daemon: &Daemon, cgroups: &Cgroups, bench: &Path, out: &mut String) -> Result<()> {
    let cgroup = cgroups.create("storm")?;
    daemon.api("POST", "/v1/tags", &format!("{{\"cgroup\":\"{}\",\"policy\":\"big\"}}", cgroup.0))?;
    let (events_before, lost_before) = daemon.counts()?;
    let cpu_before = daemon.cpu_ticks()?;
    let started = Instant::now();
    let stop_at = Instant::now() + Duration::from_secs(opts.storm_secs);
    let mut storm = Vec::new();
    for _ in 0..2 {
        storm.push(spawn_in(&cgroup.1, Command::new(bench).args(["connect", DENIED, "200000000"]))?);
    }
    while Instant::now() < stop_at {
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in &mut storm {
        let _ = child.kill();
        let _ = child.wait();
    }
    let generated_for = started.elapsed();
    // Let the daemon drain what is left.
    let mut last = daemon.counts()?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = daemon.counts()?;
        if now == last {
            break;
        }
        last = now;
    }
    let (events_after, lost_after) = last;
    let delivered = events_after - events_before;
    let dropped = lost_after - lost_before;
    let secs = generated_for.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let (cpu, rate) = ((daemon.cpu_ticks()? - cpu_before) as f64 / ticks_per_second(), delivered as f64 / secs);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_cpu = if cpu > 0.0 { delivered as f64 / cpu } else { 0.0 };
    let _ = writeln!(
        out,
        "storm (2 processes, {secs:.1} s, {} cgroups tagged): {delivered} events delivered ({rate:.0}/s), {dropped} \
         lost \
         (counted); daemon CPU {cpu:.2} s = {per_cpu:.0} events per CPU-second (target 1 000 000/s); RSS after: {}",
        opts.cgroups + 3,
        mib(daemon.rss_kib()?)
    );
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "latencies far below 2^52 ns")]
fn micros(ns: u128) -> f64 {
    ns as f64 / 1000.0
}

#[expect(clippy::cast_precision_loss, reason = "memory sizes far below 2^52 KiB")]
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn denied_at(line: &str) -> Result<u128> {
    let value = line.split_whitespace().find_map(|f| f.strip_prefix("denied_at_ns=")).context("no denied_at_ns")?;
    let value: u128 = value.parse()?;
    if value == 0 {
        bail!("the looping process was never denied: {line}");
    }
    Ok(value)
}

fn stats_us(samples: &[f64]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let max = sorted.last().copied().unwrap_or(0.0);
    let min = sorted.first().copied().unwrap_or(0.0);
    format!(
        "median {:.2} ms, min {:.2} ms, max {:.2} ms ({} rounds)",
        median / 1e3,
        min / 1e3,
        max / 1e3,
        samples.len()
    )
}

fn now_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u32::try_from(ticks).map_or(100.0, f64::from)
}

/// Starts `command` in the cgroup directory `dir`, stdout piped.
fn spawn_in(dir: &Path, command: &mut Command) -> Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let procs = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
    let procs = std::os::fd::OwnedFd::from(procs);
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: one write(2) of a static buffer to an fd opened before fork.
    unsafe {
        command.pre_exec(move || {
            use std::os::fd::AsRawFd as _;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(command.spawn()?)
}

/// The benchmark's cgroups, below `<cgroup2>/enforcer-bench`.
struct Cgroups {
    mount: PathBuf,
}

impl Cgroups {
    fn new() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let mount = mounts
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .context("no cgroup2 mount")?;
        let cgroups = Self { mount };
        cgroups.remove_all();
        Ok(cgroups)
    }

    /// (path below the mount, directory).
    fn create(&self, name: &str) -> Result<(String, PathBuf)> {
        let dir = self.mount.join("enforcer-bench").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok((format!("/enforcer-bench/{name}"), dir))
    }

    fn remove_all(&self) {
        let root = self.mount.join("enforcer-bench");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&root);
    }
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(enforcer: &Path, base: &Path) -> Result<Self> {
        let log = std::fs::File::create(base.join("daemon.log"))?;
        let child = Command::new(enforcer)
            .args(["daemon", "--degraded", "--config"])
            .arg(base.join("enforcer.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let daemon = Self { child, socket: base.join("enforcer.sock") };
        let deadline = Instant::now() + Duration::from_mins(2);
        while daemon.http("GET", "/v1/status", "").is_err() {
            if Instant::now() > deadline {
                bail!("the daemon did not answer; see {}/daemon.log", base.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut stream = UnixStream::connect(&self.socket)?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: enforcer\r\nContent-Type: application/json\r\nContent-Length: \
             {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned()))
    }

    fn api(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let (status, text) = self.http(method, path, body)?;
        if status != 200 {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(text)
    }

    fn version(&self, policy: &str) -> Result<u64> {
        let answer: serde_json::Value = serde_json::from_str(&self.api("GET", "/v1/policies", "")?)?;
        answer["policies"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == policy))
            .and_then(|p| p["version"].as_u64())
            .context("policy not loaded")
    }

    /// (connect events streamed, lost events), from the metrics.
    fn counts(&self) -> Result<(u64, u64)> {
        let text = self.api("GET", "/metrics", "")?;
        let value = |prefix: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        Ok((value("enforcer_events_total{kind=\"connect\""), value("enforcer_lost_events_total")))
    }

    fn stat_field(&self, file: &str, pick: impl Fn(&str) -> Option<u64>) -> Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))?;
        pick(&text).with_context(|| format!("cannot read the daemon's {file}"))
    }

    fn cpu_ticks(&self) -> Result<u64> {
        self.stat_field("stat", |text| {
            let fields: Vec<&str> = text.rsplit_once(") ")?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
    }

    fn rss_kib(&self) -> Result<u64> {
        self.stat_field("status", |text| {
            text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
        })
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
