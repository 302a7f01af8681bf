//! `read_deny` trees a policy names before they exist: `aws configure`,
//! `gcloud auth` and `kubectl` make their credentials after the agent's
//! policy was loaded. Userspace keys such a tree by its name below its
//! nearest existing directory (that directory gets `FILE_PENDING`, the name
//! a `read_deny` rule keyed by `name_key`). After the main walk allowed an
//! operation, this second, short walk climbs from the dentry to its mount's
//! root and judges, at each directory with `FILE_PENDING`, the name it came
//! up through: the tree is protected from the moment its name exists, who
//! ever creates it, and creating it is refused to the agent. The climb
//! stays on the dentry's filesystem, so it runs only where the policy has a
//! pending directory (`PENDING_ON_FILESYSTEM`).
//!
//! A walk of its own, not a step of the main one: there the extra branches
//! multiplied the verifier's states (`path_mknod` went from 146k to 529k
//! processed instructions on 6.12); here they are checked once.

use core::ffi::c_void;

use enforcer_common::{
    events::MAX_PATH_DEPTH,
    policy::{FILE_PENDING, FILE_READ_DENY, FILE_SENSITIVE, FileTable, PENDING_ON_FILESYSTEM, PolicyId},
};

use crate::{
    kernel::{DentryInode, DentryParent, Direct, InodeIno, Probe, Read},
    repeat::{COMPAT_PATH_DEPTH, repeat, repeat_calls},
    tables::{FileTableAt, TableAddress},
    walk::{Start, filesystem_of, in_slot, name_key_of, slot_flags, slot_state},
};

/// The climb's state. `T` is how it reads the file table: the main build's
/// steps get the map value pointer, the compat build's global step the
/// table's address.
#[repr(C)]
struct Climb<T> {
    table: T,
    hash_base: u64,
    dentry: *const u8,
    /// The root of the mount the climb stays in (null: the filesystem's).
    mnt_root: *const u8,
    /// Where the filesystem keys the policy's roots (`FileSlot::place`).
    place: u64,
    /// `FILE_READ_DENY` for a `read_deny` name, with `FILE_SENSITIVE` for a
    /// `sensitive` one (only if no `read_deny` name is above it).
    found: u16,
}

/// Whether a name on the way from `dentry` up to `mnt_root` is a tree the
/// policy named before it existed: the flags of the name found
/// (`FILE_READ_DENY`, with `FILE_SENSITIVE` for a `sensitive` tree), or 0.
#[inline(always)]
pub fn named_later(table: *const FileTable, policy_id: PolicyId, start: Start, mnt_root: *const u8) -> u16 {
    let dentry = start.dentry;
    let (place, hash_base) = filesystem_of::<Direct>(start.sb, policy_id, table);
    // No pending directory on this filesystem: the climb would find none.
    if slot_flags(table, place, hash_base, PENDING_ON_FILESYSTEM).unwrap_or(0) & FILE_PENDING == 0 {
        return 0;
    }
    if crate::COMPAT {
        return named_later_in_slot(Climb {
            table: TableAddress(table as u64),
            hash_base,
            dentry,
            mnt_root,
            place,
            found: 0,
        });
    }
    let mut climb = Climb { table, hash_base, dentry, mnt_root, place, found: 0 };
    repeat::<COMPAT_PATH_DEPTH>(MAX_PATH_DEPTH, step, (&raw mut climb).cast());
    climb.found
}

/// The compat build's climb: its state in a claimed walk slot (see
/// `walk::in_slot`), each level a call of [`enforcer_pending_step`]. With
/// every slot of the CPU held, the name is taken to be a `read_deny` tree.
#[inline(always)]
fn named_later_in_slot(start: Climb<TableAddress>) -> u16 {
    in_slot(|climb: *mut Climb<TableAddress>, index| unsafe {
        // A pointer (the dentry) into map memory: the verifier allows it
        // to a privileged loader.
        climb.write_volatile(start);
        repeat_calls::<COMPAT_PATH_DEPTH>(MAX_PATH_DEPTH, || enforcer_pending_step(index));
        (&raw const (*climb).found).read_volatile()
    })
    .unwrap_or(FILE_READ_DENY)
}

/// The `bpf_loop` step: [`climb_level`].
extern "C" fn step(_: u32, ctx: *mut c_void) -> i64 {
    climb_level::<Direct, _>(unsafe { &mut *ctx.cast::<Climb<*const FileTable>>() })
}

/// The compat build's step, a global function: slot `index` of this CPU
/// holds the climb. (Its lookup cannot fail: the climb's claim found the
/// slot by the same index, on the same CPU.)
#[unsafe(no_mangle)]
pub extern "C" fn enforcer_pending_step(index: u32) -> i64 {
    match slot_state::<Climb<TableAddress>>(index) {
        Some(climb) => climb_level::<Probe, _>(unsafe { &mut *climb }),
        None => 1,
    }
}

/// One level: from the current dentry to its parent, judging the current
/// one's name there if the parent has `FILE_PENDING` (a table that cannot
/// be read has it, and the name is a `read_deny` tree).
#[inline(always)]
fn climb_level<R: Read, T: FileTableAt>(climb: &mut Climb<T>) -> i64 {
    let d = climb.dentry;
    if d == climb.mnt_root {
        return 1;
    }
    let parent = unsafe { R::ptr::<DentryParent>(d) };
    if parent.is_null() || parent == d {
        return 1;
    }
    climb.dentry = parent;
    let inode = unsafe { R::ptr::<DentryInode>(parent) };
    if inode.is_null() {
        return 0;
    }
    let dir_ino = unsafe { R::get::<InodeIno>(inode) };
    let flags = slot_flags(climb.table, climb.place, climb.hash_base, dir_ino).unwrap_or(0);
    if flags & FILE_PENDING == 0 {
        return 0;
    }
    let named = slot_flags(climb.table, climb.place, climb.hash_base, name_key_of(dir_ino, d)).unwrap_or(0);
    if named & FILE_READ_DENY != 0 {
        if named & FILE_SENSITIVE == 0 {
            climb.found = FILE_READ_DENY;
            return 1;
        }
        // A `read_deny` name further up still denies.
        climb.found = FILE_READ_DENY | FILE_SENSITIVE;
    }
    0
}
