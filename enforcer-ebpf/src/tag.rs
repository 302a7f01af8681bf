//! Which policy, if any, judges the current task.
//!
//! This runs on every hooked syscall of every process on the host, so the
//! untagged answer must be nearly free. It reads the task's cgroup through
//! BTF-typed loads (no cgroup-id helper: those take and drop the RCU read
//! lock, which costs more than everything else here), keeps only the tagged
//! levels at or above the task's own, and for each of those, deepest first,
//! tests the ancestor's id against the bloom filter of the global
//! `TAG_FILTER`. Only a bloom hit looks in the tag table (see
//! `enforcer_common::policy::TagTable`). A task in the root cgroup, or above
//! every tagged level, is decided after three loads and a compare.

use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    helpers::generated::{bpf_get_current_task_btf, bpf_loop},
    macros::btf_map,
};
use enforcer_common::policy::{
    MAX_TAG_LEVEL, TAG_SLOTS, TagFilter, TagInfo, TagTable, tag_homes,
};

use crate::kernel::{CgroupKn, CgroupLevel, CssSetDflCgrp, Direct, KernfsId, KernfsParent, Read, TaskCgroups};

/// Slot 0 holds the current table; userspace swaps in a new one per change.
#[btf_map]
static TAG_TABLES: ArrayOfMaps<Array<TagTable, 1>, 1> = ArrayOfMaps::new();

/// The pre-filter, a global: one load where a map costs a lookup. Zero (in
/// `.bss`, where userspace finds it) until userspace writes it: no levels, so
/// nothing is tagged.
#[unsafe(no_mangle)]
static mut TAG_FILTER: TagFilter = unsafe { core::mem::zeroed() };

/// A task that may be tagged: the screen found no reason to rule it out.
#[derive(Clone, Copy)]
pub struct Suspect {
    /// Where the screen stopped: a cgroup directory, and its level.
    node: *const u8,
    level: u32,
    /// Tagged levels above `level` still to look at (and `level` itself when
    /// the screen stopped for lack of steps, `id == 0`).
    levels: u64,
    /// The id of `node`'s cgroup when it passed the bloom filter, else 0.
    id: u64,
}

/// Ancestor levels the screen climbs before leaving the rest to `tag_of`.
const SCREEN_LEVELS: u32 = 4;

/// Screens the current task with `TAG_FILTER` alone: `None` means it is not
/// tagged. A task above the shallowest tagged level (in the root cgroup, or
/// when nothing is tagged) is decided by three loads and a compare. Below
/// it, the screen climbs the task's cgroup directories, tests the id at each
/// tagged level against the bloom filter and stops at the first hit, without
/// a call or a loop for the first `SCREEN_LEVELS` levels: a host process
/// below a tagged level is decided here. Kept apart from [`tag_of`] so a
/// hook can answer untagged tasks before calling anything.
#[inline(always)]
pub fn screen() -> Option<Suspect> {
    let (cgroup, level) = unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let css_set = Direct::ptr::<TaskCgroups>(task);
        let cgroup = Direct::ptr::<CssSetDflCgrp>(css_set);
        (cgroup, Direct::get::<CgroupLevel>(cgroup))
    };
    let filter = unsafe { &*(&raw const TAG_FILTER) };
    if level < u64::from(unsafe { core::ptr::read_volatile(&raw const filter.shallowest) }) {
        return None;
    }
    let level_mask = if level > u64::from(MAX_TAG_LEVEL) { u64::MAX } else { u64::MAX >> (u64::from(MAX_TAG_LEVEL) - level) };
    let mut levels = unsafe { core::ptr::read_volatile(&raw const filter.levels) } & level_mask;
    let mut level = level as u32;
    let mut node = unsafe { Direct::ptr::<CgroupKn>(cgroup) };
    for _ in 0..SCREEN_LEVELS {
        let bit = level_bit(level);
        if levels & bit != 0 {
            levels &= !bit;
            let id = unsafe { Direct::get::<KernfsId>(node) };
            if filter.may_contain(id) {
                return Some(Suspect { node, level, levels, id });
            }
        }
        if levels == 0 {
            return None;
        }
        node = unsafe { Direct::ptr::<KernfsParent>(node) };
        if node.is_null() {
            return None;
        }
        level = level.wrapping_sub(1);
    }
    Some(Suspect { node, level, levels, id: 0 })
}

