//! The policy tables (see `enforcer_common::policy::Tables`): one map value
//! that userspace swaps whole, so one lookup serves the tag check and the
//! walk of a tagged syscall.

use core::mem::offset_of;

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    helpers::bpf_probe_read_kernel,
    macros::btf_map,
};
use enforcer_common::policy::{FILE_SLOTS, FileSlot, FileTable, Tables};

/// Slot 0 holds the current tables; userspace swaps in new ones per change.
#[btf_map]
static TABLES: ArrayOfMaps<Array<Tables, 1>, 1> = ArrayOfMaps::new();

/// The current tables; none before userspace publishes the first.
#[inline(always)]
pub fn current() -> Option<&'static Tables> {
    TABLES.get_value(0, &0)
}

/// The current file table; null if there are no tables (a walk then
/// denies).
#[inline(always)]
pub fn current_files() -> *const FileTable {
    current().map_or(core::ptr::null(), |tables| &raw const tables.files)
}

/// How a walk reads the file table: through the map value pointer the
/// program holds, or by its address ([`TableAddress`]).
pub trait FileTableAt: Copy {
    /// Reads can fail (then a slot reads as [`UNREADABLE_SLOT`], the seed
    /// as `None`).
    const FALLIBLE: bool;
    fn seed(self) -> Option<u64>;
    /// The flags of slot `index` (masked) if it holds the key.
    fn flags_if_holds(self, index: usize, ino: u64, dev: u32, policy_id: u16) -> Option<u16>;
}

/// The flags a [`FileTableAt::FALLIBLE`] table gives a slot it cannot read.
pub const UNREADABLE_SLOT: u16 = u16::MAX;

impl FileTableAt for *const FileTable {
    const FALLIBLE: bool = false;

    #[inline(always)]
    fn seed(self) -> Option<u64> {
        Some(unsafe { (*self).seed })
    }

    #[inline(always)]
    fn flags_if_holds(self, index: usize, ino: u64, dev: u32, policy_id: u16) -> Option<u16> {
        unsafe { &(*self).slots[index & (FILE_SLOTS - 1)] }.flags_if_holds(ino, dev, policy_id)
    }
}

/// The address of a file table the running program holds (so it stays
/// alive), for a global function (see `repeat::repeat_global`), which can
/// take no pointer: read with probe reads.
#[derive(Clone, Copy)]
pub struct TableAddress(pub u64);

impl FileTableAt for TableAddress {
    const FALLIBLE: bool = true;

    #[inline(always)]
    fn seed(self) -> Option<u64> {
        unsafe { bpf_probe_read_kernel((self.0 as *const u8).wrapping_add(offset_of!(FileTable, seed)).cast::<u64>()) }.ok()
    }

    #[inline(always)]
    fn flags_if_holds(self, index: usize, ino: u64, dev: u32, policy_id: u16) -> Option<u16> {
        let at = offset_of!(FileTable, slots) + (index & (FILE_SLOTS - 1)) * size_of::<FileSlot>();
        match unsafe { bpf_probe_read_kernel((self.0 as *const u8).wrapping_add(at).cast::<FileSlot>()) } {
            Ok(slot) => slot.flags_if_holds(ino, dev, policy_id),
            Err(_) => Some(UNREADABLE_SLOT),
        }
    }
}
