//! `enforcer oci-hook`: an OCI runtime hook (stage `createRuntime`) that tags a
//! container's cgroup with the policy its annotation names, through the
//! daemon, before the container's program starts.
//!
//! The runtime runs `createRuntime` hooks once the container's cgroup exists
//! and its init process is in it, but before `start` lets that process exec
//! the container's program: tagged then, the program's first instruction is
//! already judged. A hook that exits non-zero makes the runtime refuse the
//! container, so every failure here (no daemon, unknown policy, unreadable
//! cgroup) keeps the container from running unenforced.

use std::{collections::BTreeMap, io::Read as _, path::Path, time::Duration};

use hyper::Method;
use serde::Deserialize;

use crate::{client::Client, daemon::wire::TagRequest};

/// The annotation that names the policy (`enforcer.dev/policy: coding-agent`).
/// A container without it is no agent: the hook lets it start untagged.
pub const POLICY_ANNOTATION: &str = "enforcer.dev/policy";
/// Annotations kept as labels of the tag, as the orchestrators name them
/// (CRI-O, containerd's CRI), under the label's name.
const LABEL_ANNOTATIONS: [(&str, &str); 4] = [
    ("io.kubernetes.pod.name", "pod"),
    ("io.kubernetes.pod.namespace", "namespace"),
    ("io.kubernetes.cri.sandbox-name", "pod"),
    ("io.kubernetes.cri.sandbox-namespace", "namespace"),
];
/// A state larger than this is no runtime's.
const MAX_STATE_BYTES: u64 = 1 << 20;
/// How long the daemon has to answer; the runtime waits on the hook.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "cannot read the container's state on stdin: {0}\n  hint: `enforcer oci-hook` is run by an OCI runtime as a \
         createRuntime hook"
    )]
    State(String),
    #[error("the container's state has no pid: run `enforcer oci-hook` as a createRuntime hook, not {0}")]
    NoPid(String),
    #[error("cannot read the cgroup of container {id} (pid {pid}) from /proc/{pid}/cgroup: {reason}")]
    Cgroup { id: String, pid: i32, reason: String },
    #[error("container {id}: {source}")]
    Daemon { id: String, source: crate::client::ClientError },
    #[error(
        "container {id}: its {POLICY_ANNOTATION} annotation names policy `{named}`, but this hook is registered for \
         `{registered}` (--policy)\n  hint: fix the annotation or the hook's registration"
    )]
    Conflict { id: String, named: String, registered: String },
    #[error("container {id}: the daemon did not answer within {} s", DAEMON_TIMEOUT.as_secs())]
    Timeout { id: String },
    #[error("the daemon refused to tag container {id}'s cgroup {cgroup} with policy `{policy}`: {message}")]
    Refused { id: String, cgroup: String, policy: String, message: String },
}

