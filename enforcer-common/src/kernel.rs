//! The kernel struct fields the programs read, declared once: the
//! [`kernel_fields!`] list generates the [`KernelOffsets`] struct (the
//! offsets as the programs get them), where the loader finds each in the
//! kernel's BTF ([`KernelOffsets::SOURCES`]), and, in `enforcer-ebpf`, a
//! reader type per field the programs load.

/// Calls `$callback!` with every kernel field, in `KernelOffsets` order:
/// `name: [ReaderType: load width] = (where the offset comes from);`.
///
/// The reader is `[]` for a field read only through `off!` (pointer
/// arithmetic). The source is `(struct: field.path)`, alternatives joined
/// by `|` (the first the kernel has wins: fields renamed or moved between
/// kernels), `(optional ...)` for a field some kernels lack (its offset is
/// then [`KernelOffsets::ABSENT`]), or `(loader)` for a value the loader
/// computes (`enforcer/src/kernel.rs`: a hook argument's index, a BTF id).
/// The order is the struct's: a field goes at the end, never in between
/// (the loader's marks are indices).
#[macro_export]
macro_rules! kernel_fields {
    ($callback:ident) => {
        $callback! {
            file_f_mode: [FileMode: u32] = (file: f_mode);
            file_f_flags: [FileFlags: u32] = (file: f_flags);
            /// `f_path.dentry` and `f_path.mnt` inside `struct file`.
            file_f_path_dentry: [FileDentry: u64] = (file: f_path.dentry);
            file_f_path_mnt: [FileMnt: u64] = (file: f_path.mnt);
            path_mnt: [PathMnt: u64] = (path: mnt);
            path_dentry: [PathDentry: u64] = (path: dentry);
            dentry_d_parent: [DentryParent: u64] = (dentry: d_parent);
            dentry_d_inode: [DentryInode: u64] = (dentry: d_inode);
            /// Offset of `d_name.name` (the `qstr` name pointer) inside `struct dentry`.
            dentry_d_name_ptr: [DentryName: u64] = (dentry: d_name.name);
            inode_i_ino: [InodeIno: u64] = (inode: i_ino);
            super_block_s_dev: [SuperBlockDev: u32] = (super_block: s_dev);
            /// Offset of the embedded `struct vfsmount mnt` inside `struct mount`.
            mount_mnt: [] = (mount: mnt);
            mount_mnt_parent: [MountParent: u64] = (mount: mnt_parent);
            mount_mnt_mountpoint: [MountMountpoint: u64] = (mount: mnt_mountpoint);
            vfsmount_mnt_root: [VfsmountRoot: u64] = (vfsmount: mnt_root);
            iattr_ia_valid: [IattrValid: u32] = (iattr: ia_valid);
            /// Index of the `struct dentry *` argument of the `inode_setattr` hook
            /// (0 before Linux 6.3, 1 once it gained an idmap argument).
            inode_setattr_dentry_arg: [] = (loader);
            task_struct_mm: [TaskMm: u64] = (task_struct: mm);
            mm_struct_exe_file: [MmExeFile: u64] = (mm_struct: exe_file);
            inode_i_mode: [InodeMode: u16] = (inode: i_mode);
            task_struct_cgroups: [TaskCgroups: u64] = (task_struct: cgroups);
            css_set_dfl_cgrp: [CssSetDflCgrp: u64] = (css_set: dfl_cgrp);
            cgroup_level: [CgroupLevel: u32] = (cgroup: level);
            cgroup_kn: [CgroupKn: u64] = (cgroup: kn);
            /// `cgroup->root`: the hierarchy a cgroup belongs to.
            cgroup_root: [CgroupRoot: u64] = (cgroup: root);
            /// Renamed `__parent` in Linux 6.15 (it became RCU-protected).
            kernfs_node_parent: [KernfsParent: u64] = (kernfs_node: parent | kernfs_node: __parent);
            kernfs_node_id: [KernfsId: u64] = (kernfs_node: id);
            dentry_d_sb: [DentrySb: u64] = (dentry: d_sb);
            /// `unix_sock->addr` (a `struct unix_sock` starts with its `struct sock`).
            unix_sock_addr: [UnixSockAddr: u64] = (unix_sock: addr);
            unix_address_len: [UnixAddressLen: u32] = (unix_address: len);
            /// Offset of the bound `struct sockaddr_un name` in `struct unix_address`.
            unix_address_name: [] = (unix_address: name);
            socket_sk: [SocketSk: u64] = (socket: sk);
            linux_binprm_file: [BprmFile: u64] = (linux_binprm: file);
            /// `inode->__i_nlink`: 0 for a file with no name (memfd, deleted).
            inode_i_nlink: [InodeNlink: u32] = (inode: __i_nlink);
            inode_i_rdev: [InodeRdev: u32] = (inode: i_rdev);
            super_block_s_magic: [SuperBlockMagic: u64] = (super_block: s_magic);
            /// `task->seccomp.mode` (0: no filter, 2: filter).
            task_struct_seccomp_mode: [TaskSeccompMode: u32] = (task_struct: seccomp.mode);
            cred_uid: [CredUid: u32] = (cred: uid);
            cred_euid: [CredEuid: u32] = (cred: euid);
            cred_suid: [CredSuid: u32] = (cred: suid);
            cred_fsuid: [CredFsuid: u32] = (cred: fsuid);
            cred_gid: [CredGid: u32] = (cred: gid);
            cred_egid: [CredEgid: u32] = (cred: egid);
            cred_sgid: [CredSgid: u32] = (cred: sgid);
            cred_fsgid: [CredFsgid: u32] = (cred: fsgid);
            task_struct_tgid: [TaskTgid: u32] = (task_struct: tgid);
            /// `file->f_owner`: the `struct fown_struct` itself, or (Linux 6.12+,
            /// allocated on first use) a pointer to it; `file_f_owner_is_ptr` says which.
            file_f_owner: [FileOwner: u64] = (file: f_owner);
            file_f_owner_is_ptr: [] = (loader);
            /// `dentry->d_fsdata`: on devpts, the terminal (`struct tty_struct`).
            dentry_d_fsdata: [DentryFsdata: u64] = (dentry: d_fsdata);
            /// `tty->session`: the session it is the controlling terminal of, or null
            /// (inside `ctrl` since Linux 5.12).
            tty_struct_session: [TtySession: u64] = (tty_struct: ctrl.session | tty_struct: session);
            task_struct_signal: [TaskSignal: u64] = (task_struct: signal);
            /// `signal->pids[PIDTYPE_SID]`: the task's session.
            signal_struct_session: [SignalSession: u64] = (loader);
            /// `mount->mnt_ns`: the namespace a mount is in (null once detached,
            /// `MNT_NS_INTERNAL` for the kernel's own mounts).
            mount_mnt_ns: [MountNs: u64] = (mount: mnt_ns);
            /// `mnt_namespace->seq` (`ns.ns_id` from Linux 6.15): 0 for an
            /// anonymous namespace (`open_tree` clones, `fsmount`).
            mnt_namespace_seq: [MntNamespaceSeq: u64] = (mnt_namespace: seq | mnt_namespace: ns.ns_id);
            /// `mnt_namespace->is_anon` (Linux 7.x, where anonymous namespaces are
            /// numbered too and this flag marks them), or [`KernelOffsets::ABSENT`].
            mnt_namespace_is_anon: [MntNamespaceIsAnon: u8] = (optional mnt_namespace: is_anon);
            /// `msghdr->msg_control` (a kernel copy for `sendmsg`) and its length.
            msghdr_msg_control: [MsghdrControl: u64] = (msghdr: msg_control);
            msghdr_msg_controllen: [MsghdrControllen: u64] = (msghdr: msg_controllen);
            /// `dentry->d_name.len`.
            dentry_d_name_len: [DentryNameLen: u32] = (dentry: d_name.len);
            /// `task->fs` and `fs_struct->root.mnt`: the task's root directory's mount.
            task_struct_fs: [TaskFs: u64] = (task_struct: fs);
            fs_struct_root_mnt: [FsRootMnt: u64] = (fs_struct: root.mnt);
            /// `cgroup->ancestor_ids` (ids by level, before Linux 5.19) and
            /// `cgroup->ancestors` (cgroups by level, since), each or
            /// [`KernelOffsets::ABSENT`]: how the compat build finds a cgroup's
            /// ancestors.
            cgroup_ancestor_ids: [] = (optional cgroup: ancestor_ids);
            cgroup_ancestors: [] = (optional cgroup: ancestors);
            /// Index of the `dentry` argument of `inode_setxattr` and
            /// `inode_removexattr` (1 since Linux 5.12 put the mount's idmap
            /// first, 0 before).
            inode_xattr_dentry_arg: [] = (loader);
            /// `file->f_inode` and `inode->i_sb`: an open file's inode and its
            /// filesystem, reached without the dentry (verifiers that trust
            /// `f_inode` make its fields plain loads).
            file_f_inode: [FileInode: u64] = (file: f_inode);
            inode_i_sb: [InodeSb: u64] = (inode: i_sb);
            /// `vfsmount->mnt_sb`.
            vfsmount_mnt_sb: [VfsmountSb: u64] = (vfsmount: mnt_sb);
            /// The vmlinux BTF ids of the kfunc `bpf_rdonly_cast` (Linux 6.2+) and
            /// of `struct dentry` and `struct mount`, or all [`KernelOffsets::ABSENT`]
            /// where the kernel lacks the kfunc. With it, the walk above a mount
            /// types the pointers it keeps in map memory and reads them with plain
            /// loads (see [`RDONLY_CAST_CALL`]).
            rdonly_cast: [] = (loader);
            dentry_btf_id: [] = (loader);
            mount_btf_id: [] = (loader);
            /// A socket's peer, for sends on a connected socket of an agent
            /// whose egress is locked: `sock->__sk_common` fields (family,
            /// IPv4 address, port in network order, IPv6 address), and its
            /// type and protocol.
            sock_skc_family: [SkFamily: u16] = (sock: __sk_common.skc_family);
            sock_skc_daddr: [SkDaddr: u32] = (sock: __sk_common.skc_daddr);
            sock_skc_dport: [SkDport: u16] = (sock: __sk_common.skc_dport);
            sock_skc_v6_daddr: [] = (optional sock: __sk_common.skc_v6_daddr);
            sock_sk_type: [SkType: u16] = (sock: sk_type);
            sock_sk_protocol: [SkProtocol: u16] = (sock: sk_protocol);
            /// `msghdr->msg_name`: the address `sendto` gave (null for `send`).
            msghdr_msg_name: [MsghdrName: u64] = (msghdr: msg_name);
        }
    };
}

