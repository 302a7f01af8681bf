//! Download Debian cloud kernels into the kernel cache.
//!
//! Series "6.1" is what bookworm's `linux-image-cloud-amd64` depends on, "6.12" what
//! bookworm-backports' does; any series is picked by the version prefix `<series>.`
//! among the versions `apt-cache show linux-image-cloud-amd64` lists (the highest wins).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::apt;
use crate::cmd::{self, TempDir};
use crate::kernel;

const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Make sure a kernel of `series` is cached; download it if not.
pub fn ensure(series: &str) -> Result<()> {
    if let Ok(k) = kernel::cached(series) {
        println!(
            "setup: kernel {series} cached ({} {})",
            k.package, k.version
        );
    } else {
        download(series).with_context(|| format!("could not cache kernel {series}"))?;
    }
    match kernel::has_bpf_lsm(series)? {
        Some(true) => println!("setup: kernel {series} config has CONFIG_BPF_LSM=y"),
        Some(false) => bail!(
            "kernel {series} config lacks CONFIG_BPF_LSM=y, so the VM tier cannot load BPF LSM \
             programs; delete {} and run `cargo xtask setup` again",
            kernel::series_dir(series)?.display()
        ),
        None => {
            println!(
                "setup: warning: kernel {series} has no cached config to check CONFIG_BPF_LSM"
            );
        }
    }
    Ok(())
}

fn download(series: &str) -> Result<()> {
    apt::require_apt(&format!("downloading kernel {series}"))?;
    let mut refreshed = false;
    if apt::ensure_backports_source()? {
        apt::update()?;
        refreshed = true;
    }
    let (package, version) = match find_package(series) {
        Some(found) => found,
        None if !refreshed => {
            apt::update()?;
            refreshed = true;
            find_package(series).with_context(|| no_package(series))?
        }
        None => bail!(no_package(series)),
    };
    println!("setup: downloading kernel {series} ({package} {version})");

    let final_dir = kernel::series_dir(series)?;
    let kernels_dir = final_dir.parent().expect("series dir has a parent");
    // Everything happens in a scratch directory next to the final one, which is renamed
    // into place at the end: an interrupted download leaves no half cache.
    cmd::remove_abandoned(kernels_dir, ".partial-");
    let scratch = TempDir::new_in(kernels_dir, &format!(".partial-{series}"))?;
    let fetch = || {
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .arg(format!("{package}={version}"))
                .current_dir(scratch.path()),
        )
    };
    if fetch().is_err() {
        if refreshed {
            bail!("apt-get download {package}={version} failed; check the network");
        }
        println!("setup: download failed; the package lists may be stale, refreshing them");
        apt::update()?;
        fetch()?;
    }
    let deb = find_file(scratch.path(), |n| {
        Path::new(n).extension().is_some_and(|e| e == "deb")
    })?
    .context("apt-get download produced no .deb file")?;
    let tree = scratch.path().join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;

    let out = scratch.path().join("out");
    fs::create_dir(&out)?;
    let boot = tree.join("boot");
    let vmlinuz = find_file(&boot, |n| n.starts_with("vmlinuz-"))?
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))?;
    fs::set_permissions(out.join("vmlinuz"), fs::Permissions::from_mode(0o644))?;
    if let Some(config) = find_file(&boot, |n| n.starts_with("config-"))? {
        fs::copy(config, out.join("config"))?;
    }
    fs::write(out.join("version"), format!("{version}\n"))?;
    fs::write(out.join("package"), format!("{package}\n"))?;

    if final_dir.exists() && kernel::cached(series).is_err() {
        // A cache dir without vmlinuz (from an older layout or by hand): replace it.
        fs::remove_dir_all(&final_dir)
            .with_context(|| format!("could not remove stale {}", final_dir.display()))?;
    }
    if let Err(e) = fs::rename(&out, &final_dir) {
        if kernel::cached(series).is_ok() {
            println!("setup: kernel {series} was cached meanwhile by another process");
            return Ok(());
        }
        return Err(e)
            .with_context(|| format!("could not move the kernel into {}", final_dir.display()));
    }
    println!("setup: kernel {series} cached in {}", final_dir.display());
    Ok(())
}

fn no_package(series: &str) -> String {
    format!(
        "apt knows no {META_PACKAGE} of version {series}.*; kernel series {series} is not \
         available from bookworm or bookworm-backports (known series: {})",
        kernel::SERIES.join(", ")
    )
}

/// (package, version) of the kernel image `linux-image-cloud-amd64 <series>.*` depends on,
/// the highest such version apt knows.
fn find_package(series: &str) -> Option<(String, String)> {
    let show =
        cmd::output(Command::new("apt-cache").args(["show", META_PACKAGE])).unwrap_or_default();
    let prefix = format!("{series}.");
    let mut best: Option<(String, String)> = None;
    for stanza in show.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
                .map(str::to_string)
        };
        let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
            continue;
        };
        if !version.starts_with(&prefix) {
            continue;
        }
        // "linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)"
        let Some(dep) = depends
            .split(',')
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-"))
        else {
            continue;
        };
        let package = dep.split_whitespace().next().unwrap_or(dep).to_string();
        let dep_version = dep
            .split("(=")
            .nth(1)
            .and_then(|v| v.split(')').next())
            .map_or_else(|| version.clone(), |v| v.trim().to_string());
        if best.as_ref().is_none_or(|(_, v)| newer(&dep_version, v)) {
            best = Some((package, dep_version));
        }
    }
    best
}

/// Whether Debian version `a` is newer than `b`.
fn newer(a: &str, b: &str) -> bool {
    cmd::succeeds(Command::new("dpkg").args(["--compare-versions", a, "gt", b]))
}

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Option<std::path::PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(&matches) && entry.path().is_file() {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}
