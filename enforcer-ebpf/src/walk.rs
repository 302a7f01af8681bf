//! Is a dentry below an allowed write (or exec) tree, or below a `read_deny` tree?
//!
//! Tree roots are keyed by inode (device, inode number, policy) in the file
//! table (see `enforcer_common::policy::FileTable`), so a decision walks the
//! dentry's ancestors and does one table probe per level: its cost follows
//! the path's depth, never the number of rules. The device is read once per
//! filesystem the walk passes through, the inode number once per level. The walk
//! crosses mounts the way `d_path` does, so the answer is about the path the
//! kernel resolved (symlinks, `..`, `/proc/self/fd` re-opens are already
//! resolved by the time a hook sees the dentry). A path deeper than
//! `MAX_PATH_DEPTH`, or a structure that cannot be read, is denied.
//!
//! A walk ends at the root of the mount namespace's tree, or at the root of
//! one of the kernel's own mounts (pipes, sockets, memfds: no rule is above
//! them). Anything else without a parent leads to no mounted tree: a dentry
//! disconnected from its filesystem (`open_by_handle_at` of a file whose
//! directories are not in the cache), a detached mount (`open_tree` with
//! `OPEN_TREE_CLONE`, `fsmount`) or a lazily unmounted one. Where such a
//! file is cannot be known, so what the walk still had to prove (a tree
//! above it, no `read_deny` tree above it) is denied.
//!
//! Each level is one `bpf_loop` step, so the verifier checks a step once
//! instead of every unrolled level. The compat build (no `bpf_loop`) walks
//! the starting mount's levels inline and the levels above it with a global
//! function per level, which reads the file table by its address
//! (`tables::TableAddress`).

use core::{ffi::c_void, ptr::null};

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use enforcer_common::{
    KernelOffsets,
    events::{MAX_PATH_DEPTH, Reason},
    policy::{
        FILE_ABOVE_SHIFT, FILE_EXEC, FILE_NO_READ_DENY_ABOVE, FILE_READ_DENY, FILE_SENSITIVE, FILE_WRITE, FileSlot,
        FileTable, NAME_KEY_BYTES, PolicyId, file_hash_base, file_homes, name_key,
    },
};

use crate::kernel::{
    DentryInode, DentryName, DentryNameLen, DentryParent, DentrySb, Direct, FileInode, FsRootMnt, InodeIno, InodeSb,
    MntNamespaceIsAnon, MntNamespaceSeq, MountMountpoint, MountNs, MountParent, Probe, Read, SuperBlockDev, Task,
    TaskFs, VfsmountRoot, VfsmountSb, can_type, current_task, mount_of, off, typed, vfsmount_of,
};
use crate::repeat::{COMPAT_PATH_DEPTH, repeat, repeat_global};
use crate::tables::{FileTableAt, TableAddress, UNREADABLE_SLOT};

/// What is being asked of the tree.
#[derive(Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each flag is a constant the verifier sees per hook; bits would be masked at run time"
)]
pub struct Question {
    pub policy_id: PolicyId,
    /// The operation needs a tree flagged with the walk's `NEED` above it
    /// (a write, an exec); false for reads, where only `read_deny` matters.
    pub needs_tree: bool,
    /// A `write` root names the object itself (open, truncate, chmod...), not
    /// only its directory entry (create, unlink, rename...: those change the
    /// parent, so the object being a root does not allow them).
    pub allow_self: bool,
    /// The policy has `read_deny` trees, so an allowed walk goes on up to
    /// the top, or to a root no `read_deny` tree holds
    /// (`FILE_NO_READ_DENY_ABOVE`).
    pub read_deny: bool,
    /// Some of them are keyed by name (they did not exist when the policy
    /// was loaded): `pending::named_later` judges them.
    pub pending: bool,
    /// The object itself may be a key of the file table. False for a
    /// regular file under a policy that keys none (`TAG_NO_REGULAR_FILE_ROOTS`):
    /// the walk then starts at its directory.
    pub object_may_be_root: bool,
    /// Walk one level more of the starting mount inline, and the first
    /// levels above it (`INLINE_ABOVE_LEVELS`), not in the loops: for the
    /// open of a file, which every tagged open runs (the main build); the
    /// other hooks keep their verifier's work small.
    pub inline_more: bool,
}

// `Walk::verdict` values.
const UNDECIDED: u32 = 0;
const ALLOWED: u32 = 1;
const AT_MOUNT_ROOT: u32 = 2;
/// A dentry without a parent that is not its mount's root: a pseudo file or
/// a disconnected dentry, told apart after the loop (see `judge`).
const AT_TOP_IN_MOUNT: u32 = 3;
/// A mount without a parent: a namespace's root or a detached mount.
const AT_TOP_MOUNT: u32 = 4;
/// Allowed, below a `sensitive` root.
const SENSITIVE: u32 = 5;
const DENIED: u32 = 16; // + Reason

