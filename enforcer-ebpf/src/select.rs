//! Cgroup selectors in the kernel (see `enforcer_common::select`): the
//! `cgroup_mkdir` program that records each new cgroup a selector matches,
//! and the lookups the tag check makes for selected cgroups.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use enforcer_common::{
    policy::{TAG_BLOOM_WORDS, Tables, TagFilter, TagInfo, tag_bloom_bit},
    select::{
        DEAD, SELECTED_MAX, SELECTOR_SLOTS, SLOT_UNRESOLVED, START, Selected, SelectedBloom, SelectorTable,
        TRACED_PATH_MAX,
    },
};

use crate::{
    kernel::{
        CgroupKn, CgroupLevel, CgroupRoot, CssSetDflCgrp, Direct, KernfsId, Read, Task, TaskCgroups, current_task,
    },
    repeat::repeat,
    tables,
};

#[map]
static SELECTED: HashMap<u64, Selected> = HashMap::with_max_entries(SELECTED_MAX, 0);

/// A global in a section of its own (userspace rewrites `.bss` whole, and
/// must never write this): one load where a map costs a lookup.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.selected")]
static mut SELECTED_BLOOM: SelectedBloom = unsafe { core::mem::zeroed() };

/// Word `word` (masked) of the bloom filter of the cgroups the kernel put
/// in `SELECTED` (ids the daemon put there are in `TAG_FILTER`'s).
#[inline(always)]
pub fn bloom_word(word: usize) -> u64 {
    // SAFETY: a read of the global; a racing write only adds bits.
    unsafe {
        core::ptr::read_volatile((&raw const SELECTED_BLOOM.bloom).cast::<u64>().add(word & (TAG_BLOOM_WORDS - 1)))
    }
}

/// The tag of selected cgroup `id` in `tables`: its slot's.
#[inline(always)]
pub fn tag_of(id: u64, tables: &Tables) -> Option<TagInfo> {
    // SAFETY: the value is copied out at once.
    let selected = unsafe { SELECTED.get(&id) }?;
    let tag = tables.selectors.tags[selected.slot as usize & (SELECTOR_SLOTS - 1)];
    tag.has_policy().then_some(tag)
}

/// Runs as the kernel creates a cgroup: with `cgroup_mutex` held, before
/// the directory is visible, so before any process can be moved into it.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    select(cgroup, path);
    0
}

#[inline(always)]
fn select(cgroup: *const u8, path: *const u8) {
    let Some(tables) = tables::current() else { return };
    let selectors = &tables.selectors;
    if selectors.states == 0 || cgroup.is_null() {
        return;
    }
    // The unified hierarchy only: the one the current task's cgroup is in.
    let unified =
        unsafe { Task::get::<CgroupRoot>(Task::ptr::<CssSetDflCgrp>(Task::ptr::<TaskCgroups>(current_task()))) };
    if unsafe { Direct::get::<CgroupRoot>(cgroup) } != unified {
        return;
    }
    let Some(slot) = match_path(selectors, path) else { return };
    let (id, level) =
        unsafe { (Direct::get::<KernfsId>(Direct::ptr::<CgroupKn>(cgroup)), Direct::get::<CgroupLevel>(cgroup)) };
    let selected = Selected { slot, level: level as u32, since_ns: unsafe { bpf_ktime_get_ns() } };
    if SELECTED.insert(&id, &selected, 0).is_err() {
        // Full: the daemon's sweep finds the cgroup and reports it.
        return;
    }
    // `cgroup_mutex` serialises every caller: a plain read-modify-write.
    let bit = tag_bloom_bit(id);
    let word = TagFilter::word(bit);
    unsafe {
        let slot = (&raw mut SELECTED_BLOOM.bloom).cast::<u64>().add(word);
        core::ptr::write_volatile(slot, core::ptr::read_volatile(slot) | 1 << (bit % 64));
    }
}

/// One run of the DFA over the path, a byte per `bpf_loop` step.
#[repr(C)]
struct Walk {
    selectors: *const SelectorTable,
    path: *const u8,
    state: u16,
    /// The path's length once `ended`.
    len: u32,
    ended: bool,
}

/// The slot `path` selects: the DFA's answer on a path read whole; on a cut
/// or unreadable path, `SLOT_UNRESOLVED` unless no selector could match it.
#[inline(always)]
fn match_path(selectors: &SelectorTable, path: *const u8) -> Option<u32> {
    let mut walk = Walk { selectors, path, state: START, len: 0, ended: false };
    repeat::<{ TRACED_PATH_MAX as u32 }>(TRACED_PATH_MAX as u32, walk_step, (&raw mut walk).cast());
    if walk.state == DEAD {
        return None;
    }
    // The kernel cuts a longer path to `TRACED_PATH_MAX - 1` bytes.
    if !walk.ended || walk.len as usize >= TRACED_PATH_MAX - 1 {
        return Some(SLOT_UNRESOLVED);
    }
    selectors.accepts(walk.state)
}

/// The byte read is the loop's index, not a counter in `Walk`: a counter
/// would differ at every step, and the verifier (6.7+ checks a callback
/// until its states repeat) would never see them repeat.
extern "C" fn walk_step(index: u32, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *ctx.cast::<Walk>() };
    let Ok(byte) = (unsafe { bpf_probe_read_kernel(walk.path.wrapping_add(index as usize & (TRACED_PATH_MAX - 1))) })
    else {
        return 1;
    };
    if byte == 0 {
        walk.ended = true;
        walk.len = index;
        return 1;
    }
    walk.state = unsafe { (*walk.selectors).step(walk.state, byte) };
    i64::from(walk.state == DEAD)
}
