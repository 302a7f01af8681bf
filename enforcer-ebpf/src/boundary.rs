//! The agent boundary, part of the built-in floor: what a tagged task may not
//! do to a process outside its agent (the host, the enforcer, another agent)
//! without a signal or `ptrace`: change its resource limits, scheduling or
//! priorities, move its memory, aim SIGIO at it, start a child in another
//! cgroup, or type into a terminal.
//!
//! Each of these once killed or starved `enforcer run` from inside (a CPU
//! limit on the parent, `F_SETOWN` + `F_SETSIG(SIGKILL)` on a pipe) or left
//! the agent cgroup (`clone3(CLONE_INTO_CGROUP)`), so each is refused and
//! reported like a signal to the outside.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{lsm, map},
    maps::LruHashMap,
    programs::LsmContext,
};
use enforcer_common::{
    events::{Op, Reason},
    net::PROTO_TCP,
    policy::{TAG_BUDGET, TAG_TLS, TagInfo},
};

use crate::{
    budget,
    floor::{outside, refuse, refuse_tagged, tgid_of},
    kernel::{Direct, FileOwner, MsghdrControl, MsghdrControllen, MsghdrName, Probe, Read, SocketSk, off},
    net, sensitive, tag, tls,
};

/// `CLONE_INTO_CGROUP` (Linux 5.7): `clone3` puts the child in the cgroup
/// its `cgroup` fd names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Owners (SIGIO targets) set by tagged tasks, kept for the files they were
/// set on (LRU: entries of closed files age out).
const FOWNERS_MAX: u32 = 16_384;
/// `fown->signum` 0 means plain SIGIO.
const SIGIO: i32 = 29;

/// Who set a file's owner: the agent and its tag at the time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Fowner {
    agent: u64,
    tag: TagInfo,
}

/// Keyed by the file's `struct fown_struct` (what `file_send_sigiotask` gets).
#[map]
static FOWNERS: LruHashMap<u64, Fowner> = LruHashMap::with_max_entries(FOWNERS_MAX, 0);

/// A hook whose first argument is the task acted on: refused when that
/// task is outside the current task's agent.
#[inline(always)]
fn on_other_task(ctx: &LsmContext, op: Op, value: u32) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let target: *const u8 = ctx.arg(0);
    if !outside(&tag, target) {
        return 0;
    }
    refuse(&tag, op, tgid_of(target), value)
}

/// `setrlimit` (its own limits) and `prlimit64` on any process: a CPU limit
/// on the supervisor kills it with SIGKILL, no `kill()` needed.
#[lsm(hook = "task_setrlimit")]
pub fn task_setrlimit(ctx: LsmContext) -> i32 {
    let resource: u32 = ctx.arg(1);
    on_other_task(&ctx, Op::Rlimit, resource)
}

/// `sched_setscheduler`, `sched_setattr`, `sched_setaffinity`.
#[lsm(hook = "task_setscheduler")]
pub fn task_setscheduler(ctx: LsmContext) -> i32 {
    on_other_task(&ctx, Op::SetScheduler, 0)
}

/// `setpriority` on a process, a process group or a user.
#[lsm(hook = "task_setnice")]
pub fn task_setnice(ctx: LsmContext) -> i32 {
    let nice: i32 = ctx.arg(1);
    on_other_task(&ctx, Op::SetNice, nice as u32)
}

#[lsm(hook = "task_setioprio")]
pub fn task_setioprio(ctx: LsmContext) -> i32 {
    let ioprio: i32 = ctx.arg(1);
    on_other_task(&ctx, Op::SetIoprio, ioprio as u32)
}

/// `migrate_pages`, `move_pages` of another process.
#[lsm(hook = "task_movememory")]
pub fn task_movememory(ctx: LsmContext) -> i32 {
    on_other_task(&ctx, Op::MoveMemory, 0)
}