/// The walk's state, shared with the `bpf_loop` step callbacks.
///
/// Fields that can both be null are kept apart: the compiler turns a run of
/// zeroed fields into a `memset` call, a byte loop in BPF.
#[repr(C)]
struct Walk<const NEED: u16> {
    /// Root dentry of the mount being walked (null: no mount known).
    mnt_root: *const u8,
    dentry: *const u8,
    /// The `struct mount` being walked (above-mount phase; before it, the
    /// starting `struct vfsmount`).
    mount: *const u8,
    /// Where the filesystem being walked keys its roots in the file table
    /// (`FileSlot::place`), and `file_hash_base` of it.
    place: u64,
    hash_base: u64,
    question: Question,
    allowed: bool,
    verdict: u32,
}

impl<const NEED: u16> Walk<NEED> {
    #[inline(always)]
    fn decide(&mut self, verdict: Result<(), Reason>) -> i64 {
        self.verdict = match verdict {
            Ok(()) => ALLOWED,
            Err(reason) => DENIED + reason as u32,
        };
        1
    }

    /// The walk reached a dentry that leads to no mounted tree.
    #[inline(always)]
    fn disconnected(&mut self) -> i64 {
        self.decide(Err(Reason::Disconnected))
    }

    #[inline(always)]
    fn at_fs_root(&mut self) -> i64 {
        let outside = if NEED == FILE_EXEC { Reason::OutsideExecTrees } else { Reason::OutsideWriteTrees };
        let verdict = if self.allowed { Ok(()) } else { Err(outside) };
        self.decide(verdict)
    }

    /// A `sensitive` root ends the walk: userspace keeps none below a
    /// `read_deny` tree, and gives each the flags of the write and exec
    /// trees above it (`FILE_ABOVE_SHIFT`), so nothing above is left to
    /// look at. Off the common path: no state is carried for it.
    #[inline(always)]
    fn at_sensitive_root(&mut self, flags: u16, level: u32) -> i64 {
        let here = flags & NEED != 0 && (level > 0 || self.question.allow_self);
        if self.allowed || here || flags & (NEED << FILE_ABOVE_SHIFT) != 0 {
            self.verdict = SENSITIVE;
            return 1;
        }
        self.at_fs_root()
    }

    /// The rule flags of `inode` (the current dentry's), if it is a tree root.
    #[inline(always)]
    unsafe fn rule<R: Read, T: FileTableAt>(&self, table: T, inode: *const u8) -> Option<u16> {
        if inode.is_null() {
            return None; // a negative dentry (a name being created)
        }
        self.lookup(table, unsafe { R::get::<InodeIno>(inode) })
    }

    /// The flags of the table slot for inode number (or name key) `ino`.
    #[inline(always)]
    fn lookup<T: FileTableAt>(&self, table: T, ino: u64) -> Option<u16> {
        slot_flags(table, self.place, self.hash_base, ino)
    }

    /// Judges the current dentry, whose inode (read already) is `inode`;
    /// `Some` ends the walk.
    #[inline(always)]
    fn check_inode<R: Read, T: FileTableAt>(&mut self, table: T, level: u32, inode: *const u8) -> Option<i64> {
        let flags = unsafe { self.rule::<R, T>(table, inode) }?;
        if T::FALLIBLE && flags == UNREADABLE_SLOT {
            return Some(self.decide(Err(Reason::Unreadable)));
        }
        if flags & FILE_READ_DENY != 0 {
            if flags & FILE_SENSITIVE == 0 {
                return Some(self.decide(Err(Reason::ReadDenied)));
            }
            return Some(self.at_sensitive_root(flags, level));
        }
        // Allowed, and nothing above can deny: the walk ends.
        if flags & NEED != 0 && (level > 0 || self.question.allow_self) {
            self.allowed = true;
            if !self.question.read_deny || flags & FILE_NO_READ_DENY_ABOVE != 0 {
                return Some(self.decide(Ok(())));
            }
        } else if flags & FILE_NO_READ_DENY_ABOVE != 0 && self.allowed {
            return Some(self.decide(Ok(())));
        }
        None
    }
}

/// The flags of the table slot for `ino` (or a name key) at `place` (a
/// filesystem and policy, `FileSlot::place`; `hash_base`: `file_hash_base`
/// of them).
#[inline(always)]
pub fn slot_flags<T: FileTableAt>(table: T, place: u64, hash_base: u64, ino: u64) -> Option<u16> {
    let [first, second] = file_homes(ino, hash_base);
    if let Some(flags) = table.flags_if_holds(first, ino, place) {
        return Some(flags);
    }
    table.flags_if_holds(second, ino, place)
}

