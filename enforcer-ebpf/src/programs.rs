// The programs, shared by the two crate roots (`main.rs`, `compat.rs`).

mod arm;
mod boundary;
mod budget;
mod destinations;
mod empty_hooks;
mod exec;
mod floor;
mod inbound;
mod kernel;
mod net;
mod pending;
mod protect;
mod repeat;
mod report;
mod select;
mod sensitive;
mod tables;
mod tag;
mod tls;
mod walk;

use aya_ebpf::{macros::lsm, programs::LsmContext};
use enforcer_common::{
    events::{Action, Kind, Op, Reason},
    policy::{FILE_WRITE, TAG_AUDIT, TAG_FILES, TAG_NO_REGULAR_FILE_ROOTS, TAG_PENDING, TAG_READ_DENY},
};

use crate::{
    kernel::{
        DentryInode, DentryParent, Direct, FileFlags, FileMode, IattrValid, InodeIno, InodeMode, PathDentry, PathMnt,
        Read, SuperBlockMagic, file_path, off,
    },
    report::{Denial, report},
    tag::{Suspect, Tagged},
    walk::{Question, Start, judge},
};

const EPERM: i32 = 1;
const FMODE_WRITE: u32 = 0x2;
const O_TRUNC: u32 = 0o1000;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;
const S_IFSOCK: u32 = 0o140_000;
const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;

#[inline(always)]
fn restricts_files(tag: &Tagged) -> bool {
    tag.info.flags & TAG_FILES != 0
}

/// One check: an operation on a dentry, reached through a mount (null when
/// the hook gives none).
struct Check {
    kind: Kind,
    op: Op,
    allow_self: bool,
    dentry: *const u8,
    vfsmount: *const u8,
}

/// Judges a check; `Some` is a refusal to report.
#[inline(always)]
fn judge_check(tag: &Tagged, check: Check) -> Option<Denial> {
    let start = Start::of_dentry(check.dentry);
    let verdict = judge_object(tag, &check, start, true, false);
    refusal(verdict, check)
}

/// The refusal a verdict on `check` is, if any: below a `sensitive` tree
/// is allowed (only an open makes something of it: it locks the egress).
#[inline(always)]
fn refusal(verdict: Result<(), Reason>, check: Check) -> Option<Denial> {
    match verdict {
        Ok(()) | Err(Reason::Sensitive) => None,
        Err(reason) => Some(check.denial(reason)),
    }
}

impl Check {
    #[inline(always)]
    fn denial(self, reason: Reason) -> Denial {
        Denial { kind: self.kind, op: self.op, reason, dentry: self.dentry, vfsmount: self.vfsmount }
    }
}

/// Judges `check` from `start` (the check's dentry and what the caller
/// read of it), told whether the object itself may be a tree root and
/// whether to walk above the mount inline (`Question::inline_more`).
#[inline(always)]
fn judge_object(
    tag: &Tagged,
    check: &Check,
    start: Start,
    object_may_be_root: bool,
    inline_more: bool,
) -> Result<(), Reason> {
    let question = Question {
        policy_id: tag.info.policy_id(),
        needs_tree: check.kind == Kind::FileWrite,
        allow_self: check.allow_self,
        read_deny: tag.info.flags & TAG_READ_DENY != 0,
        pending: tag.info.flags & TAG_PENDING != 0,
        object_may_be_root,
        inline_more,
    };
    judge::<FILE_WRITE>(&question, tag.files, start, check.vfsmount)
}

/// A rename or link that would give a file below a `sensitive` tree a
/// name outside every one (reading it there would lock nothing): the
/// source's verdict and the destination's, judged already.
#[inline(always)]
fn moves_out_of_sensitive(from: Result<(), Reason>, to: Result<(), Reason>) -> bool {
    from == Err(Reason::Sensitive) && to == Ok(())
}

/// Reports a refusal (one call site per program: the verifier checks the
/// reporter once) and turns it into the hook's return value. Audit mode
/// reports and allows, except for the daemon's own files: an agent under a
/// policy being tried out must not be able to switch the enforcer off.
#[inline(always)]
pub(crate) fn enforce(tag: &Tagged, denial: Option<Denial>) -> i32 {
    let Some(denial) = denial else { return 0 };
    let audit = tag.info.flags & TAG_AUDIT != 0 && denial.reason != Reason::Protected;
    let (action, errno, answer) = if denial.reason == Reason::Sensitive {
        (Action::Allow, 0, 0)
    } else if audit {
        (Action::Audit, 0, 0)
    } else {
        (Action::Deny, EPERM as u32, refusal_answer())
    };
    report(&tag.info, &denial, action, errno);
    answer
}

