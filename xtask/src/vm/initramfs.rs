//! Build the VM's initramfs: static busybox, the spec's files (with the shared libraries
//! executables need), `/init` and the script, packed as a newc cpio archive.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::Disk;
use crate::cmd::{self, TempDir};

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";
/// Where the spec's script is staged; `init.sh` runs it.
const SCRIPT: &str = "enforcer-vm/script.sh";

/// A built initramfs; the archive is deleted when this is dropped.
pub struct Initramfs {
    dir: TempDir,
}

impl Initramfs {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("initrd.cpio")
    }
}

/// With a disk, what init copies into it before switching to it (`init.sh`):
/// `files/` over the image, `libs/` where the image has no such file, and
/// `modules/` loaded in name order first.
const DISK: &str = "enforcer-vm/disk";

/// Stage `files` (host path, absolute guest path) plus busybox, `/init` and `script`.
/// A host directory is copied with its contents. With a `disk`, the files go
/// where init copies them into the disk from.
pub fn build(files: &[(PathBuf, String)], script: &str, disk: Option<&Disk>) -> Result<Initramfs> {
    cmd::remove_abandoned(&std::env::temp_dir(), "enforcer-vm-");
    let dir = TempDir::new("enforcer-vm")?;
    let stage = dir.path().join("root");
    for d in ["bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "root", "etc", "enforcer-vm"] {
        fs::create_dir_all(stage.join(d))?;
    }
    copy_file(Path::new(BUSYBOX), &stage.join("bin/busybox"))
        .context("the VM needs a static busybox; run `cargo xtask setup`")?;
    write(&stage, "init", INIT, 0o755)?;
    write(&stage, SCRIPT, script, 0o644)?;
    write(&stage, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    write(&stage, "etc/group", "root:x:0:\n", 0o644)?;

    let (files_root, libs_root) = match disk {
        Some(disk) => {
            for (index, module) in disk.modules.iter().enumerate() {
                let name = module.file_name().unwrap_or_default().to_string_lossy();
                copy_file(module, &stage.join(format!("{DISK}/modules/{index:02}-{name}")))?;
            }
            (stage.join(DISK).join("files"), stage.join(DISK).join("libs"))
        }
        None => (stage.clone(), stage.clone()),
    };
    let mut libraries = BTreeSet::new();
    for (host, guest) in files {
        if !guest.starts_with('/') {
            bail!("guest path {guest:?} (for {}) must be absolute", host.display());
        }
        let dest = files_root.join(guest.trim_start_matches('/'));
        stage_path(host, &dest, &mut libraries)
            .with_context(|| format!("could not stage {} as {guest} in the VM", host.display()))?;
    }
    for lib in &libraries {
        let dest = libs_root.join(lib.strip_prefix("/").unwrap_or(lib));
        if !dest.exists() {
            copy_file(lib, &dest)?;
        }
    }

    pack(&stage, &dir.path().join("initrd.cpio"))?;
    fs::remove_dir_all(&stage).with_context(|| format!("could not remove {}", stage.display()))?;
    Ok(Initramfs { dir })
}

fn stage_path(host: &Path, dest: &Path, libraries: &mut BTreeSet<PathBuf>) -> Result<()> {
    let meta = fs::metadata(host).with_context(|| format!("{} not found", host.display()))?;
    if meta.is_dir() {
        fs::create_dir_all(dest)?;
        for entry in fs::read_dir(host)? {
            let entry = entry?;
            stage_path(&entry.path(), &dest.join(entry.file_name()), libraries)?;
        }
        return Ok(());
    }
    copy_file(host, dest)?;
    if meta.permissions().mode() & 0o111 != 0 {
        libraries.extend(shared_libraries(host)?);
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `path`; empty for static
/// executables and files that are not dynamic executables (scripts).
pub fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("could not run ldd (from libc-bin) to find shared libraries")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", path.display(), all.trim());
    }
    if let Some(missing) = stdout.lines().find(|l| l.contains("not found")) {
        bail!("{} needs a library this host lacks: {}", path.display(), missing.trim());
    }
    // "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "\t/lib64/ld-linux-x86-64.so.2 (0x...)"
    Ok(stdout
        .lines()
        .filter_map(|line| {
            let target = line.split("=>").last()?.split_whitespace().next()?;
            target.starts_with('/').then(|| PathBuf::from(target))
        })
        .collect())
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    // fs::copy follows symlinks and keeps the permission bits.
    fs::copy(from, to).with_context(|| format!("could not copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(stage: &Path, guest: &str, contents: &str, mode: u32) -> Result<()> {
    let path = stage.join(guest);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&path, contents)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `cpio -o -H newc` of everything under `stage` (owned by root in the archive).
fn pack(stage: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    list(stage, Path::new(""), &mut names)?;
    let out = File::create(archive).with_context(|| format!("could not create {}", archive.display()))?;
    let mut cpio = Command::new("cpio");
    cpio.args(["--quiet", "-o", "-H", "newc", "-R", "0:0"]).current_dir(stage).stdin(Stdio::piped()).stdout(out);
    let line = cmd::describe(&cpio);
    let mut child = cpio.spawn().context("could not run cpio; run `cargo xtask setup`")?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        for name in &names {
            writeln!(stdin, "{}", name.display())?;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Paths under `dir` relative to the stage, each directory before its contents.
fn list(dir: &Path, rel: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let rel = rel.join(entry.file_name());
        names.push(rel.clone());
        if entry.file_type()?.is_dir() {
            list(&entry.path(), &rel, names)?;
        }
    }
    Ok(())
}