/// The key of `child`'s name in the directory with inode number `dir_ino`
/// (see `name_key`): its first bytes read as a string into zeroed words, as
/// userspace does. Out of line: verified once, not at every walk step.
#[inline(never)]
pub fn name_key_of(dir_ino: u64, child: *const u8) -> u64 {
    let name = unsafe { Probe::ptr::<DentryName>(child) };
    let len = unsafe { Probe::get::<DentryNameLen>(child) } as u32;
    let mut words = core::mem::MaybeUninit::<[u64; NAME_KEY_BYTES / 8]>::uninit();
    let first = words.as_mut_ptr().cast::<u64>();
    for i in 0..NAME_KEY_BYTES / 8 {
        // One by one: a zeroed array compiles to a `memset` call.
        unsafe { first.add(i).write_volatile(0) };
    }
    let bytes = unsafe { core::slice::from_raw_parts_mut(first.cast::<u8>(), NAME_KEY_BYTES) };
    unsafe { bpf_probe_read_kernel_str_bytes(name, bytes) }.ok();
    name_key(dir_ino, unsafe { words.assume_init() }, len)
}

/// Where `dentry`'s filesystem keys `policy_id`'s roots
/// (`FileSlot::place`), and `file_hash_base` of it.
#[inline(always)]
pub fn filesystem<R: Read>(dentry: *const u8, policy_id: PolicyId, table: *const FileTable) -> (u64, u64) {
    filesystem_of::<R>(unsafe { R::ptr::<DentrySb>(dentry) }, policy_id, table)
}

/// [`filesystem`] by the superblock `sb`.
#[inline(always)]
pub fn filesystem_of<R: Read>(sb: *const u8, policy_id: PolicyId, table: *const FileTable) -> (u64, u64) {
    let dev = unsafe { R::get::<SuperBlockDev>(sb) as u32 };
    (FileSlot::place(dev, policy_id), file_hash_base(dev, policy_id, unsafe { (*table).seed }))
}

/// Where a walk starts: a dentry, with its inode and its filesystem's
/// superblock as the caller read them. A hook given an open file reads
/// these from the file (`f_inode`, then `i_sb`): verifiers that trust
/// `f_inode` (6.12 and 7.x among them) make these plain loads, where each
/// load through the dentry, which none trusts, carries a fault guard (six
/// x86 instructions). Elsewhere both ways cost the same.
#[derive(Clone, Copy)]
pub struct Start {
    pub dentry: *const u8,
    pub inode: *const u8,
    pub sb: *const u8,
}

impl Start {
    /// A dentry's own (for hooks given no file; null for a negative one).
    #[inline(always)]
    pub fn of_dentry(dentry: *const u8) -> Self {
        unsafe { Start { dentry, inode: Direct::ptr::<DentryInode>(dentry), sb: Direct::ptr::<DentrySb>(dentry) } }
    }

    /// An open `file`'s, whose path's dentry is `dentry` (the kernel set
    /// `f_inode` from it before any hook saw the file).
    #[inline(always)]
    pub fn of_file(file: *const u8, dentry: *const u8) -> Self {
        let inode = unsafe { Direct::ptr::<FileInode>(file) };
        Start { dentry, inode, sb: unsafe { Direct::ptr::<InodeSb>(inode) } }
    }
}

/// The rule flags of `dentry`'s own inode, without a walk: for checks of
/// one node (a device and its directory).
#[inline(always)]
pub fn node_flags(table: *const FileTable, policy_id: PolicyId, dentry: *const u8) -> u16 {
    if table.is_null() || dentry.is_null() {
        return 0;
    }
    let inode = unsafe { Direct::ptr::<DentryInode>(dentry) };
    if inode.is_null() {
        return 0;
    }
    let (place, hash_base) = filesystem::<Direct>(dentry, policy_id, table);
    slot_flags(table, place, hash_base, unsafe { Direct::get::<InodeIno>(inode) }).unwrap_or(0)
}

/// Levels judged before the first `bpf_loop` (most walks end within them:
/// the object and its directory), saving the loop's per-level call; an
/// open walks one more (`Question::inline_more`), which is the whole of a
/// walk to the root of a mount like `/tmp` from a file in its directory.
const INLINE_LEVELS: u32 = 2;

/// What a walk step gets: the table (a map value pointer, which only the
/// stack can hold) and the walk's state.
#[repr(C)]
struct Steps<const NEED: u16> {
    table: *const FileTable,
    walk: *mut Walk<NEED>,
}

extern "C" fn step_in_mount<const NEED: u16>(index: u32, ctx: *mut c_void) -> i64 {
    let steps = unsafe { &*ctx.cast::<Steps<NEED>>() };
    in_mount(unsafe { &mut *steps.walk }, steps.table, index + INLINE_LEVELS)
}

