//! The policy tables (see `enforcer_common::policy::Tables`): one map value
//! that userspace swaps whole, so one lookup serves the tag check and the
//! walk of a tagged syscall.

use core::{ffi::c_void, mem::offset_of};

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    helpers::{bpf_map_lookup_elem, bpf_probe_read_kernel},
    macros::btf_map,
};
use enforcer_common::policy::{FILE_SLOTS, FileSlot, FileTable, PolicyId, TABLE_MAP_FLAGS, Tables};

/// Slot 0 holds the current tables; userspace swaps in new ones per change.
#[btf_map]
static TABLES: ArrayOfMaps<Array<Tables, 1, TABLE_MAP_FLAGS>, 1> = ArrayOfMaps::new();

/// The current tables; none before userspace publishes the first.
///
/// Both lookups by hand, with keys in read-only memory: `get_value` puts
/// the outer key on the stack, a store and an address computation on every
/// tagged syscall.
#[inline(always)]
pub fn current() -> Option<&'static Tables> {
    static SLOT: u32 = 0;
    let key = (&raw const SLOT).cast::<c_void>();
    unsafe {
        let inner = bpf_map_lookup_elem((&raw const TABLES).cast_mut().cast(), key);
        if inner.is_null() {
            return None;
        }
        bpf_map_lookup_elem(inner, key).cast::<Tables>().as_ref()
    }
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
    /// The flags of slot `index` (masked) if it holds `ino` at `place`
    /// (`FileSlot::place`).
    fn flags_if_holds(self, index: usize, ino: u64, place: u64) -> Option<u16>;
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
    fn flags_if_holds(self, index: usize, ino: u64, place: u64) -> Option<u16> {
        holds(unsafe { &(*self).slots[index & (FILE_SLOTS - 1)] }, ino, place)
    }
}

/// `FileSlot::flags_if_holds` in two 64-bit compares: a slot's second word
/// is its `dev`, `policy_id` and `flags` (little-endian), so its low 48 bits
/// are the slot's place and its top 16 the flags. Field by field, a tagged
/// open ran 8 instructions more (6.12). The compat build compares field by
/// field: there the masked word cost `path_mknod` 90k more verifier
/// instructions (6.1), close to the quarter of the limit it must stay under.
#[inline(always)]
fn holds(slot: &FileSlot, ino: u64, place: u64) -> Option<u16> {
    const {
        assert!(
            offset_of!(FileSlot, dev) == 8
                && offset_of!(FileSlot, policy_id) == 12
                && offset_of!(FileSlot, flags) == 14
        );
    };
    if crate::COMPAT {
        return slot.flags_if_holds(ino, place as u32, PolicyId((place >> 32) as u16));
    }
    // SAFETY: `dev` is 8-aligned and the slot's last 8 bytes start there.
    let word = unsafe { (&raw const slot.dev).cast::<u64>().read() };
    (slot.ino == ino && word & 0xffff_ffff_ffff == place).then_some((word >> 48) as u16)
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
        unsafe { bpf_probe_read_kernel((self.0 as *const u8).wrapping_add(offset_of!(FileTable, seed)).cast::<u64>()) }
            .ok()
    }

    #[inline(always)]
    fn flags_if_holds(self, index: usize, ino: u64, place: u64) -> Option<u16> {
        let at = offset_of!(FileTable, slots) + (index & (FILE_SLOTS - 1)) * size_of::<FileSlot>();
        match unsafe { bpf_probe_read_kernel((self.0 as *const u8).wrapping_add(at).cast::<FileSlot>()) } {
            Ok(slot) => holds(&slot, ino, place),
            Err(_) => Some(UNREADABLE_SLOT),
        }
    }
}
