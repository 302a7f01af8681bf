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
//! every tagged level, is decided after three loads.

use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps},
    helpers::generated::{bpf_get_current_task_btf, bpf_loop},
    macros::btf_map,
};
use enforcer_common::policy::{
    MAX_TAG_LEVEL, TAG_SLOTS, TagFilter, TagInfo, TagTable, tag_homes,
};

use crate::kernel::{Direct, Read, off};

/// Slot 0 holds the current table; userspace swaps in a new one per change.
#[btf_map]
static TAG_TABLES: ArrayOfMaps<Array<TagTable, 1>, 1> = ArrayOfMaps::new();

/// The pre-filter, a global: one load where a map costs a lookup.
#[unsafe(no_mangle)]
static mut TAG_FILTER: TagFilter = TagFilter::EMPTY;

/// The tag of the deepest tagged cgroup among the current task's ancestors
/// (itself included). Deciding by ancestors in the kernel means a child
/// cgroup created after tagging is enforced from its first instruction.
#[inline(always)]
pub fn current_tag() -> Option<TagInfo> {
    let tagged_levels = unsafe { core::ptr::read_volatile(&raw const TAG_FILTER.levels) };
    if tagged_levels == 0 {
        return None;
    }
    let (cgroup, level) = unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let css_set = Direct::ptr(task, off!(task_struct_cgroups));
        let cgroup = Direct::ptr(css_set, off!(css_set_dfl_cgrp));
        (cgroup, Direct::read::<i32>(cgroup, off!(cgroup_level)) as u32)
    };
    // Tagged levels at or above the task's own (all of them for a task
    // deeper than any level that can be tagged).
    let at_or_above = if level > MAX_TAG_LEVEL { u64::MAX } else { u64::MAX >> (MAX_TAG_LEVEL - level) };
    let mut levels = tagged_levels & at_or_above;
    if levels == 0 {
        return None;
    }
    let node = unsafe { Direct::ptr(cgroup, off!(cgroup_kn)) };
    // Most tagged tasks sit in the tagged cgroup itself, the deepest place a
    // tag can be: look there first, without the climb's calls.
    if let Some(tag) = visit(&mut levels, level, node) {
        return Some(tag);
    }
    if levels == 0 {
        return None;
    }
    climb(levels, level.wrapping_sub(1), unsafe { Direct::ptr(node, off!(kernfs_node_parent)) })
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
    climb.node = unsafe { Direct::ptr(climb.node, off!(kernfs_node_parent)) };
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
    let bit = if level > MAX_TAG_LEVEL { 0 } else { 1u64 << level };
    if *levels & bit == 0 {
        return None;
    }
    *levels &= !bit;
    lookup(unsafe { Direct::read::<u64>(node, off!(kernfs_node_id)) })
}

/// The tag of cgroup `id`: the bloom filter first, then the id's two home
/// slots in the tag table.
#[inline(always)]
fn lookup(id: u64) -> Option<TagInfo> {
    // 0: no such cgroup (and 0 marks empty slots).
    if id == 0 || !unsafe { &*(&raw const TAG_FILTER) }.may_contain(id) {
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
