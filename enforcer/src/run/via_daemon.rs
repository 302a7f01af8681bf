//! `enforcer run` on a host where the daemon runs: the daemon loads the
//! run's policy into the programs it already has (no second copy, no
//! verifier run per command), creates and tags the run's cgroup, and takes
//! the command's seccomp listener, so its syscall refusals are answered and
//! streamed by the daemon and outlive this process. The run's lines of the
//! daemon's stream are copied to the run's events file; the daemon's stream
//! (its file, `enforcer tail --cgroup`) is the record.

use std::{io::Write as _, path::Path, time::Duration};

use hyper::Method;
use tokio::signal::unix::{SignalKind, signal};

use super::{Child, RunError, RunOptions, Seccomp, events_path, exit_code, forward, start, terminal::Terminal};
use crate::{
    cgroups::{Cgroup, Hierarchy},
    client::{Client, ClientError, read},
    daemon::{
        seccomp_agent,
        wire::{RunAnswer, RunRequest},
    },
    policy::{self, compile::needs_lsm},
    syscalls::{Arch, filter::Program},
};

const RUNS: &str = "/v1/runs";
/// Once the daemon ended the run, how long the run waits for the daemon's
/// `untagged` line of it, after the lines of the command (at most).
const LAST_LINES: Duration = Duration::from_secs(2);
/// After that line, for kernel events the daemon was still decoding.
const GRACE: Duration = Duration::from_millis(50);

/// Runs the command through the daemon on `socket`, under `policy` (read
/// from `opts.policy`). `Ok(None)`: no daemon answers there (the caller
/// loads the programs itself).
pub async fn run(opts: &RunOptions, policy: &policy::Policy, socket: &Path) -> Result<Option<i32>, RunError> {
    let text = std::fs::read_to_string(&opts.policy)
        .map_err(|source| RunError::Events { path: opts.policy.clone(), source })?;
    let filter = policy.syscalls.as_ref().map(|s| Program::build(s, Arch::native())).transpose()?;
    let client = Client::new(socket);
    // Sent as it is: the daemon judges it (if it trusts signers at all).
    let policy_signature = crate::evidence::policy_sig::read_sig(&opts.policy).ok().flatten();
    let request = RunRequest { policy_file: opts.policy.clone(), policy_text: text, policy_signature };
    let body = serde_json::to_value(&request).unwrap_or_default();
    let answer = match client.request(Method::POST, RUNS, Some(&body)).await {
        Err(ClientError::Connect { .. }) => return Ok(None),
        Err(e) => return Err(RunError::Daemon(e.to_string())),
        Ok((status, answer)) if !status.is_success() => {
            let message = answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_owned);
            return Err(RunError::Daemon(message));
        }
        Ok((_, answer)) => answer,
    };
    let run: RunAnswer = read(RUNS, answer).map_err(|e| RunError::Daemon(e.to_string()))?;
    tracing::info!("the daemon at {} runs this under policy `{}` in {}", socket.display(), run.policy, run.cgroup);
    if opts.dns_upstream.is_some() {
        tracing::warn!("--dns-upstream is the daemon's to choose ([dns] upstream in its configuration)");
    }
    let result = run_in(opts, policy, filter, &client, &run).await;
    if result.is_err() {
        end(&client, &run).await;
    }
    result.map(Some)
}

/// Asks the daemon to end the run: it kills what is left, untags and
/// removes the cgroup.
async fn end(client: &Client, run: &RunAnswer) {
    let path = format!("{RUNS}?cgroup={}", crate::ctl::encode(&run.cgroup));
    match client.request(Method::DELETE, &path, None).await {
        Ok((status, _)) if status.is_success() => {}
        Ok((status, answer)) => tracing::warn!("the daemon could not end the run ({status}): {answer}"),
        Err(e) => tracing::warn!("the daemon could not end the run: {e}"),
    }
}

