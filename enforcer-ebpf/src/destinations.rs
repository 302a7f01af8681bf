//! The budget of new destinations (`network.new_destinations`): how many
//! distinct destinations (address and port) an agent may reach per window,
//! whatever the rules allow. Data can leave in the choice of destination
//! alone (a connect to one of 65 536 allowed addresses carries 16 bits),
//! and a scan walks them; an agent that reaches the same few places again
//! and again is never refused.
//!
//! Judged where a destination is: `connect4`/`connect6` (TCP, connected UDP,
//! TCP Fast Open's connect) and `sendmsg4`/`sendmsg6` (a datagram given an
//! address). The count is the policy's `BUDGET_USE` entry under
//! `BUDGET_NEW_DESTINATIONS`, so it survives a daemon restart and `enforcer
//! status` shows it like the upload budgets.

use aya_ebpf::{helpers::generated::bpf_ktime_get_boot_ns, macros::map, maps::LruHashMap};
use enforcer_common::{
    budget::{BUDGET_NEW_DESTINATIONS, BudgetUse, DESTINATIONS_SEEN_MAX, SeenKey, SeenWindow},
    events::{BudgetDetail, Reason},
    policy::TAG_NEW_DESTINATIONS,
};

use crate::{
    budget::{self, NoRoom},
    net::{Detail, opaque_zero},
    tag::Tagged,
};

/// The window each agent last had each destination counted in.
#[map]
static DESTINATIONS_SEEN: LruHashMap<SeenKey, SeenWindow> = LruHashMap::with_max_entries(DESTINATIONS_SEEN_MAX, 0);

const EPERM: i32 = 1;

/// Whether the agent may reach `detail`'s destination, which its rules
/// allow: `true`, or `false` when it is new and the window holds the
/// budget's count of destinations already (reported; in audit mode
/// reported and allowed). A new destination allowed is counted.
#[inline(always)]
pub(crate) fn admit(tag: &Tagged, detail: &Detail) -> bool {
    if tag.info.flags & TAG_NEW_DESTINATIONS == 0 {
        return true;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let zero = opaque_zero();
    let key = SeenKey {
        agent: tag.agent,
        addr: detail.addr,
        port: detail.port,
        policy_id: tag.info.policy_id().0,
        pad: zero,
    };
    // Counted in a window that has not ended: the agent's current one (a
    // window starts only after the last one ended), so not new.
    // SAFETY: the value is copied out.
    if let Some(seen) = unsafe { DESTINATIONS_SEEN.get(&key) }.copied()
        && now.wrapping_sub(seen.window_start_ns) < seen.window_ns
    {
        return true;
    }
    let (no_room, count) = match budget::current_window(tag, BUDGET_NEW_DESTINATIONS, now) {
        Ok(None) => return true,
        Ok(Some((count, budget))) => {
            let used = unsafe { (*count).bytes };
            if used < budget.limit {
                count_new(count, &key, budget.window_ns);
                return true;
            }
            let detail = BudgetDetail {
                used,
                limit: budget.limit,
                window_ns: budget.window_ns,
                size: 1,
                index: BUDGET_NEW_DESTINATIONS,
                pad: zero as u16,
                pad2: zero,
            };
            (NoRoom { reason: Reason::NewDestinationsExceeded, detail }, count)
        }
        Err(table_full) => (table_full, core::ptr::null_mut()),
    };
    let audit = budget::report_no_room(&tag.info, detail, &no_room, EPERM);
    if audit && !count.is_null() {
        count_new(count, &key, no_room.detail.window_ns);
    }
    audit
}

/// Counts a destination new in the agent's current window (`count`'s).
#[inline(always)]
fn count_new(count: *mut BudgetUse, key: &SeenKey, window_ns: u64) {
    budget::add(count, 1);
    let seen = SeenWindow { window_start_ns: unsafe { (*count).window_start_ns }, window_ns };
    let _ = DESTINATIONS_SEEN.insert(key, &seen, 0);
}
