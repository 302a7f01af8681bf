//! Host tools: qemu >= 10, static busybox, cpio, libseccomp-dev, nightly rust-src and bpf-linker.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::apt;
use crate::cmd;
use crate::vm::initramfs;

const MIN_QEMU_MAJOR: u32 = 10;
/// What the host tier runs: the agent workload under `@default-agent`,
/// systemd-analyze for the units, runc for containers tagged by the OCI
/// hook, and curl and openssl for the TLS name tests (tool, Debian package).
const WORKLOAD_TOOLS: [(&str, &str); 8] = [
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("git", "git"),
    ("cc", "gcc"),
    ("python3", "python3"),
    ("node", "nodejs"),
    ("systemd-analyze", "systemd"),
    ("runc", "runc"),
];
/// What setup unpacks compressed kernel modules with (Debian 13's are `.ko.xz`).
const MODULE_TOOLS: [(&str, &str); 2] = [("xz", "xz-utils"), ("zstd", "zstd")];
const BUSYBOX: &str = "/bin/busybox";

/// qemu-system-x86 from bookworm-backports (Debian 12's QEMU 7.2 corrupts 6.12 guests),
/// busybox-static, cpio, and libseccomp-dev (the enforcer links libseccomp to build its
/// syscall filters).
pub fn debian_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        let version = qemu_version().map(|(_, v)| v).unwrap_or_default();
        println!("setup: qemu {version}, static busybox, cpio and libseccomp-dev present");
        return Ok(());
    }
    println!("setup: missing {}; installing", missing.join(", "));
    apt::require_apt("installing qemu, busybox-static, cpio and libseccomp-dev")?;
    apt::ensure_backports_source()?;
    apt::update()?;
    // Without recommended packages: they are the GUI, audio, video, UEFI and network
    // block drivers (535 MB) a headless VM booted by SeaBIOS from an initramfs never uses.
    apt::install(&["-t", "bookworm-backports", "--no-install-recommends", "qemu-system-x86"])?;
    apt::install(&["busybox-static", "cpio", "libseccomp-dev", "pkg-config"])?;
    let workload: Vec<&str> = WORKLOAD_TOOLS
        .iter()
        .chain(&MODULE_TOOLS)
        .filter(|(tool, _)| !cmd::on_path(tool))
        .map(|&(_, pkg)| pkg)
        .collect();
    if !workload.is_empty() {
        apt::install(&workload)?;
    }

    let still = missing_packages();
    if !still.is_empty() {
        bail!("after apt-get install still missing: {}", still.join(", "));
    }
    let version = qemu_version().map(|(_, v)| v).unwrap_or_default();
    println!("setup: qemu {version}, static busybox, cpio and libseccomp-dev installed");
    Ok(())
}

fn missing_packages() -> Vec<String> {
    let mut missing = Vec::new();
    match qemu_version() {
        Some((major, _)) if major >= MIN_QEMU_MAJOR => {}
        Some((_, version)) => {
            missing.push(format!("qemu >= {MIN_QEMU_MAJOR} (found {version})"));
        }
        None => missing.push("qemu-system-x86_64".to_string()),
    }
    if !busybox_is_static() {
        missing.push(format!("static busybox at {BUSYBOX}"));
    }
    if !cmd::on_path("cpio") {
        missing.push("cpio".to_string());
    }
    if !libseccomp_dev_present() {
        missing.push("libseccomp-dev".to_string());
    }
    for (tool, package) in WORKLOAD_TOOLS.iter().chain(&MODULE_TOOLS) {
        if !cmd::on_path(tool) {
            missing.push(format!("{tool} (package {package})"));
        }
    }
    missing
}

/// (major, full version) of qemu-system-x86_64, if it runs.
pub fn qemu_version() -> Option<(u32, String)> {
    let out = cmd::output(Command::new("qemu-system-x86_64").arg("--version")).ok()?;
    // "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
    let version = out.lines().next()?.split("version ").nth(1)?.split_whitespace().next()?;
    let major = version.split('.').next()?.parse().ok()?;
    Some((major, version.to_string()))
}