/// `clone3(CLONE_INTO_CGROUP)`: the child would start in the cgroup the
/// caller names, the root one included, untagged. The hook runs before the
/// kernel resolves that cgroup, so every such clone is refused (writing
/// `cgroup.procs` is refused by the floor too: an agent never moves a
/// process between cgroups).
#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_INTO_CGROUP == 0 {
        return 0;
    }
    refuse_tagged(Op::CloneIntoCgroup, 0)
}

/// `TIOCSTI` (push a byte into a terminal's input) and `TIOCLINUX` (its
/// selection-paste subcommand does the same): a terminal the agent holds
/// may be the operator's, and what it types there runs outside the agent.
pub const TTY_INJECTION: [u32; 2] = [0x5412, 0x541c];

/// The kernel's `struct fown_struct` of `file`: embedded, or (Linux 6.12+)
/// a pointer allocated on first use (null before).
#[inline(always)]
fn fown_of(file: *const u8) -> u64 {
    if off!(file_f_owner_is_ptr) != 0 {
        unsafe { Probe::get::<FileOwner>(file) }
    } else {
        file.wrapping_add(off!(file_f_owner)) as u64
    }
}

/// `F_SETOWN`, `F_SETOWN_EX`, `FIOSETOWN`, `SIOCSPGRP`, `O_ASYNC` on a
/// terminal: remembers which agent set the owner of this file. The hook
/// cannot refuse (it returns nothing) and runs before the new owner is
/// stored; the signal is judged when it is sent.
#[lsm(hook = "file_set_fowner")]
pub fn file_set_fowner(ctx: LsmContext) -> i32 {
    let fown = fown_of(ctx.arg(0));
    if fown == 0 {
        return 0;
    }
    match tag::current_tag() {
        Some(tagged) => {
            // A full LRU drops its oldest entry; the signal is then judged
            // by the task that raises it (below).
            let _ = FOWNERS.insert(&fown, &Fowner { agent: tagged.agent, tag: tagged.info }, 0);
        }
        None => {
            let _ = FOWNERS.remove(&fown);
        }
    }
    0
}

/// A SIGIO (or `F_SETSIG` signal) about to be sent to `tsk` because of I/O
/// on a file whose owner an agent set: refused when `tsk` is outside that
/// agent. The I/O may come from anyone (the supervisor reading the agent's
/// pipe wakes its writers), so the agent is the one that set the owner; if
/// that record is gone, a tagged task raising the signal is judged instead.
#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    let (target, fown, sig): (*const u8, u64, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let sig = if sig == 0 { SIGIO } else { sig } as u32;
    if let Some(setter) = unsafe { FOWNERS.get(&fown) } {
        let setter = *setter;
        if tag::agent_cgroup(target) == setter.agent {
            return 0;
        }
        let tagged = tag::Tagged { info: setter.tag, files: core::ptr::null(), agent: setter.agent };
        return refuse(&tagged, Op::Sigio, tgid_of(target), sig);
    }
    let Some(tagged) = tag::current_tag() else { return 0 };
    if !outside(&tagged, target) {
        return 0;
    }
    refuse(&tagged, Op::Sigio, tgid_of(target), sig)
}

/// `SOL_IP`/`SOL_IPV6` options that source-route a packet: IPv4 options
/// (`IP_OPTIONS`, and `IP_RETOPTS` as a control message), IPv6 routing
/// headers (`IPV6_RTHDR`, `IPV6_2292RTHDR`, `IPV6_2292PKTOPTIONS`).
#[inline(always)]
fn source_routes(level: i32, name: i32) -> bool {
    const SOL_IP: i32 = 0;
    const SOL_IPV6: i32 = 41;
    matches!((level, name), (SOL_IP, 4 | 7) | (SOL_IPV6, 5 | 6 | 57))
}

