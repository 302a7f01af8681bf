//! Which policy, if any, judges the current task.
//!
//! This runs on every hooked syscall of every process on the host, so the
//! untagged answer must be nearly free. It reads the task's cgroup through
//! BTF-typed loads (no cgroup-id helper: those take and drop the RCU read
//! lock, which costs more than everything else here), climbs from the
//! task's own level to the shallowest tagged one and, at each tagged level,
//! tests the ancestor's id against the bloom filter of the global
//! `TAG_FILTER`. Only a bloom hit looks in the tag table (see
//! `enforcer_common::policy::TagTable`). A task in the root cgroup, or above
//! every tagged level, is decided after three loads and a compare.
//!
//! The compat build (kernels before 5.17) reads the task with probe reads
//! and, past the screen, reads the ancestors' ids by level from the cgroup
//! (`ancestor_ids`, or `ancestors` since 5.19): a climb there would be a
//! bounded loop the verifier checks level by level, and 5.10's LSM
//! programs cannot call `bpf_get_current_ancestor_cgroup_id`.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_ancestor_cgroup_id};
use enforcer_common::{
    KernelOffsets,
    policy::{
        FileTable, MAX_TAG_LEVEL, TAG_PENDING_KEY, TAG_SLOTS, Tables, TagFilter, TagInfo, tag_bloom_bit, tag_homes,
    },
};

use crate::{
    arm,
    kernel::{
        CgroupKn, CgroupLevel, CssSetDflCgrp, KernfsId, KernfsParent, Probe, Read, Task, TaskCgroups, current_task, off,
    },
    repeat::repeat,
    select, tables,
};

/// The pre-filter, a global: one load where a map costs a lookup. Zero (in
/// `.bss`, where userspace finds it) until userspace writes it: no levels, so
/// nothing is tagged.
#[unsafe(no_mangle)]
static mut TAG_FILTER: TagFilter = unsafe { core::mem::zeroed() };

/// A tagged task's tag, and the file table of the same tables.
#[derive(Clone, Copy)]
pub struct Tagged {
    pub info: TagInfo,
    /// Null if the tables vanished (the walk then denies).
    pub files: *const FileTable,
    /// The id of the tagged cgroup the tag is found at: the agent, which
    /// the hooks that act on another task compare with the target's.
    pub agent: u64,
}

/// A task that may be tagged: the screen found no reason to rule it out.
#[derive(Clone, Copy)]
pub struct Suspect {
    /// Where the screen stopped: a cgroup directory, and its level.
    node: *const u8,
    level: u64,
    /// The id of `node`'s cgroup if it passed the bloom filter; 0 if the
    /// screen ran out of steps before looking at `node`.
    id: u64,
}

/// Cgroup levels the screen looks at before leaving the rest to `tag_of`.
const SCREEN_LEVELS: u32 = 4;

/// The pre-filter.
#[expect(clippy::deref_addrof, reason = "a `static mut` is only reached through a raw pointer (edition 2024)")]
#[inline(always)]
fn filter() -> &'static TagFilter {
    unsafe { &*(&raw const TAG_FILTER) }
}

/// Whether some tagged cgroup sits at `level`. A level past the last (64
/// and deeper) reads a shallower level's bit: a false hit of a pre-filter,
/// which the bloom filter and the table answer. (A bit, where a byte per
/// level was a bounds check, a mask and two loads.)
#[inline(always)]
fn tagged_at(level: u64) -> bool {
    const { assert!(MAX_TAG_LEVEL == 63) };
    let mut bits = tagged_levels();
    // BPF shifts by the count's low six bits (the x86 JIT's `shrx` too);
    // in Rust, the compiler would mask the count first.
    unsafe {
        core::arch::asm!(
            "{bits} >>= {level}",
            bits = inout(reg) bits,
            level = in(reg) level,
            options(pure, nomem, nostack),
        );
    };
    bits & 1 != 0
}

/// The shallowest tagged level, read once per use (it changes with tags).
#[inline(always)]
fn shallowest() -> u64 {
    u64::from(unsafe { core::ptr::read_volatile(&raw const TAG_FILTER.shallowest) })
}

