//! The orchestrator API: HTTP/JSON on the daemon's unix socket (axum),
//! open to root and the configured group, never to a process in a tagged
//! cgroup.
//!
//! `GET /v1/status`, `GET /v1/policies`, `GET /v1/tags`,
//! `POST /v1/tags {"cgroup","policy","labels"}`, `DELETE /v1/tags?cgroup=`,
//! `POST /v1/reload`, `GET /v1/events?cgroup=&policy=&kind=&since=` (JSON
//! lines, followed), `GET /metrics` (Prometheus text). The requests and
//! answers are the types of `wire.rs`, which the CLI reads too.

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Extension, Json, Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::{
    core::{Core, OpError},
    fanout::{Feed, Line},
    metrics::{Metrics, Snapshot},
    replay::FileBacklog,
    wire::{
        Counters, DaemonInfo, ErrorAnswer, KernelInfo, PoliciesAnswer, PolicyInfo, RunRequest, StatusAnswer,
        TagRequest, TagsAnswer,
    },
};
use crate::events::{DaemonEvent, DaemonLine};

/// What every request handler shares.
pub struct Shared {
    pub core: tokio::sync::Mutex<Core>,
    pub feed: Feed,
    pub metrics: Arc<Metrics>,
    /// The daemon's own events (reloads, tags), written by the stream task.
    pub notices: mpsc::UnboundedSender<DaemonLine>,
    pub socket_gid: Option<u32>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/policies", get(policies))
        .route("/v1/tags", get(tags).post(tag).delete(untag))
        .route("/v1/reload", post(reload))
        .route("/v1/runs", post(start_run).delete(end_run))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(ErrorAnswer { error: message.to_string() })).into_response()
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self)
    }
}

fn policy_list(core: &Core) -> Vec<PolicyInfo> {
    core.policies()
        .map(|p| PolicyInfo {
            name: p.name.clone(),
            version: p.version,
            hash: p.hash.clone(),
            file: p.file.clone(),
            mode: p.policy.mode.as_str().to_owned(),
            loaded_at: p.loaded_at.clone(),
            tagged_cgroups: core.users(&p.name),
            warnings: p.warnings.clone(),
        })
        .collect()
}

#[must_use]
pub fn snapshot(core: &Core) -> Snapshot {
    let (upload_budgets, new_destinations) = core.budget_usage();
    Snapshot {
        tagged_cgroups: core.tags().len(),
        selected_cgroups: core.selected().count(),
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0 to 1000")]
        selected_filter_fill: (core.enforcer.selected.bloom_fill() * 1000.0).round() as u64,
        policies: core.policies().map(|p| (p.name.clone(), p.version, p.hash.clone(), core.users(&p.name))).collect(),
        reloads: core.reloads,
        reload_failures: core.reload_failures,
        lost_events: core.enforcer.lost.total().unwrap_or(0),
        dns_refusals_dropped: core.resolvers.refusals_dropped(),
        ring: core.ring_fill.as_ref().map(crate::ring_fill::RingFill::used),
        lsm_enforced: core.enforcer.lsm_missing().is_none(),
        not_enforced: core.not_enforced.len(),
        egress_locked: core.enforcer.locked.all().len(),
        upload_budgets,
        new_destinations,
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let core = shared.core.lock().await;
    let (upload_budgets, new_destinations) = core.budget_usage();
    Json(StatusAnswer {
        daemon: DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            build: crate::bpf::build_id(),
            started_at: core.started_at.clone(),
            adopted: core.adopted,
            pins: core.enforcer.pin_dir().map(Path::to_path_buf),
            policy_dir: core.config.policies.clone(),
            socket: core.config.socket.clone(),
        },
        kernel: KernelInfo {
            bpf_lsm: core.enforcer.lsm_missing().is_none(),
            bpf_lsm_missing: core.enforcer.lsm_missing().map(ToString::to_string),
            not_enforced: core.not_enforced.iter().map(|part| (*part).to_owned()).collect(),
            missing_hooks: core.enforcer.missing_hooks.iter().map(|hook| (*hook).to_owned()).collect(),
        },
        policies: policy_list(&core),
        rejected: core.rejected.clone(),
        tags: core.tags(),
        selected: core.selected().cloned().collect(),
        egress_locked: core.locked_agents(),
        upload_budgets,
        new_destinations,
        counters: Counters {
            lost_events: core.enforcer.lost.total().unwrap_or(0),
            reloads: core.reloads,
            reload_failures: core.reload_failures,
            followers: shared.metrics.followers.load(Ordering::Relaxed),
            follower_cuts: shared.metrics.follower_cuts.load(Ordering::Relaxed),
        },
    })
    .into_response()
}

async fn policies(State(shared): State<Arc<Shared>>) -> Response {
    let core = shared.core.lock().await;
    Json(PoliciesAnswer { policies: policy_list(&core), rejected: core.rejected.clone() }).into_response()
}

async fn tags(State(shared): State<Arc<Shared>>) -> Response {
    let core = shared.core.lock().await;
    Json(TagsAnswer { tags: core.tags(), selected: core.selected().cloned().collect() }).into_response()
}

