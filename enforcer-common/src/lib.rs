//! Types and limits shared by the BPF programs and userspace.
//!
//! Every struct here crosses the kernel/user boundary, so each is `#[repr(C)]`
//! with its padding written out and its size checked at compile time: the two
//! sides can never disagree on a layout.
#![no_std]

/// `aya::Pod` (the types can live in maps and globals) for types whose
/// `bytemuck::Pod` derive proved them plain data without padding.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($ty:ty),* $(,)?) => {$(
        const _: fn() = || {
            fn proven_plain_data<T: bytemuck::Pod>() {}
            proven_plain_data::<$ty>();
        };
        // SAFETY: bytemuck's derive checked that it is plain data without padding.
        unsafe impl aya::Pod for $ty {}
    )*};
}

pub mod budget;
pub mod events;
pub mod kernel;
pub mod net;
pub mod policy;
pub mod select;
pub mod tls;

pub use kernel::{FIELD_LOAD_MARK, KernelOffsets, RDONLY_CAST_CALL, Source, field_load_mark};
