//! Many map entries in one `bpf()` call (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`; LPM tries have them after 5.10): a policy's 10 000
//! destinations are one system call, not 10 000. aya has no batch
//! operations, so the call is made here.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Puts `keys[i]` -> `values[i]` in the map, in order. On error, the
/// caller does it all again one by one (an update or a delete done twice
/// is harmless): that reports the entry that fails, or does what a kernel
/// without batches for the map (LPM tries on 5.10) cannot. How far a
/// failed batch got is not known: a kernel without the command leaves the
/// count it was given.
pub fn update<K: aya::Pod, V: aya::Pod>(map: impl AsFd, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "a value per key");
    call(BPF_MAP_UPDATE_BATCH, map, keys, values.as_ptr() as u64)
}

/// Removes `keys` from the map (on error, as [`update`]).
pub fn delete<K: aya::Pod>(map: impl AsFd, keys: &[K]) -> io::Result<()> {
    call(BPF_MAP_DELETE_BATCH, map, keys, 0)
}

fn call<K>(command: libc::c_long, map: impl AsFd, keys: &[K], values: u64) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // `union bpf_attr`'s `batch`: in_batch, out_batch, keys, values,
    // count, map_fd, elem_flags, flags.
    let mut attr = [0u8; 56];
    attr[16..24].copy_from_slice(&(keys.as_ptr() as u64).to_le_bytes());
    attr[24..32].copy_from_slice(&values.to_le_bytes());
    attr[32..36].copy_from_slice(&count.to_le_bytes());
    attr[36..40].copy_from_slice(&map.as_fd().as_raw_fd().cast_unsigned().to_le_bytes());
    // SAFETY: `attr` is a zero-filled `union bpf_attr` prefix laid out for
    // a batch command; `keys` (and the values, when given) hold `count`
    // entries of the map's key (value) size and outlive the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if result < 0 {
        let error = io::Error::last_os_error();
        tracing::debug!("batch map operation of {count} entries failed: {error}");
        return Err(error);
    }
    Ok(())
}
