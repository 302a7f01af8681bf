//! Writes the running kernel's struct field offsets into the programs' load
//! instructions before they are loaded: our own CO-RE field relocation
//! (Rust eBPF emits none). The programs mark each load of a kernel field
//! with `enforcer_common::field_load_mark` in the instruction's offset; a
//! plain load with an immediate offset costs one instruction where reading
//! the offset from a map first cost three. Calls of the kfunc
//! `bpf_rdonly_cast` are written in the same way (`patch_rdonly_cast`).

use enforcer_common::{FIELD_LOAD_MARK, KernelOffsets, RDONLY_CAST_CALL};
use object::{Object, ObjectSection, SectionKind};

/// `BPF_LDX | BPF_MEM`: the class and mode bits of a load from memory.
const LDX_MEM: u8 = 0x01 | 0x60;
/// Masks the class (low 3 bits) and mode (high 3 bits), leaving the size.
const CLASS_AND_MODE: u8 = 0x07 | 0xe0;
const INSN_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FieldLoadError {
    #[error("the embedded BPF object is not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error(
        "a BPF load is marked with field {index}, but KernelOffsets has {} fields: the programs and \
         the loader were built from different sources; rebuild with `cargo build`",
        KernelOffsets::FIELDS
    )]
    UnknownField { index: usize },
    #[error(
        "the kernel field `{}` is at offset {offset} in this kernel, too far for a BPF load instruction (at \
         most {}); this kernel's layout is not supported",
        KernelOffsets::NAMES[*index],
        FIELD_LOAD_MARK - 1
    )]
    TooFar { index: usize, offset: u32 },
    #[error("no BPF load carries a field mark: the programs were built without them; rebuild with `cargo build`")]
    NoMarks,
}

/// Patches every marked load in the executable sections of the BPF ELF
/// object `elf`; returns how many it patched.
pub fn patch(elf: &mut [u8], offsets: &KernelOffsets) -> Result<usize, FieldLoadError> {
    let mut patched = 0;
    for_each_insn(elf, |insn| {
        if patch_insn(insn, offsets)? {
            patched += 1;
        }
        Ok(())
    })?;
    if patched == 0 {
        return Err(FieldLoadError::NoMarks);
    }
    Ok(patched)
}

/// Turns each call marked [`RDONLY_CAST_CALL`] into a call of the kfunc
/// `bpf_rdonly_cast` (BTF id `kfunc`, in vmlinux), or into `r0 = r1` where
/// the kernel has none (the programs take that path only where it has);
/// returns how many calls it patched.
pub fn patch_rdonly_cast(elf: &mut [u8], kfunc: Option<u32>) -> Result<usize, FieldLoadError> {
    let mut patched = 0;
    for_each_insn(elf, |insn| {
        if patch_rdonly_cast_insn(insn, kfunc) {
            patched += 1;
        }
        Ok(())
    })?;
    Ok(patched)
}

/// Patches one instruction if it is a marked call.
fn patch_rdonly_cast_insn(insn: &mut [u8], kfunc: Option<u32>) -> bool {
    if insn[0] != CALL || insn[1] != 0 || insn[4..8] != RDONLY_CAST_CALL.to_le_bytes() {
        return false;
    }
    match kfunc {
        Some(id) => {
            // src_reg 2: `BPF_PSEUDO_KFUNC_CALL`; offset 0: the kfunc is vmlinux's.
            insn[..4].copy_from_slice(&[CALL, 2 << 4, 0, 0]);
            insn[4..8].copy_from_slice(&id.to_le_bytes());
        }
        None => insn.copy_from_slice(&[MOV64_REG, 1 << 4, 0, 0, 0, 0, 0, 0]),
    }
    true
}

/// `BPF_JMP | BPF_CALL` and `BPF_ALU64 | BPF_MOV | BPF_X`.
const CALL: u8 = 0x85;
const MOV64_REG: u8 = 0xbf;

/// Calls `f` on every instruction of the executable sections of `elf`.
fn for_each_insn(
    elf: &mut [u8],
    mut f: impl FnMut(&mut [u8]) -> Result<(), FieldLoadError>,
) -> Result<(), FieldLoadError> {
    let ranges: Vec<(u64, u64)> = object::File::parse(&*elf)?
        .sections()
        .filter(|section| section.kind() == SectionKind::Text)
        .filter_map(|section| section.file_range())
        .collect();
    for (start, size) in ranges {
        let (Ok(start), Ok(size)) = (usize::try_from(start), usize::try_from(size)) else { continue };
        let Some(code) = elf.get_mut(start..start.saturating_add(size)) else { continue };
        for insn in code.chunks_exact_mut(INSN_BYTES) {
            f(insn)?;
        }
    }
    Ok(())
}

