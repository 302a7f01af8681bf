//! Loops over kernel structures, a step per level or byte. With `bpf_loop`
//! (Linux 5.17) the verifier checks a step once, whatever the count; the
//! compat build (older kernels) runs a bounded loop instead, which the
//! verifier checks iteration by iteration, so its bound is part of the
//! caller's contract: a loop that runs out of steps must end in the
//! caller's fail-closed answer (a walk too deep is denied). A bounded loop
//! whose step is a global function ([`repeat_global`]) costs the verifier
//! a call per iteration and the step once: global functions (5.6+) are
//! checked on their own, by their arguments' types, not at each call.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;

/// A step: its index and the loop's state; nonzero ends the loop.
pub type Step = extern "C" fn(u32, *mut c_void) -> i64;

/// Levels of a path the compat build walks (and writes into an event):
/// `MAX_PATH_DEPTH` (64) would take the 5.10 verifier minutes per program.
/// A deeper path is denied as too deep.
pub const COMPAT_PATH_DEPTH: u32 = 32;

/// Runs `step` for indexes 0 up to `steps` (at most `COMPAT_MAX` in the
/// compat build) until one returns nonzero.
#[inline(always)]
pub fn repeat<const COMPAT_MAX: u32>(steps: u32, step: Step, state: *mut c_void) {
    if crate::COMPAT {
        let mut index = 0;
        while index < COMPAT_MAX && index < steps {
            if step(index, state) != 0 {
                break;
            }
            index += 1;
        }
    } else {
        unsafe { bpf_loop(steps, step as *mut c_void, state, 0) };
    }
}

/// [`repeat`], but the compat build calls `global` instead of `step`: a
/// call of the same step as a global function (exported, `#[no_mangle]`),
/// which the verifier checks once per program, not once per call, that is
/// per level. It takes no pointer (5.10 allows only scalars and the
/// context) and finds its state in map memory itself.
#[inline(always)]
pub fn repeat_global<const COMPAT_MAX: u32>(steps: u32, step: Step, global: impl Fn() -> i64, state: *mut c_void) {
    if crate::COMPAT {
        repeat_calls::<COMPAT_MAX>(steps, global);
    } else {
        unsafe { bpf_loop(steps, step as *mut c_void, state, 0) };
    }
}

/// Calls `global` up to `steps` times (at most `MAX`) until it returns
/// nonzero: the compat build's side of [`repeat_global`].
#[inline(always)]
pub fn repeat_calls<const MAX: u32>(steps: u32, global: impl Fn() -> i64) {
    let mut index = 0;
    while index < MAX && index < steps {
        if global() != 0 {
            break;
        }
        index += 1;
    }
}