/// `setsockopt` of a source route.
#[lsm(hook = "socket_setsockopt")]
pub fn socket_setsockopt(ctx: LsmContext) -> i32 {
    let (level, name): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    if !source_routes(level, name) {
        return 0;
    }
    refuse_tagged(Op::SourceRoute, name as u32)
}

/// Control messages read per `sendmsg`; more is refused (nothing real sends
/// that many).
const CMSGS_MAX: usize = 8;

/// A send: a source route as a control message (the floor); for an agent
/// whose egress a secret read locked, where it goes
/// (`net::judge_locked_send`); and the upload budgets (`budget::check`). A
/// task in no agent pays two loads, then, once some agent on the host was
/// locked or a policy with budgets was loaded, the tag screen too.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let msg: *const u8 = ctx.arg(1);
    let control = unsafe { Direct::get::<MsghdrControllen>(msg) };
    if control == 0 && !sensitive::any_locked() && !budget::in_force() && !tls::in_force() {
        return 0;
    }
    let Some(tag) = tag::current_tag() else { return 0 };
    if control != 0
        && let Some(refused) = source_route(&tag, msg, control)
    {
        return refused;
    }
    if tag.info.flags & TAG_TLS != 0 {
        let refused = tls_unjudged(&tag, ctx.arg(0), msg);
        if refused != 0 {
            return refused;
        }
    }
    let locked = sensitive::locked(&tag);
    if !locked && tag.info.flags & TAG_BUDGET == 0 {
        return 0;
    }
    let Some(send) = net::Send::of(ctx.arg(0), msg) else { return 0 };
    if locked {
        let refused = net::judge_locked_send(&tag, &send);
        if refused != 0 {
            return refused;
        }
    }
    budget::check(&tag, &send, ctx.arg(2))
}

/// The refusal of a send on a connection whose first bytes must be judged
/// (`tls`) but cannot be yet: TCP Fast Open data (its connect comes after
/// this hook, or before the connection is established), a write racing the
/// end of the connect.
#[inline(always)]
fn tls_unjudged(tag: &tag::Tagged, socket: *const u8, msg: *const u8) -> i32 {
    let sk = unsafe { Direct::ptr::<SocketSk>(socket) };
    if sk.is_null() {
        return 0;
    }
    let pending = tls::send_unjudged(sk);
    if !pending && unsafe { Direct::ptr::<MsghdrName>(msg) }.is_null() {
        return 0;
    }
    let Some(send) = net::Send::of(socket, msg) else { return 0 };
    let fast_open = send.named && send.proto == PROTO_TCP && tls::checks(tag, send.addr_bytes(), send.detail.port);
    if !pending && !fast_open {
        return 0;
    }
    net::refuse_send(&tag.info, Reason::TlsUncheckable, &send.detail)
}

/// The refusal of a `sendmsg` whose control messages (`left` bytes of
/// them, copied by the kernel: `msg_control` is kernel memory here) hold a
/// source route, if they do.
#[inline(always)]
fn source_route(tag: &tag::Tagged, msg: *const u8, mut left: u64) -> Option<i32> {
    let mut at = unsafe { Direct::get::<MsghdrControl>(msg) };
    for _ in 0..CMSGS_MAX {
        // struct cmsghdr: size_t cmsg_len; int cmsg_level; int cmsg_type.
        let Ok(head) = (unsafe { bpf_probe_read_kernel(at as *const [u64; 2]) }) else {
            return Some(refuse(tag, Op::SourceRoute, 0, 0)); // unreadable: cannot judge
        };
        let (len, level, name) = (head[0], head[1] as u32 as i32, (head[1] >> 32) as u32 as i32);
        if source_routes(level, name) {
            return Some(refuse(tag, Op::SourceRoute, 0, name as u32));
        }
        let step = (len + 7) & !7;
        if len < 16 || step >= left {
            return None;
        }
        left -= step;
        at += step;
    }
    Some(refuse(tag, Op::SourceRoute, 0, 0))
}
