//! Upload budgets (`network.upload`): the bytes an agent may send per
//! window, in all (`*`) and to the addresses of a name. The
//! `socket_sendmsg` hook refuses a send its budgets have no room for, with
//! `EDQUOT` (the sender sees an error, nothing hangs), and reserves the
//! bytes of one that fits; the programs after `inet_sendmsg` and
//! `inet6_sendmsg` give back what a send did not carry (a partial or failed
//! send). Every way bytes leave an IPv4 or IPv6 socket passes both:
//! `write`, `send*`, `sendmmsg`, `io_uring`, and `sendfile` and `splice`
//! from Linux 6.5 (before, `sendpage` passes neither).
//!
//! Reserving at the check, not counting after the send, bounds sends in
//! flight together (a blocking write can wait seconds): only checks that
//! run at the same instant can both pass on the same room.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::{fexit, map},
    maps::HashMap,
    programs::FExitContext,
};
use enforcer_common::{
    budget::{BUDGET_ALL, BUDGET_USE_MAX, BUDGETS_MAX, Budget, BudgetUse, BudgetUseKey, budget_key},
    events::{Action, BudgetDetail, Kind, Reason},
    net::{DNS_GRANTS_MAX, NetKey},
    policy::{TAG_AUDIT, TAG_BUDGET, TagInfo},
};

use crate::{
    net::{Detail, Send, opaque_zero},
    report::{NetDenial, report_net},
    tag::{self, Tagged},
};

#[map]
static BUDGETS: HashMap<u32, Budget> = HashMap::with_max_entries(BUDGETS_MAX, 0);

/// The budget (an index in the policy's `network.upload`) of each address
/// a name with a budget resolved to, by the policy's grant key: kept while
/// the policy version is in force, after the grant expires, so a connection
/// opened while it held goes on counting.
#[map]
static BUDGET_ADDRS: HashMap<NetKey, u16> = HashMap::with_max_entries(DNS_GRANTS_MAX, 0);

#[map]
static BUDGET_USE: HashMap<BudgetUseKey, BudgetUse> = HashMap::with_max_entries(BUDGET_USE_MAX, 0);

/// Set by userspace once a policy with budgets is loaded: until then a send
/// by a task in no agent ends at one load (`boundary::socket_sendmsg`, and
/// the counters). In a section of its own: userspace writes it whole.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.budgets")]
static mut BUDGETS_IN_FORCE: u64 = 0;

const EEXIST: i32 = 17;
const EDQUOT: i32 = 122;

/// Whether some policy loaded has budgets.
#[inline(always)]
pub fn in_force() -> bool {
    unsafe { (&raw const BUDGETS_IN_FORCE).read_volatile() != 0 }
}

/// The budget of `send`'s destination beyond `*`, if it has one.
#[inline(always)]
fn destination_budget(info: &TagInfo, send: &Send) -> Option<u16> {
    if send.detail.port == 0 {
        return None;
    }
    // SAFETY: the value is only read, while the program runs.
    unsafe { BUDGET_ADDRS.get(&info.grant_key(send.addr_bytes())) }.copied()
}

/// Why a send (or a destination) has no room.
pub(crate) struct NoRoom {
    pub reason: Reason,
    pub detail: BudgetDetail,
}

/// The agent's count under budget `index` of its policy, in a window that
/// holds `now` (a new one starts where the last one ended), and the budget;
/// `None` for a policy without that budget. The detail of a refusal is
/// filled but for `used` and `size`.
#[inline(always)]
pub(crate) fn current_window(tag: &Tagged, index: u16, now: u64) -> Result<Option<(*mut BudgetUse, Budget)>, NoRoom> {
    let zero = opaque_zero();
    let key = BudgetUseKey { agent: tag.agent, budget: budget_key(tag.info.policy_id(), index), pad: zero };
    // SAFETY: the value is copied out.
    let Some(budget) = (unsafe { BUDGETS.get(&key.budget) }).copied() else {
        return Ok(None);
    };
    let usage = if let Some(usage) = BUDGET_USE.get_ptr_mut(&key) {
        usage
    } else {
        // Zeros the compiler cannot see: a run of them would make a `memset`.
        let detail = BudgetDetail {
            used: 0,
            limit: budget.limit,
            window_ns: budget.window_ns,
            size: u64::from(zero),
            index,
            pad: zero as u16,
            pad2: zero,
        };
        let fresh = BudgetUse { window_start_ns: now, bytes: 0 };
        match BUDGET_USE.insert(&key, &fresh, u64::from(BPF_NOEXIST)) {
            Ok(()) => {}
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(NoRoom { reason: Reason::BudgetTableFull, detail }),
        }
        let Some(usage) = BUDGET_USE.get_ptr_mut(&key) else {
            return Err(NoRoom { reason: Reason::BudgetTableFull, detail });
        };
        usage
    };
    let count = unsafe { &mut *usage };
    // Two sends starting a window at once both write it: the same values,
    // within nanoseconds.
    if now.wrapping_sub(count.window_start_ns) >= budget.window_ns {
        count.window_start_ns = now;
        count.bytes = 0;
    }
    Ok(Some((usage, budget)))
}

