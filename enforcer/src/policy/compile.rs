//! A parsed policy into what the kernel enforces for one policy id: the tag
//! its cgroups carry, its file rules (trees resolved to inodes now), and its
//! network rules. `enforcer run` and the daemon both compile through
//! [`compile`]; what each does with the result (one policy for one command,
//! or many versions side by side) is theirs.

use std::path::PathBuf;

use enforcer_common::{
    net::SOCKET_CLASSES,
    policy::{
        FileRuleKey, PolicyId, TAG_AUDIT, TAG_BUDGET, TAG_EXEC, TAG_FILES, TAG_NET, TAG_NEW_DESTINATIONS,
        TAG_READ_DENY, TAG_REQUIRE_SECCOMP, TAG_SENSITIVE, TAG_TLS, TagInfo,
    },
};

use super::{
    Mode, Policy, files,
    network::{self, NetRules, TooManyRanges},
};
use crate::mounts::MountError;

/// One policy, compiled for one policy id.
#[derive(Debug)]
pub struct Compiled {
    /// The tag of the cgroups it judges, with the flags its file rules need.
    pub tag: TagInfo,
    /// Inode keys of the file table, with their flags.
    pub file_rules: Vec<(FileRuleKey, u16)>,
    /// Trees the policy names that do not exist now, and the key naming each.
    pub missing: Vec<(PathBuf, &'static str)>,
    /// Destinations and unix sockets, if the policy has `[network]`.
    pub net: Option<NetRules>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Files(#[from] MountError),
    #[error(transparent)]
    Network(#[from] TooManyRanges),
}

/// Compiles `policy` for `policy_id`, its destinations keyed by `net_id`
/// (see [`TagInfo::with_net_id`]). Reads the mount table when the policy
/// names trees (`[files]`, `[exec]`, `[devices]`).
pub fn compile(policy: &Policy, policy_id: PolicyId, net_id: PolicyId) -> Result<Compiled, CompileError> {
    let mut tag = tag_for(policy, policy_id).with_net_id(net_id);
    let (mut file_rules, mut missing) = (Vec::new(), Vec::new());
    if policy.files.is_some() || policy.exec.is_some() || policy.devices.is_some() {
        let resolved = files::resolve(policy, policy_id)?;
        tag.flags |= resolved.tag_flags();
        (file_rules, missing) = (resolved.entries, resolved.missing);
    }
    let net = policy.network.as_ref().map(|n| network::build(n, policy_id, net_id)).transpose()?;
    Ok(Compiled { tag, file_rules, missing, net })
}

impl Compiled {
    /// A line for each tree that does not exist now, and what that means.
    pub fn missing_trees(&self) -> impl Iterator<Item = String> + '_ {
        self.missing
            .iter()
            .map(|(path, key)| format!("{key} tree {} does not exist; {}", path.display(), missing_effect(key)))
    }
}

/// The tag of a policy's cgroups, before its file rules add theirs.
fn tag_for(policy: &Policy, policy_id: PolicyId) -> TagInfo {
    let mut flags = 0;
    if policy.mode == Mode::Audit {
        flags |= TAG_AUDIT;
    }
    if let Some(files) = &policy.files {
        flags |= TAG_FILES;
        if !files.read_deny.is_empty() || !files.sensitive.is_empty() {
            flags |= TAG_READ_DENY;
        }
        if !files.sensitive.is_empty() {
            flags |= TAG_SENSITIVE;
        }
    }
    if policy.exec.is_some() {
        flags |= TAG_EXEC;
    }
    if policy.syscalls.as_ref().is_some_and(|s| s.require_seccomp) {
        flags |= TAG_REQUIRE_SECCOMP;
    }
    if let Some(network) = &policy.network {
        flags |= TAG_NET;
        for class in &network.sockets {
            flags |= SOCKET_CLASSES.iter().find(|c| c.0 == *class).map_or(0, |c| c.1);
        }
        if !network.upload.is_empty() {
            flags |= TAG_BUDGET;
        }
        if network.checks_tls_names() {
            flags |= TAG_TLS;
        }
        if network.new_destinations.is_some() {
            flags |= TAG_NEW_DESTINATIONS;
        }
    }
    TagInfo::new(policy_id, flags)
}

/// What a tree that does not exist yet means for the key naming it.
fn missing_effect(key: &str) -> &'static str {
    match key {
        "files.write" => "writes there are denied until it exists and the policy is loaded again",
        "exec.allow" => "programs there are denied until it exists and the policy is loaded again",
        "devices.allow" => "the device stays refused until it exists and the policy is loaded again",
        "files.sensitive" => {
            "reading it locks the agent's egress from the moment it is created (with everything below the first \
             missing directory)"
        }
        _ => {
            "it is protected by name from the moment it is created (with everything below the first missing directory)"
        }
    }
}

/// The parts of `policy` only BPF LSM programs enforce.
#[must_use]
pub fn needs_lsm(policy: &Policy) -> Vec<&'static str> {
    let mut parts = vec![
        "the built-in floor: BPF, perf events, modules, mounts, user namespaces, becoming root, ptrace, signals, \
         limits, scheduling and SIGIO aimed outside the agent, leaving the cgroup (CLONE_INTO_CGROUP), terminal \
         injection, kernel interfaces in /sys and /proc/sys, devices, fileless execution (BPF LSM)",
    ];
    if let Some(files) = &policy.files {
        parts.push("[files]: file writes and reads (BPF LSM file hooks)");
        if !files.sensitive.is_empty() {
            parts.push("files.sensitive: locking the egress down after a secret read (BPF LSM file_open)");
        }
    }
    if let Some(network) = &policy.network {
        parts.push("network.unix: connecting and sending to unix sockets (BPF LSM unix hooks)");
        if !network.upload.is_empty() {
            parts.push("network.upload: upload budgets (BPF LSM socket_sendmsg)");
        }
        if network.checks_tls_names() {
            parts.push("network.allow `tls`: TLS names on addresses granted by name (BPF LSM socket_sendmsg)");
        }
        parts.push(
            "socket classes of families other than IPv4/IPv6 (packet, netlink, vsock...): only raw, ICMP, SCTP \
             and MPTCP IP sockets are refused (BPF LSM socket_create)",
        );
    }
    if policy.exec.is_some() {
        parts.push("[exec]: which programs may be executed (BPF LSM bprm_check_security)");
    }
    if policy.syscalls.as_ref().is_some_and(|s| s.require_seccomp) {
        parts.push("syscalls.require_seccomp: refusing exec without a seccomp filter (BPF LSM)");
    }
    parts
}

