//! What the running kernel offers, checked before anything is loaded, with
//! the fix for each thing it lacks.

use std::path::Path;

use enforcer_common::{KernelOffsets, Source};

use crate::btf::{Btf, BtfError};

const LSM_LIST: &str = "/sys/kernel/security/lsm";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("the enforcer must run as root: it loads BPF programs and creates cgroups")]
    NotRoot,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("cannot read {LSM_LIST} ({0}); mount securityfs with `mount -t securityfs none /sys/kernel/security`")]
    NoSecurityfs(std::io::Error),
    #[error(
        "BPF LSM is not active on this kernel: the active LSMs are `{active}`. Boot with \
         `lsm={active},bpf` on the kernel command line (the kernel also needs CONFIG_BPF_LSM=y); \
         the Debian kernels the VM tier uses have it (`cargo xtask demo`)"
    )]
    BpfLsmInactive { active: String },
}

/// Checks privileges.
pub fn check_root() -> Result<(), KernelError> {
    if rustix::process::geteuid().is_root() { Ok(()) } else { Err(KernelError::NotRoot) }
}

/// Checks that BPF LSM is active.
pub fn check_bpf_lsm() -> Result<(), KernelError> {
    let active = read_lsm_list()?;
    if !active.split(',').any(|lsm| lsm == "bpf") {
        return Err(KernelError::BpfLsmInactive { active });
    }
    Ok(())
}

fn read_lsm_list() -> Result<String, KernelError> {
    let path = Path::new(LSM_LIST);
    if !path.exists() {
        // securityfs is often not mounted at boot; we are root, so mount it.
        let _ = rustix::mount::mount(
            "none",
            "/sys/kernel/security",
            "securityfs",
            rustix::mount::MountFlags::empty(),
            None,
        );
    }
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).map_err(KernelError::NoSecurityfs)
}

/// `enum pid_type`'s `PIDTYPE_SID`: the index of a task's session in
/// `signal_struct::pids` (stable since Linux 4.19).
const PIDTYPE_SID: u32 = 3;

/// The struct offsets the programs read at, from the kernel's own BTF.
pub fn offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let offsets = read_offsets(btf)?;
    check_read_windows(&offsets)?;
    Ok(offsets)
}

/// The walk above a mount reads adjacent fields with one probe read each
/// (`mount_fields`, `dentry_fields` in `enforcer-ebpf/src/walk.rs`): true of
/// every kernel since long before 5.10, checked all the same.
fn check_read_windows(o: &KernelOffsets) -> Result<(), BtfError> {
    let mnt_root = o.mount_mnt + o.vfsmount_mnt_root;
    let mnt_sb = o.mount_mnt + o.vfsmount_mnt_sb;
    if o.mount_mnt_mountpoint != o.mount_mnt_parent + 8
        || mnt_root != o.mount_mnt_parent + 16
        || mnt_sb != o.mount_mnt_parent + 24
    {
        return Err(BtfError::Layout(
            "struct mount's mnt_parent, mnt_mountpoint, mnt.mnt_root and mnt.mnt_sb are not adjacent",
        ));
    }
    if o.dentry_d_inode != o.dentry_d_parent + 24 {
        return Err(BtfError::Layout("struct dentry's d_inode is not three words after d_parent"));
    }
    Ok(())
}

/// The BTF ids of `bpf_rdonly_cast` and of the structs the programs cast
/// to with it, or all `ABSENT` where the kernel lacks the kfunc (before
/// Linux 6.2) or `ENFORCER_NO_RDONLY_CAST` is set (to measure or test the
/// probe reads that replace it).
fn rdonly_cast_ids(btf: &Btf) -> [u32; 3] {
    let absent = [KernelOffsets::ABSENT; 3];
    if std::env::var_os("ENFORCER_NO_RDONLY_CAST").is_some() {
        return absent;
    }
    match (btf.function_id("bpf_rdonly_cast"), btf.struct_id("dentry"), btf.struct_id("mount")) {
        (Some(kfunc), Some(dentry), Some(mount)) => [kfunc, dentry, mount],
        _ => absent,
    }
}

/// Every field where its [`Source`] says (`enforcer_common::kernel_fields!`).
fn read_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let mut all = [0; KernelOffsets::FIELDS];
    for ((value, source), name) in all.iter_mut().zip(KernelOffsets::SOURCES).zip(KernelOffsets::NAMES) {
        *value = match source {
            Source::Btf(places) => first_offset(btf, places)?,
            Source::OptionalBtf(places) => first_offset(btf, places).unwrap_or(KernelOffsets::ABSENT),
            Source::Loader => computed(name).ok_or(BtfError::Uncomputed(name))?(btf)?,
        };
    }
    Ok(bytemuck::cast(all))
}

/// The offset of the first of `places` (struct, field path) the kernel has.
fn first_offset(btf: &Btf, places: &[(&str, &[&str])]) -> Result<u32, BtfError> {
    let mut last_error = BtfError::Malformed("a field with no place to look for it");
    for (strukt, path) in places {
        match btf.field_offset(strukt, path) {
            Ok(offset) => return Ok(offset),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Computes a `(loader)` field from the kernel's BTF.
type Compute = fn(&Btf) -> Result<u32, BtfError>;

/// How the loader computes a `(loader)` field.
fn computed(field: &str) -> Option<Compute> {
    let compute: Compute = match field {
        "inode_setattr_dentry_arg" => |btf| btf.param_index("bpf_lsm_inode_setattr", "dentry"),
        "inode_xattr_dentry_arg" => |btf| btf.param_index("bpf_lsm_inode_setxattr", "dentry"),
        "file_f_owner_is_ptr" => |btf| btf.field_is_pointer("file", "f_owner").map(u32::from),
        "signal_struct_session" => |btf| Ok(btf.field_offset("signal_struct", &["pids"])? + PIDTYPE_SID * 8),
        "rdonly_cast" => |btf| Ok(rdonly_cast_ids(btf)[0]),
        "dentry_btf_id" => |btf| Ok(rdonly_cast_ids(btf)[1]),
        "mount_btf_id" => |btf| Ok(rdonly_cast_ids(btf)[2]),
        _ => return None,
    };
    Some(compute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_computes_every_field_the_list_leaves_to_it() {
        let loader = KernelOffsets::NAMES.iter().zip(KernelOffsets::SOURCES).filter(|(_, s)| *s == Source::Loader);
        for (name, _) in loader {
            assert!(computed(name).is_some(), "`{name}` is `(loader)` in kernel_fields!, but `computed` has no arm");
        }
    }

    #[test]
    fn the_list_names_fields_in_the_order_of_the_struct() {
        let offsets = KernelOffsets { cgroup_level: 7, ..KernelOffsets::default() };
        let index = KernelOffsets::NAMES.iter().position(|n| *n == "cgroup_level").unwrap();
        assert_eq!(offsets.get(index), Some(7));
        assert_eq!(KernelOffsets::SOURCES[index], Source::Btf(&[("cgroup", &["level"])]));
    }
}
