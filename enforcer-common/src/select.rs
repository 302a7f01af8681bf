//! Cgroup selectors: policies that name the cgroups they judge by glob
//! (`cgroups = ["/agents.slice/*.scope"]`), so an orchestrator's new cgroup
//! is tagged by the kernel as it is created, before any process can join it.
//!
//! Userspace compiles every selector in force into one DFA over cgroup paths
//! ([`SelectorTable`], part of the swapped `Tables`). A program on the
//! `cgroup_mkdir` tracepoint runs it on the new cgroup's path (the kernel
//! calls it with `cgroup_mutex` held, before the directory is visible) and
//! records a match in `SELECTED`, which the tag check reads after the tag
//! table. A cgroup records the *slot* of its policy, not the policy id: the
//! slot's tag lives in the tables, so a reload switches every selected cgroup
//! to the new version in the same swap as the tagged ones.

use crate::policy::{TAG_BLOOM_WORDS, TagInfo};

/// Cgroup id -> [`Selected`]: the cgroups selectors tagged.
pub const SELECTED_MAP: &str = "SELECTED";
/// The programs' section holding `SELECTED_BLOOM`, the bloom filter of
/// `SELECTED`'s ids that the kernel added (a [`SelectedBloom`]): written
/// only by the `cgroup_mkdir` program, which `cgroup_mutex` serialises; ids
/// userspace adds go in `TAG_FILTER`.
pub const SELECTED_BLOOM_MAP: &str = ".bss.selected";
/// Selected cgroups at most (live ones: removed cgroups are swept out).
pub const SELECTED_MAX: u32 = 1 << 16;

/// DFA states at most (state 0: dead, 1: start).
pub const SELECTOR_STATES: usize = 1024;
/// Byte classes at most (bytes no selector tells apart share a class).
pub const SELECTOR_CLASSES: usize = 64;
/// Policies with selectors at most, over all versions in force.
pub const SELECTOR_SLOTS: usize = 64;
/// The slot of a cgroup whose path the kernel could not read whole while a
/// selector could still match it: judged by a policy that allows nothing
/// (no writes, no connects, no exec) until the daemon reads the full path.
#[expect(clippy::cast_possible_truncation, reason = "64")]
pub const SLOT_UNRESOLVED: u32 = SELECTOR_SLOTS as u32 - 1;
/// The longest path the tracepoint hands over, NUL included
/// (`TRACE_CGROUP_PATH_LEN`): a longer one arrives cut.
pub const TRACED_PATH_MAX: usize = 1024;

pub const DEAD: u16 = 0;
pub const START: u16 = 1;

/// Every selector in force, as one DFA over a cgroup's path below the cgroup2
/// root (`/a/b`), and the tag of each slot.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SelectorTable {
    /// DFA states in use; 0: no selectors (the program returns at once).
    pub states: u32,
    pub pad: u32,
    /// Byte -> class.
    pub classes: [u8; 256],
    /// State -> 1 + the slot of the policy a path ending there selects; 0:
    /// none. States from which no path can be selected are all `DEAD`.
    pub accept: [u8; SELECTOR_STATES],
    /// `state * SELECTOR_CLASSES + class` -> next state.
    pub next: [u16; SELECTOR_STATES * SELECTOR_CLASSES],
    /// Slot -> the tag of its policy's version in force (`policy_id` 0: the
    /// slot is free, and a cgroup recorded with it is not tagged).
    pub tags: [TagInfo; SELECTOR_SLOTS],
}

impl SelectorTable {
    /// The state after `byte`, with every index masked into bounds (the
    /// kernel walks this with the same code).
    #[inline]
    #[must_use]
    pub fn step(&self, state: u16, byte: u8) -> u16 {
        let class = self.classes[byte as usize] as usize & (SELECTOR_CLASSES - 1);
        let row = state as usize & (SELECTOR_STATES - 1);
        self.next[(row * SELECTOR_CLASSES + class) & (SELECTOR_STATES * SELECTOR_CLASSES - 1)]
    }

    /// The slot a path ending in `state` selects.
    #[inline]
    #[must_use]
    pub fn accepts(&self, state: u16) -> Option<u32> {
        let accept = self.accept[state as usize & (SELECTOR_STATES - 1)];
        (accept != 0).then(|| u32::from(accept) - 1)
    }
}

/// One selected cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Selected {
    pub slot: u32,
    /// Its cgroup level.
    pub level: u32,
    /// When it was recorded (`CLOCK_MONOTONIC` ns): a sweep leaves entries
    /// newer than its walk of the cgroup tree alone.
    pub since_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Selected>() == 16);

/// The kernel's half of the pre-filter for selected cgroups (see
/// [`SELECTED_BLOOM_MAP`]), with the bit layout of `TagFilter::bloom`: a
/// false positive costs a map lookup, never a wrong answer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SelectedBloom {
    pub bloom: [u64; TAG_BLOOM_WORDS],
}

#[cfg(feature = "user")]
aya_pod!(Selected, SelectedBloom);
