//! What the running kernel offers, checked before anything is loaded, with
//! the fix for each thing it lacks.

use std::path::Path;

use enforcer_common::KernelOffsets;

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

fn read_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let path_dentry = btf.field_offset("path", &["dentry"])?;
    let [rdonly_cast, dentry_btf_id, mount_btf_id] = rdonly_cast_ids(btf);
    Ok(KernelOffsets {
        rdonly_cast,
        dentry_btf_id,
        mount_btf_id,
        vfsmount_mnt_sb: btf.field_offset("vfsmount", &["mnt_sb"])?,
        file_f_mode: btf.field_offset("file", &["f_mode"])?,
        file_f_flags: btf.field_offset("file", &["f_flags"])?,
        file_f_path_dentry: btf.field_offset("file", &["f_path", "dentry"])?,
        file_f_path_mnt: btf.field_offset("file", &["f_path", "mnt"])?,
        file_f_inode: btf.field_offset("file", &["f_inode"])?,
        inode_i_sb: btf.field_offset("inode", &["i_sb"])?,
        path_mnt: btf.field_offset("path", &["mnt"])?,
        path_dentry,
        dentry_d_parent: btf.field_offset("dentry", &["d_parent"])?,
        dentry_d_inode: btf.field_offset("dentry", &["d_inode"])?,
        dentry_d_name_ptr: btf.field_offset("dentry", &["d_name", "name"])?,
        inode_i_ino: btf.field_offset("inode", &["i_ino"])?,
        super_block_s_dev: btf.field_offset("super_block", &["s_dev"])?,
        mount_mnt: btf.field_offset("mount", &["mnt"])?,
        mount_mnt_parent: btf.field_offset("mount", &["mnt_parent"])?,
        mount_mnt_mountpoint: btf.field_offset("mount", &["mnt_mountpoint"])?,
        vfsmount_mnt_root: btf.field_offset("vfsmount", &["mnt_root"])?,
        iattr_ia_valid: btf.field_offset("iattr", &["ia_valid"])?,
        inode_setattr_dentry_arg: btf.param_index("bpf_lsm_inode_setattr", "dentry")?,
        inode_xattr_dentry_arg: btf.param_index("bpf_lsm_inode_setxattr", "dentry")?,
        task_struct_mm: btf.field_offset("task_struct", &["mm"])?,
        mm_struct_exe_file: btf.field_offset("mm_struct", &["exe_file"])?,
        inode_i_mode: btf.field_offset("inode", &["i_mode"])?,
        task_struct_cgroups: btf.field_offset("task_struct", &["cgroups"])?,
        css_set_dfl_cgrp: btf.field_offset("css_set", &["dfl_cgrp"])?,
        cgroup_level: btf.field_offset("cgroup", &["level"])?,
        cgroup_kn: btf.field_offset("cgroup", &["kn"])?,
        cgroup_root: btf.field_offset("cgroup", &["root"])?,
        // Renamed `__parent` in Linux 6.15 (it became RCU-protected).
        kernfs_node_parent: btf
            .field_offset("kernfs_node", &["parent"])
            .or_else(|_| btf.field_offset("kernfs_node", &["__parent"]))?,
        kernfs_node_id: btf.field_offset("kernfs_node", &["id"])?,
        dentry_d_sb: btf.field_offset("dentry", &["d_sb"])?,
        unix_sock_addr: btf.field_offset("unix_sock", &["addr"])?,
        unix_address_len: btf.field_offset("unix_address", &["len"])?,
        unix_address_name: btf.field_offset("unix_address", &["name"])?,
        socket_sk: btf.field_offset("socket", &["sk"])?,
        linux_binprm_file: btf.field_offset("linux_binprm", &["file"])?,
        inode_i_nlink: btf.field_offset("inode", &["__i_nlink"])?,
        inode_i_rdev: btf.field_offset("inode", &["i_rdev"])?,
        super_block_s_magic: btf.field_offset("super_block", &["s_magic"])?,
        task_struct_seccomp_mode: btf.field_offset("task_struct", &["seccomp", "mode"])?,
        cred_uid: btf.field_offset("cred", &["uid"])?,
        cred_euid: btf.field_offset("cred", &["euid"])?,
        cred_suid: btf.field_offset("cred", &["suid"])?,
        cred_fsuid: btf.field_offset("cred", &["fsuid"])?,
        cred_gid: btf.field_offset("cred", &["gid"])?,
        cred_egid: btf.field_offset("cred", &["egid"])?,
        cred_sgid: btf.field_offset("cred", &["sgid"])?,
        cred_fsgid: btf.field_offset("cred", &["fsgid"])?,
        task_struct_tgid: btf.field_offset("task_struct", &["tgid"])?,
        file_f_owner: btf.field_offset("file", &["f_owner"])?,
        file_f_owner_is_ptr: u32::from(btf.field_is_pointer("file", "f_owner")?),
        dentry_d_fsdata: btf.field_offset("dentry", &["d_fsdata"])?,
        // Inside `ctrl` since Linux 5.12.
        tty_struct_session: btf
            .field_offset("tty_struct", &["ctrl", "session"])
            .or_else(|_| btf.field_offset("tty_struct", &["session"]))?,
        task_struct_signal: btf.field_offset("task_struct", &["signal"])?,
        mount_mnt_ns: btf.field_offset("mount", &["mnt_ns"])?,
        // Linux 6.15 numbers namespaces in `ns.ns_id` instead (0 still
        // marks an anonymous one).
        mnt_namespace_seq: btf
            .field_offset("mnt_namespace", &["seq"])
            .or_else(|_| btf.field_offset("mnt_namespace", &["ns", "ns_id"]))?,
        // Linux 7.x numbers anonymous namespaces as well and flags them.
        mnt_namespace_is_anon: btf.field_offset("mnt_namespace", &["is_anon"]).unwrap_or(KernelOffsets::ABSENT),
        dentry_d_name_len: btf.field_offset("dentry", &["d_name", "len"])?,
        task_struct_fs: btf.field_offset("task_struct", &["fs"])?,
        fs_struct_root_mnt: btf.field_offset("fs_struct", &["root", "mnt"])?,
        msghdr_msg_control: btf.field_offset("msghdr", &["msg_control"])?,
        msghdr_msg_controllen: btf.field_offset("msghdr", &["msg_controllen"])?,
        signal_struct_session: btf.field_offset("signal_struct", &["pids"])? + PIDTYPE_SID * 8,
        cgroup_ancestor_ids: btf.field_offset("cgroup", &["ancestor_ids"]).unwrap_or(KernelOffsets::ABSENT),
        cgroup_ancestors: btf.field_offset("cgroup", &["ancestors"]).unwrap_or(KernelOffsets::ABSENT),
    })
}
