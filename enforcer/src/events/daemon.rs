//! The daemon's own lines: its start and stop, tags, selections, reloads,
//! and a follower cut off for falling behind.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::daemon::policies::Rejected;

/// One line the daemon writes about itself; `kind` names it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DaemonLine {
    pub ts: String,
    #[serde(flatten)]
    pub what: DaemonEvent,
}

/// What a daemon line reports.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DaemonEvent {
    /// The daemon started: with the programs it loaded or adopted.
    DaemonStarted {
        pid: u32,
        /// The programs' build (a hash of the object).
        build: String,
        /// Whether it adopted the programs an earlier daemon pinned.
        adopted: bool,
        /// Where the programs are pinned.
        pins: Option<String>,
        tagged_cgroups: usize,
        policies: Vec<PolicyVersion>,
        /// What this kernel cannot enforce (`--degraded`).
        not_enforced: Vec<&'static str>,
        /// Cgroups the network programs could not be attached to.
        errors: Vec<String>,
    },
    DaemonStopped {
        pid: u32,
    },
    /// A cgroup was tagged through the API.
    Tagged {
        cgroup: String,
        policy: String,
        labels: BTreeMap<String, String>,
    },
    /// A cgroup's tag was removed: through the API, or because the cgroup
    /// was removed (`reason`).
    Untagged {
        cgroup: String,
        policy: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// A policy's `cgroups` selector matched a cgroup.
    Selected {
        cgroup: String,
        cgroup_id: u64,
        policy: String,
    },
    /// A selected cgroup is gone or no longer matches.
    Unselected {
        cgroup: String,
        cgroup_id: u64,
        policy: String,
    },
    /// The policy directory was loaded again and something changed.
    PolicyReload {
        applied: Vec<PolicyVersion>,
        unloaded: Vec<String>,
        /// Files not applied; what was in force stays.
        rejected: Vec<Rejected>,
    },
    /// The host key's signature of the event chain's head: the line before
    /// this one (see `enforcer verify`).
    ChainHead {
        /// The signed line's `seq`.
        head_seq: u64,
        /// Its hash (this line's `prev_hash`).
        head_hash: String,
        /// The host's public key (Ed25519, base64).
        key: String,
        /// The signature (Ed25519, base64) of the head.
        sig: String,
    },
    /// Sent to one follower only, as its last line.
    FollowerCut {
        /// Lines it did not get.
        missed: u64,
        message: String,
    },
}

/// A policy version in force.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PolicyVersion {
    pub name: String,
    /// 1 for the first version the daemon loaded, +1 for each change.
    pub version: u32,
    /// The first 16 hex digits of the SHA-256 of the policy file.
    pub hash: String,
}

impl DaemonLine {
    /// A line stamped now.
    #[must_use]
    pub fn now(what: DaemonEvent) -> Self {
        Self { ts: super::Clock::now(), what }
    }

    /// The cgroup a line about a tag or a selection is about (followers'
    /// `cgroup` filter takes it).
    #[must_use]
    pub fn cgroup(&self) -> Option<&str> {
        match &self.what {
            DaemonEvent::Tagged { cgroup, .. }
            | DaemonEvent::Untagged { cgroup, .. }
            | DaemonEvent::Selected { cgroup, .. }
            | DaemonEvent::Unselected { cgroup, .. } => Some(cgroup),
            _ => None,
        }
    }

    /// The line's `kind`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self.what {
            DaemonEvent::DaemonStarted { .. } => "daemon_started",
            DaemonEvent::DaemonStopped { .. } => "daemon_stopped",
            DaemonEvent::Tagged { .. } => "tagged",
            DaemonEvent::Untagged { .. } => "untagged",
            DaemonEvent::Selected { .. } => "selected",
            DaemonEvent::Unselected { .. } => "unselected",
            DaemonEvent::PolicyReload { .. } => "policy_reload",
            DaemonEvent::ChainHead { .. } => crate::evidence::chain::HEAD_KIND,
            DaemonEvent::FollowerCut { .. } => "follower_cut",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_kind_as_serde_writes_it() {
        let lines = [
            DaemonEvent::DaemonStopped { pid: 1 },
            DaemonEvent::Untagged { cgroup: "/a".into(), policy: "p".into(), reason: None },
            DaemonEvent::FollowerCut { missed: 3, message: String::new() },
            DaemonEvent::PolicyReload { applied: Vec::new(), unloaded: Vec::new(), rejected: Vec::new() },
        ];
        for what in lines {
            let line = DaemonLine::now(what);
            let json = serde_json::to_value(&line).unwrap();
            assert_eq!(json["kind"], line.kind());
            assert!(json["ts"].is_string());
        }
    }
}