/// One level within the starting mount (BTF-typed loads); nonzero ends the
/// walk.
#[inline(always)]
fn in_mount<const NEED: u16>(walk: &mut Walk<NEED>, table: *const FileTable, level: u32) -> i64 {
    let inode = unsafe { Direct::ptr::<DentryInode>(walk.dentry) };
    in_mount_at(walk, table, level, inode)
}

/// [`in_mount`] with the current dentry's inode read already.
#[inline(always)]
fn in_mount_at<const NEED: u16>(walk: &mut Walk<NEED>, table: *const FileTable, level: u32, inode: *const u8) -> i64 {
    if let Some(stop) = walk.check_inode::<Direct, _>(table, level, inode) {
        return stop;
    }
    up_in_mount(walk)
}

/// The step up from the current dentry within the starting mount; nonzero
/// ends the walk.
#[inline(always)]
fn up_in_mount<const NEED: u16>(walk: &mut Walk<NEED>) -> i64 {
    let d = walk.dentry;
    if d == walk.mnt_root {
        walk.verdict = AT_MOUNT_ROOT;
        return 1;
    }
    let parent = unsafe { Direct::ptr::<DentryParent>(d) };
    if parent.is_null() {
        return walk.decide(Err(Reason::Unreadable));
    }
    if parent == d {
        walk.verdict = AT_TOP_IN_MOUNT;
        return 1;
    }
    walk.dentry = parent;
    0
}

/// `MNT_NS_INTERNAL` (`ERR_PTR(-EINVAL)`): the kernel's own mounts.
const MNT_NS_INTERNAL: u64 = -22i64 as u64;

#[derive(PartialEq, Eq)]
enum Namespace {
    /// A mount namespace's tree (the host's, or one an agent unshared).
    Tree,
    /// The kernel's own mounts (pipefs, sockfs, the memfd tmpfs...).
    Internal,
    /// An anonymous namespace (a detached mount) or none (unmounted).
    Detached,
}

/// The `struct mount` of the current task's root directory.
#[inline(always)]
fn own_root_mount() -> *const u8 {
    let vfsmount = unsafe { Task::ptr::<FsRootMnt>(Task::ptr::<TaskFs>(current_task())) };
    mount_of(vfsmount)
}

/// What kind of namespace the `struct mount` at `mount` is in.
#[inline(always)]
fn namespace_of(mount: *const u8) -> Namespace {
    let ns = unsafe { Probe::get::<MountNs>(mount) };
    if ns == MNT_NS_INTERNAL {
        return Namespace::Internal;
    }
    if ns == 0 || is_anonymous(ns as *const u8) {
        return Namespace::Detached;
    }
    Namespace::Tree
}

/// Whether the namespace at `ns` is anonymous: flagged on 7.x, where
/// every namespace has a number; numbered 0 before.
#[inline(always)]
fn is_anonymous(ns: *const u8) -> bool {
    if off!(mnt_namespace_is_anon) == KernelOffsets::ABSENT as usize {
        unsafe { Probe::get::<MntNamespaceSeq>(ns) == 0 }
    } else {
        unsafe { Probe::get::<MntNamespaceIsAnon>(ns) != 0 }
    }
}

/// One level above the starting mount, crossing mounts like `d_path`.
extern "C" fn step_above_mount<const NEED: u16>(_level: u32, ctx: *mut c_void) -> i64 {
    let steps = unsafe { &*ctx.cast::<AboveSteps<NEED>>() };
    let slot = unsafe { &mut *steps.slot };
    above_level(&mut slot.walk, &mut slot.mount, steps.table)
}

/// What the walk reads of a `struct mount`: `mnt_parent`, `mnt_mountpoint`,
/// and the embedded vfsmount's `mnt_root` and `mnt_sb`.
#[derive(Clone, Copy)]
struct MountFields {
    parent: *const u8,
    mountpoint: *const u8,
    root: *const u8,
    sb: *const u8,
}

/// The [`MountFields`] of the `struct mount` at `mount`: plain loads where
/// the kernel can type the pointer ([`can_type`]), else one probe read of
/// the four adjacent words (the loader checks this layout); all null if it
/// cannot be read.
#[inline(always)]
fn mount_fields(mount: *const u8) -> MountFields {
    if can_type() {
        let mount = typed(mount, off!(mount_btf_id));
        let vfsmount = vfsmount_of(mount);
        return unsafe {
            MountFields {
                parent: Direct::ptr::<MountParent>(mount),
                mountpoint: Direct::ptr::<MountMountpoint>(mount),
                root: Direct::ptr::<VfsmountRoot>(vfsmount),
                sb: Direct::ptr::<VfsmountSb>(vfsmount),
            }
        };
    }
    let at = mount.wrapping_add(off!(mount_mnt_parent)).cast::<[u64; 4]>();
    match unsafe { bpf_probe_read_kernel(at) } {
        Ok([parent, mountpoint, root, sb]) => {
            MountFields { parent: parent as _, mountpoint: mountpoint as _, root: root as _, sb: sb as _ }
        }
        Err(_) => MountFields { parent: null(), mountpoint: null(), root: null(), sb: null() },
    }
}

