//! Download Debian cloud kernels into the kernel cache.
//!
//! Series "6.1" is what bookworm's `linux-image-cloud-amd64` depends on, "6.12" what
//! bookworm-backports' does (both apt sources of this host; the highest version
//! `apt-cache show linux-image-cloud-amd64` lists with the prefix `<series>.` wins).
//! "5.10" comes from bullseye-security and "7.x" from trixie-backports, suites that are
//! not apt sources here: their signed indexes are read from the mirror (`debian_index`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::apt;
use super::debian_index::{self, Suite};
use crate::cmd::{self, TempDir};
use crate::kernel;

const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Where a series' packages come from.
enum Origin {
    /// The version `linux-image-cloud-amd64` depends on, from this host's apt sources.
    Apt,
    /// The newest `<image_prefix><series>.*-cloud-amd64` of a suite read from the mirror.
    Suite { suite: Suite, image_prefix: &'static str },
}

fn origin(series: &str) -> Origin {
    match series {
        "5.10" => Origin::Suite {
            suite: Suite { mirror: "http://deb.debian.org/debian-security", name: "bullseye-security" },
            image_prefix: "linux-image-",
        },
        // Debian 13 splits the image: `linux-binary-*` holds vmlinuz, `linux-base-*` the
        // config, `linux-modules-*` the modules.
        s if s.starts_with("7.") => Origin::Suite {
            suite: Suite { mirror: "http://deb.debian.org/debian", name: "trixie-backports" },
            image_prefix: "linux-binary-",
        },
        _ => Origin::Apt,
    }
}

/// Make sure a kernel of `series` is cached; download it if not.
pub fn ensure(series: &str) -> Result<()> {
    if let Ok(k) = kernel::cached(series) {
        println!("setup: kernel {series} cached ({} {})", k.package, k.version);
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
            println!("setup: warning: kernel {series} has no cached config to check CONFIG_BPF_LSM");
        }
    }
    Ok(())
}

fn download(series: &str) -> Result<()> {
    let final_dir = kernel::series_dir(series)?;
    let kernels_dir = final_dir.parent().expect("series dir has a parent");
    fs::create_dir_all(kernels_dir).with_context(|| format!("could not create {}", kernels_dir.display()))?;
    // Everything happens in a scratch directory next to the final one, which is renamed
    // into place at the end: an interrupted download leaves no half cache.
    cmd::remove_abandoned(kernels_dir, ".partial-");
    let scratch = TempDir::new_in(kernels_dir, &format!(".partial-{series}"))?;
    let (package, version, debs) = match origin(series) {
        Origin::Apt => from_apt(series, scratch.path())?,
        Origin::Suite { suite, image_prefix } => from_suite(series, &suite, image_prefix, scratch.path())?,
    };
    let tree = scratch.path().join("tree");
    for deb in &debs {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
    }

    let out = scratch.path().join("out");
    fs::create_dir(&out)?;
    // Up to Debian 12: boot/vmlinuz-<release>; Debian 13: usr/lib/modules/<release>/vmlinuz.
    let vmlinuz = kernel_file(&tree, "vmlinuz")?.with_context(|| format!("{package} has no vmlinuz"))?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))?;
    fs::set_permissions(out.join("vmlinuz"), fs::Permissions::from_mode(0o644))?;
    if let Some(config) = kernel_file(&tree, "config")? {
        fs::copy(config, out.join("config"))?;
    }
    let modules = out.join("modules");
    fs::create_dir(&modules)?;
    for name in kernel::DIAG_MODULES {
        let found = module_file(&tree, name)?.with_context(|| format!("{package} has no {name} module"))?;
        uncompressed_copy(&found, &modules.join(format!("{name}.ko")))?;
    }
    copy_disk_modules(&tree, &modules)?;
    fs::write(out.join("version"), format!("{version}\n"))?;
    fs::write(out.join("package"), format!("{package}\n"))?;

    if final_dir.exists() && kernel::cached(series).is_err() {
        // A cache dir without vmlinuz (from an older layout or by hand): replace it.
        fs::remove_dir_all(&final_dir).with_context(|| format!("could not remove stale {}", final_dir.display()))?;
    }
    if let Err(e) = fs::rename(&out, &final_dir) {
        if kernel::cached(series).is_ok() {
            println!("setup: kernel {series} was cached meanwhile by another process");
            return Ok(());
        }
        return Err(e).with_context(|| format!("could not move the kernel into {}", final_dir.display()));
    }
    println!("setup: kernel {series} cached in {}", final_dir.display());
    Ok(())
}

