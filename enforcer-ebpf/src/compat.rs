//! The enforcer's BPF LSM programs for kernels from Linux 5.10 that lack
//! `bpf_loop` (5.17), `bpf_get_retval` (5.18), `bpf_get_current_task_btf`
//! (5.11) or the atomic compare-and-exchange (5.12). The loader picks this
//! build when a probe finds `bpf_loop` or `bpf_get_retval` missing.
//!
//! The source is the same as `main.rs`'s; where the two differ, a branch on
//! `COMPAT` (a constant, so each build keeps one side):
//! - loops are bounded loops instead of `bpf_loop`. The verifier checks a
//!   bounded loop iteration by iteration, so the long ones (the walk above
//!   a mount, the pending-name climb, an event's paths, a task's tagged
//!   ancestor levels) call their step as a global function, which it checks
//!   once per program (`repeat::repeat_global`); the walk's levels within
//!   the starting mount stay inline (`repeat.rs`);
//! - the current task's fields are read with `bpf_probe_read_kernel`
//!   (`bpf_get_current_task` gives no typed pointer), and its tag is found
//!   through `bpf_get_current_ancestor_cgroup_id`;
//! - a walk above a mount claims its per-CPU slot with an atomic add;
//! - cgroup socket programs cannot read an earlier program's verdict, so
//!   when two of them judge one operation both report it.
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "BPF code narrows kernel values on purpose"
)]
#![expect(
    clippy::inline_always,
    reason = "what is inlined decides what the verifier checks and how deep the stack gets, not speed alone"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "program entries take their context by value (aya's macros), and small handles move into inlined code"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a map helper takes the key's address: a borrow keeps the key where it is, a value is copied first"
)]
#![expect(
    clippy::cast_ptr_alignment,
    reason = "kernel and map memory has the alignment of the types read from it; BPF loads do not trap"
)]

/// Which build this is.
const COMPAT: bool = true;

include!("programs.rs");