/// A dentry's `d_parent` and `d_inode`: plain loads where the kernel can
/// type the pointer, else one probe read of the four words from `d_parent`
/// to `d_inode` (`d_name` lies between; the loader checks this layout).
/// Both null if it cannot be read.
#[inline(always)]
fn dentry_fields(dentry: *const u8) -> (*const u8, *const u8) {
    if can_type() {
        let dentry = typed(dentry, off!(dentry_btf_id));
        return unsafe { (Direct::ptr::<DentryParent>(dentry), Direct::ptr::<DentryInode>(dentry)) };
    }
    let at = dentry.wrapping_add(off!(dentry_d_parent)).cast::<[u64; 4]>();
    match unsafe { bpf_probe_read_kernel(at) } {
        Ok([parent, _, _, inode]) => (parent as _, inode as _),
        Err(_) => (null(), null()),
    }
}

#[inline(always)]
fn above_level<const NEED: u16, T: FileTableAt>(walk: &mut Walk<NEED>, fields: &mut MountFields, table: T) -> i64 {
    if walk.dentry == walk.mnt_root {
        let (mount, parent_mount) = (walk.mount, fields.parent);
        if parent_mount.is_null() {
            return walk.decide(Err(Reason::Unreadable));
        }
        if parent_mount == mount {
            walk.verdict = AT_TOP_MOUNT;
            return 1;
        }
        let above = mount_fields(parent_mount);
        walk.dentry = fields.mountpoint;
        walk.mount = parent_mount;
        walk.mnt_root = above.root;
        *fields = above;
        // The mount point is on the parent mount's superblock.
        let dev = unsafe {
            if can_type() { Direct::get::<SuperBlockDev>(above.sb) } else { Probe::get::<SuperBlockDev>(above.sb) }
        } as u32;
        let Some(seed) = table.seed() else {
            return walk.decide(Err(Reason::Unreadable));
        };
        let policy_id = walk.question.policy_id;
        walk.place = FileSlot::place(dev, policy_id);
        walk.hash_base = file_hash_base(dev, policy_id, seed);
    }
    let (parent, inode) = dentry_fields(walk.dentry);
    // Above the start every level is a parent, so `write` roots count.
    let stop = if can_type() {
        walk.check_inode::<Direct, T>(table, 1, inode)
    } else {
        walk.check_inode::<Probe, T>(table, 1, inode)
    };
    if let Some(stop) = stop {
        return stop;
    }
    let d = walk.dentry;
    if d != walk.mnt_root {
        if parent.is_null() {
            return walk.decide(Err(Reason::Unreadable));
        }
        if parent == d {
            return walk.disconnected(); // a mount point that is not in its filesystem's tree
        }
        walk.dentry = parent;
    }
    0
}

/// The walk's state above its starting mount lives in map memory: the
/// verifier does not track map values, so it checks the step once. (On the
/// stack, which the step reaches through a pointer, 7.x checks the step
/// over and over: 500k instructions for `path_link`.)
///
/// The slots are per CPU, and kernels preempt BPF programs (7.x builds
/// `PREEMPT_LAZY`): a walk preempted mid-walk must keep its state while
/// another walk runs on its CPU. So a walk claims a free slot with an
/// atomic compare-and-exchange and frees it when done; the next walk on
/// the CPU takes another. With every slot of the CPU held by preempted
/// walks (one per slot, each on this CPU), the walk is denied
/// (`Reason::Interrupted`). The compat build's global steps find their slot
/// by its index (they can take no pointer), and the pending-name climb
/// keeps its state in one too (`in_slot`).
#[repr(C)]
struct AboveMount<const NEED: u16> {
    /// Nonzero while a walk holds the slot.
    busy: u64,
    walk: Walk<NEED>,
    /// What was read of `walk.mount`: its parent and mount point come
    /// from the same read as its root.
    mount: MountFields,
    /// The compat build: the file table's address, for the global step
    /// (see [`above_step_at`]).
    table: u64,
}

/// Room for an `AboveMount` (a map's value type cannot be generic).
type AboveMountSlot = [u64; 13];
const _: () = assert!(core::mem::size_of::<AboveMount<0>>() <= core::mem::size_of::<AboveMountSlot>());

