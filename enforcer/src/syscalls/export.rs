//! The `[syscalls]` section for orchestrators that install filters
//! themselves: the OCI runtime spec's `linux.seccomp` object (containerd,
//! CRI-O, Kubernetes `localhost` profiles) and systemd unit settings.
//!
//! Both deny with EPERM (or kill) in the kernel, without the enforcer's
//! notifications: the orchestrator's runtime installs them, not the
//! enforcer. Both keep the filter's other decisions: namespace flags of
//! `clone`/`unshare`, `clone3` as ENOSYS, `mknod` without devices.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use oci_spec::runtime::{
    Arch as OciArch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{Arch, DenyAction, FALLBACK_ENOSYS, Syscalls, arg_rules, groups::GROUPS_VERSION};

#[derive(Debug, thiserror::Error)]
#[error("cannot build the OCI seccomp profile: {0}")]
pub struct ExportError(#[from] oci_spec::OciSpecError);

/// The OCI `linux.seccomp` object, as pretty JSON. With `agent` (the
/// daemon's seccomp agent socket, and the policy's name), the syscalls
/// outside the allowlist are not refused by the kernel but handed to the
/// agent (`SCMP_ACT_NOTIFY`), which refuses them as the policy says and
/// streams each refusal; if the agent is gone, the kernel fails them with
/// ENOSYS. Runtimes take `SCMP_ACT_NOTIFY` by name only (runc: never as the
/// default action, never for `write`, which they need once the filter is
/// on): every syscall the two architectures have is named, and `write`, a
/// syscall newer than this enforcer, or an allowed one with arguments it is
/// not allowed with, is refused by the kernel unreported.
pub fn oci(syscalls: &Syscalls, agent: Option<(&Path, &str)>) -> Result<String, ExportError> {
    let mut profile = oci_profile(syscalls)?;
    if let Some((listener, policy)) = agent {
        let handed_over: Vec<String> = every_syscall()
            .into_iter()
            .filter(|name| {
                !syscalls.allow.contains(name) && !FALLBACK_ENOSYS.contains(&name.as_str()) && name != "write"
            })
            .collect();
        let notify =
            LinuxSyscallBuilder::default().names(handed_over).action(LinuxSeccompAction::ScmpActNotify).build()?;
        let mut rules = profile.syscalls().clone().unwrap_or_default();
        rules.push(notify);
        profile.set_syscalls(Some(rules));
        profile.set_listener_path(Some(listener.to_owned()));
        profile.set_listener_metadata(Some(policy.to_owned()));
    }
    Ok(serde_json::to_string_pretty(&profile).unwrap_or_default() + "\n")
}

/// Every syscall name the profile's architectures have (libseccomp's tables).
fn every_syscall() -> BTreeSet<String> {
    Arch::ALL
        .iter()
        .flat_map(|arch| {
            (0..1024).filter_map(move |nr| libseccomp::ScmpSyscall::from(nr).get_name_by_arch(arch.scmp()).ok())
        })
        .collect()
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
