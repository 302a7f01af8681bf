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

pub mod events;
pub mod net;
pub mod policy;
pub mod select;

/// Kernel struct field offsets, read from the running kernel's BTF at load
/// time (Rust eBPF has no CO-RE relocations, and these offsets differ between
/// kernels). The loader writes each into the load instructions that carry its
/// [`field_load_mark`], and hands the whole struct to the programs as a
/// read-only global for the reads that are not plain loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct KernelOffsets {
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    /// `f_path.dentry` and `f_path.mnt` inside `struct file`.
    pub file_f_path_dentry: u32,
    pub file_f_path_mnt: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    /// Offset of `d_name.name` (the `qstr` name pointer) inside `struct dentry`.
    pub dentry_d_name_ptr: u32,
    pub inode_i_ino: u32,
    pub super_block_s_dev: u32,
    /// Offset of the embedded `struct vfsmount mnt` inside `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub vfsmount_mnt_root: u32,
    pub iattr_ia_valid: u32,
    /// Index of the `struct dentry *` argument of the `inode_setattr` hook
    /// (0 before Linux 6.3, 1 once it gained an idmap argument).
    pub inode_setattr_dentry_arg: u32,
    pub task_struct_mm: u32,
    pub mm_struct_exe_file: u32,
    pub inode_i_mode: u32,
    pub task_struct_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_kn: u32,
    /// `cgroup->root`: the hierarchy a cgroup belongs to.
    pub cgroup_root: u32,
    pub kernfs_node_parent: u32,
    pub kernfs_node_id: u32,
    pub dentry_d_sb: u32,
    /// `unix_sock->addr` (a `struct unix_sock` starts with its `struct sock`).
    pub unix_sock_addr: u32,
    pub unix_address_len: u32,
    /// Offset of the bound `struct sockaddr_un name` in `struct unix_address`.
    pub unix_address_name: u32,
    pub socket_sk: u32,
    pub linux_binprm_file: u32,
    /// `inode->__i_nlink`: 0 for a file with no name (memfd, deleted).
    pub inode_i_nlink: u32,
    pub inode_i_rdev: u32,
    pub super_block_s_magic: u32,
    /// `task->seccomp.mode` (0: no filter, 2: filter).
    pub task_struct_seccomp_mode: u32,
    pub cred_uid: u32,
    pub cred_euid: u32,
    pub cred_suid: u32,
    pub cred_fsuid: u32,
    pub cred_gid: u32,
    pub cred_egid: u32,
    pub cred_sgid: u32,
    pub cred_fsgid: u32,
    pub task_struct_tgid: u32,
    /// `file->f_owner`: the `struct fown_struct` itself, or (Linux 6.12+,
    /// allocated on first use) a pointer to it; `file_f_owner_is_ptr` says which.
    pub file_f_owner: u32,
    pub file_f_owner_is_ptr: u32,
    /// `dentry->d_fsdata`: on devpts, the terminal (`struct tty_struct`).
    pub dentry_d_fsdata: u32,
    /// `tty->session`: the session it is the controlling terminal of, or null.
    pub tty_struct_session: u32,
    pub task_struct_signal: u32,
    /// `signal->pids[PIDTYPE_SID]`: the task's session.
    pub signal_struct_session: u32,
    /// `mount->mnt_ns`: the namespace a mount is in (null once detached,
    /// `MNT_NS_INTERNAL` for the kernel's own mounts).
    pub mount_mnt_ns: u32,
    /// `mnt_namespace->seq` (`ns.ns_id` from Linux 6.15): 0 for an
    /// anonymous namespace (`open_tree` clones, `fsmount`).
    pub mnt_namespace_seq: u32,
    /// `mnt_namespace->is_anon` (Linux 7.x, where anonymous namespaces are
    /// numbered too and this flag marks them), or [`KernelOffsets::ABSENT`].
    pub mnt_namespace_is_anon: u32,
    /// `msghdr->msg_control` (a kernel copy for `sendmsg`) and its length.
    pub msghdr_msg_control: u32,
    pub msghdr_msg_controllen: u32,
    /// `dentry->d_name.len`.
    pub dentry_d_name_len: u32,
    /// `task->fs` and `fs_struct->root.mnt`: the task's root directory's mount.
    pub task_struct_fs: u32,
    pub fs_struct_root_mnt: u32,
    /// `cgroup->ancestor_ids` (ids by level, before Linux 5.19) and
    /// `cgroup->ancestors` (cgroups by level, since), each or
    /// [`KernelOffsets::ABSENT`]: how the compat build finds a cgroup's
    /// ancestors.
    pub cgroup_ancestor_ids: u32,
    pub cgroup_ancestors: u32,
    /// Index of the `dentry` argument of `inode_setxattr` and
    /// `inode_removexattr` (1 since Linux 5.12 put the mount's idmap
    /// first, 0 before).
    pub inode_xattr_dentry_arg: u32,
    /// `file->f_inode` and `inode->i_sb`: an open file's inode and its
    /// filesystem, reached without the dentry (verifiers that trust
    /// `f_inode` make its fields plain loads).
    pub file_f_inode: u32,
    pub inode_i_sb: u32,
    /// `vfsmount->mnt_sb`.
    pub vfsmount_mnt_sb: u32,
    /// The vmlinux BTF ids of the kfunc `bpf_rdonly_cast` (Linux 6.2+) and
    /// of `struct dentry` and `struct mount`, or all [`KernelOffsets::ABSENT`]
    /// where the kernel lacks the kfunc. With it, the walk above a mount
    /// types the pointers it keeps in map memory and reads them with plain
    /// loads (see [`RDONLY_CAST_CALL`]).
    pub rdonly_cast: u32,
    pub dentry_btf_id: u32,
    pub mount_btf_id: u32,
}
// Only `u32` fields: a wider one would raise the alignment, and `get` reads
// the struct as `[u32; FIELDS]`.
const _: () = assert!(core::mem::align_of::<KernelOffsets>() == 4);

