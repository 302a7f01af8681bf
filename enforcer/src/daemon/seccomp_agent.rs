//! The daemon as a seccomp agent for OCI runtimes: a container whose profile
//! `enforcer export seccomp --format oci --listener` wrote has its syscalls
//! outside the allowlist handed to a listener (`SCMP_ACT_NOTIFY`). The
//! runtime connects to `linux.seccomp.listenerPath`, this socket, and sends
//! the container's state as JSON (runtime-spec `ContainerProcessState`) with
//! the listener as `SCM_RIGHTS`. The daemon serves each listener as
//! `enforcer run` serves its command's: it refuses (or kills, or in audit
//! mode lets through) and streams a `syscall` event naming the container's
//! cgroup and the policy version.
//!
//! A listener lives in the daemon's memory only: when the daemon stops, the
//! kernel fails those syscalls with ENOSYS (still refused, no longer
//! reported) until the container is restarted.

use std::{
    collections::BTreeMap,
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::api::Shared;
use crate::{
    oci_hook::POLICY_ANNOTATION,
    policy::Mode,
    stream::PolicyLabel,
    syscalls::notify::{Supervisor, SyscallEvent},
};

/// A state larger than this is no runtime's.
const MAX_STATE_BYTES: usize = 1 << 20;
/// Descriptors one message may carry (runtimes send one).
const MAX_FDS: usize = 8;
/// How long a runtime has to send the state once connected.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Refusals queued for the stream at most; more are counted, not queued.
pub const QUEUE: usize = 4096;

/// A refusal and the policy version that judged it.
pub type Refusal = (SyscallEvent, PolicyLabel);

/// `ContainerProcessState` (runtime-spec `config-linux.md`, seccomp).
#[derive(Debug, Deserialize)]
struct ProcessState {
    #[serde(default)]
    fds: Vec<String>,
    #[serde(default)]
    metadata: String,
    state: ContainerState,
}

#[derive(Debug, Deserialize)]
struct ContainerState {
    id: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Serves `listener` on a thread of its own: one runtime at a time (each
/// sends one message), each listener then on a thread of its own.
pub fn spawn(listener: UnixListener, shared: Arc<Shared>, refusals: mpsc::Sender<Refusal>) -> std::io::Result<()> {
    std::thread::Builder::new().name("enforcer-seccomp-agent".into()).spawn(move || {
        for connection in listener.incoming() {
            let Ok(connection) = connection else { continue };
            match receive(&connection, &shared) {
                Ok((state, fd)) => supervise(state, fd, &shared, &refusals),
                Err(why) => tracing::error!("seccomp agent: {why}"),
            }
        }
    })?;
    Ok(())
}

/// Reads a runtime's message: the state and the listener.
fn receive(connection: &UnixStream, shared: &Shared) -> Result<(ProcessState, OwnedFd), String> {
    let cred = rustix::net::sockopt::socket_peercred(connection).map_err(|e| format!("no peer credentials: {e}"))?;
    if let Some(why) =
        super::api::refuse_peer_blocking(shared, cred.uid.as_raw(), cred.gid.as_raw(), cred.pid.as_raw_nonzero().get())
    {
        return Err(format!("listener refused: {why}"));
    }
    connection.set_read_timeout(Some(SEND_TIMEOUT)).map_err(|e| e.to_string())?;
    // One JSON document; runtimes do not all close the connection after it.
    let mut text = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let state: ProcessState = loop {
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            connection.as_fd(),
            &mut [IoSliceMut::new(&mut chunk)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot read the runtime's message: {e}"))?;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        text.extend_from_slice(&chunk[..received.bytes]);
        match serde_json::from_slice(&text) {
            Ok(state) => break state,
            Err(e) if e.is_eof() && received.bytes > 0 && text.len() <= MAX_STATE_BYTES => {}
            Err(e) => return Err(format!("the runtime's message is not a container's state: {e}")),
        }
    };
    let index = state.fds.iter().position(|name| name == "seccompFd").ok_or_else(|| {
        format!("container {}: the runtime's message names no `seccompFd` (fds: {:?})", state.state.id, state.fds)
    })?;
    if fds.len() <= index {
        return Err(format!(
            "container {}: the runtime sent {} descriptors, no `seccompFd`",
            state.state.id,
            fds.len()
        ));
    }
    let fd = fds.swap_remove(index);
    Ok((state, fd))
}

/// Serves the container's listener under its policy: the profile's
/// `listenerMetadata` (what `export` writes), else its annotation. Without
/// a policy with a `[syscalls]` section the listener is closed, and the
/// kernel fails the syscalls it would have handed over with ENOSYS.
fn supervise(state: ProcessState, fd: OwnedFd, shared: &Arc<Shared>, refusals: &mpsc::Sender<Refusal>) {
    let id = state.state.id;
    let name = Some(state.metadata)
        .filter(|m| !m.is_empty())
        .or_else(|| state.state.annotations.get(POLICY_ANNOTATION).cloned());
    let Some(name) = name else {
        tracing::error!(
            "seccomp agent: container {id} names no policy (listenerMetadata or the {POLICY_ANNOTATION} annotation); \
             its syscalls outside the allowlist fail with ENOSYS, unreported"
        );
        return;
    };
    let core = shared.core.blocking_lock();
    let found = core.policies().find(|p| p.name == name).and_then(|loaded| {
        let label = PolicyLabel {
            name: loaded.name.clone(),
            version: Some((loaded.version, loaded.hash.clone())),
            budgets: Vec::new(),
        };
        loaded.policy.syscalls.clone().map(|syscalls| (syscalls, loaded.policy.mode == Mode::Audit, label))
    });
    let cgroup_root = core.hierarchy.mount_point.clone();
    drop(core);
    let Some((syscalls, audit, label)) = found else {
        tracing::error!(
            "seccomp agent: container {id}: the daemon has no policy `{name}` with a [syscalls] section; its syscalls \
             outside the allowlist fail with ENOSYS, unreported"
        );
        return;
    };
    let supervisor = Supervisor::new(fd, &syscalls, audit, cgroup_root);
    let (refusals, metrics) = (refusals.clone(), shared.metrics.clone());
    let report = move |event: SyscallEvent| {
        if refusals.try_send((event, label.clone())).is_err() {
            metrics.seccomp_dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Until the container's last process is gone.
    match supervisor.spawn(report, Arc::new(AtomicBool::new(false))) {
        Ok(_) => {
            shared.metrics.seccomp_listeners.fetch_add(1, Ordering::Relaxed);
            tracing::info!("seccomp agent: container {id}: syscalls judged by policy `{name}`");
        }
        Err(e) => tracing::error!("seccomp agent: container {id}: cannot start serving its listener: {e}"),
    }
}

/// Hands a listener to the agent on `socket` as a runtime does
/// (`enforcer run` through the daemon): `id` names the run, `pid` its
/// command, `policy` the policy (as the daemon names it) to judge by.
pub fn hand_over(socket: &Path, listener: &OwnedFd, id: &str, pid: u32, policy: &str) -> std::io::Result<()> {
    let state = serde_json::json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": policy,
        "state": {"ociVersion": "1.0.2", "id": id, "status": "running", "pid": pid, "bundle": ""},
    });
    let bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    let connection = UnixStream::connect(socket)?;
    let fds = [listener.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the listener in the message"));
    }
    let sent = rustix::net::sendmsg(&connection, &[IoSlice::new(&bytes)], &mut ancillary, SendFlags::empty())?;
    if sent < bytes.len() {
        // The descriptor went with the first bytes: the rest follows plainly.
        std::io::Write::write_all(&mut &connection, &bytes[sent..])?;
    }
    Ok(())
}
