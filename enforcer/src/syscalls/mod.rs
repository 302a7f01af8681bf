//! The `[syscalls]` section: which syscalls an agent may make, as a seccomp
//! filter (`filter`), answered and reported by the enforcer (`notify`), or
//! exported for orchestrators that install filters themselves (`export`).
//!
//! A syscall is in the allowlist by name or through a group (`groups`).
//! A few allowed syscalls are only allowed with some arguments (`arg_rules`):
//! `clone`/`unshare` without namespace flags, `mknod` of files, FIFOs and
//! sockets only. `clone3`, whose flags a filter cannot read, fails with
//! ENOSYS so libc falls back to `clone` (as Docker's and systemd's filters do).

pub mod export;
pub mod filter;
pub mod groups;
pub mod notify;

use std::collections::BTreeSet;

use libseccomp::{ScmpArch, ScmpSyscall};

/// What happens to a syscall the policy does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyAction {
    /// Fails with EPERM.
    Eperm,
    /// The process is killed (SIGKILL).
    Kill,
}

/// A validated `[syscalls]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syscalls {
    /// Allowed syscall names, groups expanded.
    pub allow: BTreeSet<String>,
    /// `@namespaces` is allowed: `clone` and `unshare` may create namespaces.
    pub namespaces: bool,
    pub deny_action: DenyAction,
    /// Deny `execve` in the agent's cgroup to tasks that carry no seccomp
    /// filter (an orchestrator that forgot the profile fails loudly).
    pub require_seccomp: bool,
}

/// The architectures filters are built and exported for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Self; 2] = [Self::X86_64, Self::Aarch64];

    /// The architecture this enforcer runs on.
    #[must_use]
    pub const fn native() -> Self {
        if cfg!(target_arch = "aarch64") { Self::Aarch64 } else { Self::X86_64 }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    #[must_use]
    pub const fn scmp(self) -> ScmpArch {
        match self {
            Self::X86_64 => ScmpArch::X8664,
            Self::Aarch64 => ScmpArch::Aarch64,
        }
    }

    /// The syscall number of `name` here, if this architecture has it.
    #[must_use]
    pub fn number(self, name: &str) -> Option<i32> {
        ScmpSyscall::from_name_by_arch(name, self.scmp()).ok().map(i32::from).filter(|&nr| nr >= 0)
    }
}

/// Whether any supported architecture has a syscall called `name`.
#[must_use]
pub fn known(name: &str) -> bool {
    Arch::ALL.iter().any(|arch| arch.number(name).is_some())
}

/// Expands one `syscalls.allow` entry: a syscall name or a `@group`.
pub fn expand(entry: &str) -> Result<Vec<&str>, String> {
    if entry == groups::DEFAULT_AGENT {
        return Ok(groups::default_agent().collect());
    }
    if entry.starts_with('@') {
        return groups::group(entry).map(|g| g.members.to_vec()).ok_or_else(|| {
            let names: Vec<&str> =
                std::iter::once(groups::DEFAULT_AGENT).chain(groups::GROUPS.iter().map(|g| g.name)).collect();
            format!("unknown syscall group `{entry}`; the groups are {}", names.join(", "))
        });
    }
    if known(entry) {
        Ok(vec![entry])
    } else {
        Err(format!("unknown syscall `{entry}` (not a syscall on x86_64 or aarch64)"))
    }
}

/// Namespace flags of `clone` (`CLONE_NEWTIME` is 0x80 there: a signal number bit).
const CLONE_NAMESPACES: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// Namespace flags of `unshare`: those of clone plus `CLONE_NEWTIME`.
const UNSHARE_NAMESPACES: u64 = CLONE_NAMESPACES | 0x80;
const S_IFMT: u64 = 0o170_000;

/// One condition on a syscall's argument: allowed when `(arg & mask) == value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgRule {
    pub arg: u32,
    pub mask: u64,
    pub value: u64,
}

const fn masked(arg: u32, mask: u64, value: u64) -> ArgRule {
    ArgRule { arg, mask, value }
}

