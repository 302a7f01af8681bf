//! `enforcer bench-floor -- CMD...` (hidden): runs a command while the floor
//! programs (empty BPF LSM programs on every hook the enforcer uses) are
//! attached, for `cargo xtask bench files`. Nothing is tagged or enforced.

use std::{ffi::OsString, os::unix::process::ExitStatusExt as _, process::Command};

use crate::bpf;

/// Attaches the floor, runs `command`, and returns its exit code (125 when
/// the floor cannot be loaded, 126/127 when the command cannot be run).
#[must_use]
pub fn run_floor(command: &[OsString]) -> i32 {
    let floor = match bpf::load_floor() {
        Ok(floor) => floor,
        Err(e) => {
            eprintln!("enforcer: error: cannot attach the floor programs: {e}");
            return 125;
        }
    };
    if !floor.missing_hooks.is_empty() {
        eprintln!("enforcer: floor: this kernel has no {} hook(s)", floor.missing_hooks.join(", "));
    }
    let status = match Command::new(&command[0]).args(&command[1..]).status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("enforcer: error: cannot run `{}`: {e}", command[0].to_string_lossy());
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    drop(floor);
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