/// Patches one instruction if it is a marked load.
fn patch_insn(insn: &mut [u8], offsets: &KernelOffsets) -> Result<bool, FieldLoadError> {
    if insn[0] & CLASS_AND_MODE != LDX_MEM {
        return Ok(false);
    }
    let off = i16::from_le_bytes([insn[2], insn[3]]);
    let Some(index) = mark_index(off) else { return Ok(false) };
    let offset = offsets.get(index).ok_or(FieldLoadError::UnknownField { index })?;
    let patched =
        i16::try_from(offset).ok().filter(|&o| o < FIELD_LOAD_MARK).ok_or(FieldLoadError::TooFar { index, offset })?;
    insn[2..4].copy_from_slice(&patched.to_le_bytes());
    Ok(true)
}

/// The `KernelOffsets` index a load offset marks, if it is a mark.
fn mark_index(off: i16) -> Option<usize> {
    let index = -i32::from(off) - i32::from(FIELD_LOAD_MARK);
    // Marks are the 256 offsets from -FIELD_LOAD_MARK down.
    usize::try_from(index).ok().filter(|&i| i < 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(off: i16) -> [u8; 8] {
        let [lo, hi] = off.to_le_bytes();
        [0x79, 0x21, lo, hi, 0, 0, 0, 0] // r1 = *(u64 *)(r2 + off)
    }

    fn offsets() -> KernelOffsets {
        KernelOffsets { file_f_mode: 20, dentry_d_sb: 104, ..KernelOffsets::default() }
    }

    #[test]
    fn marked_loads_get_the_kernels_offset() {
        let mut insn = load(enforcer_common::field_load_mark(core::mem::offset_of!(KernelOffsets, dentry_d_sb)));
        assert!(patch_insn(&mut insn, &offsets()).unwrap());
        assert_eq!(insn, load(104));
        let mut insn = load(enforcer_common::field_load_mark(0));
        assert!(patch_insn(&mut insn, &offsets()).unwrap());
        assert_eq!(insn, load(20));
    }

    #[test]
    fn other_instructions_are_left_alone() {
        for mut insn in [load(-8), load(16), load(-512), [0x7b, 0x21, 0x00, 0x90, 0, 0, 0, 0]] {
            let before = insn;
            assert!(!patch_insn(&mut insn, &offsets()).unwrap());
            assert_eq!(insn, before);
        }
    }

    fn call(imm: u32) -> [u8; 8] {
        let [a, b, c, d] = imm.to_le_bytes();
        [CALL, 0, 0, 0, a, b, c, d]
    }

    #[test]
    fn marked_calls_become_the_kfunc_or_a_move() {
        let mut insn = call(RDONLY_CAST_CALL);
        assert!(patch_rdonly_cast_insn(&mut insn, Some(0x1234)));
        assert_eq!(insn, [CALL, 0x20, 0, 0, 0x34, 0x12, 0, 0]);
        let mut insn = call(RDONLY_CAST_CALL);
        assert!(patch_rdonly_cast_insn(&mut insn, None));
        assert_eq!(insn, [MOV64_REG, 0x10, 0, 0, 0, 0, 0, 0]);
        // Helper calls and other instructions stay.
        for mut insn in [call(113), load(-8), [CALL, 0x10, 0, 0, 0x01, 0, 0x5f, 0x7e]] {
            let before = insn;
            assert!(!patch_rdonly_cast_insn(&mut insn, Some(7)));
            assert_eq!(insn, before);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut insn = load(-(FIELD_LOAD_MARK + 200));
        assert!(matches!(patch_insn(&mut insn, &offsets()), Err(FieldLoadError::UnknownField { index: 200 })));
    }

    #[test]
    fn offsets_too_far_for_an_instruction_are_refused() {
        let far = KernelOffsets { file_f_mode: 0x7000, ..KernelOffsets::default() };
        let mut insn = load(enforcer_common::field_load_mark(0));
        assert!(matches!(patch_insn(&mut insn, &far), Err(FieldLoadError::TooFar { index: 0, .. })));
    }
}
