//! Is a dentry below an allowed write tree, or below a `read_deny` tree?
//!
//! Tree roots are keyed by inode (device, inode number, policy) in a hash map,
//! so a decision walks the dentry's ancestors and does one lookup per level:
//! its cost follows the path's depth, never the number of rules. The walk
//! crosses mounts the way `d_path` does, so the answer is about the path the
//! kernel resolved (symlinks, `..`, `/proc/self/fd` re-opens are already
//! resolved by the time a hook sees the dentry). A path deeper than
//! `MAX_PATH_DEPTH`, or a structure that cannot be read, is denied.
//!
//! Each level is one `bpf_loop` step, so the verifier checks a step once
//! instead of every unrolled level.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_loop, macros::map, maps::HashMap};
use enforcer_common::{
    events::{MAX_PATH_DEPTH, Reason},
    policy::{FILE_READ_DENY, FILE_RULES_MAX, FILE_WRITE, FileRuleKey},
};

use crate::kernel::{Direct, Probe, Read, mount_of, off, vfsmount_of};

#[map]
static FILE_RULES: HashMap<FileRuleKey, u32> = HashMap::with_max_entries(FILE_RULES_MAX, 0);

/// What is being asked of the tree.
#[derive(Clone, Copy)]
pub struct Question {
    pub policy_id: u32,
    /// The operation writes: it needs a `write` tree above it.
    pub write: bool,
    /// A `write` root names the object itself (open, truncate, chmod...), not
    /// only its directory entry (create, unlink, rename...: those change the
    /// parent, so the object being a root does not allow them).
    pub allow_self: bool,
    /// The policy has `read_deny` trees, so the walk must reach the root.
    pub read_deny: bool,
}

// `Walk::verdict` values.
const UNDECIDED: u32 = 0;
const ALLOWED: u32 = 1;
const AT_MOUNT_ROOT: u32 = 2;
const DENIED: u32 = 16; // + Reason

/// The walk's state, shared with the `bpf_loop` step callbacks.
#[repr(C)]
struct Walk {
    dentry: *const u8,
    /// Root dentry of the mount being walked (null: no mount known).
    mnt_root: *const u8,
    /// The `struct mount` being walked (above-mount phase only).
    mount: *const u8,
    question: Question,
    allowed: bool,
    verdict: u32,
}

impl Walk {
    #[inline(always)]
    fn decide(&mut self, verdict: Result<(), Reason>) -> i64 {
        self.verdict = match verdict {
            Ok(()) => ALLOWED,
            Err(reason) => DENIED + reason as u32,
        };
        1
    }

    #[inline(always)]
    fn at_fs_root(&mut self) -> i64 {
        let verdict = if self.allowed { Ok(()) } else { Err(Reason::OutsideWriteTrees) };
        self.decide(verdict)
    }

    /// Judges the current dentry; `Some` ends the walk.
    #[inline(always)]
    fn check<R: Read>(&mut self, level: u32) -> Option<i64> {
        let flags = unsafe { rule::<R>(self.dentry, self.question.policy_id) }?;
        if flags & FILE_READ_DENY != 0 {
            return Some(self.decide(Err(Reason::ReadDenied)));
        }
        if flags & FILE_WRITE != 0 && (level > 0 || self.question.allow_self) {
            self.allowed = true;
            if !self.question.read_deny {
                return Some(self.decide(Ok(())));
            }
        }
        None
    }
}

/// The rule flags of one dentry's inode, if its inode is a tree root.
#[inline(always)]
unsafe fn rule<R: Read>(dentry: *const u8, policy_id: u32) -> Option<u32> {
    let inode = unsafe { R::ptr(dentry, off!(dentry_d_inode)) };
    if inode.is_null() {
        return None; // a negative dentry (a name being created)
    }
    let key = unsafe {
        let sb = R::ptr(inode, off!(inode_i_sb));
        FileRuleKey {
            ino: R::read::<u64>(inode, off!(inode_i_ino)),
            dev: R::read::<u32>(sb, off!(super_block_s_dev)),
            policy_id,
        }
    };
    unsafe { FILE_RULES.get(&key).copied() }
}

/// One level within the starting mount: BTF-typed loads.
extern "C" fn step_in_mount(level: u32, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    if let Some(stop) = walk.check::<Direct>(level) {
        return stop;
    }
    let d = walk.dentry;
    if d == walk.mnt_root {
        walk.verdict = AT_MOUNT_ROOT;
        return 1;
    }
    let parent = unsafe { Direct::ptr(d, off!(dentry_d_parent)) };
    if parent.is_null() {
        return walk.decide(Err(Reason::Unreadable));
    }
    if parent == d {
        return walk.at_fs_root();
    }
    walk.dentry = parent;
    0
}

/// One level above the starting mount, crossing mounts like `d_path`.
extern "C" fn step_above_mount(_level: u32, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    if walk.dentry == walk.mnt_root {
        let mount = walk.mount;
        let parent_mount = unsafe { Probe::ptr(mount, off!(mount_mnt_parent)) };
        if parent_mount.is_null() {
            return walk.decide(Err(Reason::Unreadable));
        }
        if parent_mount == mount {
            return walk.at_fs_root();
        }
        walk.dentry = unsafe { Probe::ptr(mount, off!(mount_mnt_mountpoint)) };
        walk.mount = parent_mount;
        walk.mnt_root = unsafe { Probe::ptr(vfsmount_of(parent_mount), off!(vfsmount_mnt_root)) };
    }
    // Above the start every level is a parent, so `write` roots count.
    if let Some(stop) = walk.check::<Probe>(1) {
        return stop;
    }
    let d = walk.dentry;
    if d != walk.mnt_root {
        let parent = unsafe { Probe::ptr(d, off!(dentry_d_parent)) };
        if parent.is_null() {
            return walk.decide(Err(Reason::Unreadable));
        }
        if parent == d {
            return walk.at_fs_root();
        }
        walk.dentry = parent;
    }
    0
}

/// Judges `dentry`, reached through `vfsmount` (null when the hook gives no
/// mount: the walk then ends at the root of the dentry's filesystem).
#[inline(never)]
pub fn judge(question: &Question, dentry: *const u8, vfsmount: *const u8) -> Result<(), Reason> {
    let mnt_root = if vfsmount.is_null() {
        core::ptr::null()
    } else {
        unsafe { Direct::ptr(vfsmount, off!(vfsmount_mnt_root)) }
    };
    let mut walk = Walk {
        dentry,
        mnt_root,
        mount: core::ptr::null(),
        question: *question,
        allowed: !question.write,
        verdict: UNDECIDED,
    };
    let ctx = (&raw mut walk).cast::<c_void>();
    unsafe { bpf_loop(MAX_PATH_DEPTH, step_in_mount as *mut c_void, ctx, 0) };
    if walk.verdict == AT_MOUNT_ROOT {
        walk.mount = mount_of(vfsmount);
        walk.verdict = UNDECIDED;
        unsafe { bpf_loop(MAX_PATH_DEPTH, step_above_mount as *mut c_void, ctx, 0) };
    }
    match walk.verdict {
        ALLOWED => Ok(()),
        UNDECIDED => Err(Reason::TooDeep),
        v => Err(Reason::from_u8((v - DENIED) as u8).unwrap_or(Reason::Unreadable)),
    }
}