async fn tag(State(shared): State<Arc<Shared>>, Json(request): Json<TagRequest>) -> Response {
    let result = shared.core.lock().await.tag(request);
    match result {
        Ok(tag) => {
            let tagged = DaemonEvent::Tagged {
                cgroup: tag.cgroup.clone(),
                policy: tag.policy.clone(),
                labels: tag.labels.clone(),
            };
            let _ = shared.notices.send(DaemonLine::now(tagged));
            Json(tag).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct UntagQuery {
    cgroup: String,
}

/// The process at the other end of an API connection.
#[derive(Clone, Copy)]
pub struct Peer {
    pub pid: i32,
}

async fn start_run(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    Json(request): Json<RunRequest>,
) -> Response {
    let result = shared.core.lock().await.start_run(&request, peer.pid);
    match result {
        Ok(run) => {
            let labels = [("run".to_owned(), peer.pid.to_string())].into();
            let tagged = DaemonEvent::Tagged { cgroup: run.cgroup.clone(), policy: run.policy.clone(), labels };
            let _ = shared.notices.send(DaemonLine::now(tagged));
            Json(run).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn end_run(State(shared): State<Arc<Shared>>, Query(query): Query<UntagQuery>) -> Response {
    let result = shared.core.lock().await.end_run(&query.cgroup);
    match result {
        Ok(run) => {
            let reason = Some("the run ended");
            let untagged = DaemonEvent::Untagged { cgroup: run.cgroup.clone(), policy: run.policy.clone(), reason };
            let _ = shared.notices.send(DaemonLine::now(untagged));
            Json(run).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn untag(State(shared): State<Arc<Shared>>, Query(query): Query<UntagQuery>) -> Response {
    let result = shared.core.lock().await.untag(&query.cgroup);
    match result {
        Ok(tag) => {
            let untagged =
                DaemonEvent::Untagged { cgroup: tag.cgroup.clone(), policy: tag.policy.clone(), reason: None };
            let _ = shared.notices.send(DaemonLine::now(untagged));
            Json(tag).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    let report = shared.core.lock().await.reload();
    super::announce_reload(&shared.notices, &report);
    let status = if report.rejected.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    (status, Json(report)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = snapshot(&*shared.core.lock().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render(&snapshot)).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// This cgroup and those below it.
    cgroup: Option<String>,
    policy: Option<String>,
    kind: Option<String>,
    /// Replay recent lines first: an RFC 3339 time or a duration (`5m`).
    since: Option<String>,
}

impl Follow {
    fn wants(&self, line: &Line) -> bool {
        let cgroup_ok = self.cgroup.as_deref().is_none_or(|want| {
            let want = want.trim_end_matches('/');
            line.cgroup.as_deref().is_some_and(|c| c == want || c.starts_with(&format!("{want}/")))
        });
        cgroup_ok
            && self.policy.as_deref().is_none_or(|p| *line.policy == *p)
            && self.kind.as_deref().is_none_or(|k| *line.kind == *k)
    }
}

/// A follower's progress through history, then the live feed.
struct Follower {
    shared: Arc<Shared>,
    filter: Follow,
    /// Lines older than the history, from the events file (`--since`).
    file: Option<FileBacklog>,
    backlog: std::collections::VecDeque<Arc<Line>>,
    live: broadcast::Receiver<Arc<Line>>,
    last_seq: u64,
    /// Lines lost while batching (see [`Follower::with_ready_lines`]): the
    /// next item is the cut.
    lagged: Option<u64>,
    done: bool,
}

/// How much a follower's write may gather from the lines ready at once.
const FOLLOWER_BATCH_BYTES: usize = 64 << 10;

impl Follower {
    /// `first` and the lines ready right after it (up to
    /// [`FOLLOWER_BATCH_BYTES`]) in one chunk: a storm reaches a follower in
    /// few writes, not one per line, so a reading follower keeps up.
    fn with_ready_lines(&mut self, first: &bytes::Bytes) -> bytes::Bytes {
        let mut batch: Option<bytes::BytesMut> = None;
        while batch.as_ref().map_or(first.len(), bytes::BytesMut::len) < FOLLOWER_BATCH_BYTES {
            match self.live.try_recv() {
                Ok(next) if next.seq > self.last_seq && self.filter.wants(&next) => {
                    self.last_seq = next.seq;
                    batch.get_or_insert_with(|| bytes::BytesMut::from(&first[..])).extend_from_slice(&next.bytes);
                }
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    self.lagged = Some(missed);
                    break;
                }
                Err(_) => break,
            }
        }
        batch.map_or_else(|| first.clone(), bytes::BytesMut::freeze)
    }

    /// The last item of a follower that fell `missed` lines behind.
    fn cut(&mut self, missed: u64) -> bytes::Bytes {
        self.shared.metrics.follower_cuts.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.follower_dropped.fetch_add(missed, Ordering::Relaxed);
        tracing::warn!("a follower fell {missed} lines behind and was cut off");
        let message = DaemonLine::now(DaemonEvent::FollowerCut {
            missed,
            message: format!(
                "this follower fell {missed} lines behind and was cut off; follow again (--since to replay recent \
                 lines)"
            ),
        });
        self.done = true;
        let mut text = serde_json::to_vec(&message).unwrap_or_default();
        text.push(b'\n');
        text.into()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.shared.metrics.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn events(State(shared): State<Arc<Shared>>, Query(filter): Query<Follow>) -> Response {
    let since = match filter.since.as_deref().map(|s| (s, crate::events::parse_since(s))) {
        Some((text, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("since `{text}` is neither a duration (`5m`) nor an RFC 3339 time"),
            );
        }
        Some((_, Some(since))) => Some(since),
        None => None,
    };
    // Subscribe before reading history: nothing falls between the two.
    let live = shared.feed.live.subscribe();
    let (backlog, file) = match since {
        Some(since) => {
            let (backlog, oldest) = shared
                .feed
                .history
                .lock()
                .map(|h| {
                    let backlog = h.iter().filter(|l| l.at >= since && filter.wants(l)).cloned().collect();
                    (backlog, h.front().map(|l| (l.seq, l.at)))
                })
                .unwrap_or_default();
            // Older than the history reaches: from the file, up to the
            // history's first line (or, with none, the live feed's).
            let file = match (oldest, &shared.feed.archive) {
                (Some((_, at)), _) if at <= since => None,
                (oldest, Some(archive)) => Some(FileBacklog::new(archive, since, oldest.map_or(u64::MAX, |o| o.0))),
                (_, None) => None,
            };
            (backlog, file)
        }
        None => (std::collections::VecDeque::new(), None),
    };
    shared.metrics.followers.fetch_add(1, Ordering::Relaxed);
    let follower = Follower { shared, filter, file, backlog, live, last_seq: 0, lagged: None, done: false };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        if f.done {
            return None;
        }
        while let Some(line) = f.file.as_mut().and_then(FileBacklog::next_line) {
            if f.filter.wants(&line) {
                f.last_seq = line.seq;
                return Some((Ok::<_, std::convert::Infallible>(line.bytes.clone()), f));
            }
        }
        f.file = None;
        if let Some(line) = f.backlog.pop_front() {
            f.last_seq = line.seq;
            return Some((Ok::<_, std::convert::Infallible>(line.bytes.clone()), f));
        }
        if let Some(missed) = f.lagged.take() {
            let cut = f.cut(missed);
            return Some((Ok(cut), f));
        }
        loop {
            match f.live.recv().await {
                Ok(next) if next.seq > f.last_seq && f.filter.wants(&next) => {
                    f.last_seq = next.seq;
                    let lines = f.with_ready_lines(&next.bytes);
                    return Some((Ok(lines), f));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let cut = f.cut(missed);
                    return Some((Ok(cut), f));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    ([(header::CONTENT_TYPE, "application/jsonl")], Body::from_stream(stream)).into_response()
}

/// Why a peer may not use the API, if it may not.
pub async fn refuse_peer(shared: &Shared, cred: Option<tokio::net::unix::UCred>) -> Option<String> {
    let Some(cred) = cred else { return Some("the peer's credentials are unknown".to_owned()) };
    let Some(pid) = cred.pid() else { return Some("the peer's pid is unknown".to_owned()) };
    let path = match peer_cgroup(shared.socket_gid, cred.uid(), cred.gid(), pid) {
        Ok(path) => path,
        Err(why) => return Some(why),
    };
    shared.core.lock().await.is_agent(&path).then(|| agent_refused(pid, &path))
}

/// [`refuse_peer`] for a thread outside the async runtime.
pub fn refuse_peer_blocking(shared: &Shared, uid: u32, gid: u32, pid: i32) -> Option<String> {
    let path = match peer_cgroup(shared.socket_gid, uid, gid, pid) {
        Ok(path) => path,
        Err(why) => return Some(why),
    };
    shared.core.blocking_lock().is_agent(&path).then(|| agent_refused(pid, &path))
}

/// The cgroup of a peer that is root or in the socket group, or why it
/// may not use the daemon's sockets.
fn peer_cgroup(socket_gid: Option<u32>, uid: u32, gid: u32, pid: i32) -> Result<String, String> {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let in_group = socket_gid.is_some_and(|socket_gid| {
        gid == socket_gid
            || groups
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .is_some_and(|g| g.split_whitespace().any(|g| g.parse() == Ok(socket_gid)))
    });
    if uid != 0 && !in_group {
        return Err(format!("uid {uid} may not use the enforcer's API (root or the socket group only)"));
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| format!("cannot tell the cgroup of pid {pid}"))
}

fn agent_refused(pid: i32, path: &str) -> String {
    format!("pid {pid} is in a tagged agent cgroup ({path}): agents may not use the enforcer's API")
}

/// The router a refused peer gets: every request answers 403 with why.
pub fn refusing(why: String) -> Router {
    Router::new().fallback(move || {
        let why = why.clone();
        async move { error(StatusCode::FORBIDDEN, why) }
    })
}
