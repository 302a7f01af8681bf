//! Reading kernel structures at offsets taken from the running kernel's BTF.
//!
//! Each field the programs read is a type implementing [`Field`]. Two
//! readers: `Direct` loads through pointers the verifier knows the BTF type
//! of (hook arguments and what is reached from them field by field) with one
//! load instruction whose offset the loader writes in (see
//! `enforcer_common::field_load_mark`): the cheap path used for every
//! decision. `Probe` uses `bpf_probe_read_kernel` for pointers the verifier
//! cannot type (reached through `container_of`, e.g. `struct mount`, or kept
//! in map memory): slower, used above a mount root on kernels without
//! `bpf_rdonly_cast` (before 6.2; [`typed`] gives such pointers a type
//! where it exists) and when writing a denial's path.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_current_task, bpf_get_current_task_btf},
};
use enforcer_common::KernelOffsets;

/// Filled in by the loader (`EbpfLoader::override_global`) before load; the
/// map is frozen, so the verifier sees every offset as a constant.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// One field offset, read from the map (not folded by the compiler) so the
/// verifier sees the loader's constant. For pointer arithmetic and `Probe`
/// reads; plain loads use [`Field::load`].
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

/// A kernel struct field.
pub trait Field {
    /// Its offset, from `OFFSETS`.
    fn offset() -> usize;
    /// One load at `base` whose offset the loader patched in. A fault reads
    /// as zero (the JIT's exception table for BTF-typed loads).
    unsafe fn load(base: *const u8) -> u64;
    /// `bpf_probe_read_kernel` of the field; a fault reads as zero.
    unsafe fn probe(base: *const u8) -> u64;
}

/// One reader type per kernel field the programs load (from the list in
/// `enforcer_common::kernel_fields!`, where each field is declared once).
macro_rules! fields {
    ($($(#[$doc:meta])* $entry:ident: [$($reader:tt)*] = $source:tt;)*) => {$(
        field!($entry [$($reader)*] $source);
    )*};
}

macro_rules! field {
    ($entry:ident [] $source:tt) => {};
    ($entry:ident [$name:ident: $size:ident] $source:tt) => {
        #[doc = concat!("The kernel field `", stringify!($source), "` (`KernelOffsets::", stringify!($entry), "`).")]
        pub struct $name;

        impl Field for $name {
            #[inline(always)]
            fn offset() -> usize {
                off!($entry)
            }

            #[inline(always)]
            #[expect(clippy::pointers_in_nomem_asm_block, reason = "it reads kernel memory, which Rust never writes")]
            unsafe fn load(base: *const u8) -> u64 {
                let value: u64;
                // SAFETY: a load through a BTF-typed pointer; the verifier
                // checks the patched offset against the field's type.
                unsafe {
                    core::arch::asm!(
                        concat!("{value} = *(", stringify!($size), " *)({base} - {mark})"),
                        value = lateout(reg) value,
                        base = in(reg) base,
                        mark = const -(enforcer_common::field_load_mark(
                            core::mem::offset_of!(KernelOffsets, $entry),
                        ) as i32),
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
                value
            }

            #[inline(always)]
            unsafe fn probe(base: *const u8) -> u64 {
                let value = unsafe { bpf_probe_read_kernel(base.wrapping_add(Self::offset()).cast::<$size>()) };
                value.map_or(0, u64::from)
            }
        }
    };
}

enforcer_common::kernel_fields!(fields);

pub trait Read {
    /// Reads field `F` of the struct at `base`, zero-extended; a fault
    /// reads as zero.
    unsafe fn get<F: Field>(base: *const u8) -> u64;

    #[inline(always)]
    unsafe fn ptr<F: Field>(base: *const u8) -> *const u8 {
        unsafe { Self::get::<F>(base) as *const u8 }
    }
}

pub struct Direct;
pub struct Probe;
/// For what is reached from the current task: `Direct` where
/// `bpf_get_current_task_btf` gives a typed pointer (5.11+), `Probe` in the
/// compat build, whose task pointer is untyped.
pub struct Task;

impl Read for Direct {
    #[inline(always)]
    unsafe fn get<F: Field>(base: *const u8) -> u64 {
        unsafe { F::load(base) }
    }
}

impl Read for Probe {
    #[inline(always)]
    unsafe fn get<F: Field>(base: *const u8) -> u64 {
        unsafe { F::probe(base) }
    }
}

impl Read for Task {
    #[inline(always)]
    unsafe fn get<F: Field>(base: *const u8) -> u64 {
        if crate::COMPAT { unsafe { F::probe(base) } } else { unsafe { F::load(base) } }
    }
}

/// The current task, read with [`Task`].
#[inline(always)]
pub fn current_task() -> *const u8 {
    if crate::COMPAT {
        (unsafe { bpf_get_current_task() }) as *const u8
    } else {
        unsafe { bpf_get_current_task_btf() }.cast::<u8>().cast_const()
    }
}

/// `file->f_path`: its dentry and mount, read with `R`.
#[inline(always)]
pub fn file_path<R: Read>(file: *const u8) -> (*const u8, *const u8) {
    unsafe { (R::ptr::<FileDentry>(file), R::ptr::<FileMnt>(file)) }
}

/// `container_of(vfsmount, struct mount, mnt)`.
#[inline(always)]
pub fn mount_of(vfsmount: *const u8) -> *const u8 {
    vfsmount.wrapping_sub(off!(mount_mnt))
}

/// Whether the loader found the kfunc `bpf_rdonly_cast` (Linux 6.2+; see
/// [`typed`]). A constant to the verifier, which checks only the branch
/// this kernel takes.
#[inline(always)]
pub fn can_type() -> bool {
    !crate::COMPAT && off!(rdonly_cast) != KernelOffsets::ABSENT as usize
}

/// `ptr` as a BTF-typed pointer to the kernel struct whose vmlinux BTF id
/// is `btf_id` (read from `OFFSETS`, so a constant to the verifier): plain
/// loads read its fields, where a pointer the verifier cannot type (one
/// kept in map memory, or reached through `container_of`) needs a probe
/// read each, about a hundred instructions. `bpf_rdonly_cast`, which the
/// verifier turns into a move; only where [`can_type`].
#[inline(always)]
pub fn typed(ptr: *const u8, btf_id: usize) -> *const u8 {
    // The loader turns this call into the kfunc's (see `RDONLY_CAST_CALL`).
    let cast: unsafe extern "C" fn(*const u8, u64) -> *const u8 =
        unsafe { core::mem::transmute(enforcer_common::RDONLY_CAST_CALL as usize) };
    unsafe { cast(ptr, btf_id as u64) }
}

/// The `struct vfsmount` embedded in a `struct mount`.
#[inline(always)]
pub fn vfsmount_of(mount: *const u8) -> *const u8 {
    mount.wrapping_add(off!(mount_mnt))
}
