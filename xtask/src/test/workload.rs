//! Tier `workload`: a real coding session (git over HTTPS, a virtualenv and pip,
//! npm, gcc and make, cargo, pytest, a push) in the Debian root filesystem
//! `setup::rootfs` builds, under BPF LSM on one kernel: the `workload` test of
//! enforcer-tests (`tests/tests/workload.rs`, `tests/workload/`).
//!
//! One kernel only: the session exercises no kernel difference the `lsm` tests
//! do not already cover on every series, and it costs minutes under TCG.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::host::{build_binaries, build_test};
use super::{Outcome, Tier, ran};
use crate::libtest::Summary;
use crate::setup;
use crate::vm::{self, Disk, VmSpec};
use crate::{cmd, kernel};

pub const SERIES: &str = "6.12";
/// Boot, the servers, two program loads (a daemon's, `enforcer learn`'s run), three
/// sessions (1.5 to 2.5 minutes each under TCG) and the attacks twice: 9 minutes
/// alone on 2026-12-07; the limit only catches a hang.
const TIMEOUT: Duration = Duration::from_mins(30);
/// In the image, /bin is /usr/bin (merged /usr): the test's programs go here.
pub const BIN: &str = "/usr/local/bin";
/// Where the VM has policies/coding-agent.toml adapted to the company's hosts.
pub const ADAPTED_POLICY: &str = "/enforcer-workload-policy/coding-agent.toml";
/// The company's hosts (as tests/workload/servers.py serves them).
const FORGE: &str = "git.corp.test";
const INDEX: &str = "pypi.corp.test";
const REGISTRY: &str = "npm.corp.test";

/// Minutes it takes here beside another VM (to schedule the VMs).
pub const MINUTES: u32 = 10;

/// The tier; `prefix` goes before each console line.
pub fn run(prefix: String) -> Tier {
    println!("\n== tier workload (a coding session in Debian, kernel {SERIES}) ==");
    let outcome = workload(prefix)
        .unwrap_or_else(|e| Outcome::Ran { summary: Summary::default(), problem: Some(format!("{e:#}")) });
    Tier { name: format!("workload {SERIES}"), outcome }
}

/// What the tier needs that takes long to make: the image (first time: minutes),
/// the binaries.
pub fn prepare() -> Result<()> {
    setup::ensure_workload(SERIES)?;
    build_binaries()?;
    build_test("workload").map(drop)
}

fn workload(prefix: String) -> Result<Outcome> {
    prepare()?;
    let mut spec = spec(vec![], "")?;
    spec.echo = Some(prefix);
    let run = vm::run(&spec)?;
    let summary = Summary::parse(&run.output);
    Ok(if run.timed_out {
        Outcome::Ran { summary, problem: Some(format!("the VM did not finish within {TIMEOUT:?}")) }
    } else {
        ran(summary, run.exit_code == Some(0), "the workload test binary in the VM")
    })
}

/// The workload VM: the image, its disk modules, the enforcer, the probe, the
/// test, the policies and `tests/workload`; `extra` files and the script's
/// `env` on top.
pub fn spec(extra: Vec<(PathBuf, String)>, env: &str) -> Result<VmSpec> {
    let bins = build_binaries()?;
    let test = build_test("workload")?;
    let root = cmd::workspace_root();
    let mut files = vec![
        (bins.enforcer, format!("{BIN}/enforcer")),
        (bins.probe, format!("{BIN}/enforcer-probe")),
        (test, format!("{BIN}/enforcer-workload-tests")),
        (root.join("policies"), "/policies".to_string()),
        (root.join("tests/workload"), "/enforcer-workload".to_string()),
        (adapted_policy()?, ADAPTED_POLICY.to_string()),
    ];
    files.extend(extra);
    let mut modules = kernel::disk_modules(SERIES)?;
    modules.extend(kernel::cached(SERIES)?.modules);
    // The socket-diagnostics modules too (the resolver names refused askers by them).
    let script = format!(
        "{env} ENFORCER_BIN={BIN}/enforcer ENFORCER_PROBE_BIN={BIN}/enforcer-probe RUSTC_BOOTSTRAP=1 \
         {BIN}/enforcer-workload-tests --test-threads=1 --nocapture -Z unstable-options --report-time"
    );
    Ok(VmSpec {
        kernel: kernel::cached(SERIES)?,
        files,
        script,
        icount: false,
        timeout: TIMEOUT,
        echo: Some(String::new()),
        exec_log: None,
        disk: Some(Disk { image: setup::rootfs_image()?, modules }),
    })
}

/// policies/coding-agent.toml with the company's hosts where GitHub's and the
/// public registries' are, everything else as shipped, written under target/;
/// its path.
pub fn adapted_policy() -> Result<PathBuf> {
    let shipped = cmd::workspace_root().join("policies/coding-agent.toml");
    let text = std::fs::read_to_string(&shipped).with_context(|| format!("cannot read {}", shipped.display()))?;
    let mut policy: toml::Table = text.parse().with_context(|| format!("{} does not parse", shipped.display()))?;
    let network = policy
        .get_mut("network")
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("{} has no [network] table", shipped.display()))?;
    let forge = toml::Table::from_iter([
        ("to".to_string(), toml::Value::from(format!("{FORGE}:443"))),
        ("tls".to_string(), toml::Value::from("require")),
    ]);
    let names = [format!("{INDEX}:443"), format!("{REGISTRY}:443")].map(toml::Value::from);
    network.insert("allow".into(), toml::Value::Array([toml::Value::Table(forge)].into_iter().chain(names).collect()));
    network.insert("after_sensitive_read".into(), toml::Value::Array(vec![toml::Value::from(format!("{FORGE}:443"))]));
    let upload = [format!("{FORGE}: 2MiB/10m"), "*: 500MiB/1h".to_string()].map(toml::Value::from);
    network.insert("upload".into(), toml::Value::Array(upload.into()));
    let out = cmd::bench_dir()?.join("workload-coding-agent.toml");
    let header = "# policies/coding-agent.toml with the workload's hosts (xtask/src/test/workload.rs)\n";
    std::fs::write(&out, format!("{header}{}", toml::to_string(&policy)?))
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}