/// Whether budget `index` of the agent's policy has room for `size` bytes
/// more: its count to reserve them in (null for a policy without that
/// budget).
#[inline(always)]
fn room(tag: &Tagged, index: u16, size: u64, now: u64) -> Result<*mut BudgetUse, NoRoom> {
    let Some((usage, budget)) = current_window(tag, index, now)? else {
        return Ok(core::ptr::null_mut());
    };
    // A send in flight across a window's start gives back what it reserved
    // in the last one: the count can go below zero, read as zero.
    let used = (unsafe { (*usage).bytes } as i64).max(0) as u64;
    if used.saturating_add(size) > budget.limit {
        let zero = opaque_zero();
        let detail = BudgetDetail {
            used,
            limit: budget.limit,
            window_ns: budget.window_ns,
            size,
            index,
            pad: zero as u16,
            pad2: zero,
        };
        return Err(NoRoom { reason: Reason::BudgetExceeded, detail });
    }
    Ok(usage)
}

/// Reports a `budget_exceeded` event about `detail`'s destination, refused
/// with `errno` unless the policy only audits: whether it audits (the
/// caller then lets it through).
#[inline(always)]
pub(crate) fn report_no_room(info: &TagInfo, detail: &Detail, no_room: &NoRoom, errno: i32) -> bool {
    let audit = info.flags & TAG_AUDIT != 0;
    let (action, errno) = if audit { (Action::Audit, 0) } else { (Action::Deny, errno) };
    report_net(&NetDenial {
        policy_id: info.policy_id(),
        errno: errno as u32,
        kind: Kind::BudgetExceeded,
        reason: no_room.reason,
        action,
        addr: detail.addr,
        port: detail.port,
        family: detail.family,
        sock_type: detail.sock_type,
        protocol: detail.protocol,
        unix_path: opaque_zero() as usize as *const u8,
        unix_len: opaque_zero(),
        budget: &raw const no_room.detail,
    });
    audit
}

/// Adds `bytes` (two's complement: a negative amount gives back) to a count.
#[inline(always)]
pub(crate) fn add(usage: *mut BudgetUse, bytes: u64) {
    if usage.is_null() {
        return;
    }
    // An atomic add whose result is unused (`BPF_XADD`), which every
    // kernel's verifier takes; the target has no atomic read-modify-write.
    let at = unsafe { &raw mut (*usage).bytes };
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) at, in(reg) bytes, options(nostack)) };
}

/// Judges a send of `size` bytes by a tagged task against its budgets (the
/// `socket_sendmsg` hook) and reserves them: 0, or `-EDQUOT` where one has
/// no room left (in audit mode, reported, and reserved all the same).
#[inline(always)]
pub fn check(tag: &Tagged, send: &Send, size: i32) -> i32 {
    let info = tag.info;
    if info.flags & TAG_BUDGET == 0 {
        return 0;
    }
    let size = size.max(0) as u64;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let all = room(tag, BUDGET_ALL, size, now);
    let destination = match (&all, destination_budget(&info, send)) {
        (Ok(_), Some(index)) => room(tag, index, size, now),
        _ => Ok(core::ptr::null_mut()),
    };
    let no_room = match (all, destination) {
        (Ok(all), Ok(destination)) => {
            add(all, size);
            add(destination, size);
            return 0;
        }
        (Err(no_room), _) | (_, Err(no_room)) => no_room,
    };
    if !report_no_room(&info, &send.detail, &no_room, EDQUOT) {
        return -EDQUOT;
    }
    add_to(tag, BUDGET_ALL, size);
    if let Some(index) = destination_budget(&info, send) {
        add_to(tag, index, size);
    }
    0
}

/// Adds `bytes` to the agent's count of budget `index`, if it has one.
#[inline(always)]
fn add_to(tag: &Tagged, index: u16, bytes: u64) {
    let key = BudgetUseKey { agent: tag.agent, budget: budget_key(tag.info.policy_id(), index), pad: 0 };
    if let Some(usage) = BUDGET_USE.get_ptr_mut(&key) {
        add(usage, bytes);
    }
}

/// Settles a send of `size` bytes that `inet_sendmsg`/`inet6_sendmsg`
/// answered with `returned`: a whole send (nearly every one) took what it
/// reserved, a partial or failed one gives the rest back.
#[inline(always)]
fn settle(socket: *const u8, msg: *const u8, size: u64, returned: i32) -> i32 {
    let sent = returned.max(0) as u64;
    if sent >= size || !in_force() {
        return 0;
    }
    let Some(tag) = tag::current_tag() else { return 0 };
    if tag.info.flags & TAG_BUDGET == 0 {
        return 0;
    }
    let Some(sent_to) = Send::of(socket, msg) else { return 0 };
    // A negative amount: what it reserved and did not carry.
    let unsent = sent.wrapping_sub(size);
    add_to(&tag, BUDGET_ALL, unsent);
    if let Some(index) = destination_budget(&tag.info, &sent_to) {
        add_to(&tag, index, unsent);
    }
    0
}

#[fexit(function = "inet_sendmsg")]
pub fn count_inet_sendmsg(ctx: FExitContext) -> i32 {
    settle(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3))
}

#[fexit(function = "inet6_sendmsg")]
pub fn count_inet6_sendmsg(ctx: FExitContext) -> i32 {
    settle(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3))
}