/// Screens the current task with `TAG_FILTER` alone: `None` means it is not
/// tagged. A task above the shallowest tagged level (in the root cgroup, or
/// when nothing is tagged) is decided by three loads and a compare. Below
/// it, the screen climbs the task's cgroup directories up to that level,
/// tests the id at each tagged level against the bloom filter and stops at
/// the first hit, without a call or a loop for the first `SCREEN_LEVELS`
/// levels: a host process in or below a tagged level is decided here. Kept
/// apart from [`tag_of`] so a hook can answer untagged tasks before calling
/// anything.
#[inline(always)]
pub fn screen() -> Option<Suspect> {
    let (cgroup, mut level) = unsafe {
        let css_set = Task::ptr::<TaskCgroups>(current_task());
        let cgroup = Task::ptr::<CssSetDflCgrp>(css_set);
        (cgroup, Task::get::<CgroupLevel>(cgroup))
    };
    let shallowest = shallowest();
    if level < shallowest {
        return None;
    }
    let mut node = unsafe { Task::ptr::<CgroupKn>(cgroup) };
    for _ in 0..SCREEN_LEVELS {
        // The shallowest tagged level (where the climb ends) is a tagged
        // level: one compare answers both.
        let last = level <= shallowest;
        if last || tagged_at(level) {
            let id = unsafe { Task::get::<KernfsId>(node) };
            if may_be_tagged(id) {
                return Some(Suspect { node, level, id });
            }
        }
        if last {
            return None;
        }
        node = unsafe { Task::ptr::<KernfsParent>(node) };
        if node.is_null() {
            return None;
        }
        level -= 1;
    }
    Some(Suspect { node, level, id: 0 })
}

/// The tag of the deepest tagged cgroup among the current task's ancestors
/// (itself included). Deciding by ancestors in the kernel means a child
/// cgroup created after tagging is enforced from its first instruction.
#[inline(always)]
pub fn current_tag() -> Option<Tagged> {
    screen().and_then(tag_of)
}

/// The tag of the current task for programs that cannot read the task
/// (cgroup socket programs): the task's ancestor at each tagged level,
/// deepest first, from `bpf_get_current_ancestor_cgroup_id` (0 below the
/// task's own level). One step per tagged level, not per possible level.
#[inline(always)]
pub fn tag_by_ancestors() -> Option<Tagged> {
    tag_of_ancestors(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) }).map(|(tagged, _)| tagged)
}

/// The tag of the deepest tagged cgroup among the ancestors `ancestor`
/// names (its id at a level, 0 below the cgroup's own level), and that
/// cgroup's id: the agent. For programs that judge a socket's cgroup, not
/// the current task's.
#[inline(always)]
pub fn tag_of_ancestors(ancestor: impl Fn(i32) -> u64) -> Option<(Tagged, u64)> {
    let mut bits = tagged_levels();
    // Many tagged levels (a `**` selector sets every level below its root):
    // six helper calls find the task's own level, and the levels below it,
    // whose ancestors do not exist, are skipped.
    if bits.count_ones() > 8 {
        bits &= levels_up_to(own_level(&ancestor));
    }
    tag_at_levels(bits, ancestor)
}

/// The tagged levels, a bit each (bit 0: the root).
#[inline(always)]
fn tagged_levels() -> u64 {
    unsafe { core::ptr::read_volatile(&raw const TAG_FILTER.level_bits) }
}

/// The deepest of the levels in `bits` whose ancestor (`ancestor`, never
/// asked for a level outside `bits`) is tagged.
#[inline(always)]
fn tag_at_levels(mut bits: u64, ancestor: impl Fn(i32) -> u64) -> Option<(Tagged, u64)> {
    for _ in 0..=MAX_TAG_LEVEL {
        if bits == 0 {
            break;
        }
        #[expect(clippy::manual_ilog2, reason = "`ilog2` has a panic path for 0, which BPF cannot link")]
        let level = 63 - bits.leading_zeros();
        bits &= !(1u64 << level);
        let id = ancestor(level as i32);
        if id != 0
            && may_be_tagged(id)
            && let Some(tagged) = table_lookup(id)
        {
            return Some((tagged, id));
        }
    }
    None
}

/// The cgroup's level, by bisection: the ancestor at a level exists (a
/// non-zero id) exactly at and above the cgroup's own.
#[inline(always)]
fn own_level(ancestor: &impl Fn(i32) -> u64) -> u32 {
    let (mut exists, mut absent) = (0u32, 64u32);
    for _ in 0..6 {
        let mid = u32::midpoint(exists, absent);
        if ancestor(mid as i32) != 0 {
            exists = mid;
        } else {
            absent = mid;
        }
    }
    exists
}

/// Bits 0 to `level`.
#[inline(always)]
fn levels_up_to(level: u32) -> u64 {
    if level >= 63 { u64::MAX } else { (2u64 << level) - 1 }
}

/// The tag of a suspect: the bloom hit's, if the tag table has it (most
/// tagged tasks sit in the tagged cgroup itself), else the climb goes on.
#[inline(always)]
pub fn tag_of(Suspect { node, level, id }: Suspect) -> Option<Tagged> {
    if crate::COMPAT {
        if id != 0
            && let Some(tagged) = table_lookup(id)
        {
            return Some(tagged);
        }
        return tag_of_task(current_task()).map(|(tagged, _)| tagged);
    }
    let (info, agent) = if id == 0 {
        climb(level, node)
    } else {
        if let Some(tagged) = table_lookup(id) {
            return Some(tagged);
        }
        if level <= shallowest() {
            return None;
        }
        climb(level - 1, unsafe { Task::ptr::<KernfsParent>(node) })
    }?;
    // The climb's steps cannot hand a map pointer back; look the tables up
    // again (an untypical path: the common one returned above).
    Some(Tagged { info, files: tables::current_files(), agent })
}

