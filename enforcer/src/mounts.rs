//! The mount table, read from `/proc/self/mountinfo`: where cgroup2 is, and
//! which superblock device a path lives on.

use std::path::{Path, PathBuf};

use procfs::process::{MountInfo, Process};
use rustix::fs::{AtFlags, CWD, StatxFlags, statx};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[from] procfs::ProcError),
    #[error("{}: {source}", path.display())]
    Stat { path: PathBuf, source: std::io::Error },
    #[error("{}: its mount (id {mnt_id}) is not in /proc/self/mountinfo", path.display())]
    UnknownMount { path: PathBuf, mnt_id: u64 },
    #[error("mountinfo has a malformed device number `{0}`")]
    BadDevice(String),
    #[error(
        "{}: {key} names the root of a btrfs subvolume; every subvolume's root has the same inode number (256) on \
         its filesystem, so the rule would also hold for the roots of all the others\n  hint: name a directory below \
         the subvolume's root",
        path.display()
    )]
    SubvolumeRoot { path: PathBuf, key: &'static str },
}

pub fn mount_table() -> Result<Vec<MountInfo>, MountError> {
    Ok(Process::myself()?.mountinfo()?.0)
}

/// Identity of a file as the kernel's programs see it: the inode number and
/// the device number of its superblock in kernel encoding (`MAJOR << 20 |
/// MINOR`). Taken from mountinfo, not `st_dev`: filesystems such as btrfs
/// report a per-subvolume `st_dev` that is not the superblock's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeId {
    pub ino: u64,
    pub dev: u32,
    /// The root of a btrfs subvolume: all of them share inode number 256 on
    /// one superblock, so the pair names every subvolume's root at once.
    pub subvolume_root: bool,
    /// A regular file (not a directory, device or other node).
    pub regular_file: bool,
}

/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root.
const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;

/// The [`InodeId`] of `path` (symlinks followed), or `Ok(None)` if it does
/// not exist.
pub fn inode_id(path: &Path, mounts: &[MountInfo]) -> Result<Option<InodeId>, MountError> {
    let stx = match statx(CWD, path, AtFlags::empty(), StatxFlags::INO | StatxFlags::MNT_ID | StatxFlags::TYPE) {
        Ok(stx) => stx,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(MountError::Stat { path: path.to_owned(), source: e.into() }),
    };
    let mount = mounts
        .iter()
        .find(|m| u64::try_from(m.mnt_id).ok() == Some(stx.stx_mnt_id))
        .ok_or(MountError::UnknownMount { path: path.to_owned(), mnt_id: stx.stx_mnt_id })?;
    let subvolume_root = mount.fs_type == "btrfs" && stx.stx_ino == BTRFS_SUBVOLUME_ROOT_INO;
    let regular_file = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG;
    Ok(Some(InodeId { ino: stx.stx_ino, dev: kernel_dev(&mount.majmin)?, subvolume_root, regular_file }))
}

/// The inodes of `paths` for the programs' self-protection (paths that do
/// not exist are left out; past `PROTECTED_MAX`, the rest too).
#[must_use]
pub fn protected_inodes(paths: &[PathBuf]) -> enforcer_common::policy::Protected {
    use enforcer_common::policy::{Protected, ProtectedInode};
    let mounts = mount_table().unwrap_or_default();
    let ids = paths.iter().filter_map(|p| inode_id(p, &mounts).ok().flatten());
    Protected::new(ids.map(|id| ProtectedInode { ino: id.ino, dev: id.dev, pad: 0 }))
}

/// `"MAJOR:MINOR"` to the kernel's internal `dev_t` encoding.
fn kernel_dev(majmin: &str) -> Result<u32, MountError> {
    let bad = || MountError::BadDevice(majmin.to_owned());
    let (major, minor) = majmin.split_once(':').ok_or_else(bad)?;
    let major: u32 = major.parse().map_err(|_| bad())?;
    let minor: u32 = minor.parse().map_err(|_| bad())?;
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(bad());
    }
    Ok(major << 20 | minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev("0:25").unwrap(), 25);
        assert_eq!(kernel_dev("8:1").unwrap(), (8 << 20) | 1);
        assert!(kernel_dev("8").is_err());
        assert!(kernel_dev("4096:0").is_err());
    }

    #[test]
    fn inode_id_of_root_and_missing() {
        let mounts = mount_table().unwrap();
        let root = inode_id(Path::new("/"), &mounts).unwrap().unwrap();
        assert!(root.ino > 0);
        assert_eq!(inode_id(Path::new("/no/such/path/here"), &mounts).unwrap(), None);
    }
}