impl KernelOffsets {
    /// Number of offsets (all `u32`), counted by the compiler.
    pub const FIELDS: usize = core::mem::size_of::<Self>() / 4;

    /// An optional field the running kernel does not have.
    pub const ABSENT: u32 = u32::MAX;

    /// The offset at `index` (`offset_of!(KernelOffsets, field) / 4`).
    #[must_use]
    pub fn get(&self, index: usize) -> Option<u32> {
        // SAFETY: `repr(C)` and only `u32` fields (alignment checked above).
        let all: &[u32; Self::FIELDS] = unsafe { &*(&raw const *self).cast() };
        all.get(index).copied()
    }
}

/// The programs call `bpf_rdonly_cast` as the helper with this number
/// (none has it); the loader turns each such call into a call of the
/// kernel's kfunc (by its BTF id, `KernelOffsets::rdonly_cast`), or, on a
/// kernel without it, into `r0 = r1`, on a path the programs never take
/// there. Rust eBPF emits no kfunc relocations of its own.
pub const RDONLY_CAST_CALL: u32 = 0x7e5f_0001;

/// Load instructions of the programs that read a kernel field carry, instead
/// of the field's offset, `-(FIELD_LOAD_MARK + index)`, where `index` is the
/// field's position in `KernelOffsets`; the loader replaces it with the
/// running kernel's offset (like a CO-RE field relocation). The range is far
/// below any stack slot (at least -512) and any real negative offset.
pub const FIELD_LOAD_MARK: i16 = 0x7000;

/// The marked instruction offset of the `KernelOffsets` field at byte
/// offset `byte_offset`.
#[must_use]
#[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "at most FIELDS (< 256)")]
pub const fn field_load_mark(byte_offset: usize) -> i16 {
    assert!(byte_offset / 4 < KernelOffsets::FIELDS, "not a KernelOffsets field");
    -(FIELD_LOAD_MARK + (byte_offset / 4) as i16)
}

#[cfg(feature = "user")]
aya_pod!(KernelOffsets);
