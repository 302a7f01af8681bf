//! The daemon's policies: the `*.toml` files of its policy directory, each
//! compiled into kernel rules under a policy id of its own per version, so a
//! reload installs the new version beside the old one and switches tagged
//! cgroups over in one table swap. Destinations are the exception: every
//! version of a policy keys them by the policy's net id, so a reload changes
//! only the entries that differ (a policy can hold 10 000), around the swap
//! (see `policy::network::NetChange`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use enforcer_common::policy::{FileRuleKey, PolicyId, TagInfo};

use crate::events::PolicyVersion;
use crate::{
    dns::names::HostRules,
    policy::{self, Policy, compile::compile, network::NetRules},
};

/// One version of a policy, compiled.
pub struct Loaded {
    pub name: String,
    pub file: PathBuf,
    /// The kernel's id for this version (ids are not reused while in use).
    pub id: PolicyId,
    /// The id its destinations are keyed by: the first version's id, kept
    /// by every later version (and not reused while in use).
    pub net_id: PolicyId,
    /// 1 for the first version the daemon loaded, +1 for each change.
    pub version: u32,
    pub hash: String,
    /// The file's text, kept so a restarted daemon still enforces this
    /// version if the file is gone or broken by then.
    pub source: String,
    pub policy: Policy,
    pub tag: TagInfo,
    pub file_rules: Vec<(FileRuleKey, u16)>,
    pub net: Option<NetRules>,
    /// The host names its agents may resolve (a policy with a network
    /// section: its resolver serves them).
    pub hosts: Option<HostRules>,
    pub warnings: Vec<String>,
    pub loaded_at: String,
    /// An `enforcer run`'s own policy (no file of the policy directory):
    /// reloads leave it alone; it goes when its last run ends.
    pub run: bool,
}

impl Loaded {
    /// This version, as the daemon's lines name it.
    #[must_use]
    pub fn version(&self) -> PolicyVersion {
        PolicyVersion { name: self.name.clone(), version: self.version, hash: self.hash.clone() }
    }
}

/// A file that could not become a policy, and why.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Rejected {
    pub file: PathBuf,
    pub error: String,
}

/// The first 16 hex digits of the SHA-256 of a policy file's text.
#[must_use]
pub fn hash(text: &str) -> String {
    crate::bpf::short_sha256(text.as_bytes())
}

/// A policy file's path and text.
pub type PolicyFile = (PathBuf, String);

/// Which version a compiled policy is: its id, net id and number.
#[derive(Clone, Copy, Debug)]
pub struct VersionIds {
    pub id: PolicyId,
    pub net_id: PolicyId,
    pub version: u32,
}

impl VersionIds {
    /// The first version of a policy: its destinations keyed by its own id.
    #[must_use]
    pub fn first(id: PolicyId) -> Self {
        Self { id, net_id: id, version: 1 }
    }
}

/// Every id `loaded` holds: versions' and net ids (none is handed out again).
pub fn ids_in_use<'a>(loaded: impl IntoIterator<Item = &'a Loaded>) -> BTreeSet<PolicyId> {
    loaded.into_iter().flat_map(|p| [p.id, p.net_id]).collect()
}

/// Compiles `text` (read from `file`) as the version `ids` names.
pub fn compile_file(file: &Path, text: &str, ids: VersionIds) -> Result<Loaded, String> {
    let (policy, warnings) = policy::parse(text, file).map_err(|e| e.to_string())?;
    compile_parsed(file, text, policy, &warnings, ids)
}

/// Compiles a policy parsed from `text` (read from `file`).
pub fn compile_parsed(
    file: &Path,
    text: &str,
    policy: Policy,
    warnings: &[policy::Warning],
    ids: VersionIds,
) -> Result<Loaded, String> {
    let VersionIds { id, net_id, version } = ids;
    let mut warnings: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    let compiled = compile(&policy, id, net_id).map_err(|e| format!("{}: {e}", file.display()))?;
    warnings.extend(compiled.missing_trees().map(|line| format!("{}: warning: {line}", file.display())));
    // Policies with a network section get a resolver, as under `enforcer run`.
    let hosts = policy.network.as_ref().map(HostRules::of).transpose().map_err(|e| e.to_string())?;
    if policy.syscalls.is_some() {
        warnings.push(format!(
            "{}: warning: [syscalls]: the daemon puts no seccomp filter into the processes it tags; containers get \
             theirs from their runtime (`enforcer export seccomp --format oci --listener`: the daemon then answers \
             and streams the refusals), other orchestrators from `enforcer export seccomp` (require_seccomp is \
             enforced)",
            file.display()
        ));
    }
    Ok(Loaded {
        name: policy.name.clone(),
        file: file.to_owned(),
        id,
        net_id,
        version,
        hash: hash(text),
        source: text.to_owned(),
        tag: compiled.tag,
        policy,
        file_rules: compiled.file_rules,
        net: compiled.net,
        hosts,
        warnings,
        loaded_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        run: false,
    })
}

/// The last id handed out: the one after it is the selectors' locked tag's
/// ([`PolicyId::LOCKED`]).
const LAST_ID: u16 = PolicyId::LOCKED.0 - 1;

/// Hands out policy ids: never one in use, and not soon one just freed
/// (events in flight still name it).
pub struct Ids {
    next: u16,
}

impl Ids {
    #[must_use]
    pub fn new() -> Self {
        Self { next: 1 }
    }

    /// Ids handed out from the one after `id` on.
    #[must_use]
    pub fn after(id: PolicyId) -> Self {
        Self { next: id.0.checked_add(1).unwrap_or(1) }
    }

    /// An id not in `used` (`None`: all 65 534 are).
    pub fn allocate(&mut self, used: &BTreeSet<PolicyId>) -> Option<PolicyId> {
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = if self.next >= LAST_ID { 1 } else { self.next + 1 };
            if !used.contains(&PolicyId(id)) && id <= LAST_ID {
                return Some(PolicyId(id));
            }
        }
        None
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}
