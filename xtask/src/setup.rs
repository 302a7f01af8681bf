//! `cargo xtask setup`: install what building and testing need, idempotently.
//!
//! Every step first checks cheaply whether its result is already there and says so
//! in one line, so a warm re-run takes seconds and never touches the network.

mod apt;
mod debian_index;
mod kernels;
mod rootfs;
mod tools;

use anyhow::{Result, bail};
use clap::Parser;

use crate::kernel;

#[derive(Debug, Parser)]
pub struct Options {
    /// Do not download the VM kernels (enough for the unit and host tiers).
    #[arg(long)]
    pub skip_kernels: bool,

    /// Kernel series to cache (default: all the VM tier uses).
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let series: Vec<String> = if opts.skip_kernels {
        Vec::new()
    } else if opts.kernels.is_empty() {
        kernel::FETCHED.iter().map(ToString::to_string).collect()
    } else {
        opts.kernels.clone()
    };
    ensure(true, &series)?;
    if series.iter().any(|s| s == crate::test::WORKLOAD_SERIES) {
        ensure_workload(crate::test::WORKLOAD_SERIES)?;
    }
    println!("setup: done");
    Ok(())
}

/// What setup does: the build tools, the VM tools (qemu, busybox, cpio) if `vm_tools`,
/// and the given kernel series. Cheap when all is in place.
pub fn ensure(vm_tools: bool, kernel_series: &[String]) -> Result<()> {
    if vm_tools {
        tools::debian_packages()?;
    }
    tools::rust_components()?;
    tools::bpf_linker()?;
    // Try every series before failing, so one unavailable series does not block the rest.
    let failures: Vec<String> =
        kernel_series.iter().filter_map(|series| kernels::ensure(series).err().map(|e| format!("{e:#}"))).collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// What the workload VM needs beyond [`ensure`]: the root filesystem image and
/// the kernel's virtio disk modules.
pub fn ensure_workload(series: &str) -> Result<()> {
    kernels::ensure(series)?;
    kernels::ensure_disk_modules(series)?;
    rootfs::ensure()
}

/// The cached root filesystem image of the workload VM.
pub fn rootfs_image() -> Result<std::path::PathBuf> {
    rootfs::image()
}