/// `-EPERM`, which the compiler cannot see as a constant: knowing both
/// answers, it computes the answer from the audit flag with a negation,
/// which verifiers before 6.13 do not follow (the hook's answer must be
/// seen to be an errno). Unknown, it branches to a constant.
#[inline(always)]
fn refusal_answer() -> i32 {
    const { assert!(EPERM == 1) };
    let answer: i64;
    unsafe { core::arch::asm!("{0} = -1", out(reg) answer, options(pure, nomem, nostack)) };
    answer as i32
}

/// A directory-entry check (create, remove, rename): judged at the entry's
/// parent, the directory being written.
#[inline(always)]
fn entry_check(ctx: &LsmContext, dir_arg: usize, dentry_arg: usize, op: Op) -> Check {
    let dir: *const u8 = ctx.arg(dir_arg);
    let dentry: *const u8 = ctx.arg(dentry_arg);
    let vfsmount = unsafe { Direct::ptr::<PathMnt>(dir) };
    Check { kind: Kind::FileWrite, op, allow_self: false, dentry, vfsmount }
}

/// The refusal of a check that touches the daemon's own files
/// (`protect.rs`): for every tagged task, whatever its policy.
#[inline(always)]
fn protected_denial(check: &Check) -> Denial {
    Denial {
        kind: Kind::FileWrite,
        op: check.op,
        reason: Reason::Protected,
        dentry: check.dentry,
        vfsmount: check.vfsmount,
    }
}

/// Self-protection of an entry check whose directory is hook argument `dir_arg`.
#[inline(always)]
fn protected_entry(ctx: &LsmContext, dir_arg: usize, check: &Check) -> Option<Denial> {
    let dir: *const u8 = ctx.arg(dir_arg);
    let dir = unsafe { Direct::ptr::<PathDentry>(dir) };
    protect::entry(dir, check.dentry).then(|| protected_denial(check))
}

/// Self-protection of a check on an object itself.
#[inline(always)]
fn protected_object(check: &Check) -> Option<Denial> {
    protect::object(check.dentry).then(|| protected_denial(check))
}

/// Self-protection first (every tagged task), then the policy's file rules
/// (if it has any); one report per program.
#[inline(always)]
fn protect_then_decide(tag: &Tagged, protected: Option<Denial>, check: Check) -> i32 {
    let denial = match protected {
        Some(denial) => Some(denial),
        None if restricts_files(tag) => judge_check(tag, check),
        None => None,
    };
    enforce(tag, denial)
}

/// An operation on a directory entry.
#[inline(always)]
fn entry_op(ctx: &LsmContext, dir_arg: usize, dentry_arg: usize, op: Op) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let check = entry_check(ctx, dir_arg, dentry_arg, op);
    protect_then_decide(&tag, protected_entry(ctx, dir_arg, &check), check)
}

/// An operation on an object named by a `struct path` (truncate, chmod...).
#[inline(always)]
fn path_op(ctx: &LsmContext, path_arg: usize, op: Op) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let path: *const u8 = ctx.arg(path_arg);
    let (dentry, vfsmount) = unsafe { (Direct::ptr::<PathDentry>(path), Direct::ptr::<PathMnt>(path)) };
    let check = Check { kind: Kind::FileWrite, op, allow_self: true, dentry, vfsmount };
    protect_then_decide(&tag, protected_object(&check), check)
}

/// An operation on a bare dentry (xattrs, setattr): the hook gives no mount,
/// so the walk ends at the root of the dentry's filesystem.
#[inline(always)]
fn dentry_op(tag: &Tagged, dentry: *const u8, op: Op) -> i32 {
    let check = Check { kind: Kind::FileWrite, op, allow_self: true, dentry, vfsmount: core::ptr::null() };
    protect_then_decide(tag, protected_object(&check), check)
}

