//! The built-in floor: what no policy can allow a task in an agent cgroup,
//! because it breaks out of any sandbox. Each hook refuses for every tagged
//! task (audit mode reports and allows, like everything else).
//!
//! Acting on another process (signals, ptrace, `process_vm_*`, reading
//! `/proc/PID/mem` or `environ`) is refused unless that process belongs to
//! the same agent: its deepest tagged ancestor cgroup is the caller's.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use enforcer_common::{
    events::{Action, Op},
    policy::{FILE_DEVICE, TAG_AUDIT},
};

use crate::{
    kernel::{
        CredEgid, CredEuid, CredFsgid, CredFsuid, CredGid, CredSgid, CredSuid, CredUid, DentryFsdata, DentryName,
        DentryParent, DentrySb, Direct, Field, InodeRdev, Probe, Read, SignalSession, SuperBlockMagic, Task,
        TaskSignal, TaskTgid, TtySession, current_task,
    },
    report::{FloorDenial, report_floor},
    tag::{self, Tagged},
    walk,
};

const EPERM: i32 = 1;
/// `PTRACE_MODE_NOAUDIT`: an opportunistic check (e.g. `ps` reading
/// `/proc/PID/stat`): refused, but not reported.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// Refuses (or, in audit mode, allows) and reports.
#[inline(always)]
pub(crate) fn refuse(tag: &Tagged, op: Op, target_pid: u32, value: u32) -> i32 {
    let denial = FloorDenial { op, target_pid, value };
    // Two constant returns: the verifier cannot bound a negated variable.
    if tag.info.flags & TAG_AUDIT != 0 {
        report_floor(&tag.info, &denial, Action::Audit, 0);
        return 0;
    }
    report_floor(&tag.info, &denial, Action::Deny, EPERM as u32);
    -EPERM
}

/// Refuses for any tagged task.
#[inline(always)]
pub(crate) fn refuse_tagged(op: Op, value: u32) -> i32 {
    match tag::current_tag() {
        Some(tag) => refuse(&tag, op, 0, value),
        None => 0,
    }
}

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    let cmd: u32 = ctx.arg(0);
    refuse_tagged(Op::Bpf, cmd)
}

#[lsm(hook = "perf_event_open")]
pub fn perf_event_open(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::PerfEvent, 0)
}

/// Module loading, explicit (`init_module`, `finit_module`: they reach
/// these hooks) or on demand (`request_module`, e.g. a socket of a family
/// whose module is not loaded).
#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::KernelModule, 0)
}

#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let id: u32 = ctx.arg(0);
    refuse_tagged(Op::KernelModule, id)
}

#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let id: u32 = ctx.arg(1);
    refuse_tagged(Op::KernelModule, id)
}

#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let flags: u64 = ctx.arg(3);
    refuse_tagged(Op::Mount, flags as u32)
}

#[lsm(hook = "sb_umount")]
pub fn sb_umount(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::Umount, 0)
}

#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::PivotRoot, 0)
}

/// The new mount API (`fsmount` + `move_mount`) and moving mounts.
#[lsm(hook = "move_mount")]
pub fn move_mount(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::MoveMount, 0)
}

/// Linux 6.1+: creating a user namespace (`unshare`, `clone`, `clone3`).
#[lsm(hook = "userns_create")]
pub fn userns_create(_ctx: LsmContext) -> i32 {
    refuse_tagged(Op::UserNamespace, 0)
}

/// Whether some id of `new` becomes 0 where `old`'s was not.
#[inline(always)]
fn becomes_root<A: Field, B: Field, C: Field, D: Field>(new: *const u8, old: *const u8) -> bool {
    unsafe {
        (Direct::get::<A>(new) == 0 && Direct::get::<A>(old) != 0)
            || (Direct::get::<B>(new) == 0 && Direct::get::<B>(old) != 0)
            || (Direct::get::<C>(new) == 0 && Direct::get::<C>(old) != 0)
            || (Direct::get::<D>(new) == 0 && Direct::get::<D>(old) != 0)
    }
}

#[lsm(hook = "task_fix_setuid")]
pub fn task_fix_setuid(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let (new, old): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    if becomes_root::<CredUid, CredEuid, CredSuid, CredFsuid>(new, old) { refuse(&tag, Op::Setuid, 0, 0) } else { 0 }
}

#[lsm(hook = "task_fix_setgid")]
pub fn task_fix_setgid(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let (new, old): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    if becomes_root::<CredGid, CredEgid, CredSgid, CredFsgid>(new, old) { refuse(&tag, Op::Setgid, 0, 0) } else { 0 }
}

