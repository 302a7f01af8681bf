//! Self-protection: the enforcer daemon's own files and directories (its
//! binary, configuration, policy directory, socket, state) and the pins on
//! bpffs may not be changed by any tagged task, whatever its policy allows.
//! The daemon fills `PROTECTED`; it is empty when no daemon runs.

use aya_ebpf::{macros::map, maps::Array};
use enforcer_common::policy::{PROTECTED_MAX, Protected};

use crate::kernel::{DentryInode, DentryParent, DentrySb, Direct, InodeIno, Read, SuperBlockDev, SuperBlockMagic};

#[map]
static PROTECTED: Array<Protected> = Array::with_max_entries(1, 0);

const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Whether `dentry` names a protected inode.
#[inline(always)]
fn is_protected(set: &Protected, dentry: *const u8) -> bool {
    let inode = unsafe { Direct::ptr::<DentryInode>(dentry) };
    if inode.is_null() {
        return false;
    }
    let ino = unsafe { Direct::get::<InodeIno>(inode) };
    let dev = unsafe { Direct::get::<SuperBlockDev>(Direct::ptr::<DentrySb>(dentry)) } as u32;
    let mut found = false;
    for i in 0..PROTECTED_MAX {
        let p = &set.inodes[i];
        found |= p.ino == ino && p.dev == dev && ino != 0;
    }
    found
}

/// Changing `dentry` itself (write, truncate, attributes): refused if it or
/// the directory holding it is protected.
#[inline(always)]
pub fn object(dentry: *const u8) -> bool {
    let Some(set) = PROTECTED.get(0) else { return false };
    let parent = unsafe { Direct::ptr::<DentryParent>(dentry) };
    is_protected(set, dentry) || is_protected(set, parent)
}

/// Adding or removing the entry `dentry` in directory `dir` (create, mkdir,
/// unlink, rename, link): refused in a protected directory, for a protected
/// inode, and anywhere on bpffs (the pins).
#[inline(always)]
pub fn entry(dir: *const u8, dentry: *const u8) -> bool {
    let magic = unsafe { Direct::get::<SuperBlockMagic>(Direct::ptr::<DentrySb>(dir)) };
    if magic == BPF_FS_MAGIC {
        return true;
    }
    let Some(set) = PROTECTED.get(0) else { return false };
    is_protected(set, dir) || is_protected(set, dentry)
}
