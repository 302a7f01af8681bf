//! The orchestrator API's requests and answers, one type each, shared by the
//! daemon (`api.rs` serializes them) and the CLI (`ctl.rs` reads them).
//! `schemas/api.schema.json` (in this crate) is their JSON Schema, published
//! for other clients; a unit test keeps it current and the test tiers
//! validate the daemon's answers against it.

use std::{collections::BTreeMap, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::{core::ReloadReport, policies::Rejected, selection::SelectedCgroup};

/// One tagged cgroup (`POST /v1/tags` and `DELETE /v1/tags` answer with it).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Tag {
    /// Its path below the cgroup2 mount, e.g. `/agents.slice/a.scope`.
    pub cgroup: String,
    pub cgroup_id: u64,
    pub level: u32,
    pub policy: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub tagged_at: String,
    /// Judged from the first exec in the cgroup on (see [`TagRequest`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_exec: bool,
}

/// `POST /v1/tags`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// A path below the cgroup2 mount, with or without the mount point.
    pub cgroup: String,
    pub policy: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Judge nothing until a process of the cgroup executes a program, then
    /// everything: for a container runtime that still sets the container
    /// up in its cgroup (mounts, `pivot_root`) when it tags it.
    #[serde(default)]
    pub from_exec: bool,
}

/// `POST /v1/runs`: what `enforcer run` asks the daemon for.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The policy file (for messages and events).
    pub policy_file: PathBuf,
    /// Its text, as the caller read it.
    pub policy_text: String,
    /// Its signature file's text (`POLICY.sig`), if it has one: a daemon
    /// with `policy_keys` loads a run's own policy only if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_signature: Option<String>,
}

/// The daemon's answer to `POST /v1/runs`: the run's cgroup, tagged.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunAnswer {
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The policy as the daemon names it (`NAME@run-HASH` for a run's own).
    pub policy: String,
    pub policy_version: u32,
    pub policy_hash: String,
    /// Where to hand the run's seccomp listener (none: the daemon serves none).
    pub seccomp_listener: Option<PathBuf>,
    /// Whether the daemon's kernel runs the BPF LSM programs (a daemon
    /// started `--degraded` on a kernel without them does not).
    pub lsm_enforced: bool,
    /// What the daemon's kernel does not enforce (`--degraded`, hooks the
    /// kernel lacks).
    pub not_enforced: Vec<String>,
}

/// Any error answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorAnswer {
    pub error: String,
}

/// A policy version in force.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub version: u32,
    pub hash: String,
    pub file: PathBuf,
    /// `enforce` or `audit`.
    pub mode: String,
    pub loaded_at: String,
    pub tagged_cgroups: usize,
    pub warnings: Vec<String>,
}

/// `GET /v1/policies`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PoliciesAnswer {
    pub policies: Vec<PolicyInfo>,
    /// Files the last reload rejected.
    pub rejected: Vec<Rejected>,
}

/// `GET /v1/tags`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TagsAnswer {
    pub tags: Vec<Tag>,
    /// Cgroups the policies' selectors tagged.
    pub selected: Vec<SelectedCgroup>,
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct StatusAnswer {
    pub daemon: DaemonInfo,
    pub kernel: KernelInfo,
    pub policies: Vec<PolicyInfo>,
    pub rejected: Vec<Rejected>,
    pub tags: Vec<Tag>,
    pub selected: Vec<SelectedCgroup>,
    /// Agents whose egress a sensitive read locked (for their cgroup's life).
    #[serde(default)]
    pub egress_locked: Vec<LockedAgent>,
    /// What each agent sent under each of its policy's upload budgets.
    #[serde(default)]
    pub upload_budgets: Vec<BudgetUsed>,
    /// How many distinct destinations each agent reached under its
    /// policy's `network.new_destinations`.
    #[serde(default)]
    pub new_destinations: Vec<DestinationsUsed>,
    pub counters: Counters,
}

/// One agent under one upload budget (`network.upload`).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct BudgetUsed {
    pub cgroup_id: u64,
    /// Its path, if it is tagged or selected now.
    pub cgroup: Option<String>,
    pub policy: String,
    /// The budget as the policy names it: `*` or a host name.
    pub budget: String,
    /// Bytes sent in the current window (0: none open).
    pub bytes_used: u64,
    pub bytes_limit: u64,
    pub window_s: u64,
    /// When the current window started (none open: null).
    pub window_started_at: Option<String>,
}

/// One agent under its policy's budget of new destinations
/// (`network.new_destinations`).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DestinationsUsed {
    pub cgroup_id: u64,
    /// Its path, if it is tagged or selected now.
    pub cgroup: Option<String>,
    pub policy: String,
    /// Distinct destinations reached in the current window (0: none open).
    pub used: u64,
    pub limit: u64,
    pub window_s: u64,
    /// When the current window started (none open: null).
    pub window_started_at: Option<String>,
}

/// An agent whose egress is locked down to its policy's
/// `after_sensitive_read`, and the read that locked it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct LockedAgent {
    pub cgroup_id: u64,
    /// Its path, if it is tagged or selected now.
    pub cgroup: Option<String>,
    pub locked_at: String,
    /// The process that read the sensitive file.
    pub pid: u32,
    /// The file: its device (`major:minor`) and inode number.
    pub dev: String,
    pub ino: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    /// The programs' build (a hash of the object).
    pub build: String,
    pub started_at: String,
    /// Whether it adopted the programs an earlier daemon pinned.
    pub adopted: bool,
    pub pins: Option<PathBuf>,
    pub policy_dir: PathBuf,
    pub socket: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct KernelInfo {
    /// Whether the BPF LSM programs are attached.
    pub bpf_lsm: bool,
    /// Why not, if they are not.
    pub bpf_lsm_missing: Option<String>,
    /// What this kernel cannot enforce (`--degraded`).
    pub not_enforced: Vec<String>,
    /// Optional hooks this kernel lacks.
    pub missing_hooks: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    pub lost_events: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub followers: u64,
    pub follower_cuts: u64,
}

/// Every request and answer, for the schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, clippy::large_enum_variant, reason = "never built: only its schema is used")]
enum Api {
    Error(ErrorAnswer),
    TagRequest(TagRequest),
    Tag(Tag),
    Policies(PoliciesAnswer),
    Tags(TagsAnswer),
    Status(StatusAnswer),
    Reload(ReloadReport),
    RunRequest(RunRequest),
    Run(RunAnswer),
    RunEnded(super::runs::RunRecord),
}

/// The JSON Schema of the API's requests and answers (each in `$defs` by its
/// type's name), as published in `schemas/api.schema.json` (a unit test
/// compares the two).
#[cfg(test)]
fn schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_serialize().into_generator();
    let mut schema = generator.into_root_schema_for::<Api>();
    schema.insert("title".into(), "enforcer daemon API".into());
    schema.insert(
        "description".into(),
        "Requests and answers of the daemon's HTTP API on its unix socket; see `$defs` by type name.".into(),
    );
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    /// The published schema is the one the types give; with
    /// `ENFORCER_WRITE_SCHEMAS=1` the test writes it instead.
    #[test]
    fn the_published_schema_is_current() {
        crate::events::check_published("schemas/api.schema.json", &super::schema());
    }
}