/// Walks on one CPU that can be above a mount at once.
const ABOVE_MOUNT_SLOTS: u32 = 4;

#[aya_ebpf::macros::map]
static ABOVE_MOUNT: aya_ebpf::maps::PerCpuArray<AboveMountSlot> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(ABOVE_MOUNT_SLOTS, 0);

/// What an above-mount step gets: the table (a map value pointer, which
/// only the stack can hold) and the claimed slot.
#[repr(C)]
struct AboveSteps<const NEED: u16> {
    table: *const FileTable,
    slot: *mut AboveMount<NEED>,
}

/// A free slot of this CPU, claimed, and its index.
#[inline(always)]
fn claim<const NEED: u16>() -> Option<(*mut AboveMount<NEED>, u32)> {
    for index in 0..ABOVE_MOUNT_SLOTS {
        let slot = ABOVE_MOUNT.get_ptr_mut(index)?.cast::<AboveMount<NEED>>();
        if unsafe { try_claim(&raw mut (*slot).busy) } {
            return Some((slot, index));
        }
    }
    None
}

/// Runs `f` on a state `S` kept in a claimed slot of this CPU (after its
/// busy word, as `AboveMount` keeps its walk), given the slot's index; `None`
/// if every slot is held. For another walk of the compat build whose
/// global steps find their state by that index (see [`slot_state`]).
#[inline(always)]
pub fn in_slot<S, R>(f: impl FnOnce(*mut S, u32) -> R) -> Option<R> {
    const {
        assert!(
            size_of::<u64>() + size_of::<S>() <= size_of::<AboveMountSlot>() && align_of::<S>() <= align_of::<u64>()
        );
    };
    let (slot, index) = claim::<0>()?;
    let result = f(state_in(slot.cast()), index);
    unsafe { release(&raw mut (*slot).busy) };
    Some(result)
}

/// The state `S` that [`in_slot`] keeps in slot `index` of this CPU.
#[inline(always)]
pub fn slot_state<S>(index: u32) -> Option<*mut S> {
    ABOVE_MOUNT.get_ptr_mut(index).map(state_in)
}

#[inline(always)]
fn state_in<S>(slot: *mut AboveMountSlot) -> *mut S {
    slot.cast::<u64>().wrapping_add(1).cast()
}

/// The compat build's step above a mount, as global functions (one per
/// `NEED`; see `repeat_global`): slot `index` of this CPU holds the walk.
#[unsafe(no_mangle)]
pub extern "C" fn enforcer_above_mount_write(index: u32) -> i64 {
    above_step_at::<FILE_WRITE>(index)
}

/// [`enforcer_above_mount_write`] for exec trees.
#[unsafe(no_mangle)]
pub extern "C" fn enforcer_above_mount_exec(index: u32) -> i64 {
    above_step_at::<FILE_EXEC>(index)
}

/// One level of the walk in slot `index`, reading the file table by the
/// address the slot holds. A slot that cannot be found ends the walk
/// undecided (denied as too deep).
#[inline(always)]
fn above_step_at<const NEED: u16>(index: u32) -> i64 {
    let Some(slot) = ABOVE_MOUNT.get_ptr_mut(index) else { return 1 };
    let slot = unsafe { &mut *slot.cast::<AboveMount<NEED>>() };
    let table = TableAddress(slot.table);
    above_level(&mut slot.walk, &mut slot.mount, table)
}

/// Sets `*busy` from 0 to 1 atomically; false if it was not 0. (The BPF
/// target's Rust atomics have no compare-and-exchange; the instruction is
/// `BPF_ATOMIC | BPF_CMPXCHG`, Linux 5.12.)
#[inline(always)]
unsafe fn try_claim(busy: *mut u64) -> bool {
    if crate::COMPAT {
        return unsafe { try_claim_by_add(busy) };
    }
    let mut old: u64 = 0;
    // SAFETY: `busy` is an aligned u64 in map memory.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({busy} + 0, r0, {new})",
            busy = in(reg) busy,
            new = in(reg) 1u64,
            inout("r0") old,
            options(nostack),
        );
    }
    old == 0
}

/// Before 5.12 (the compat build), with the atomic add every kernel has:
/// add 1, then read. A walk that reads 1 holds the slot: a holder, or a
/// walk between its add and its read, would have made it 2 or more. Any
/// other takes its 1 back. `busy` counts holders and claimers, so a walk
/// frees the slot by subtracting its 1, never by storing 0.
#[inline(always)]
unsafe fn try_claim_by_add(busy: *mut u64) -> bool {
    unsafe {
        atomic_add(busy, 1);
        if busy.read_volatile() == 1 {
            return true;
        }
        atomic_add(busy, u64::MAX);
    }
    false
}