/// `task`'s pid (its thread group's).
#[inline(always)]
pub(crate) fn tgid_of(task: *const u8) -> u32 {
    unsafe { Direct::get::<TaskTgid>(task) as u32 }
}

/// Whether `task` belongs to another agent than the current task, whose
/// tag is `tag` (or to none: the host).
#[inline(always)]
pub(crate) fn outside(tag: &Tagged, task: *const u8) -> bool {
    tag::agent_cgroup(task) != tag.agent
}

/// Signals (`kill`, `tgkill`, `sigqueue`, `pidfd_send_signal`) to a process
/// outside the agent. Signal 0 only probes for existence: allowed.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let Some(suspect) = tag::screen() else { return 0 };
    let Some(tag) = tag::tag_of(suspect) else { return 0 };
    let (target, sig): (*const u8, i32) = (ctx.arg(0), ctx.arg(2));
    if sig == 0 || !outside(&tag, target) {
        return 0;
    }
    refuse(&tag, Op::Signal, tgid_of(target), sig as u32)
}

/// `ptrace` attach and every access checked like it: `process_vm_*`,
/// `/proc/PID/mem`, `environ`, `pidfd_getfd`...
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let (target, mode): (*const u8, u32) = (ctx.arg(0), ctx.arg(1));
    if !outside(&tag, target) {
        return 0;
    }
    if mode & PTRACE_MODE_NOAUDIT != 0 {
        return if tag.info.flags & TAG_AUDIT != 0 { 0 } else { -EPERM };
    }
    refuse(&tag, Op::Ptrace, tgid_of(target), mode)
}

/// `PTRACE_TRACEME`: making a process outside the agent the tracer.
#[lsm(hook = "ptrace_traceme")]
pub fn ptrace_traceme(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let parent: *const u8 = ctx.arg(0);
    if !outside(&tag, parent) {
        return 0;
    }
    refuse(&tag, Op::Ptrace, tgid_of(parent), 0)
}

const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// Kernel `dev_t` (`major << 20 | minor`).
const fn dev(major: u32, minor: u32) -> u32 {
    major << 20 | minor
}

/// The character devices every agent may open: `/dev/null`, `zero`, `full`,
/// `random`, `urandom`, `tty` (its own controlling terminal) and `ptmx`
/// (new pseudo-terminals). Every other one (disks through `SG_IO` or `NVMe`
/// passthrough, `/dev/mem`, consoles, `/dev/kmsg`, input devices...) is
/// refused, except the caller's own pseudo-terminal (see [`own_terminal`])
/// and the nodes a policy's `[devices]` names.
const ALLOWED_DEVICES: [u32; 7] = [dev(1, 3), dev(1, 5), dev(1, 7), dev(1, 8), dev(1, 9), dev(5, 0), dev(5, 2)];
const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// Filesystems that are kernel interfaces, not files: no agent writes them.
/// sysfs, cgroup2, cgroup, securityfs, debugfs, tracefs, bpffs, efivarfs,
/// configfs, pstore, `binfmt_misc`, fusectl, nfsd, `rpc_pipefs`, selinuxfs,
/// smackfs, apparmorfs, xenfs. A `match`: the compiler turns it into a
/// binary search (five compares, not eighteen, on every tagged write).
#[inline(always)]
fn kernel_filesystem(magic: u64) -> bool {
    matches!(
        magic,
        0x6265_6572
            | 0x6367_7270
            | 0x0027_e0eb
            | 0x7363_6673
            | 0x6462_6720
            | 0x7472_6163
            | 0xcafe_4a11
            | 0xde5e_81e4
            | 0x6265_6570
            | 0x6165_676c
            | 0x4249_4e4d
            | 0x6573_5543
            | 0x6e66_7364
            | 0x6759_6969
            | 0xf97c_ff8c
            | 0x4341_5d53
            | 0x5a3c_69f0
            | 0xabba_1974
    )
}
/// Deepest procfs path whose top directory is looked for.
const PROC_LEVELS: usize = 8;

/// What the top-level name of a procfs file is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProcTop {
    Sys,
    Kcore,
    SysrqTrigger,
    Other,
    /// Deeper than `PROC_LEVELS`, or unreadable.
    Unknown,
}