/// A climb up the task's cgroup directories (kernfs nodes: a cgroup's id is
/// its node's id), from `level` to the shallowest tagged one.
#[repr(C)]
struct Climb {
    node: *const u8,
    /// The level of the node the climb started at. The step's level is
    /// this minus the loop index: a counter kept here would be a precise
    /// value that differs at every step, so the verifier (6.7+ checks a
    /// callback until its states repeat) would never see them repeat.
    start: u64,
    found: bool,
    tag: TagInfo,
    /// The tagged cgroup found.
    id: u64,
}

/// Climbs, deepest first; each level is one `bpf_loop` step, so the verifier
/// checks a step once instead of every level of the hierarchy. The tag
/// found and the id of its cgroup.
#[inline(never)]
fn climb(level: u64, node: *const u8) -> Option<(TagInfo, u64)> {
    if node.is_null() {
        return None;
    }
    let mut climb = Climb { node, start: level, found: false, tag: TagInfo::default(), id: 0 };
    run_climb(&mut climb);
    climb.found.then_some((climb.tag, climb.id))
}

#[inline(always)]
fn run_climb(climb: &mut Climb) {
    let ctx = core::ptr::from_mut(climb).cast::<c_void>();
    // Enough steps to reach the root (cgroup trees are far shallower).
    let steps = (climb.start + 1).min(1 << 20) as u32;
    repeat::<COMPAT_CLIMB_LEVELS>(steps, climb_step, ctx);
}

/// The compat build never climbs (`tag_of` and `agent_cgroup` read the
/// ancestors' ids instead); its loop needs a bound all the same.
const COMPAT_CLIMB_LEVELS: u32 = 64;

/// The compat build's answer for `task` (read with [`Task`]): the tag of
/// its deepest tagged ancestor cgroup and that cgroup's id, by the
/// ancestors' ids its cgroup keeps by level.
///
/// Each level is a call of [`enforcer_tag_at_level`], a global function the
/// verifier checks once, not at each of the 64 levels it follows.
#[inline(never)]
fn tag_of_task(task: *const u8) -> Option<(Tagged, u64)> {
    let (cgroup, level) = cgroup_to_judge(task)?;
    // Only levels the cgroup has: every level looked at has an ancestor.
    let bits = tagged_levels() & levels_up_to(level.min(63) as u32);
    let mut at: u32 = 64;
    while at > 0 {
        at -= 1;
        if (bits >> at) & 1 == 0 {
            continue;
        }
        let tag = enforcer_tag_at_level(cgroup as u64, at);
        if tag != NOT_TAGGED {
            // The tables again (a global function cannot return the map
            // pointer), as the climb of the main build does.
            let agent = ancestor_id(cgroup, at as i32);
            let info = TagInfo::from_bits(tag);
            return Some((Tagged { info, files: tables::current_files(), agent }, agent));
        }
    }
    None
}

/// What [`enforcer_tag_at_level`] returns for an untagged ancestor (no tag
/// packs to it: policy ids fit in 16 bits).
const NOT_TAGGED: u64 = u64::MAX;

/// The tag of the ancestor at `level` of the cgroup at address `cgroup`
/// (read with probe reads), `policy_id | flags << 32`, or [`NOT_TAGGED`].
/// A global function for the compat build's `tag_of_task`.
#[unsafe(no_mangle)]
pub extern "C" fn enforcer_tag_at_level(cgroup: u64, level: u32) -> u64 {
    let id = ancestor_id(cgroup as *const u8, (level & 63) as i32);
    if id == 0 || !may_be_tagged(id) {
        return NOT_TAGGED;
    }
    table_lookup(id).map_or(NOT_TAGGED, |tagged| tagged.info.to_bits())
}

/// `task`'s cgroup and its level, read with [`Task`]; `None` if it has
/// none or sits above every tagged level.
#[inline(always)]
fn cgroup_to_judge(task: *const u8) -> Option<(*const u8, u64)> {
    let (cgroup, level) = unsafe {
        let cgroup = Task::ptr::<CssSetDflCgrp>(Task::ptr::<TaskCgroups>(task));
        (cgroup, Task::get::<CgroupLevel>(cgroup))
    };
    if cgroup.is_null() || level < shallowest() {
        return None;
    }
    Some((cgroup, level))
}

