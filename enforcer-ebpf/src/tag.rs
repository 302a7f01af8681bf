//! Which policy, if any, judges the current task.
//!
//! This runs on every hooked syscall of every process on the host, so the
//! untagged answer must be nearly free: one inlined array lookup, and for each
//! cgroup level that holds a tagged cgroup, one ancestor-id helper call and a
//! bloom-filter bit test. Only a bloom hit costs a hash lookup.

use aya_ebpf::{
    helpers::generated::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{Array, HashMap},
};
use enforcer_common::policy::{MAX_TAG_LEVEL, TAGGED_MAX, TagFilter, TagInfo};

#[map]
static TAG_FILTER: Array<TagFilter> = Array::with_max_entries(1, 0);

#[map]
static TAGGED: HashMap<u64, TagInfo> = HashMap::with_max_entries(TAGGED_MAX, 0);

/// The tag of the deepest tagged cgroup among the current task's ancestors
/// (itself included). Deciding by ancestor ids in the kernel means a child
/// cgroup created after tagging is enforced from its first instruction.
#[inline(always)]
pub fn current_tag() -> Option<TagInfo> {
    let filter = TAG_FILTER.get(0)?;
    let mut levels = filter.levels;
    let mut found = None;
    let mut level = 0u32;
    while levels != 0 && level <= MAX_TAG_LEVEL {
        if levels & 1 != 0 {
            let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if id != 0 && filter.may_contain(id) {
                if let Some(tag) = unsafe { TAGGED.get(&id) } {
                    found = Some(*tag);
                }
            }
        }
        levels >>= 1;
        level += 1;
    }
    found
}
