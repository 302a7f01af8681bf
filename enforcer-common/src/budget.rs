//! Upload budgets (`network.upload`) as the kernel sees them: each budget
//! of each policy version in `BUDGETS`, what each agent sent under each in
//! `BUDGET_USE`.

use crate::policy::PolicyId;

/// The budgets: [`budget_key`] -> [`Budget`].
pub const BUDGETS_MAP: &str = "BUDGETS";
/// The budget of each address a budgeted name resolved to: the policy's
/// grant key ([`crate::net::NetKey`]) -> the budget's index.
pub const BUDGET_ADDRS_MAP: &str = "BUDGET_ADDRS";
/// Bytes each agent sent under each budget: [`BudgetUseKey`] -> [`BudgetUse`].
/// Pinned, so a daemon restart does not hand agents fresh budgets.
pub const BUDGET_USE_MAP: &str = "BUDGET_USE";
/// The global (a data section of its own) userspace sets once a policy
/// with budgets is loaded: until then a send by a task in no agent costs
/// one load more.
pub const BUDGETS_IN_FORCE_MAP: &str = ".bss.budgets";

/// Budgets at most, over all policy versions.
pub const BUDGETS_MAX: u32 = 4096;
/// (agent, budget) pairs at most: past it, a send whose pair has no slot
/// is refused (`budget_table_full`).
pub const BUDGET_USE_MAX: u32 = 1 << 16;
/// Budgets one policy may declare (indices 1..; 0 is `*`).
pub const BUDGETS_PER_POLICY: usize = 255;

/// The index of a policy's `*` budget: every byte its agents send.
pub const BUDGET_ALL: u16 = 0;
/// The index of a policy's budget of new destinations
/// (`network.new_destinations`): its `BUDGET_USE` counts are of distinct
/// destinations reached in the window, its limit one of destinations.
pub const BUDGET_NEW_DESTINATIONS: u16 = u16::MAX;

/// The destinations each agent reached: [`SeenKey`] -> [`SeenWindow`], the
/// window it was last counted in. LRU: an entry pushed out counts again
/// when next reached (stricter, never looser).
pub const DESTINATIONS_SEEN_MAP: &str = "DESTINATIONS_SEEN";
pub const DESTINATIONS_SEEN_MAX: u32 = 1 << 16;

/// One destination of one agent under one policy version: an address
/// (IPv4 as `::ffff:a.b.c.d`) and port, whichever the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SeenKey {
    pub agent: u64,
    pub addr: [u32; 4],
    pub port: u16,
    /// The version's id: a new version starts a new window.
    pub policy_id: u16,
    pub pad: u32,
}

/// The window a destination was last counted in: while it lasts, the
/// destination is not new (known from this one lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SeenWindow {
    pub window_start_ns: u64,
    pub window_ns: u64,
}

/// The `BUDGETS` key of budget `index` of `policy_id`.
#[inline]
#[must_use]
pub const fn budget_key(policy_id: PolicyId, index: u16) -> u32 {
    policy_id.0 as u32 | (index as u32) << 16
}

/// The policy version and index of a [`budget_key`].
#[inline]
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "the two halves")]
pub const fn split_budget_key(key: u32) -> (PolicyId, u16) {
    (PolicyId(key as u16), (key >> 16) as u16)
}

/// A budget: at most `limit` bytes per `window_ns`; the window starts at the
/// first send after the previous one ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Budget {
    pub limit: u64,
    pub window_ns: u64,
}

/// One agent (its tagged cgroup) under one budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BudgetUseKey {
    pub agent: u64,
    /// [`budget_key`].
    pub budget: u32,
    pub pad: u32,
}

/// What an agent sent under a budget in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BudgetUse {
    /// `bpf_ktime_get_boot_ns()` at the window's first send.
    pub window_start_ns: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
aya_pod!(Budget, BudgetUseKey, BudgetUse, SeenKey, SeenWindow);