/// The linker needs `libseccomp.so` (the unversioned name only the -dev package installs).
fn libseccomp_dev_present() -> bool {
    Command::new("pkg-config").args(["--exists", "libseccomp"]).status().is_ok_and(|s| s.success())
}

fn busybox_is_static() -> bool {
    Path::new(BUSYBOX).is_file() && initramfs::shared_libraries(Path::new(BUSYBOX)).is_ok_and(|libs| libs.is_empty())
}

/// The toolchain components the build and the lint tier need: nightly's rust-src (for
/// `-Z build-std=core` on the bpf target) and clippy (the eBPF crate's lints), and the
/// active toolchain's clippy and rustfmt.
pub fn rust_components() -> Result<()> {
    component(&|| nightly("rustup"), Some("nightly"), &["rust-src", "clippy"])?;
    // The toolchain `cargo xtask` runs under (rustup's proxy names it in RUSTUP_TOOLCHAIN).
    component(&|| Command::new("rustup"), None, &["clippy", "rustfmt"])
}

/// Adds the `wanted` components `toolchain` (the active one if `None`) lacks.
fn component(rustup: &dyn Fn() -> Command, toolchain: Option<&str>, wanted: &[&str]) -> Result<()> {
    let name = toolchain.unwrap_or("active");
    let toolchain_args: Vec<&str> = toolchain.map(|t| vec!["--toolchain", t]).unwrap_or_default();
    let installed = cmd::output(rustup().args(["component", "list", "--installed"]).args(&toolchain_args))
        .with_context(|| format!("could not list the {name} toolchain's components; is rustup's {name} installed?"))?;
    // Listed as `clippy-x86_64-unknown-linux-gnu`, or bare (`rust-src`).
    let has = |want: &str| installed.lines().map(str::trim).any(|l| l == want || l.starts_with(&format!("{want}-")));
    let missing: Vec<&str> = wanted.iter().copied().filter(|want| !has(want)).collect();
    if missing.is_empty() {
        println!("setup: {name} toolchain has {}", wanted.join(", "));
        return Ok(());
    }
    println!("setup: adding {} to the {name} toolchain", missing.join(", "));
    cmd::run(rustup().args(["component", "add"]).args(&missing).args(&toolchain_args))
}

/// bpf-linker, built against the nightly toolchain's own LLVM so both agree on the bitcode.
pub fn bpf_linker() -> Result<()> {
    if let Ok(version) = cmd::output(Command::new("bpf-linker").arg("--version")) {
        println!("setup: {} present", version.trim());
        return Ok(());
    }
    println!("setup: building bpf-linker against nightly's LLVM (takes about a minute)");
    let sysroot = cmd::output(nightly("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("could not list {}", lib.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM-") && Path::new(name).extension().is_some_and(|ext| ext == "so"))
        .with_context(|| format!("no libLLVM-*.so in {}; is nightly installed fully?", lib.display()))?;
    let llvm = llvm.trim_start_matches("lib").trim_end_matches(".so");
    let lib = lib.display();
    cmd::run(
        nightly("cargo")
            .args(["+nightly", "install", "bpf-linker", "--no-default-features"])
            .args(["--features", "llvm-22,no-llvm-linking"])
            .env("RUSTFLAGS", format!("-L {lib} -l dylib={llvm} -C link-arg=-Wl,-rpath,{lib}")),
    )
    .context("building bpf-linker failed")?;
    let version = cmd::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?")?;
    println!("setup: {} installed", version.trim());
    Ok(())
}

/// A command for the nightly toolchain, without the toolchain pins `cargo run` leaves
/// in our environment.
fn nightly(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("RUSTUP_TOOLCHAIN").env_remove("LD_LIBRARY_PATH");
    cmd
}