/// The [`kernel::DISK_MODULES`] the unpacked packages in `tree` have, into `modules`,
/// then the marker that they were looked for.
fn copy_disk_modules(tree: &Path, modules: &Path) -> Result<()> {
    for name in kernel::DISK_MODULES {
        if let Some(found) = module_file(tree, name)? {
            uncompressed_copy(&found, &modules.join(format!("{name}.ko")))?;
        }
    }
    fs::write(modules.join(kernel::DISK_MODULES_DONE), "")
        .with_context(|| format!("could not write into {}", modules.display()))
}

/// Make sure a cached kernel has its virtio disk modules (for the VMs that boot a
/// root filesystem image); a cache made before they were copied gets them from the
/// same package version again.
pub fn ensure_disk_modules(series: &str) -> Result<()> {
    if kernel::disk_modules(series).is_ok() {
        return Ok(());
    }
    let cached = kernel::cached(series)?;
    let dir = kernel::series_dir(series)?;
    println!(
        "setup: kernel {series} is cached without its disk modules; fetching {} {} again",
        cached.package, cached.version
    );
    let scratch = TempDir::new_in(dir.parent().expect("series dir has a parent"), &format!(".partial-{series}-disk"))?;
    let debs = match origin(series) {
        Origin::Apt => vec![apt_download(&cached.package, &cached.version, scratch.path())?],
        Origin::Suite { suite, .. } => {
            let index = suite.index(scratch.path())?;
            let mut names = vec![cached.package.clone()];
            if let Some(rest) = cached.package.strip_prefix("linux-binary-") {
                names.push(format!("linux-modules-{rest}"));
            }
            let mut debs = Vec::new();
            for name in names {
                let package = index.exact(&name, &cached.version).with_context(|| {
                    format!(
                        "{} no longer has {name} {}: delete {} and run `cargo xtask setup` for a newer kernel",
                        suite.name,
                        cached.version,
                        dir.display()
                    )
                })?;
                debs.push(suite.fetch(package, scratch.path())?);
            }
            debs
        }
    };
    let tree = scratch.path().join("tree");
    for deb in &debs {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
    }
    copy_disk_modules(&tree, &dir.join("modules"))?;
    println!("setup: kernel {series} disk modules cached");
    Ok(())
}

/// `apt-get download package=version` into `dir`; the .deb it wrote.
fn apt_download(package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let fetch = || {
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .arg(format!("{package}={version}"))
                .current_dir(dir),
        )
    };
    if fetch().is_err() {
        println!("setup: download failed; the package lists may be stale, refreshing them");
        apt::update()?;
        fetch().with_context(|| format!("apt-get download {package}={version} failed; check the network"))?;
    }
    find_file(dir, |n| Path::new(n).extension().is_some_and(|e| e == "deb"))?
        .context("apt-get download produced no .deb file")
}

/// The image package from this host's apt sources (bookworm, bookworm-backports).
fn from_apt(series: &str, scratch: &Path) -> Result<(String, String, Vec<PathBuf>)> {
    apt::require_apt(&format!("downloading kernel {series}"))?;
    let refreshed = apt::ensure_backports_source()?;
    if refreshed {
        apt::update()?;
    }
    let (package, version) = match find_package(series) {
        Some(found) => found,
        None if !refreshed => {
            apt::update()?;
            find_package(series).with_context(|| no_package(series))?
        }
        None => bail!(no_package(series)),
    };
    println!("setup: downloading kernel {series} ({package} {version})");
    let deb = apt_download(&package, &version, scratch)?;
    Ok((package, version, vec![deb]))
}

