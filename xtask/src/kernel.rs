//! The cache of Debian kernels the VM tier boots.
//!
//! It lives outside the repository (CI works in fresh clones on the same machine):
//! `$ENFORCER_CACHE`, else `$XDG_CACHE_HOME/enforcer`, else `$HOME/.cache/enforcer`,
//! with one directory per series: `kernels/<series>/{vmlinuz,config,version,package}`.
//! `cargo xtask setup` fills it (see `setup::kernels`).

use std::fs;
use std::path::PathBuf;

use anyhow::{Result, bail};

/// The kernel series the benchmarks and the demo run on by default: those that load the
/// main build of the programs, in seconds under TCG.
pub const SERIES: &[&str] = &["6.1", "6.12", "7.3"];

/// The whole matrix: what `cargo xtask setup` caches and the VM tier runs by default.
/// 5.10 loads the compat build, whose verification takes minutes under TCG.
pub const FETCHED: &[&str] = &["5.10", "6.1", "6.12", "7.3"];

/// The series a command was asked for with `--kernel`, or [`SERIES`] if none.
#[must_use]
pub fn chosen(kernels: &[String]) -> Vec<String> {
    chosen_or(kernels, SERIES)
}

/// The series a command was asked for with `--kernel`, or `default` if none.
#[must_use]
pub fn chosen_or(kernels: &[String], default: &[&str]) -> Vec<String> {
    if kernels.is_empty() { default.iter().map(ToString::to_string).collect() } else { kernels.to_vec() }
}

/// A cached kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// "5.10", "6.1", "6.12", "7.3".
    pub series: String,
    /// The kernel image qemu boots.
    pub vmlinuz: PathBuf,
    /// Debian package it came from, e.g. `linux-image-6.1.0-41-cloud-amd64`.
    pub package: String,
    /// That package's full version, e.g. `6.1.158-1`.
    pub version: String,
    /// [`DIAG_MODULES`], uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

/// The socket-diagnostics modules (Debian builds them as modules) the
/// daemon's resolvers use to learn which cgroup asked: the test VMs load
/// them, as a host's modprobe would on the first request.
pub const DIAG_MODULES: [&str; 3] = ["inet_diag", "tcp_diag", "udp_diag"];

/// What a VM needs to mount a root filesystem image as a virtio disk, in load
/// order: the PCI transport (built in on 6.12 and later, and its helpers absent
/// before 5.14) and the block driver. Setup copies those the package has.
pub const DISK_MODULES: [&str; 4] = ["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"];

/// Written into a kernel's `modules` directory once [`DISK_MODULES`] were looked
/// for in its package (caches made before they were have none).
pub const DISK_MODULES_DONE: &str = "disk-modules.done";

/// The [`DISK_MODULES`] a cached kernel needs loaded to mount a disk, in load order.
pub fn disk_modules(series: &str) -> Result<Vec<PathBuf>> {
    let dir = series_dir(series)?.join("modules");
    if !dir.join(DISK_MODULES_DONE).is_file() {
        bail!("kernel {series} is cached without its virtio disk modules; run `cargo xtask setup --kernel {series}`");
    }
    Ok(DISK_MODULES.iter().map(|name| dir.join(format!("{name}.ko"))).filter(|m| m.is_file()).collect())
}

/// The cache root.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("ENFORCER_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(dir.join("enforcer"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".cache").join("enforcer"));
    }
    bail!("no cache directory: set ENFORCER_CACHE (or HOME) to a directory that persists")
}

/// Where the kernel of a series is cached (whether or not it is).
pub fn series_dir(series: &str) -> Result<PathBuf> {
    Ok(cache_dir()?.join("kernels").join(series))
}

/// The cached kernel of a series, or an error saying how to get it.
pub fn cached(series: &str) -> Result<Kernel> {
    let dir = series_dir(series)?;
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        bail!("no kernel cached for {series} (looked for {}); run `cargo xtask setup`", vmlinuz.display());
    }
    let modules: Vec<PathBuf> =
        DIAG_MODULES.iter().map(|name| dir.join("modules").join(format!("{name}.ko"))).collect();
    if let Some(missing) = modules.iter().find(|m| !m.is_file()) {
        bail!("kernel {series} is cached without {}; run `cargo xtask setup`", missing.display());
    }
    let read = |name: &str| fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string());
    Ok(Kernel {
        modules,
        series: series.to_string(),
        vmlinuz,
        package: read("package").unwrap_or_else(|_| "unknown package".to_string()),
        version: read("version").unwrap_or_else(|_| "unknown version".to_string()),
    })
}

/// Whether the cached kernel's build config has `CONFIG_BPF_LSM=y` (None: no config cached).
pub fn has_bpf_lsm(series: &str) -> Result<Option<bool>> {
    let path = series_dir(series)?.join("config");
    let Ok(config) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    Ok(Some(config.lines().any(|l| l.trim() == "CONFIG_BPF_LSM=y")))
}
