//! The Debian root filesystem the workload VM boots: a coding agent's toolchain
//! (git, Python with venv, pip and pytest, Node with npm, gcc and make, cargo),
//! built from Debian's packages with mmdebstrap and cached as an ext4 image next
//! to the kernels. The VM opens it with `snapshot=on`, so no run changes it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::apt;
use crate::cmd::{self, TempDir};
use crate::kernel;

const SUITE: &str = "bookworm";
/// What the scripted coding session uses, plus iproute2 (the VM's addresses) and
/// openssl (its certificates).
const PACKAGES: &[&str] = &[
    "git",
    "python3",
    "python3-venv",
    "python3-pip",
    "python3-pytest",
    "python3-setuptools",
    "python3-wheel",
    "nodejs",
    "npm",
    "gcc",
    "make",
    "libc6-dev",
    "cargo",
    "ca-certificates",
    "openssl",
    "curl",
    "iproute2",
    "procps",
];
/// Documentation and translations nobody reads in a test VM (a fifth of the size).
const EXCLUDED: &[&str] = &["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"];
/// Free room in the image for what the session writes (virtualenvs, `node_modules`,
/// build trees); the image file is sparse, so the room costs no disk.
const ROOM_MIB: u64 = 2048;

/// The cached image, or an error saying how to build it.
pub fn image() -> Result<PathBuf> {
    let dir = dir()?;
    let image = dir.join("rootfs.ext4");
    if !image.is_file() {
        bail!("no root filesystem image cached (looked for {}); run `cargo xtask setup`", image.display());
    }
    if fs::read_to_string(dir.join("recipe")).ok().as_deref() != Some(recipe().as_str()) {
        bail!("the root filesystem image in {} was built from another recipe; run `cargo xtask setup`", dir.display());
    }
    Ok(image)
}

fn dir() -> Result<PathBuf> {
    Ok(kernel::cache_dir()?.join("rootfs").join(format!("{SUITE}-agent")))
}

/// What the image is built from; an image of another recipe is rebuilt.
fn recipe() -> String {
    format!("suite {SUITE}\npackages {}\nexcluded {}\nroom {ROOM_MIB} MiB\n", PACKAGES.join(","), EXCLUDED.join(","))
}

/// Make sure the image is cached; build it if not (about two minutes and 1 GB of
/// downloads from Debian's mirror).
pub fn ensure() -> Result<()> {
    if let Ok(image) = image() {
        println!("setup: root filesystem image cached ({})", image.display());
        return Ok(());
    }
    if !cmd::on_path("mmdebstrap") {
        apt::require_apt("installing mmdebstrap (to build the workload VM's root filesystem)")?;
        apt::install(&["mmdebstrap"])?;
    }
    if !cmd::is_root() {
        bail!("building the workload VM's root filesystem needs root (mmdebstrap --mode=root); re-run as root");
    }
    let dir = dir()?;
    let parent = dir.parent().expect("rootfs dir has a parent");
    fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    cmd::remove_abandoned(parent, ".partial-");
    let scratch = TempDir::new_in(parent, ".partial-rootfs")?;
    let root = scratch.path().join("root");
    println!("setup: building the workload VM's root filesystem ({SUITE}: {})", PACKAGES.join(", "));
    let mut debootstrap = Command::new("mmdebstrap");
    debootstrap.args(["--mode=root", "--variant=apt", "--quiet"]);
    for pattern in EXCLUDED {
        debootstrap.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    debootstrap.arg(format!("--include={}", PACKAGES.join(","))).arg(SUITE).arg(&root);
    cmd::run(&mut debootstrap).context("mmdebstrap failed (is Debian's mirror reachable?)")?;

    let out = scratch.path().join("out");
    fs::create_dir(&out)?;
    // What is installed, for whoever needs to know which versions a run used.
    let versions = cmd::output(Command::new("chroot").arg(&root).args(["dpkg-query", "-W"]))?;
    fs::write(out.join("packages"), versions)?;
    let used = cmd::output(Command::new("du").args(["-s", "--block-size=1M"]).arg(&root))?;
    let used_mib: u64 =
        used.split_whitespace().next().and_then(|n| n.parse().ok()).context("could not read du's output")?;
    let image = out.join("rootfs.ext4");
    cmd::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "enforcer-root", "-d"])
            .arg(&root)
            .arg(&image)
            .arg(format!("{}M", used_mib + used_mib / 4 + ROOM_MIB)),
    )
    .context("mke2fs could not make the image")?;
    fs::write(out.join("recipe"), recipe())?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("could not remove the old {}", dir.display()))?;
    }
    fs::rename(&out, &dir).with_context(|| format!("could not move the image into {}", dir.display()))?;
    println!("setup: root filesystem image cached in {} ({used_mib} MiB of files)", dir.display());
    Ok(())
}
