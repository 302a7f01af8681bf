//! How full the events ring buffer is, for the metrics: the kernel's
//! consumer and producer positions, read from a mapping of their two pages
//! of our own (aya's reader does not expose them).

use std::os::fd::{AsFd, OwnedFd};

/// The ring buffer's position pages, mapped read-only.
pub struct RingFill {
    consumer: *const u64,
    producer: *const u64,
    page: usize,
    size: u64,
    _fd: OwnedFd,
}

// SAFETY: the mappings are read-only and read with atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring buffer `ring` of `size` bytes.
    pub fn new(ring: impl AsFd, size: u64) -> std::io::Result<Self> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        let fd = ring.as_fd().try_clone_to_owned()?;
        let page = rustix::param::page_size();
        // SAFETY: fresh read-only shared mappings of the map's first two
        // pages (consumer, producer position), unmapped on drop.
        let (consumer, producer) = unsafe {
            let consumer = mmap(std::ptr::null_mut(), page, ProtFlags::READ, MapFlags::SHARED, &fd, 0)?;
            let producer = match mmap(std::ptr::null_mut(), page, ProtFlags::READ, MapFlags::SHARED, &fd, page as u64) {
                Ok(p) => p,
                Err(e) => {
                    let _ = rustix::mm::munmap(consumer, page);
                    return Err(e.into());
                }
            };
            (consumer.cast::<u64>().cast_const(), producer.cast::<u64>().cast_const())
        };
        Ok(Self { consumer, producer, page, size, _fd: fd })
    }

    /// Bytes written and not yet read, and the buffer's size.
    #[must_use]
    pub fn used(&self) -> (u64, u64) {
        // SAFETY: both point at the start of a mapped page; the kernel
        // updates the positions with release stores.
        let (consumer, producer) = unsafe {
            (
                std::sync::atomic::AtomicU64::from_ptr(self.consumer.cast_mut())
                    .load(std::sync::atomic::Ordering::Acquire),
                std::sync::atomic::AtomicU64::from_ptr(self.producer.cast_mut())
                    .load(std::sync::atomic::Ordering::Acquire),
            )
        };
        (producer.saturating_sub(consumer).min(self.size), self.size)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the mappings made in `new`.
        unsafe {
            let _ = rustix::mm::munmap(self.consumer.cast_mut().cast(), self.page);
            let _ = rustix::mm::munmap(self.producer.cast_mut().cast(), self.page);
        }
    }
}