/// The tag of the deepest tagged cgroup among the current task's ancestors
/// (itself included). Deciding by ancestors in the kernel means a child
/// cgroup created after tagging is enforced from its first instruction.
#[inline(always)]
pub fn current_tag() -> Option<TagInfo> {
    screen().and_then(tag_of)
}

/// The tag of a suspect: the bloom hit's, if the tag table has it (most
/// tagged tasks sit in the tagged cgroup itself), else the climb goes on.
#[inline(always)]
pub fn tag_of(Suspect { node, level, levels, id }: Suspect) -> Option<TagInfo> {
    if id == 0 {
        return climb(levels, level, node);
    }
    if let Some(tag) = table_lookup(id) {
        return Some(tag);
    }
    if levels == 0 {
        return None;
    }
    climb(levels, level.wrapping_sub(1), unsafe { Direct::ptr::<KernfsParent>(node) })
}

/// `level`'s bit in a levels mask (none for a level too deep to be tagged).
#[inline(always)]
fn level_bit(level: u32) -> u64 {
    if level > MAX_TAG_LEVEL { 0 } else { 1u64 << level }
}

/// A climb up the task's cgroup directories (kernfs nodes: a cgroup's id is
/// its node's id), from its parent's level to the highest tagged one.
#[repr(C)]
struct Climb {
    node: *const u8,
    /// Tagged levels not yet looked at.
    levels: u64,
    level: u32,
    found: bool,
    tag: TagInfo,
}

/// Climbs, deepest first; each level is one `bpf_loop` step, so the verifier
/// checks a step once instead of every level of the hierarchy.
#[inline(never)]
fn climb(levels: u64, level: u32, node: *const u8) -> Option<TagInfo> {
    if node.is_null() {
        return None;
    }
    let mut climb = Climb { node, levels, level, found: false, tag: TagInfo::default() };
    let ctx = (&raw mut climb).cast::<c_void>();
    unsafe { bpf_loop(level + 1, climb_step as *mut c_void, ctx, 0) };
    climb.found.then_some(climb.tag)
}

extern "C" fn climb_step(_: u32, ctx: *mut c_void) -> i64 {
    let climb = unsafe { &mut *ctx.cast::<Climb>() };
    if let Some(tag) = visit(&mut climb.levels, climb.level, climb.node) {
        climb.found = true;
        climb.tag = tag;
        return 1;
    }
    if climb.levels == 0 {
        return 1;
    }
    climb.node = unsafe { Direct::ptr::<KernfsParent>(climb.node) };
    if climb.node.is_null() {
        return 1;
    }
    climb.level = climb.level.wrapping_sub(1);
    0
}

/// One cgroup directory `node` at `level`: if the level is among `levels`,
/// takes it out and looks the cgroup's tag up.
#[inline(always)]
fn visit(levels: &mut u64, level: u32, node: *const u8) -> Option<TagInfo> {
    let bit = level_bit(level);
    if *levels & bit == 0 {
        return None;
    }
    *levels &= !bit;
    let id = unsafe { Direct::get::<KernfsId>(node) };
    if !unsafe { &*(&raw const TAG_FILTER) }.may_contain(id) {
        return None;
    }
    table_lookup(id)
}

/// The tag of cgroup `id` in the tag table: the id's two home slots.
#[inline(always)]
fn table_lookup(id: u64) -> Option<TagInfo> {
    // 0: no such cgroup (and 0 marks empty slots).
    if id == 0 {
        return None;
    }
    let table = TAG_TABLES.get_value(0, &0)?;
    let [first, second] = tag_homes(id, table.seed);
    let slot = &table.slots[first & (TAG_SLOTS - 1)];
    if slot.cgroup_id == id {
        return Some(slot.tag);
    }
    let slot = &table.slots[second & (TAG_SLOTS - 1)];
    (slot.cgroup_id == id).then_some(slot.tag)
}