/// Where the loader finds a kernel field's offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The first `(struct, field path)` the kernel's BTF has.
    Btf(&'static [(&'static str, &'static [&'static str])]),
    /// The same, or [`KernelOffsets::ABSENT`] where the kernel has none.
    OptionalBtf(&'static [(&'static str, &'static [&'static str])]),
    /// Computed by the loader.
    Loader,
}

macro_rules! source {
    ((loader)) => {
        Source::Loader
    };
    ((optional $($strukt:ident: $($path:ident).+)|+)) => {
        Source::OptionalBtf(&[$((stringify!($strukt), &[$(stringify!($path)),+])),+])
    };
    (($($strukt:ident: $($path:ident).+)|+)) => {
        Source::Btf(&[$((stringify!($strukt), &[$(stringify!($path)),+])),+])
    };
}

macro_rules! declare_offsets {
    ($($(#[$doc:meta])* $field:ident: [$($reader:tt)*] = $source:tt;)*) => {
        /// Kernel struct field offsets, read from the running kernel's BTF at
        /// load time (Rust eBPF has no CO-RE relocations, and these offsets
        /// differ between kernels). The loader writes each into the load
        /// instructions that carry its [`field_load_mark`], and hands the whole
        /// struct to the programs as a read-only global for the reads that are
        /// not plain loads.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
        pub struct KernelOffsets {
            $($(#[$doc])* pub $field: u32,)*
        }

        impl KernelOffsets {
            /// Each field's name, in order.
            pub const NAMES: [&'static str; Self::FIELDS] = [$(stringify!($field)),*];
            /// Where the loader finds each field, in order.
            pub const SOURCES: [Source; Self::FIELDS] = [$(source!($source)),*];
        }
    };
}

kernel_fields!(declare_offsets);

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