/// Opening a file: the floor first (`floor::open_refused`), then writing
/// needs a write tree and any open of a `read_deny` tree is refused.
/// `O_TRUNC` counts as a write even with `O_RDONLY`. Character devices,
/// FIFOs and sockets hold no file data: opening them for writing
/// (`/dev/null`, a terminal, a pipe re-opened via `/dev/stdout`) is not a
/// file write.
///
/// Inline: the x86 JIT pushes the callee-saved registers `file_open` uses
/// either way, so a call here saved the untagged answer nothing and cost a
/// tagged open 27 instructions (a second prologue, the suspect spilled and
/// reloaded).
#[inline(always)]
fn open_file(suspect: Suspect, file: *const u8) -> i32 {
    let Some(tag) = tag::tag_of(suspect) else { return 0 };
    let (mode, flags) = unsafe { (Direct::get::<FileMode>(file) as u32, Direct::get::<FileFlags>(file) as u32) };
    let writes = mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0;
    let (dentry, vfsmount) = file_path::<Direct>(file);
    let start = Start::of_file(file, dentry);
    let inode = start.inode;
    let file_type = unsafe { Direct::get::<InodeMode>(inode) } as u32 & S_IFMT;
    let magic = unsafe { Direct::get::<SuperBlockMagic>(start.sb) };
    // The file and its directory, loaded once for the self-protection check
    // and the walk's first two levels: field loads are `nomem`, so the
    // walk's loads of the same fields fold into these.
    let parent = unsafe { Direct::ptr::<DentryParent>(dentry) };
    let object = protect::Object {
        ino: unsafe { Direct::get::<InodeIno>(inode) },
        parent,
        parent_ino: unsafe { Direct::get::<InodeIno>(Direct::ptr::<DentryInode>(parent)) },
        dentry,
    };
    let floor =
        floor::open_needs_look(file_type, magic, writes) && floor::open_refused(dentry, inode, file_type, writes, &tag);
    if floor || (writes && protect::loaded_object(&object)) {
        let kind = if writes { Kind::FileWrite } else { Kind::FileRead };
        let reason = if floor { Reason::Floor } else { Reason::Protected };
        return enforce(&tag, Some(Denial { kind, op: Op::Open, reason, dentry, vfsmount }));
    }
    if !restricts_files(&tag) {
        return 0;
    }
    let read_deny = tag.info.flags & TAG_READ_DENY != 0;
    if !writes && !read_deny {
        return 0;
    }
    let write = writes && !matches!(file_type, S_IFCHR | S_IFIFO | S_IFSOCK);
    if !write && !read_deny {
        return 0;
    }
    let kind = if write { Kind::FileWrite } else { Kind::FileRead };
    // The compat build always looks the object up: a value its verifier
    // cannot see through would double its states from here on.
    let object_may_be_root = COMPAT || file_type != S_IFREG || tag.info.flags & TAG_NO_REGULAR_FILE_ROOTS == 0;
    let check = Check { kind, op: Op::Open, allow_self: true, dentry, vfsmount };
    // Any open below a `sensitive` tree locks: with `O_RDWR` a write reads
    // too, and the mode kept for the test would cost every open a register.
    let denial = match judge_object(&tag, &check, start, object_may_be_root, true) {
        Err(Reason::Sensitive) => Some(sensitive::read(&tag, &start, check.denial(Reason::Sensitive))),
        verdict => refusal(verdict, check),
    };
    enforce(&tag, denial)
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let Some(suspect) = tag::screen() else { return 0 };
    open_file(suspect, ctx.arg(0))
}

/// Linux 6.2+: `ftruncate` (before, it reaches `path_truncate`).
#[lsm(hook = "file_truncate")]
pub fn file_truncate(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let file: *const u8 = ctx.arg(0);
    let (dentry, vfsmount) = file_path::<Direct>(file);
    let check = Check { kind: Kind::FileWrite, op: Op::Truncate, allow_self: true, dentry, vfsmount };
    protect_then_decide(&tag, protected_object(&check), check)
}

/// `mknod`, and `open(O_CREAT)` of a new file (the kernel asks this hook).
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let mode: u32 = ctx.arg(2);
    let op = if mode & S_IFMT == S_IFREG || mode & S_IFMT == 0 { Op::Create } else { Op::Mknod };
    entry_op(&ctx, 0, 1, op)
}

#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    entry_op(&ctx, 0, 1, Op::Mkdir)
}

#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    entry_op(&ctx, 0, 1, Op::Rmdir)
}

#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    entry_op(&ctx, 0, 1, Op::Unlink)
}

#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    entry_op(&ctx, 0, 1, Op::Symlink)
}

/// Both ends of a rename must be in write trees.
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let (from, to) = (entry_check(&ctx, 0, 1, Op::Rename), entry_check(&ctx, 2, 3, Op::Rename));
    let denial = match protected_entry(&ctx, 0, &from).or_else(|| protected_entry(&ctx, 2, &to)) {
        Some(denial) => Some(denial),
        None if restricts_files(&tag) => judge_pair(&tag, from, to),
        None => None,
    };
    enforce(&tag, denial)
}

/// A rename or link: `from` (the old name) and `to` (the new) must both be
/// in write trees, and a file below a `sensitive` tree keeps a name in one.
#[inline(always)]
fn judge_pair(tag: &Tagged, from: Check, to: Check) -> Option<Denial> {
    let to_verdict = judge_object(tag, &to, Start::of_dentry(to.dentry), true, false);
    if let Some(denial) = refusal(to_verdict, to) {
        return Some(denial);
    }
    let from_verdict = judge_object(tag, &from, Start::of_dentry(from.dentry), true, false);
    if moves_out_of_sensitive(from_verdict, to_verdict) {
        return Some(from.denial(Reason::SensitiveMoved));
    }
    refusal(from_verdict, from)
}