/// `*target += value`, atomically (`BPF_ATOMIC | BPF_ADD`, every kernel).
#[inline(always)]
unsafe fn atomic_add(target: *mut u64, value: u64) {
    // SAFETY: `target` is an aligned u64 in map memory.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({target} + 0) += {value}",
            target = in(reg) target,
            value = in(reg) value,
            options(nostack),
        );
    }
}

/// Frees a slot `try_claim` claimed.
#[inline(always)]
unsafe fn release(busy: *mut u64) {
    // The walk's state is read before the slot is freed (an empty `asm!`
    // that may touch memory: the BPF backend has no fence to select).
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
    if crate::COMPAT {
        unsafe { atomic_add(busy, u64::MAX) };
    } else {
        unsafe { busy.write_volatile(0) };
    }
}

/// Levels above the starting mount an open judges before the loop (the
/// main build): a file on a mount right below the root mount (`/tmp`,
/// `/home`) needs two, its mount point and the root, and a file on the
/// root mount one; 7.x mounts the root over an empty `nullfs`, which takes
/// one more. The loop's slot, the copy of the walk into it and the loop's
/// calls cost about 150 instructions; these levels cost their loads alone.
const INLINE_ABOVE_LEVELS: u32 = 3;

/// Runs the walk from the root of its starting mount (`walk.mount`) up:
/// [`INLINE_ABOVE_LEVELS`] levels inline, the rest in the loop.
#[inline(always)]
fn above_start<const NEED: u16>(walk: &mut Walk<NEED>, table: *const FileTable) {
    let mut mount = mount_fields(walk.mount);
    // The verifier checks the inline levels once per caller (the compat
    // build's, once per level it walks).
    if crate::COMPAT || !walk.question.inline_more {
        above_mount(walk, mount, table);
        return;
    }
    for _ in 0..INLINE_ABOVE_LEVELS {
        if above_level(walk, &mut mount, table) != 0 {
            return;
        }
    }
    above_mount(walk, mount, table);
}

/// Runs the walk on from the root of `walk.mount` (whose fields are
/// `mount`) in the loop (see `AboveMount`).
#[inline(always)]
fn above_mount<const NEED: u16>(walk: &mut Walk<NEED>, mount: MountFields, table: *const FileTable) {
    let Some((slot, index)) = claim::<NEED>() else {
        walk.decide(Err(Reason::Interrupted));
        return;
    };
    let state = unsafe { &raw mut (*slot).walk };
    unsafe {
        copy_walk(state, walk);
        (&raw mut (*slot).mount).write_volatile(mount);
        if crate::COMPAT {
            // A pointer into map memory: the verifier allows it to a
            // privileged loader, and the program holds the table meanwhile.
            (&raw mut (*slot).table).write_volatile(table as u64);
        }
    }
    let mut steps = AboveSteps::<NEED> { table, slot };
    let global =
        || if NEED == FILE_EXEC { enforcer_above_mount_exec(index) } else { enforcer_above_mount_write(index) };
    repeat_global::<COMPAT_PATH_DEPTH>(MAX_PATH_DEPTH, step_above_mount::<NEED>, global, (&raw mut steps).cast());
    unsafe {
        // What the walk's end reads (`judge`); the rest stays behind.
        walk.verdict = (&raw const (*state).verdict).read_volatile();
        walk.mount = (&raw const (*state).mount).read_volatile();
        walk.allowed = (&raw const (*state).allowed).read_volatile();
        release(&raw mut (*slot).busy);
    }
}

/// `*to = *from`, field by field: a whole-struct copy compiles to a
/// `memcpy` call, a byte loop in BPF that the verifier refuses for
/// pointers.
#[inline(always)]
unsafe fn copy_walk<const NEED: u16>(to: *mut Walk<NEED>, from: &Walk<NEED>) {
    macro_rules! copy {
        ($($field:ident).+) => {
            unsafe { (&raw mut (*to).$($field).+).write_volatile(from.$($field).+) }
        };
    }
    copy!(mnt_root);
    copy!(dentry);
    copy!(mount);
    copy!(place);
    copy!(hash_base);
    copy!(question.policy_id);
    copy!(question.needs_tree);
    copy!(question.allow_self);
    copy!(question.read_deny);
    copy!(question.pending);
    copy!(question.object_may_be_root);
    copy!(allowed);
    copy!(verdict);
}

/// What the walk after the loop reads of its state (`above_mount`, the
/// end), read back from `from`, where the loop left it.
#[inline(always)]
unsafe fn walk_from<const NEED: u16>(to: &mut Walk<NEED>, from: *const Walk<NEED>) {
    unsafe {
        to.mnt_root = (&raw const (*from).mnt_root).read_volatile();
        to.dentry = (&raw const (*from).dentry).read_volatile();
        to.mount = (&raw const (*from).mount).read_volatile();
        to.allowed = (&raw const (*from).allowed).read_volatile();
        to.verdict = (&raw const (*from).verdict).read_volatile();
    }
}

