//! Upload budgets (`network.upload`): the bytes an agent may send per
//! window, in all (`*`) and to the addresses of a name. The
//! `socket_sendmsg` hook refuses a send its budgets have no room for, with
//! `EDQUOT` (the sender sees an error, nothing hangs); the programs after
//! `inet_sendmsg` and `inet6_sendmsg` count what each send carried (their
//! return value: a partial send counts what left). Every way bytes leave an
//! IPv4 or IPv6 socket passes both: `write`, `send*`, `sendmmsg`, `io_uring`,
//! and `sendfile` and `splice` from Linux 6.5 (before, `sendpage` passes
//! neither).
//!
//! The check and the count are two steps: sends in flight when a budget
//! runs out can take it past its limit by what they carry, never further.

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
    net::{Send, opaque_zero},
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

/// Why a send has no room.
struct NoRoom {
    reason: Reason,
    detail: BudgetDetail,
}

/// Whether budget `index` of the agent's policy has room for `size` bytes
/// more (a policy without that budget: yes), starting a new window where
/// the last one ended.
#[inline(always)]
fn room(tag: &Tagged, index: u16, size: u64, now: u64) -> Result<(), NoRoom> {
    let zero = opaque_zero();
    let key = BudgetUseKey { agent: tag.agent, budget: budget_key(tag.info.policy_id(), index), pad: zero };
    // SAFETY: the value is copied out.
    let Some(budget) = (unsafe { BUDGETS.get(&key.budget) }).copied() else { return Ok(()) };
    let (limit, window_ns) = (budget.limit, budget.window_ns);
    // Zeros the compiler cannot see: a run of them would make a `memset`.
    let mut detail = BudgetDetail { used: 0, limit, window_ns, size, index, pad: zero as u16, pad2: zero };
    let usage = if let Some(usage) = BUDGET_USE.get_ptr_mut(&key) {
        usage
    } else {
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
    let usage = unsafe { &mut *usage };
    // Two sends starting a window at once both write it: the same values,
    // within nanoseconds.
    if now.wrapping_sub(usage.window_start_ns) >= budget.window_ns {
        usage.window_start_ns = now;
        usage.bytes = 0;
    }
    detail.used = usage.bytes;
    if detail.used.saturating_add(size) > budget.limit {
        return Err(NoRoom { reason: Reason::BudgetExceeded, detail });
    }
    Ok(())
}

/// Judges a send of `size` bytes by a tagged task against its budgets (the
/// `socket_sendmsg` hook): 0, or `-EDQUOT` where one has no room left.
#[inline(always)]
pub fn check(tag: &Tagged, send: &Send, size: i32) -> i32 {
    let info = tag.info;
    if info.flags & TAG_BUDGET == 0 {
        return 0;
    }
    let size = size.max(0) as u64;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut verdict = room(tag, BUDGET_ALL, size, now);
    if verdict.is_ok()
        && let Some(index) = destination_budget(&info, send)
    {
        verdict = room(tag, index, size, now);
    }
    let Err(no_room) = verdict else { return 0 };
    let audit = info.flags & TAG_AUDIT != 0;
    let (action, errno) = if audit { (Action::Audit, 0) } else { (Action::Deny, EDQUOT) };
    let detail = &send.detail;
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
    if audit { 0 } else { -EDQUOT }
}

/// Adds `sent` bytes to budget `index` of the agent (a slot `check` made).
#[inline(always)]
fn add(tag: &Tagged, index: u16, sent: u64) {
    let key = BudgetUseKey { agent: tag.agent, budget: budget_key(tag.info.policy_id(), index), pad: 0 };
    if let Some(usage) = BUDGET_USE.get_ptr_mut(&key) {
        // An atomic add whose result is unused (`BPF_XADD`), which every
        // kernel's verifier takes; the target has no atomic read-modify-write.
        let bytes = unsafe { &raw mut (*usage).bytes };
        unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) bytes, in(reg) sent, options(nostack)) };
    }
}

/// Counts what a send carried out (after `inet_sendmsg`/`inet6_sendmsg`
/// returned `sent`) against the sender's budgets.
#[inline(always)]
fn count(socket: *const u8, msg: *const u8, returned: i32) -> i32 {
    if returned <= 0 || !in_force() {
        return 0;
    }
    let Some(tag) = tag::current_tag() else { return 0 };
    if tag.info.flags & TAG_BUDGET == 0 {
        return 0;
    }
    let Some(sent_to) = Send::of(socket, msg) else { return 0 };
    let bytes = returned as u64;
    add(&tag, BUDGET_ALL, bytes);
    if let Some(index) = destination_budget(&tag.info, &sent_to) {
        add(&tag, index, bytes);
    }
    0
}

#[fexit(function = "inet_sendmsg")]
pub fn count_inet_sendmsg(ctx: FExitContext) -> i32 {
    count(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}

#[fexit(function = "inet6_sendmsg")]
pub fn count_inet6_sendmsg(ctx: FExitContext) -> i32 {
    count(ctx.arg(0), ctx.arg(1), ctx.arg(3))
}
