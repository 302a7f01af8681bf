//! Just enough of a BTF reader to find struct field offsets and LSM hook
//! signatures in the running kernel's `/sys/kernel/btf/vmlinux`.
//!
//! aya parses BTF but keeps its type tables private, and the maintained
//! standalone parser (btf-rs) is LGPL; the format is small and stable
//! (Documentation/bpf/btf.rst), so the project reads what it needs itself.

use std::{collections::HashMap, path::Path};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read { path: String, source: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: field `{0}` is a bitfield, not addressable")]
    Bitfield(String),
    #[error("kernel BTF has no function `{0}`")]
    NoFunction(String),
    #[error("kernel BTF: `{func}` has no parameter `{param}`")]
    NoParam { func: String, param: String },
    #[error(
        "kernel BTF: {0}, which the walk above a mount reads in one go (enforcer-ebpf/src/walk.rs): \
         this kernel's layout is not supported yet; please report it with `uname -r`"
    )]
    Layout(&'static str),
    #[error(
        "the kernel field `{0}` is left to the loader in enforcer-common's kernel_fields!, but \
         enforcer/src/kernel.rs does not compute it"
    )]
    Uncomputed(&'static str),
}

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

struct Type {
    kind: u32,
    name: u32,
    /// Size, or the referenced type id (typedef, pointer, func...).
    size_or_ref: u32,
    members: Vec<Member>,
}

/// Parsed kernel BTF: types by id, and an index from name to ids.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        // Type id 0 is void.
        let mut types = vec![Type { kind: 0, name: 0, size_or_ref: 0, members: Vec::new() }];
        let mut at = 0;
        while at < type_data.len() {
            let (ty, next) = parse_type(type_data, at)?;
            types.push(ty);
            at = next;
        }
        let mut btf = Self { types, strings, by_name: HashMap::new() };
        for (id, ty) in btf.types.iter().enumerate().skip(1) {
            if ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                btf.by_name.entry(name).or_default().push(u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(t.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) =>
                {
                    id = t.size_or_ref;
                }
                _ => break,
            }
        }
        id
    }

    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        self.by_name.get(name)?.iter().copied().find(|&id| self.ty(id).is_some_and(|t| t.kind == kind))
    }

    #[must_use]
    pub fn has_function(&self, name: &str) -> bool {
        self.find(name, KIND_FUNC).is_some()
    }

    /// The type id of function `name`.
    #[must_use]
    pub fn function_id(&self, name: &str) -> Option<u32> {
        self.find(name, KIND_FUNC)
    }

    /// The type id of `struct name`.
    #[must_use]
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.find(name, KIND_STRUCT)
    }

    /// Byte offset of `fields` (a path through nested structs, e.g.
    /// `["d_name", "name"]`) inside `struct strukt`. Anonymous structs and
    /// unions are searched as if their members were the parent's.
    pub fn field_offset(&self, strukt: &str, fields: &[&str]) -> Result<u32, BtfError> {
        let mut id = self.find(strukt, KIND_STRUCT).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut bits = 0;
        for field in fields {
            let (member_bits, member_type) = self
                .member(id, field)
                .ok_or_else(|| BtfError::NoField { strukt: strukt.to_owned(), field: fields.join(".") })?;
            bits += member_bits;
            id = self.resolve(member_type);
        }
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield(fields.join(".")));
        }
        Ok(bits / 8)
    }

    /// Whether field `field` of `struct strukt` is a pointer (a field that
    /// changed from an embedded struct to a pointer between kernels).
    pub fn field_is_pointer(&self, strukt: &str, field: &str) -> Result<bool, BtfError> {
        let id = self.find(strukt, KIND_STRUCT).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (_, member_type) = self
            .member(id, field)
            .ok_or_else(|| BtfError::NoField { strukt: strukt.to_owned(), field: field.to_owned() })?;
        Ok(self.ty(self.resolve(member_type)).is_some_and(|t| t.kind == KIND_PTR))
    }

    /// (bit offset, type id) of `name` in the struct or union `id`.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let ty = self.ty(self.resolve(id))?;
        for m in &ty.members {
            if m.bitfield {
                continue;
            }
            if m.name == 0 {
                let inner = self.ty(self.resolve(m.type_id))?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((bits, ty)) = self.member(m.type_id, name)
                {
                    return Some((m.bit_offset + bits, ty));
                }
            } else if self.string(m.name) == name {
                return Some((m.bit_offset, m.type_id));
            }
        }
        None
    }

    /// Position of parameter `param` of function `func`.
    pub fn param_index(&self, func: &str, param: &str) -> Result<u32, BtfError> {
        let id = self.find(func, KIND_FUNC).ok_or_else(|| BtfError::NoFunction(func.to_owned()))?;
        let proto = self.ty(id).and_then(|f| self.ty(f.size_or_ref)).filter(|p| p.kind == KIND_FUNC_PROTO);
        proto
            .and_then(|p| p.members.iter().position(|m| self.string(m.name) == param))
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| BtfError::NoParam { func: func.to_owned(), param: param.to_owned() })
    }
}

/// Parses the type at `at`; returns it and where the next one starts.
fn parse_type(b: &[u8], at: usize) -> Result<(Type, usize), BtfError> {
    let name = u32_at(b, at)?;
    let info = u32_at(b, at + 4)?;
    let size_or_ref = u32_at(b, at + 8)?;
    let kind = (info >> 24) & 0x1f;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let body = at + 12;
    let mut members = Vec::new();
    let next = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => body + 4,
        KIND_ARRAY => body + 12,
        KIND_STRUCT | KIND_UNION => {
            for i in 0..vlen {
                let m = body + i * 12;
                let offset = u32_at(b, m + 8)?;
                let (bit_offset, bitfield) =
                    if kind_flag { (offset & 0x00ff_ffff, offset >> 24 != 0) } else { (offset, false) };
                members.push(Member { name: u32_at(b, m)?, type_id: u32_at(b, m + 4)?, bit_offset, bitfield });
            }
            body + vlen * 12
        }
        KIND_ENUM => body + vlen * 8,
        KIND_FUNC_PROTO => {
            for i in 0..vlen {
                let p = body + i * 8;
                members.push(Member {
                    name: u32_at(b, p)?,
                    type_id: u32_at(b, p + 4)?,
                    bit_offset: 0,
                    bitfield: false,
                });
            }
            body + vlen * 8
        }
        KIND_DATASEC | KIND_ENUM64 => body + vlen * 12,
        0 | 20.. => return Err(BtfError::Malformed("unknown type kind")),
        _ => body,
    };
    Ok((Type { kind, name, size_or_ref, members }, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host kernel's BTF: every offset the programs need must be found.
    #[test]
    fn finds_offsets_in_host_btf() {
        let Ok(btf) = Btf::from_sys_fs() else {
            panic!("this test needs /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y)");
        };
        let f_path = btf.field_offset("file", &["f_path"]).unwrap();
        assert!(f_path > 0);
        assert_eq!(btf.field_offset("qstr", &["name"]).unwrap(), 8);
        assert!(btf.field_offset("mount", &["mnt"]).is_ok());
        assert!(btf.has_function("bpf_lsm_file_open"));
        assert!(btf.field_is_pointer("dentry", "d_parent").unwrap());
        assert!(!btf.field_is_pointer("file", "f_path").unwrap());
        let idx = btf.param_index("bpf_lsm_inode_setattr", "dentry").unwrap();
        assert!(idx <= 1);
        assert!(matches!(btf.field_offset("file", &["no_such_field"]), Err(BtfError::NoField { .. })));
    }
}
