//! The `[syscalls]` section for orchestrators that install filters
//! themselves: the OCI runtime spec's `linux.seccomp` object (containerd,
//! CRI-O, Kubernetes `localhost` profiles) and systemd unit settings.
//!
//! Both deny with EPERM (or kill) in the kernel, without the enforcer's
//! notifications: the orchestrator's runtime installs them, not the
//! enforcer. Both keep the filter's other decisions: namespace flags of
//! `clone`/`unshare`, `clone3` as ENOSYS, `mknod` without devices.

use std::fmt::Write as _;

use oci_spec::runtime::{
    Arch as OciArch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{DenyAction, FALLBACK_ENOSYS, Syscalls, arg_rules, groups::GROUPS_VERSION};

#[derive(Debug, thiserror::Error)]
#[error("cannot build the OCI seccomp profile: {0}")]
pub struct ExportError(#[from] oci_spec::OciSpecError);

/// The OCI `linux.seccomp` object, as pretty JSON.
pub fn oci(syscalls: &Syscalls) -> Result<String, ExportError> {
    let profile = oci_profile(syscalls)?;
    Ok(serde_json::to_string_pretty(&profile).unwrap_or_default() + "\n")
}

fn oci_profile(syscalls: &Syscalls) -> Result<LinuxSeccomp, ExportError> {
    let mut rules: Vec<LinuxSyscall> = Vec::new();
    let unconditional: Vec<String> =
        syscalls.allow.iter().filter(|name| arg_rules(name, syscalls.namespaces).is_none()).cloned().collect();
    if !unconditional.is_empty() {
        rules.push(
            LinuxSyscallBuilder::default().names(unconditional).action(LinuxSeccompAction::ScmpActAllow).build()?,
        );
    }
    for name in &syscalls.allow {
        for rule in arg_rules(name, syscalls.namespaces).unwrap_or_default() {
            let arg = LinuxSeccompArgBuilder::default()
                .index(rule.arg as usize)
                .value(rule.mask)
                .value_two(rule.value)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?;
            rules.push(
                LinuxSyscallBuilder::default()
                    .names(vec![name.clone()])
                    .action(LinuxSeccompAction::ScmpActAllow)
                    .args(vec![arg])
                    .build()?,
            );
        }
    }
    let fallback: Vec<String> =
        FALLBACK_ENOSYS.iter().filter(|name| !syscalls.allow.contains(**name)).map(|&n| n.to_owned()).collect();
    if !fallback.is_empty() {
        rules.push(
            LinuxSyscallBuilder::default()
                .names(fallback)
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(u32::try_from(libc::ENOSYS).unwrap_or(38))
                .build()?,
        );
    }
    let profile = LinuxSeccompBuilder::default()
        .architectures(vec![OciArch::ScmpArchX86_64, OciArch::ScmpArchAarch64])
        .syscalls(rules);
    let profile = match syscalls.deny_action {
        DenyAction::Eperm => profile
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(u32::try_from(libc::EPERM).unwrap_or(1)),
        DenyAction::Kill => profile.default_action(LinuxSeccompAction::ScmpActKillProcess),
    };
    Ok(profile.build()?)
}

/// Lines for a systemd unit's `[Service]` (or a scope's) section.
#[must_use]
pub fn systemd(syscalls: &Syscalls, policy: &str) -> String {
    let mut out = format!(
        "# Syscall allowlist of enforcer policy `{policy}` (syscall groups version {GROUPS_VERSION}).\n\
         # Paste into the [Service] section of the agent's unit (or a drop-in).\n\
         NoNewPrivileges=yes\n\
         SystemCallArchitectures=native\n"
    );
    // systemd joins repeated allowlist lines; short lines stay readable.
    // clone3 stays listed: RestrictNamespaces= below makes it fail with
    // ENOSYS (libc then uses clone), whereas leaving it out would be EPERM.
    let mut names: Vec<&str> = syscalls.allow.iter().map(String::as_str).collect();
    if !syscalls.namespaces {
        names.extend(FALLBACK_ENOSYS.iter().copied().filter(|n| !syscalls.allow.contains(*n)));
        names.sort_unstable();
    }
    for chunk in names.chunks(12) {
        let _ = writeln!(out, "SystemCallFilter={}", chunk.join(" "));
    }
    match syscalls.deny_action {
        DenyAction::Eperm => out.push_str("SystemCallErrorNumber=EPERM\n"),
        DenyAction::Kill => out.push_str("# Without SystemCallErrorNumber=, systemd kills the process (SIGSYS).\n"),
    }
    if !syscalls.namespaces {
        out.push_str("# clone/unshare may not create namespaces; clone3 fails with ENOSYS.\nRestrictNamespaces=yes\n");
    }
    out.push_str("# mknod may not create device nodes.\nCapabilityBoundingSet=~CAP_MKNOD\n");
    out
}
