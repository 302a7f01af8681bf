//! Self-protection: the enforcer daemon's own files and directories (its
//! binary, configuration, policy directory, socket, state) and the pins on
//! bpffs may not be changed by any tagged task, whatever its policy allows.
//! The daemon fills `PROTECTED`; it is empty when no daemon runs.

use enforcer_common::policy::{PROTECTED_MAX, Protected};

use crate::kernel::{DentryInode, DentryParent, DentrySb, Direct, InodeIno, Read, SuperBlockDev, SuperBlockMagic};

/// A global in a section of its own, which userspace rewrites whole: one
/// load where a map costs a lookup (14 instructions of every tagged write).
/// Zero, so nothing protected, until the daemon writes it.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.protected")]
static mut PROTECTED: Protected = unsafe { core::mem::zeroed() };

/// The set, behind an opaque pointer as a map lookup's would be: seeing the
/// global, LLVM interleaves the object's and the directory's checks into
/// flags the verifier then follows in every combination (1M instructions).
#[inline(always)]
#[expect(clippy::pointers_in_nomem_asm_block, reason = "the asm reads nothing: it hides where the pointer comes from")]
fn protected() -> &'static Protected {
    let mut set = &raw const PROTECTED;
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) set, options(pure, nomem, nostack));
        &*set
    }
}

const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Whether inode `ino` of `dentry` is protected. The inode number's bit in
/// the filter decides nearly every check: only a hit compares the inodes.
#[inline(always)]
fn is_protected(set: &Protected, dentry: *const u8, ino: u64) -> bool {
    if !set.may_protect(ino) || ino == 0 {
        return false;
    }
    let dev = unsafe { Direct::get::<SuperBlockDev>(Direct::ptr::<DentrySb>(dentry)) } as u32;
    let mut found = false;
    for i in 0..PROTECTED_MAX {
        let p = &set.inodes[i];
        found |= p.ino == ino && p.dev == dev;
    }
    found
}

/// The inode number of `dentry` (0 for a negative dentry).
#[inline(always)]
fn ino_of(dentry: *const u8) -> u64 {
    let inode = unsafe { Direct::ptr::<DentryInode>(dentry) };
    if inode.is_null() {
        return 0;
    }
    unsafe { Direct::get::<InodeIno>(inode) }
}

/// An object and its directory, with the inode numbers the caller loaded.
pub struct Object {
    pub dentry: *const u8,
    pub ino: u64,
    pub parent: *const u8,
    pub parent_ino: u64,
}

/// Changing an object itself (write, truncate, attributes): refused if it or
/// the directory holding it is protected.
#[inline(always)]
pub fn loaded_object(object: &Object) -> bool {
    let set = protected();
    is_protected(set, object.dentry, object.ino) || is_protected(set, object.parent, object.parent_ino)
}

/// Changing `dentry` itself: [`loaded_object`] of it.
#[inline(always)]
pub fn object(dentry: *const u8) -> bool {
    let parent = unsafe { Direct::ptr::<DentryParent>(dentry) };
    loaded_object(&Object { dentry, ino: ino_of(dentry), parent, parent_ino: ino_of(parent) })
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
    let set = protected();
    is_protected(set, dir, ino_of(dir)) || is_protected(set, dentry, ino_of(dentry))
}