#[cfg(test)]
mod tests {
    use enforcer_common::policy::{FILE_READ_DENY, FILE_WRITE, TAG_NO_REGULAR_FILE_ROOTS};

    use super::*;

    fn parsed(text: &str) -> Policy {
        crate::policy::parse(text, std::path::Path::new("p.toml")).unwrap().0
    }

    #[test]
    fn a_policy_compiles_to_its_tag_rules_and_missing_trees() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let policy = parsed(&format!(
            "name = \"p\"\nmode = \"audit\"\n[files]\nwrite = [\"{d}\"]\nread_deny = [\"{d}/absent\"]\n\
             [network]\nallow = [\"10.0.0.0/8:443\"]\nsockets = [\"raw\"]\n"
        ));
        let compiled = compile(&policy, PolicyId(9), PolicyId(9)).unwrap();
        assert_eq!(compiled.tag.policy_id(), PolicyId(9));
        let expected = TAG_AUDIT | TAG_FILES | TAG_READ_DENY | TAG_NET | TAG_NO_REGULAR_FILE_ROOTS;
        assert_eq!(compiled.tag.flags & expected, expected, "flags {:#x}", compiled.tag.flags);
        assert_eq!(compiled.tag.flags & (TAG_EXEC | TAG_REQUIRE_SECCOMP), 0);
        assert!(compiled.file_rules.iter().any(|(key, flags)| key.policy_id == PolicyId(9) && flags & FILE_WRITE != 0));
        assert!(compiled.file_rules.iter().any(|(_, flags)| flags & FILE_READ_DENY != 0), "pending by name");
        let missing: Vec<String> = compiled.missing_trees().collect();
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].starts_with(&format!("files.read_deny tree {d}/absent does not exist; it is protected by name"))
        );
        assert_eq!(compiled.net.as_ref().map(|net| net.prefixes.len()), Some(1));
    }

    #[test]
    fn a_policy_without_trees_has_no_file_rules_or_their_flags() {
        let compiled = compile(&parsed("name = \"p\"\n[network]\nallow = []\n"), PolicyId(1), PolicyId(1)).unwrap();
        assert!(compiled.file_rules.is_empty() && compiled.missing.is_empty());
        assert_eq!(compiled.tag.flags & (TAG_FILES | TAG_NO_REGULAR_FILE_ROOTS), 0);
        assert_eq!(compiled.tag.flags & TAG_NET, TAG_NET);
    }
}
