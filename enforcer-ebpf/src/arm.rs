//! Tags that take effect at the cgroup's first exec (`TAG_FROM_EXEC`): what
//! a container runtime's hook asks for. The runtime tags the container's
//! cgroup while its own init still has mounts and a `pivot_root` to make in
//! it; until a process of the cgroup executes a program, the tag check
//! passes the cgroup by (the tag is keyed apart: `TAG_PENDING_KEY`). The
//! first exec there arms it, on the `sched_process_exec` tracepoint (after
//! the exec can no longer fail, before the new program's first
//! instruction), and from then on it is judged. The daemon later re-keys an
//! armed tag by the plain id, where the tag check finds it first.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_send_signal},
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use enforcer_common::policy::ARMED_MAX;

/// Cgroup ids whose `TAG_FROM_EXEC` tag a first exec armed. The daemon
/// removes a cgroup's entry with its tag.
#[map]
static ARMED: HashMap<u64, u8> = HashMap::with_max_entries(ARMED_MAX, 0);

const SIGKILL: u32 = 9;

/// Whether cgroup `id`'s `TAG_FROM_EXEC` tag is armed.
#[inline(always)]
pub fn armed(id: u64) -> bool {
    unsafe { ARMED.get(&id) }.is_some()
}

/// Runs as a task has executed a program (daemon only).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> i32 {
    arm_current();
    0
}

#[inline(always)]
fn arm_current() {
    let id = unsafe { bpf_get_current_cgroup_id() };
    if !crate::tag::waits_for_exec(id) || armed(id) {
        return;
    }
    if ARMED.insert(&id, &1, u64::from(BPF_NOEXIST)).is_err() && !armed(id) {
        // Unarmed, the program would run unjudged: it does not run at all.
        unsafe { bpf_send_signal(SIGKILL) };
    }
}