/// The id of the ancestor at level `at` of `cgroup`, which is at least
/// that deep.
#[inline(always)]
fn ancestor_id(cgroup: *const u8, at: i32) -> u64 {
    // `at` <= MAX_TAG_LEVEL (the callers' levels are bits of a u64).
    let index = (at as usize & 63) * 8;
    let ids = off!(cgroup_ancestor_ids);
    unsafe {
        if ids != KernelOffsets::ABSENT as usize {
            return bpf_probe_read_kernel(cgroup.wrapping_add(ids + index).cast::<u64>()).unwrap_or(0);
        }
        let ancestor = bpf_probe_read_kernel(cgroup.wrapping_add(off!(cgroup_ancestors) + index).cast::<u64>())
            .unwrap_or(0) as *const u8;
        if ancestor.is_null() {
            return 0;
        }
        Probe::get::<KernfsId>(Probe::ptr::<CgroupKn>(ancestor))
    }
}

/// The agent `task` belongs to: the id of its deepest tagged ancestor
/// cgroup (itself included), 0 if it is not tagged. For hooks that judge
/// one task acting on another (signals, ptrace).
#[inline(never)]
pub fn agent_cgroup(task: *const u8) -> u64 {
    if crate::COMPAT {
        return tag_of_task(task).map_or(0, |(_, id)| id);
    }
    let Some((cgroup, level)) = cgroup_to_judge(task) else { return 0 };
    let node = unsafe { Task::ptr::<CgroupKn>(cgroup) };
    if node.is_null() {
        return 0;
    }
    let mut climb = Climb { node, start: level, found: false, tag: TagInfo::default(), id: 0 };
    run_climb(&mut climb);
    climb.id
}

extern "C" fn climb_step(index: u32, ctx: *mut c_void) -> i64 {
    let climb = unsafe { &mut *ctx.cast::<Climb>() };
    let Some(level) = climb.start.checked_sub(u64::from(index)) else {
        return 1;
    };
    // Bits, not `tagged_at`: see `TagFilter::level_bits`.
    let bits = unsafe { core::ptr::read_volatile(&raw const TAG_FILTER.level_bits) };
    if level <= u64::from(MAX_TAG_LEVEL) && (bits >> level) & 1 != 0 {
        let id = unsafe { Task::get::<KernfsId>(climb.node) };
        if may_be_tagged(id)
            && let Some(tagged) = table_lookup(id)
        {
            climb.found = true;
            climb.tag = tagged.info;
            climb.id = id;
            return 1;
        }
    }
    if level <= shallowest() {
        return 1;
    }
    climb.node = unsafe { Task::ptr::<KernfsParent>(climb.node) };
    if climb.node.is_null() {
        return 1;
    }
    0
}

/// Whether cgroup `id` may be tagged or selected (no false negatives).
#[inline(always)]
fn may_be_tagged(id: u64) -> bool {
    let bit = tag_bloom_bit(id);
    let word = TagFilter::word(bit);
    // One test of both filters' words (the same bit of each).
    (filter().bloom[word] | select::bloom_word(word)) >> (bit % 64) & 1 != 0
}

/// The tag of cgroup `id`: the id's two home slots in the tag table, else
/// its selector's (a cgroup tagged by name wins over a selector).
#[inline(always)]
fn table_lookup(id: u64) -> Option<Tagged> {
    // 0: no such cgroup (and 0 marks empty slots).
    if id == 0 {
        return None;
    }
    let tables = tables::current()?;
    let files = &raw const tables.files;
    if let Some(info) = slot_tag(id, tables) {
        return Some(Tagged { info, files, agent: id });
    }
    // A tag that waits for the cgroup's first exec judges nothing until
    // then (and wins over a selector, as any tag by name).
    if let Some(info) = slot_tag(id | TAG_PENDING_KEY, tables) {
        return arm::armed(id).then_some(Tagged { info, files, agent: id });
    }
    select::tag_of(id, tables).map(|info| Tagged { info, files, agent: id })
}

/// The tag under `key` in the tag table (tags by name).
#[inline(always)]
fn slot_tag(key: u64, tables: &Tables) -> Option<TagInfo> {
    let table = &tables.tags;
    let [first, second] = tag_homes(key, table.seed);
    // Home by home: picking the slot first compared the first home twice.
    for home in [first, second] {
        let slot = &table.slots[home & (TAG_SLOTS - 1)];
        if slot.cgroup_id == key {
            return Some(slot.tag);
        }
    }
    None
}

/// Whether cgroup `id` has a tag by name that waits for an exec, for
/// [`arm`].
#[inline(always)]
pub fn waits_for_exec(id: u64) -> bool {
    if id == 0 || !may_be_tagged(id) {
        return false;
    }
    tables::current().is_some_and(|tables| slot_tag(id | TAG_PENDING_KEY, tables).is_some())
}
