//! The policy tables (see `enforcer_common::policy::Tables`): one map value
//! that userspace swaps whole, so one lookup serves the tag check and the
//! walk of a tagged syscall.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    macros::btf_map,
};
use enforcer_common::policy::Tables;

/// Slot 0 holds the current tables; userspace swaps in new ones per change.
#[btf_map]
static TABLES: ArrayOfMaps<Array<Tables, 1>, 1> = ArrayOfMaps::new();

/// The current tables; none before userspace publishes the first.
#[inline(always)]
pub fn current() -> Option<&'static Tables> {
    TABLES.get_value(0, &0)
}
