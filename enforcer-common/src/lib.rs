//! Types and limits shared by the BPF programs and userspace.
//!
//! Every struct here crosses the kernel/user boundary, so each is `#[repr(C)]`
//! with its padding written out and its size checked at compile time: the two
//! sides can never disagree on a layout.
#![no_std]

pub mod events;
pub mod policy;

/// Kernel struct field offsets, read from the running kernel's BTF at load
/// time and handed to the programs as a read-only global (Rust eBPF has no
/// CO-RE relocations, and these offsets differ between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    pub file_f_path: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    /// Offset of `d_name.name` (the `qstr` name pointer) inside `struct dentry`.
    pub dentry_d_name_ptr: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
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
    pub kernfs_node_parent: u32,
    pub kernfs_node_id: u32,
    pub dentry_d_sb: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 108);

#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}