const NO_CLONE_NAMESPACES: &[ArgRule] = &[masked(0, CLONE_NAMESPACES, 0)];
const NO_UNSHARE_NAMESPACES: &[ArgRule] = &[masked(0, UNSHARE_NAMESPACES, 0)];
/// Regular files (type 0 means regular), FIFOs and sockets; not devices.
const fn mknod_types(arg: u32) -> [ArgRule; 4] {
    [
        masked(arg, S_IFMT, 0),
        masked(arg, S_IFMT, 0o100_000),
        masked(arg, S_IFMT, 0o010_000),
        masked(arg, S_IFMT, 0o140_000),
    ]
}
const MKNOD: [ArgRule; 4] = mknod_types(1);
const MKNODAT: [ArgRule; 4] = mknod_types(2);

/// The conditions under which an allowed syscall is allowed: any one of
/// them (`None`: always).
#[must_use]
pub fn arg_rules(name: &str, namespaces: bool) -> Option<&'static [ArgRule]> {
    match name {
        "clone" if !namespaces => Some(NO_CLONE_NAMESPACES),
        "unshare" if !namespaces => Some(NO_UNSHARE_NAMESPACES),
        "mknod" => Some(&MKNOD),
        "mknodat" => Some(&MKNODAT),
        _ => None,
    }
}

/// Syscalls the built-in floor (BPF LSM) still refuses in agent cgroups when
/// a policy allows them, and what it refuses.
pub const FLOOR_DENIES: &[(&str, &str)] = &[
    ("bpf", "loading BPF programs and using BPF maps"),
    ("perf_event_open", "perf events"),
    ("ptrace", "tracing processes outside the agent's cgroup"),
    ("process_vm_readv", "reading memory of processes outside the agent's cgroup"),
    ("process_vm_writev", "writing memory of processes outside the agent's cgroup"),
    ("init_module", "loading kernel modules"),
    ("finit_module", "loading kernel modules"),
    ("mount", "mounts"),
    ("move_mount", "mounts"),
    ("fsmount", "mounts"),
    ("pivot_root", "pivot_root"),
];

/// Syscalls that fail with ENOSYS, unreported, when not allowed: libc
/// retries them with an older syscall the filter can judge.
pub const FALLBACK_ENOSYS: &[&str] = &["clone3"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_member_is_a_syscall_somewhere() {
        for group in groups::GROUPS {
            for name in group.members {
                assert!(known(name), "{}: `{name}` is not a syscall on x86_64 or aarch64", group.name);
            }
        }
    }

    #[test]
    fn every_known_syscall_is_in_exactly_one_group() {
        for arch in Arch::ALL {
            for nr in 0..1024 {
                let Ok(name) = ScmpSyscall::from(nr).get_name_by_arch(arch.scmp()) else { continue };
                let homes: Vec<&str> =
                    groups::GROUPS.iter().filter(|g| g.members.contains(&name.as_str())).map(|g| g.name).collect();
                assert_eq!(homes.len(), 1, "{} syscall `{name}` is in {homes:?}", arch.name());
            }
        }
    }

    #[test]
    fn default_agent_leaves_out_what_breaks_sandboxes() {
        let default: Vec<&str> = groups::default_agent().collect();
        for dangerous in [
            "bpf",
            "perf_event_open",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "init_module",
            "finit_module",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "fsopen",
            "setns",
            "keyctl",
            "add_key",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "reboot",
            "swapon",
            "open_by_handle_at",
            "clone3",
        ] {
            assert!(!default.contains(&dangerous), "@default-agent must not hold `{dangerous}`");
        }
        assert!(arg_rules("unshare", false).is_some() && arg_rules("clone", false).is_some());
        assert_eq!(arg_rules("clone", true), None);
    }

    #[test]
    fn default_agent_filters_build_for_both_architectures() {
        let syscalls = Syscalls {
            allow: expand(groups::DEFAULT_AGENT).unwrap().into_iter().map(str::to_owned).collect(),
            namespaces: false,
            deny_action: DenyAction::Eperm,
            require_seccomp: false,
        };
        for arch in Arch::ALL {
            let program = filter::Program::build(&syscalls, arch).unwrap();
            assert!((100..4096).contains(&program.len()), "{}: {} instructions", arch.name(), program.len());
        }
    }

    #[test]
    fn entries_expand_or_say_what_exists() {
        assert_eq!(expand("keyctl").unwrap(), ["keyctl"]);
        assert!(expand("@keyring").unwrap().contains(&"add_key"));
        assert!(expand("@default-agent").unwrap().contains(&"openat"));
        assert!(expand("@nope").unwrap_err().contains("the groups are @default-agent, @basic-io"));
        assert!(expand("opne").unwrap_err().contains("unknown syscall `opne`"));
    }
}
