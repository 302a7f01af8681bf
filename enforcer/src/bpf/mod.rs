//! The BPF side of the enforcer, seen from userspace:
//!
//! - `object`: the build of the programs this kernel can load, patched with
//!   its field offsets, loaded; the BPF LSM programs attached.
//! - `hooks`: every program by name (one table of BPF LSM hooks), held to
//!   the compiled objects by a test.
//! - `maps`: the maps userspace works with, from the object or from pins;
//!   `handles`: one small handle per map, with its operations.
//! - `swap`: the table-swap protocol (tags, tree roots, selectors, and the
//!   tag check's filter), unit-tested without a kernel.
//! - `enforcer`: [`Enforcer`], which keeps it all attached and holds the
//!   map handles.
//! - `pinned`: the daemon's pins under bpffs, and adopting them.
//! - `table_map`: creating the inner map of a table swap, with BTF (6.1 matches
//!   it against the programs' template).

mod batch;
mod enforcer;
mod error;
mod handles;
mod hooks;
mod jit_dump;
mod maps;
mod object;
mod pinned;
mod swap;
mod table_map;

pub use enforcer::Enforcer;
pub use error::LoadError;
use error::{chain, map_err};
pub use handles::{GrantMaps, NetRuleMaps, TlsMaps};
pub use object::load_empty_programs;
pub use pinned::{Start, adopted_build, build_id, remove_pins, short_sha256};

/// A map removal that found nothing to remove is done. aya reports it as
/// `ENOENT` from `bpf_map_delete_elem`, not as `KeyNotFound` (which only a
/// lookup returns): both are taken.
pub fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Whether `ENFORCER_DEBUG_LOAD` asks for whole verifier logs, and (as the
/// `debug` log level, see `log.rs`) load timings and verifier counts (read
/// once).
#[must_use]
pub fn debug_load() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("ENFORCER_DEBUG_LOAD").is_some())
}
