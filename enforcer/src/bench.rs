//! `enforcer bench-empty -- CMD...` (hidden): runs a command while empty BPF
//! LSM programs are attached on the enforcer's file hooks (the benchmarks'
//! floor: what any BPF LSM design costs), for `cargo xtask bench files`.
//! Nothing is tagged or enforced.

use std::{ffi::OsString, os::unix::process::ExitStatusExt as _, process::Command};

use crate::bpf;

/// Attaches the empty programs, runs `command`, and returns its exit code
/// (125 when they cannot be loaded, 126/127 when the command cannot be run).
#[must_use]
pub fn run_empty(command: &[OsString]) -> i32 {
    let empty = match bpf::load_empty_programs() {
        Ok(empty) => empty,
        Err(e) => {
            tracing::error!("cannot attach the empty programs: {e}");
            return 125;
        }
    };
    if !empty.missing_hooks.is_empty() {
        tracing::info!("bench-empty: this kernel has no {} hook(s)", empty.missing_hooks.join(", "));
    }
    let status = match Command::new(&command[0]).args(&command[1..]).status() {
        Ok(status) => status,
        Err(e) => {
            tracing::error!("cannot run `{}`: {e}", command[0].to_string_lossy());
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    drop(empty);
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