/// The parts of the OCI state (runtime-spec `state.json`) the hook reads.
#[derive(Debug, Deserialize)]
struct State {
    id: String,
    #[serde(default)]
    status: String,
    pid: Option<i32>,
    #[serde(default)]
    bundle: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The bundle's `config.json`, for runtimes whose state carries no annotations.
#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads the state from stdin and tags the container with the policy its
/// annotation names, else `registered_for`; returns the exit code.
#[must_use]
pub fn main(socket: &Path, registered_for: Option<&str>) -> i32 {
    match tag_from_stdin(socket, registered_for) {
        Ok(()) => 0,
        Err(e) => {
            // On stderr, which the runtime shows with its refusal.
            tracing::error!("{e}");
            1
        }
    }
}

fn tag_from_stdin(socket: &Path, registered_for: Option<&str>) -> Result<(), HookError> {
    let mut text = String::new();
    std::io::stdin().take(MAX_STATE_BYTES).read_to_string(&mut text).map_err(|e| HookError::State(e.to_string()))?;
    let state: State = serde_json::from_str(&text).map_err(|e| HookError::State(e.to_string()))?;
    let annotations = annotations(&state);
    let policy = match (annotations.get(POLICY_ANNOTATION), registered_for) {
        (Some(named), Some(registered)) if named != registered => {
            return Err(HookError::Conflict { id: state.id, named: named.clone(), registered: registered.to_owned() });
        }
        (Some(named), _) => named.clone(),
        (None, Some(registered)) => registered.to_owned(),
        (None, None) => {
            tracing::debug!("container {}: no {POLICY_ANNOTATION} annotation, not an agent", state.id);
            return Ok(());
        }
    };
    let pid = state.pid.filter(|&pid| pid > 0).ok_or_else(|| HookError::NoPid(format!("at `{}`", state.status)))?;
    let cgroup = cgroup_of(pid).map_err(|reason| HookError::Cgroup { id: state.id.clone(), pid, reason })?;
    let mut labels: BTreeMap<String, String> = LABEL_ANNOTATIONS
        .iter()
        .filter_map(|&(annotation, label)| annotations.get(annotation).map(|v| (label.to_owned(), v.clone())))
        .collect();
    labels.insert("container".to_owned(), state.id.clone());
    let request = TagRequest { cgroup, policy, labels, from_exec: true };
    tag(socket, &state.id, &request)
}

/// The state's annotations, or the bundle's when the state has none.
fn annotations(state: &State) -> BTreeMap<String, String> {
    if !state.annotations.is_empty() || state.bundle.is_empty() {
        return state.annotations.clone();
    }
    std::fs::read(Path::new(&state.bundle).join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Config>(&bytes).ok())
        .unwrap_or_default()
        .annotations
}

/// The cgroup2 path of `pid`, from the runtime's cgroup namespace (the host's).
fn cgroup_of(pid: i32) -> Result<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    unified_path(&text)
}

/// The cgroup2 line's path (`0::/path`) of a `/proc/PID/cgroup`.
fn unified_path(text: &str) -> Result<String, String> {
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("it has no cgroup2 line (`0::/...`): the enforcer needs the unified hierarchy")?;
    if path.starts_with('/') && !path.ends_with(" (deleted)") {
        Ok(path.to_owned())
    } else {
        Err(format!("`{path}` is not a live cgroup path"))
    }
}

fn tag(socket: &Path, id: &str, request: &TagRequest) -> Result<(), HookError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HookError::State(format!("cannot start the async runtime: {e}")))?;
    let body = serde_json::to_value(request).unwrap_or_default();
    let client = Client::new(socket);
    let answer = runtime.block_on(async {
        tokio::time::timeout(DAEMON_TIMEOUT, client.request(Method::POST, "/v1/tags", Some(&body))).await
    });
    let (status, answer) = answer
        .map_err(|_| HookError::Timeout { id: id.to_owned() })?
        .map_err(|source| HookError::Daemon { id: id.to_owned(), source })?;
    if status.is_success() {
        tracing::info!("container {id}: tagged {} with policy `{}`", request.cgroup, request.policy);
        return Ok(());
    }
    let message = answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_owned);
    Err(HookError::Refused {
        id: id.to_owned(),
        cgroup: request.cgroup.clone(),
        policy: request.policy.clone(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_names_the_cgroup() {
        let text = "12:cpu:/old\n0::/system.slice/cri-containerd-ab.scope\n";
        assert_eq!(unified_path(text).unwrap(), "/system.slice/cri-containerd-ab.scope");
    }

    #[test]
    fn no_unified_line_or_a_removed_cgroup_is_an_error() {
        assert!(unified_path("12:cpu:/old\n").unwrap_err().contains("cgroup2"));
        assert!(unified_path("0::/a (deleted)\n").is_err());
        assert!(unified_path("0::relative\n").is_err());
    }

    #[test]
    fn the_state_of_runc_is_read() {
        let state: State = serde_json::from_str(
            r#"{"ociVersion":"1.0.2-dev","id":"c1","status":"created","pid":42,"bundle":"/b",
                "annotations":{"enforcer.dev/policy":"coding-agent","io.kubernetes.pod.name":"p"}}"#,
        )
        .unwrap();
        assert_eq!(state.pid, Some(42));
        assert_eq!(annotations(&state)[POLICY_ANNOTATION], "coding-agent");
    }
}