/// The newest image of `series` in `suite`, and the packages with its config and
/// modules when the image has neither (Debian 13's `linux-base-*`, `linux-modules-*`).
fn from_suite(
    series: &str,
    suite: &Suite,
    image_prefix: &str,
    scratch: &Path,
) -> Result<(String, String, Vec<PathBuf>)> {
    let index = suite.index(scratch).with_context(|| format!("could not read the package index of {}", suite.name))?;
    let prefix = format!("{image_prefix}{series}.");
    let image = index
        .newest(|name| name.starts_with(&prefix) && name.ends_with("-cloud-amd64"))
        .with_context(|| {
            format!(
                "{} has no {prefix}*-cloud-amd64 package; kernel series {series} is not available there",
                suite.name
            )
        })?
        .clone();
    println!("setup: downloading kernel {series} ({} {} from {})", image.name, image.version, suite.name);
    let mut debs = vec![suite.fetch(&image, scratch)?];
    if let Some(rest) = image.name.strip_prefix("linux-binary-") {
        for (kind, what) in [("base", "its config"), ("modules", "its modules")] {
            let name = format!("linux-{kind}-{rest}");
            let package = index.exact(&name, &image.version).with_context(|| {
                format!("{} has {} but not {name} {} ({what})", suite.name, image.name, image.version)
            })?;
            debs.push(suite.fetch(package, scratch)?);
        }
    }
    Ok((image.name, image.version, debs))
}

/// `boot/<name>-*` or `usr/lib/modules/*/<name>` in an unpacked kernel package.
fn kernel_file(tree: &Path, name: &str) -> Result<Option<PathBuf>> {
    let boot = tree.join("boot");
    if boot.is_dir() {
        let prefix = format!("{name}-");
        if let Some(found) = find_file(&boot, |n| n.starts_with(&prefix))? {
            return Ok(Some(found));
        }
    }
    let modules = tree.join("usr/lib/modules");
    if modules.is_dir() {
        for entry in fs::read_dir(&modules).with_context(|| format!("could not list {}", modules.display()))? {
            let path = entry?.path().join(name);
            if path.is_file() {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// `<name>.ko` (or `.ko.xz`, `.ko.zst`) under `[usr/]lib/modules/*/kernel`.
fn module_file(tree: &Path, name: &str) -> Result<Option<PathBuf>> {
    let names = ["ko", "ko.xz", "ko.zst"].map(|suffix| format!("{name}.{suffix}"));
    for root in ["lib/modules", "usr/lib/modules"].map(|r| tree.join(r)).iter().filter(|r| r.is_dir()) {
        for entry in fs::read_dir(root).with_context(|| format!("could not list {}", root.display()))? {
            if let Some(found) = find_below(&entry?.path().join("kernel"), &names)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// The first file named one of `names` in `dir` or below it.
fn find_below(dir: &Path, names: &[String]) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if let Some(found) = find_below(&path, names)? {
                return Ok(Some(found));
            }
        } else if names.iter().any(|n| entry.file_name() == n.as_str()) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Copies a module, uncompressed (busybox's `insmod` takes plain `.ko`).
fn uncompressed_copy(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => {
            fs::copy(from, to).with_context(|| format!("could not copy {}", from.display()))?;
            return Ok(());
        }
    };
    let out = fs::File::create(to).with_context(|| format!("could not create {}", to.display()))?;
    cmd::run(Command::new(tool).arg("-dc").arg(from).stdout(out))
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
    let show = cmd::output(Command::new("apt-cache").args(["show", META_PACKAGE])).unwrap_or_default();
    let prefix = format!("{series}.");
    let mut best: Option<(String, String)> = None;
    for stanza in show.split("\n\n") {
        let field = |name: &str| stanza.lines().find_map(|l| l.strip_prefix(name).map(str::trim)).map(str::to_string);
        let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
            continue;
        };
        if !version.starts_with(&prefix) {
            continue;
        }
        // "linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)"
        let Some(dep) = depends.split(',').map(str::trim).find(|d| d.starts_with("linux-image-")) else {
            continue;
        };
        let package = dep.split_whitespace().next().unwrap_or(dep).to_string();
        let dep_version = dep
            .split("(=")
            .nth(1)
            .and_then(|v| v.split(')').next())
            .map_or_else(|| version.clone(), |v| v.trim().to_string());
        if best.as_ref().is_none_or(|(_, v)| debian_index::newer(&dep_version, v)) {
            best = Some((package, dep_version));
        }
    }
    best
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