/// Whether [`open_refused`] has anything to look at: most opens (a regular
/// file or a directory, not on procfs, not a write of a kernel filesystem)
/// are passed here, inline, on what the caller loaded anyway.
#[inline(always)]
pub fn open_needs_look(file_type: u32, magic: u64, writes: bool) -> bool {
    matches!(file_type, S_IFBLK | S_IFCHR) || magic == PROC_SUPER_MAGIC || writes && kernel_filesystem(magic)
}

/// Whether the floor refuses opening a file: block devices, character
/// devices outside [`ALLOWED_DEVICES`], `/proc/kcore`, and writing kernel
/// interfaces (`/sys` and the filesystems mounted below it, `/proc/sys`,
/// `/proc/sysrq-trigger`).
/// Out of line: inlined, its branches multiply the verifier's states for
/// everything `file_open` does after it.
#[inline(never)]
pub fn open_refused(dentry: *const u8, inode: *const u8, file_type: u32, writes: bool, tag: &Tagged) -> bool {
    if file_type == S_IFBLK {
        return true;
    }
    let magic = unsafe { Direct::get::<SuperBlockMagic>(Direct::ptr::<DentrySb>(dentry)) };
    if file_type == S_IFCHR {
        let rdev = unsafe { Direct::get::<InodeRdev>(inode) } as u32;
        return !(ALLOWED_DEVICES.contains(&rdev)
            || magic == DEVPTS_SUPER_MAGIC && own_terminal(dentry)
            || policy_allows_device(tag, dentry));
    }
    if writes && kernel_filesystem(magic) {
        return true;
    }
    if magic != PROC_SUPER_MAGIC {
        return false;
    }
    match proc_top(dentry) {
        ProcTop::Kcore => true,
        ProcTop::Sys | ProcTop::SysrqTrigger | ProcTop::Unknown => writes,
        ProcTop::Other => false,
    }
}

/// Whether the policy's `[devices]` names the node or its directory.
#[inline(always)]
fn policy_allows_device(tag: &Tagged, dentry: *const u8) -> bool {
    let policy_id = tag.info.policy_id();
    let parent = unsafe { Direct::ptr::<DentryParent>(dentry) };
    (walk::node_flags(tag.files, policy_id, dentry) | walk::node_flags(tag.files, policy_id, parent)) & FILE_DEVICE != 0
}

/// Whether a pseudo-terminal's end (on devpts) is the caller's own: its
/// controlling terminal, or one that is no session's terminal yet (a pty the
/// agent just made, for `script` or `tmux`). Another session's terminal (the
/// operator's shell) would let it read what is typed there.
#[inline(always)]
fn own_terminal(dentry: *const u8) -> bool {
    let tty = unsafe { Direct::ptr::<DentryFsdata>(dentry) };
    if tty.is_null() {
        return false;
    }
    let session = unsafe { Probe::get::<TtySession>(tty) };
    if session == 0 {
        return true;
    }
    let own = unsafe { Task::get::<SignalSession>(Task::ptr::<TaskSignal>(current_task())) };
    session == own
}

/// The name right below the procfs root on the way up from `dentry`.
#[inline(always)]
fn proc_top(dentry: *const u8) -> ProcTop {
    let mut d = dentry;
    for _ in 0..PROC_LEVELS {
        let parent = unsafe { Direct::ptr::<DentryParent>(d) };
        if parent.is_null() {
            return ProcTop::Unknown;
        }
        if parent == d {
            return ProcTop::Other; // the procfs root itself
        }
        if unsafe { Direct::ptr::<DentryParent>(parent) } == parent {
            return top_name(d);
        }
        d = parent;
    }
    ProcTop::Unknown
}

#[inline(always)]
fn top_name(dentry: *const u8) -> ProcTop {
    let name = unsafe { Direct::ptr::<DentryName>(dentry) };
    let Ok(words) = (unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(name.cast::<[u64; 2]>()) }) else {
        return ProcTop::Unknown;
    };
    let [first, second] = words.map(u64::from_le);
    if first & 0xffff_ffff == u64::from(u32::from_le_bytes(*b"sys\0")) {
        ProcTop::Sys
    } else if first & 0xffff_ffff_ffff == u64::from_le_bytes(*b"kcore\0\0\0") {
        ProcTop::Kcore
    } else if first == u64::from_le_bytes(*b"sysrq-tr")
        && second & 0xffff_ffff_ffff == u64::from_le_bytes(*b"igger\0\0\0")
    {
        ProcTop::SysrqTrigger
    } else {
        ProcTop::Other
    }
}
