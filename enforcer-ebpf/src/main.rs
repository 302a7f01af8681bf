//! The enforcer's BPF LSM programs, for kernels with `bpf_loop` and
//! `bpf_get_retval` (Linux 5.18+); `compat.rs` builds the same programs for
//! older kernels.
//!
//! Each hook is a short entry that asks `tag::current_tag` whether the task
//! is in an agent cgroup (nearly free when it is not), then judges the
//! dentry the kernel resolved with `walk::judge`, and reports a refusal with
//! `report::report`. Programs only ever return 0 or `-EPERM` (Linux 6.12
//! rejects LSM programs that can return a positive value).
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

/// Which build this is: see `compat.rs`.
const COMPAT: bool = false;

include!("programs.rs");
