//! Creating the map that holds one policy table, mapped into the daemon.
//!
//! The kernel lets a map into an array-of-maps only if it matches the
//! template the programs were loaded with, and aya creates that template with
//! BTF for its value. On Linux 6.1 a map without BTF never matches one with
//! it (they differ in `timer_off`), and aya's standalone maps carry none. So
//! each table map is created here, with a minimal BTF of its own: a `u32` key
//! and an opaque struct of the table's size as the value.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    ptr::NonNull,
};

use aya::maps::{Array, Map, MapData};
use enforcer_common::policy::TABLE_MAP_FLAGS;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BTF_KIND_INT: u32 = 1;
const BTF_KIND_STRUCT: u32 = 4;

/// A one-entry array map whose value is a `T`, mapped into this process
/// (`BPF_F_MMAPABLE`): a table is written straight into the map's memory,
/// then the map is swapped into an array-of-maps.
pub struct MappedTable<T: aya::Pod> {
    map: Array<MapData, T>,
    mapping: Mapping,
}

impl<T: aya::Pod + bytemuck::Pod> MappedTable<T> {
    /// A new map named `name`, zeroed, its pages mapped in already.
    pub fn create(name: &str) -> io::Result<Self> {
        let value_size = u32::try_from(size_of::<T>()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let btf = load_btf(&table_btf(value_size))?;
        let mut attr = [0u8; 72];
        put(&mut attr, 0, BPF_MAP_TYPE_ARRAY);
        put(&mut attr, 4, 4); // key_size
        put(&mut attr, 8, value_size);
        put(&mut attr, 12, 1); // max_entries
        put(&mut attr, 16, u32::try_from(TABLE_MAP_FLAGS).unwrap_or(u32::MAX)); // map_flags
        let name = name.as_bytes();
        attr[28..28 + name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
        put(&mut attr, 48, fd_number(&btf));
        put(&mut attr, 52, 1); // btf_key_type_id: the u32
        put(&mut attr, 56, 2); // btf_value_type_id: the struct
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        let mapping = Mapping::new(&fd, size_of::<T>())?;
        let data = MapData::from_fd(fd).map_err(io::Error::other)?;
        let map = Array::try_from(Map::Array(data)).map_err(io::Error::other)?;
        Ok(Self { map, mapping })
    }

    /// Makes `value` the map's value (programs that hold the map read it
    /// as it is written: write only to a map not in use).
    pub fn write(&mut self, value: &T) {
        let bytes = bytemuck::bytes_of(value);
        // SAFETY: the mapping is at least `size_of::<T>()` bytes long, owned
        // by this value, and `&mut self` makes this the only access.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.mapping.memory.as_ptr().cast(), bytes.len()) };
    }

    pub fn map(&self) -> &Array<MapData, T> {
        &self.map
    }
}

/// A shared mapping of a map's value area, unmapped on drop.
struct Mapping {
    memory: NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is owned by one `MappedTable` alone (nothing else has
// its address) and only written through `&mut`.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, size: usize) -> io::Result<Self> {
        use rustix::mm::{MapFlags, ProtFlags};
        let len = size.next_multiple_of(rustix::param::page_size());
        // SAFETY: a new mapping, at an address the kernel picks, of the
        // map's value area (which the kernel sizes to whole pages).
        let memory = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                fd,
                0,
            )
        }?;
        let memory = NonNull::new(memory).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(Self { memory, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; nothing uses it after this.
        let _ = unsafe { rustix::mm::munmap(self.memory.as_ptr(), self.len) };
    }
}

/// BTF with type 1 = `u32` and type 2 = `struct table` of `size` bytes.
fn table_btf(size: u32) -> Vec<u8> {
    const STRINGS: &[u8] = b"\0u32\0table\0";
    const TYPES_LEN: u32 = 7 * 4;
    let mut types = Vec::new();
    for word in [1, BTF_KIND_INT << 24, 4, 32, 5, BTF_KIND_STRUCT << 24, size] {
        types.extend_from_slice(&u32::to_le_bytes(word));
    }
    let mut btf = Vec::new();
    btf.extend_from_slice(&0xEB9F_u16.to_le_bytes()); // magic
    btf.extend_from_slice(&[1, 0]); // version, flags
    #[expect(clippy::cast_possible_truncation, reason = "a dozen bytes")]
    for word in [24, 0, TYPES_LEN, TYPES_LEN, STRINGS.len() as u32] {
        btf.extend_from_slice(&word.to_le_bytes()); // hdr_len, type_off/len, str_off/len
    }
    btf.extend_from_slice(&types);
    btf.extend_from_slice(STRINGS);
    btf
}

fn load_btf(btf: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 32];
    attr[0..8].copy_from_slice(&(btf.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 16, u32::try_from(btf.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?);
    bpf(BPF_BTF_LOAD, &mut attr)
}

fn put(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn fd_number(fd: &OwnedFd) -> u32 {
    use std::os::fd::AsRawFd as _;
    fd.as_raw_fd().cast_unsigned()
}

fn bpf(command: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-filled `union bpf_attr` prefix of the size
    // passed, laid out for `command`; pointers in it outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_header_points_at_its_sections() {
        let btf = table_btf(4096);
        let word = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap());
        assert_eq!(&btf[..4], &[0x9F, 0xEB, 1, 0]);
        let (hdr, type_len, str_off, str_len) = (word(4), word(12), word(16), word(20));
        assert_eq!(btf.len(), (hdr + str_off + str_len) as usize);
        assert_eq!(type_len, 28);
        assert_eq!(word(24 + 24), 4096, "the struct's size");
    }
}