/// The run in the daemon's cgroup: the command, its listener handed to the
/// daemon, the run's lines copied to its events file.
async fn run_in(
    opts: &RunOptions,
    policy: &policy::Policy,
    filter: Option<Program>,
    client: &Client,
    run: &RunAnswer,
) -> Result<i32, RunError> {
    let parts = needs_lsm(policy);
    if !run.lsm_enforced && !parts.is_empty() {
        if !opts.degraded {
            let why = "the daemon runs without BPF LSM (--degraded)".to_owned();
            return Err(RunError::Unenforceable { why, parts });
        }
        for part in parts {
            tracing::warn!("--degraded: NOT enforced: {part}");
        }
    } else {
        for part in &run.not_enforced {
            tracing::warn!("the daemon's kernel lacks a hook: NOT enforced: {part}");
        }
    }
    let hierarchy = Hierarchy::find()?;
    let dir = hierarchy.mount_point.join(run.cgroup.trim_start_matches('/'));
    let cgroup = Cgroup::open(&hierarchy, &dir)?;
    let events = events_file(opts.events.as_deref())?;
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(1)).to_string();
    let follow = format!("/v1/events?cgroup={}&since={since}", crate::ctl::encode(&run.cgroup));
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
    let follower = {
        let client = Client::new(client.socket());
        let mut copy = Copy { events, partial: Vec::new(), cgroup: run.cgroup.clone(), ended: Some(ended_tx) };
        tokio::spawn(async move { client.follow(&follow, move |chunk| copy.take(chunk)).await })
    };
    let oom_score_adj = super::watchdog::set_oom_score_adj(-1000).unwrap_or(0);
    let watchdog = super::watchdog::Watchdog::start(&cgroup.path).map_err(RunError::Watchdog)?;
    let mut terminal = Terminal::for_caller().map_err(RunError::Terminal)?;
    let seccomp = filter
        .map(|program| Seccomp::new(program, policy, hierarchy.mount_point.clone()))
        .transpose()
        .map_err(|source| RunError::Seccomp { command: opts.command[0].clone(), source })?;
    let child = Child { command: &opts.command, seccomp, oom_score_adj, terminal: terminal.as_mut() };
    let (mut child, listener) = start(child, &cgroup)?;
    if let Some((listener, _)) = listener {
        let handed = run.seccomp_listener.as_deref().map_or_else(
            || Err(std::io::Error::other("the daemon serves no seccomp listener ([seccomp] listener = \"\")")),
            |agent| {
                let pid = child.id().unwrap_or(0);
                seccomp_agent::hand_over(agent, &listener, &format!("run-{}", std::process::id()), pid, &run.policy)
            },
        );
        if let Err(source) = handed {
            // Its refused syscalls would wait for an answer that never comes.
            let _ = child.start_kill();
            return Err(RunError::Seccomp { command: opts.command[0].clone(), source });
        }
    }
    let status = wait(&mut child, terminal.as_ref()).await;
    // Nothing of the agent may outlive the run: the daemon also kills what
    // is left when the run ends, while it is still tagged.
    let cleanup = cgroup.kill_all();
    if cleanup.is_ok() {
        drop(watchdog);
    } else {
        std::mem::forget(watchdog);
    }
    end(client, run).await;
    if tokio::time::timeout(LAST_LINES, ended).await.is_ok() {
        tokio::time::sleep(GRACE).await;
    }
    follower.abort();
    cleanup?;
    Ok(exit_code(status?))
}

/// Copies the run's lines of the daemon's stream to its events file, and
/// says when the daemon's `untagged` line of the run came.
struct Copy {
    events: std::fs::File,
    /// A line the last chunk ended in the middle of.
    partial: Vec<u8>,
    cgroup: String,
    ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Copy {
    fn take(&mut self, chunk: &[u8]) {
        let _ = self.events.write_all(chunk);
        self.partial.extend_from_slice(chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return };
        let lines: Vec<u8> = self.partial.drain(..=end).collect();
        for line in lines.split(|&b| b == b'\n') {
            let Ok(line) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            if line["kind"] == "untagged" && line["cgroup"] == self.cgroup.as_str() {
                self.ended.take().map(|ended| ended.send(()));
            }
        }
    }
}

/// Waits for the command, forwarding SIGTERM and window sizes.
async fn wait(
    child: &mut tokio::process::Child,
    terminal: Option<&Terminal>,
) -> Result<std::process::ExitStatus, RunError> {
    let mut resize = terminal.map(|_| signal(SignalKind::window_change())).transpose().map_err(RunError::Wait)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Wait)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Wait)?;
    loop {
        let resized = async {
            match resize.as_mut() {
                Some(resize) => resize.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return status.map_err(RunError::Wait),
            _ = terminate.recv() => forward(child, libc::SIGTERM),
            _ = resized => terminal.iter().for_each(|t| t.resized()),
            // The terminal already sent SIGINT to the command; do not die first.
            _ = interrupt.recv() => {}
        }
    }
}

/// The run's events file (`--events`, else the default), for the lines
/// copied from the daemon's stream.
fn events_file(chosen: Option<&Path>) -> Result<std::fs::File, RunError> {
    let path = events_path(chosen, " (and the daemon's stream)")?;
    crate::stream::open_events_file(&path).map_err(|source| RunError::Events { path, source })
}
