//! `ENFORCER_DUMP_JIT=DIR`: each BPF LSM program as the kernel runs it, for
//! whoever counts what a check costs. `DIR/NAME.bin` is the JIT image
//! (`objdump -D -b binary -m i386:x86-64 NAME.bin`), `DIR/NAME.xlated` the
//! instructions after the verifier's rewrites. Loads through untrusted
//! kernel pointers show there as eight x86 instructions each (the JIT's
//! address check), which the BPF object does not show.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

/// `struct bpf_prog_info` as far as the kernel may fill it (it zeroes the rest).
type ProgInfo = [u64; 64];

/// `BPF_OBJ_GET_INFO_BY_FD`.
const OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
struct InfoByFd {
    fd: u32,
    len: u32,
    info: u64,
}

/// Writes the program's images; a program whose images cannot be read is skipped.
pub fn write(dir: &Path, name: &str, program: BorrowedFd) {
    let mut info: ProgInfo = [0; 64];
    if !get(program, &mut info) {
        return;
    }
    // `jited_prog_len` and `xlated_prog_len` (u32 each) at byte 16; the
    // pointers to fill at 24 (`jited_prog_insns`) and 32 (`xlated_prog_insns`).
    let lens = info[2];
    let (mut jited, mut xlated) = (vec![0u8; (lens & 0xffff_ffff) as usize], vec![0u8; (lens >> 32) as usize]);
    info = [0; 64];
    info[2] = lens;
    info[3] = jited.as_mut_ptr() as u64;
    info[4] = xlated.as_mut_ptr() as u64;
    if get(program, &mut info) {
        let _ = std::fs::write(dir.join(format!("{name}.bin")), &jited);
        let _ = std::fs::write(dir.join(format!("{name}.xlated")), &xlated);
    }
}

fn get(program: BorrowedFd, info: &mut ProgInfo) -> bool {
    let attr = InfoByFd {
        fd: program.as_raw_fd().cast_unsigned(),
        len: u32::try_from(size_of::<ProgInfo>()).unwrap_or(u32::MAX),
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `len` bytes at `info`, and into the
    // buffers `info` points to at most the lengths it holds.
    unsafe { libc::syscall(libc::SYS_bpf, OBJ_GET_INFO_BY_FD, &raw const attr, size_of::<InfoByFd>()) == 0 }
}
