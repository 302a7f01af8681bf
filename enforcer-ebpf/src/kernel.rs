//! Reading kernel structures at offsets taken from the running kernel's BTF.
//!
//! Two readers: `Direct` loads through pointers the verifier knows the BTF
//! type of (hook arguments and what is reached from them field by field): a
//! plain load, the cheap path used for every decision. `Probe` uses
//! `bpf_probe_read_kernel` for pointers the verifier cannot type (reached
//! through `container_of`, e.g. `struct mount`): slower, used only above a
//! mount root and when writing a denial's path.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use enforcer_common::KernelOffsets;

/// Filled in by the loader (`EbpfLoader::override_global`) before load; the
/// map is frozen, so the verifier sees every offset as a constant.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// One field offset, read from the map (not folded by the compiler) so the
/// verifier sees the loader's constant.
macro_rules! off {
    ($field:ident) => {
        $crate::kernel::read_offset(&raw const $crate::kernel::OFFSETS.$field)
    };
}

#[inline(always)]
pub fn read_offset(field: *const u32) -> usize {
    // SAFETY: `field` points into the OFFSETS static.
    unsafe { core::ptr::read_volatile(field) as usize }
}
pub(crate) use off;

pub trait Read {
    /// Reads a `T` at `base + offset`; a fault reads as zero.
    unsafe fn read<T: Copy + Default>(base: *const u8, offset: usize) -> T;

    #[inline(always)]
    unsafe fn ptr(base: *const u8, offset: usize) -> *const u8 {
        unsafe { Self::read::<usize>(base, offset) as *const u8 }
    }
}

pub struct Direct;
pub struct Probe;

impl Read for Direct {
    #[inline(always)]
    unsafe fn read<T: Copy + Default>(base: *const u8, offset: usize) -> T {
        // A BTF-typed load: the JIT turns a fault into zero.
        unsafe { core::ptr::read_volatile(base.add(offset).cast::<T>()) }
    }
}

impl Read for Probe {
    #[inline(always)]
    unsafe fn read<T: Copy + Default>(base: *const u8, offset: usize) -> T {
        unsafe { bpf_probe_read_kernel(base.wrapping_add(offset).cast::<T>()).unwrap_or_default() }
    }
}

/// `container_of(vfsmount, struct mount, mnt)`.
#[inline(always)]
pub fn mount_of(vfsmount: *const u8) -> *const u8 {
    vfsmount.wrapping_sub(off!(mount_mnt))
}

/// The `struct vfsmount` embedded in a `struct mount`.
#[inline(always)]
pub fn vfsmount_of(mount: *const u8) -> *const u8 {
    mount.wrapping_add(off!(mount_mnt))
}
