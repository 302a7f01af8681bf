//! `enforcer run` through the daemon: on a host where the daemon runs, a run
//! asks it for a cgroup tagged with the run's policy instead of loading a
//! second copy of the programs. The daemon loads the policy (a file of the
//! policy directory with the same text is the same version; any other text
//! is a policy of the run's own, `NAME@run-HASH`), creates and tags the
//! cgroup, serves the run's seccomp listener, and removes it all when the
//! run ends, or when its `enforcer run` process is gone.

use serde::{Deserialize, Serialize};

/// A run the daemon serves (`DELETE /v1/runs` answers with it).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunRecord {
    /// The run's cgroup, below the cgroup2 mount.
    pub cgroup: String,
    pub policy: String,
    /// The `enforcer run` process, and its start time (clock ticks after
    /// boot): a pid alone could be reused.
    pub pid: i32,
    pub started: u64,
}

impl RunRecord {
    /// Whether its `enforcer run` process still runs.
    #[must_use]
    pub fn caller_alive(&self) -> bool {
        start_time(self.pid) == Some(self.started)
    }
}

/// The name of a run's own policy: the policy's name and its text's hash.
#[must_use]
pub fn own_policy_name(name: &str, hash: &str) -> String {
    format!("{name}@run-{hash}")
}

/// Where the daemon makes run cgroups, below the cgroup2 mount.
pub const RUNS_CGROUP: &str = "/enforcer/runs";

/// A process's start time (field 22 of `/proc/PID/stat`).
#[must_use]
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let fields = &stat[stat.rfind(')')? + 2..];
    fields.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_has_a_start_time_and_a_record_of_it_is_alive() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let started = start_time(pid).expect("our own start time");
        let record = RunRecord { cgroup: String::new(), policy: String::new(), pid, started };
        assert!(record.caller_alive());
        assert!(!RunRecord { started: started + 1, ..record }.caller_alive(), "another process with the pid");
    }
}
