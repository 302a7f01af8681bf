//! Empty programs on the enforcer's file hooks: the floor of any BPF LSM
//! design, in the benchmarks' sense (not the built-in floor of `floor.rs`).
//!
//! Only `enforcer bench-empty` (for `cargo xtask bench files`) loads them, to
//! measure what merely having a BPF LSM program on each hook costs; the
//! enforcer itself never loads them. One `empty_<hook>` per file hook (group
//! `Files` of `HOOKS` in `enforcer/src/bpf/hooks.rs`).

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "file_open")]
pub fn empty_file_open(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_mknod")]
pub fn empty_path_mknod(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_mkdir")]
pub fn empty_path_mkdir(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_rmdir")]
pub fn empty_path_rmdir(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_unlink")]
pub fn empty_path_unlink(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_symlink")]
pub fn empty_path_symlink(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_rename")]
pub fn empty_path_rename(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_link")]
pub fn empty_path_link(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_truncate")]
pub fn empty_path_truncate(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_chmod")]
pub fn empty_path_chmod(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_chown")]
pub fn empty_path_chown(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_setattr")]
pub fn empty_inode_setattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_setxattr")]
pub fn empty_inode_setxattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_removexattr")]
pub fn empty_inode_removexattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_truncate")]
pub fn empty_file_truncate(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_set_acl")]
pub fn empty_inode_set_acl(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_remove_acl")]
pub fn empty_inode_remove_acl(_ctx: LsmContext) -> i32 {
    0
}
