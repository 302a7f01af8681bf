//! Debian package management: the bookworm-backports source, `apt-get update`/`install`.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/enforcer-backports.list";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main\n";

/// Fail with a useful message unless we can manage packages with apt here.
pub fn require_apt(what: &str) -> Result<()> {
    if !cmd::on_path("apt-get") {
        bail!("{what} needs apt-get (Debian 12 \"bookworm\"); install it by hand on this system");
    }
    if !cmd::is_root() {
        bail!("{what} needs root to run apt-get; re-run as root (e.g. `sudo -E cargo xtask setup`)");
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os_release.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm") {
        bail!(
            "{what}: automatic installation supports Debian 12 (bookworm) only, which this system \
             is not; install qemu-system-x86 >= 10, busybox-static and cpio by hand"
        );
    }
    Ok(())
}

/// Make sure bookworm-backports is an apt source. Returns whether the file was (re)written,
/// in which case the package lists need an `apt-get update`.
pub fn ensure_backports_source() -> Result<bool> {
    if fs::read_to_string(BACKPORTS_LIST).is_ok_and(|s| s == BACKPORTS_LINE) {
        return Ok(false);
    }
    println!("setup: adding bookworm-backports to apt sources ({BACKPORTS_LIST})");
    let path = Path::new(BACKPORTS_LIST);
    let tmp = path.with_extension("list.tmp");
    fs::write(&tmp, BACKPORTS_LINE).with_context(|| format!("could not write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("could not write {BACKPORTS_LIST}"))?;
    Ok(true)
}

/// `apt-get update`.
pub fn update() -> Result<()> {
    println!("setup: apt-get update");
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
        .context("could not refresh the apt package lists; check the network and apt sources")
}

/// `apt-get install -y [ARGS...]`, non-interactively.
pub fn install(args: &[&str]) -> Result<()> {
    println!("setup: apt-get install {}", args.join(" "));
    cmd::run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q"]).args(args))
}