/// Judges `dentry`, reached through `vfsmount`; `NEED` is the tree flag
/// that allows the operation (`FILE_WRITE`, `FILE_EXEC`). A constant, not a
/// field: a flag the verifier cannot see through costs every walk half again
/// its states.
/// (null when the hook gives no
/// mount: the walk then ends at the root of the dentry's filesystem), by
/// the file `table` of the tables the task's tag came from.
/// Inlined: the verifier checks a static function once per call anyway, and
/// the call would cost every judged syscall.
#[inline(always)]
pub fn judge<const NEED: u16>(
    question: &Question,
    table: *const FileTable,
    start: Start,
    vfsmount: *const u8,
) -> Result<(), Reason> {
    // No table: nothing can be judged, so nothing is allowed.
    if table.is_null() {
        return Err(Reason::Unreadable);
    }
    let mnt_root =
        if vfsmount.is_null() { core::ptr::null() } else { unsafe { Direct::ptr::<VfsmountRoot>(vfsmount) } };
    let dentry = start.dentry;
    let (place, hash_base) = filesystem_of::<Direct>(start.sb, question.policy_id, table);
    let mut walk = Walk::<NEED> {
        dentry,
        mnt_root,
        mount: vfsmount, // its `struct mount` once the walk leaves it
        place,
        hash_base,
        question: *question,
        allowed: !question.needs_tree,
        verdict: UNDECIDED,
    };
    let first = if question.object_may_be_root {
        in_mount_at(&mut walk, table, 0, start.inode)
    } else {
        up_in_mount(&mut walk)
    };
    let one_more = !crate::COMPAT && question.inline_more;
    let mut go_on = first == 0 && in_mount(&mut walk, table, 1) == 0;
    if go_on && one_more {
        go_on = in_mount(&mut walk, table, 2) == 0;
    }
    if go_on {
        // The loop's steps reach the state through a pointer, so it goes to
        // the stack here, not before: the inline levels keep `walk` in
        // registers (no stores of its every field on the common path).
        let mut rest = core::mem::MaybeUninit::<Walk<NEED>>::uninit();
        unsafe { copy_walk(rest.as_mut_ptr(), &walk) };
        let mut steps = Steps::<NEED> { table, walk: rest.as_mut_ptr() };
        let steps_left = MAX_PATH_DEPTH - INLINE_LEVELS - u32::from(one_more);
        repeat::<{ COMPAT_PATH_DEPTH - INLINE_LEVELS }>(steps_left, step_in_mount::<NEED>, (&raw mut steps).cast());
        unsafe { walk_from(&mut walk, rest.as_ptr()) };
    }
    if walk.verdict == AT_MOUNT_ROOT {
        walk.mount = mount_of(walk.mount);
        walk.verdict = UNDECIDED;
        above_start(&mut walk, table);
    }
    // Where a walk without a parent ended is told here, once, not in the
    // loop steps (whose every branch the verifier explores per level).
    if walk.verdict == AT_TOP_IN_MOUNT {
        // Not the mount's root: a pseudo file on one of the kernel's own
        // mounts, or a disconnected dentry. Without a mount (the hook gave
        // none) the filesystem's root is as far as it goes.
        if vfsmount.is_null() || namespace_of(mount_of(vfsmount)) == Namespace::Internal {
            walk.at_fs_root();
        } else {
            walk.disconnected();
        }
    } else if walk.verdict == AT_TOP_MOUNT {
        // The task's own root mount (the common case) costs three loads;
        // any other top mount two probe reads.
        if walk.mount == own_root_mount() || namespace_of(walk.mount) != Namespace::Detached {
            walk.at_fs_root();
        } else {
            walk.disconnected();
        }
    }
    // Names that became `read_deny` (or `sensitive`) trees: only where the
    // walk allowed.
    if question.pending && (walk.verdict == ALLOWED || walk.verdict == SENSITIVE) {
        let named = crate::pending::named_later(table, question.policy_id, start, mnt_root);
        if named & FILE_READ_DENY != 0 {
            if named & FILE_SENSITIVE == 0 {
                return Err(Reason::ReadDenied);
            }
            walk.verdict = SENSITIVE;
        }
    }
    match walk.verdict {
        ALLOWED => Ok(()),
        // Allowed, below a `sensitive` tree: the caller decides what that
        // means for its operation.
        SENSITIVE => Err(Reason::Sensitive),
        UNDECIDED => Err(Reason::TooDeep),
        v => Err(Reason::from_u8((v - DENIED) as u8).unwrap_or(Reason::Unreadable)),
    }
}