/// A new name in a write tree, for a file that is itself in a write tree: a
/// hard link must not give a write tree a name for a file outside it.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let new_name = entry_check(&ctx, 1, 2, Op::Link);
    // link(2) never crosses mounts: the old name lives on the new one's mount.
    let old_name = Check { allow_self: true, dentry: ctx.arg(0), ..entry_check(&ctx, 1, 2, Op::Link) };
    let denial = match protected_entry(&ctx, 1, &new_name).or_else(|| protected_object(&old_name)) {
        Some(denial) => Some(denial),
        None if restricts_files(&tag) => judge_pair(&tag, old_name, new_name),
        None => None,
    };
    enforce(&tag, denial)
}

#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    path_op(&ctx, 0, Op::Truncate)
}

#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    path_op(&ctx, 0, Op::Chmod)
}

#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    path_op(&ctx, 0, Op::Chown)
}

/// `utimes` and friends (mode, owner and size changes reach the `path_*`
/// hooks above first; judging them here too would report them twice).
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    // Read every candidate at a constant offset (the verifier refuses a
    // computed context offset), then pick by this kernel's signature.
    let (arg0, arg1, arg2): (*const u8, *const u8, *const u8) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let (dentry, attr) = if off!(inode_setattr_dentry_arg) == 0 { (arg0, arg1) } else { (arg1, arg2) };
    let valid = unsafe { Direct::get::<IattrValid>(attr) } as u32;
    // The compat build has no `path_chown` (see `COMPAT_JUDGED_ELSEWHERE`
    // in the loader): owner changes are judged here.
    let op = if COMPAT && valid & (ATTR_UID | ATTR_GID) != 0 {
        Op::Chown
    } else if valid & (ATTR_ATIME | ATTR_MTIME) == 0 || valid & (ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE) != 0 {
        return 0;
    } else {
        Op::Setattr
    };
    dentry_op(&tag, dentry, op)
}

#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    dentry_op(&tag, xattr_dentry(&ctx), Op::Setxattr)
}

/// The dentry argument of the xattr hooks, by this kernel's signature
/// (both candidates read at constant offsets, as in `inode_setattr`).
#[inline(always)]
fn xattr_dentry(ctx: &LsmContext) -> *const u8 {
    let (arg0, arg1): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    if off!(inode_xattr_dentry_arg) == 0 { arg0 } else { arg1 }
}

#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    dentry_op(&tag, xattr_dentry(&ctx), Op::Removexattr)
}

/// Linux 6.2+: POSIX ACLs no longer pass through the xattr hooks.
#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    dentry_op(&tag, ctx.arg(1), Op::SetAcl)
}

#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    dentry_op(&tag, ctx.arg(1), Op::RemoveAcl)
}

/// `chattr` and friends: `FS_IOC_SETFLAGS` (and its 32-bit form),
/// `FS_IOC_FSSETXATTR`, `FS_IOC_SETFSLABEL`. `chattr +i` of the daemon's
/// state or `+a` of a log is a write of that file.
const SETFLAGS_IOCTLS: [u32; 4] = [0x4008_6602, 0x4004_6602, 0x401c_5820, 0x4100_9432];

/// An ioctl: terminal input injection is refused (the floor), inode-flag
/// changes are judged as a write of the file.
#[inline(always)]
fn file_ioctl_check(ctx: &LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(1);
    if !boundary::TTY_INJECTION.contains(&cmd) && !SETFLAGS_IOCTLS.contains(&cmd) {
        return 0;
    }
    let Some(tag) = tag::current_tag() else { return 0 };
    if boundary::TTY_INJECTION.contains(&cmd) {
        return floor::refuse(&tag, Op::TtyInject, 0, cmd);
    }
    let (dentry, vfsmount) = file_path::<Direct>(ctx.arg(0));
    let check = Check { kind: Kind::FileWrite, op: Op::Setflags, allow_self: true, dentry, vfsmount };
    protect_then_decide(&tag, protected_object(&check), check)
}

#[lsm(hook = "file_ioctl")]
pub fn file_ioctl(ctx: LsmContext) -> i32 {
    file_ioctl_check(&ctx)
}

/// Linux 6.8+: 32-bit ioctls (`int 0x80`) have their own hook.
#[lsm(hook = "file_ioctl_compat")]
pub fn file_ioctl_compat(ctx: LsmContext) -> i32 {
    file_ioctl_check(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
