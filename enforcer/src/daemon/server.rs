//! The daemon as a server: [`Daemon::start`] puts the policies in force
//! (loading the programs or adopting the pinned ones), then
//! [`Daemon::run`] serves the API on a listener and streams events until
//! shutdown. Beside it run the policy watcher and housekeeping.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    DaemonError, DaemonOptions, announce_reload, api,
    api::Shared,
    config::{self, Config},
    core::{Core, Setup},
    fanout::{Fanout, Feed},
    io_err,
    metrics::Metrics,
    not_enforced,
    policies::Loaded,
    release_free_memory,
    replay::Archive,
    seccomp_agent, watch,
};
use crate::{
    bpf::{Enforcer, LoadError, Start},
    cgroups::Hierarchy,
    dns::{DnsEvent, Refusals},
    events::{DaemonEvent, DaemonLine},
    evidence::{
        chain::{Chain, HeadSigner},
        keys,
    },
    stream::{EventStream, Sink},
};

/// A daemon whose policies are in force, not serving yet.
pub struct Daemon {
    pub config: Config,
    shared: Arc<Shared>,
    stream: EventStream,
    notice_rx: mpsc::UnboundedReceiver<DaemonLine>,
    dns_rx: mpsc::Receiver<DnsEvent>,
}

impl Daemon {
    /// Loads the programs (or adopts the pinned ones), restores the saved
    /// state, publishes the policy directory, and opens the event stream.
    pub fn start(opts: &DaemonOptions, config: Config) -> Result<Self, DaemonError> {
        if !config.policies.exists() {
            std::fs::create_dir_all(&config.policies).map_err(io_err(&config.policies))?;
        }
        let (mut enforcer, start) = Enforcer::load_pinned(&config.bpffs)?;
        let not_enforced = not_enforced(&enforcer, &start, opts.degraded)?;
        let ring = enforcer.take_events().ok_or(LoadError::MissingMap("EVENTS"))?;
        let ring_fill = crate::ring_fill::RingFill::new(&ring, u64::from(enforcer_common::events::EVENTS_BYTES))
            .inspect_err(|e| {
                tracing::warn!("cannot map the ring buffer's positions, its fill is not in the metrics: {e}");
            })
            .ok();
        let config_file = opts.config.clone().or_else(|| {
            let default = PathBuf::from(config::DEFAULT_CONFIG);
            default.exists().then_some(default)
        });
        let adopted = start == Start::Adopted;
        let (refusals, dns_rx) = Refusals::channel();
        let setup = Setup {
            config: config.clone(),
            config_file,
            enforcer,
            hierarchy: Hierarchy::find()?,
            adopted,
            not_enforced,
            ring_fill,
            refusals,
            policy_keys: config.policy_keys.iter().map(|k| keys::load_public(k)).collect::<Result<_, _>>()?,
        };
        // Every daemon line goes through this channel to the stream task.
        let (notices, notice_rx) = mpsc::unbounded_channel();
        let (mut core, report) = Core::start(setup, notices.clone())?;
        release_free_memory();
        let attach_errors = core.attach_all_net();
        if let Start::Fresh { other_builds } = &start {
            // Our tables are published: the other builds' programs may go.
            for build in other_builds {
                if let Err(e) = crate::bpf::remove_pins(&config.bpffs.join(build)) {
                    tracing::warn!("cannot remove the pins of build {build}: {e}");
                }
            }
        }
        let metrics = Arc::new(Metrics::default());
        let archive = config.events.file.clone().map(|path| Archive { path, keep: config.events.file_keep });
        let feed = Feed::new(config.events.follower_buffer, archive);
        let fanout = Fanout::new(&config.events, feed.clone(), metrics.clone())
            .map_err(io_err(config.events.file.as_deref().unwrap_or(Path::new("events"))))?;
        // Numbering goes on from the last line written before (history
        // starts with the file's recent lines).
        let first_seq = fanout.resumed_from() + 1;
        let chain = Chain::resume(fanout.resumed_hash(), head_signer(&config.events)?);
        let mut stream =
            EventStream::new(ring, Sink::numbered(Box::new(fanout), first_seq, chain), core.labels.clone())
                .map_err(io_err(Path::new("ring buffer")))?;
        stream.set_lost_reported(core.lost_reported);
        stream.set_grants(core.resolvers.grants());
        let started = DaemonLine::now(DaemonEvent::DaemonStarted {
            pid: std::process::id(),
            build: crate::bpf::build_id(),
            adopted,
            pins: core.enforcer.pin_dir().map(|dir| dir.display().to_string()),
            tagged_cgroups: core.tags().len(),
            policies: core.policies().map(Loaded::version).collect(),
            not_enforced: core.not_enforced.clone(),
            errors: attach_errors,
        });
        tracing::info!(
            "daemon {} ({}): {} policies, {} tagged cgroups, pins in {}",
            if adopted { "adopted the pinned programs" } else { "loaded the programs" },
            crate::bpf::build_id(),
            core.policies().count(),
            core.tags().len(),
            core.enforcer.pin_dir().map_or_else(String::new, |p| p.display().to_string())
        );
        stream.sink().daemon_line(&started);
        announce_reload(&notices, &report);
        let socket_gid = config.socket_gid();
        let shared = Arc::new(Shared { core: tokio::sync::Mutex::new(core), feed, metrics, notices, socket_gid });
        Ok(Self { config, shared, stream, notice_rx, dns_rx })
    }

    /// Serves the API on `listener` (and metrics, if configured), watches
    /// the policy directory, keeps house, and streams events until
    /// `shutdown`. Enforcement stays after it returns (it is pinned).
    pub async fn run(
        mut self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let shared = self.shared;
        shared.core.lock().await.protect_own_files()?;
        tokio::spawn(serve(listener, shared.clone()));
        if let Some(address) = self.config.metrics.address {
            let listener =
                tokio::net::TcpListener::bind(address).await.map_err(io_err(Path::new(&address.to_string())))?;
            let router =
                axum::Router::new().route("/metrics", axum::routing::get(metrics_only)).with_state(shared.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
        tokio::spawn(watch::policies(self.config.policies.clone(), shared.clone()));
        tokio::spawn(housekeeping(shared.clone()));
        let (refusals, mut syscalls) = mpsc::channel(seccomp_agent::QUEUE);
        if let Some(path) = &self.config.seccomp.listener {
            let listener = super::bind_socket(path, None)?;
            seccomp_agent::spawn(listener, shared.clone(), refusals).map_err(io_err(path))?;
        }

        let channels = Channels { notices: &mut self.notice_rx, dns: &mut self.dns_rx, syscalls: &mut syscalls };
        stream_until(&mut self.stream, &shared, channels, shutdown).await?;
        let stream = &mut self.stream;
        stream.drain();
        let mut core = shared.core.lock().await;
        stream.report_lost(core.enforcer.lost.total().unwrap_or(0));
        core.lost_reported = stream.lost_reported();
        stream.sink().daemon_line(&DaemonLine::now(DaemonEvent::DaemonStopped { pid: std::process::id() }));
        stream.sink().sign_head();
        stream.sink().flush();
        core.save();
        let _ = std::fs::remove_file(&self.config.socket);
        tracing::info!("daemon stopped; {} tagged cgroups stay enforced by the pinned programs", core.tags().len());
        Ok(())
    }
}

/// The host key that signs the event chain, as configured (made on first
/// start).
fn head_signer(events: &config::Events) -> Result<Option<HeadSigner>, DaemonError> {
    let Some(path) = &events.signing_key else { return Ok(None) };
    let (key, created) = keys::load_or_create(path)?;
    if created {
        tracing::info!(
            "made the host key {} (its public key, for `enforcer verify --key`: {})",
            path.display(),
            keys::public_path(path).display()
        );
    }
    Ok(Some(HeadSigner { key, every: events.sign_every }))
}

/// What the stream task writes besides the kernel's events.
struct Channels<'a> {
    notices: &'a mut mpsc::UnboundedReceiver<DaemonLine>,
    dns: &'a mut mpsc::Receiver<DnsEvent>,
    /// Containers' syscalls the seccomp agent refused.
    syscalls: &'a mut mpsc::Receiver<seccomp_agent::Refusal>,
}

/// Streams events, the daemon's lines, the resolvers' refusals and lost
/// counts until `shutdown`.
async fn stream_until(
    stream: &mut EventStream,
    shared: &Shared,
    channels: Channels<'_>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            result = stream.next_batch() => result.map_err(io_err(Path::new("ring buffer")))?,
            Some(notice) = channels.notices.recv() => {
                stream.sink().daemon_line(&notice);
                stream.sink().flush();
            }
            Some(refused) = channels.dns.recv() => {
                stream.resolver_event(&refused);
                stream.sink().flush();
            }
            Some((refused, policy)) = channels.syscalls.recv() => {
                stream.syscall_event(&refused, &policy);
                stream.sink().flush();
            }
            _ = tick.tick() => {
                let mut core = shared.core.lock().await;
                stream.report_lost(core.enforcer.lost.total().unwrap_or(0));
                stream.sink().flush();
                if stream.lost_reported() != core.lost_reported {
                    core.lost_reported = stream.lost_reported();
                    core.save();
                }
            }
            () = &mut shutdown => break,
        }
    }
    Ok(())
}

/// Every few seconds: protects the daemon's files anew (a config or events
/// file replaced has a new inode), drops the tags of removed cgroups and
/// gives back the memory of reloads once they stop.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let mut core = shared.core.lock().await;
        if let Err(e) = core.protect_own_files() {
            tracing::warn!("cannot update the protected files: {e}");
        }
        core.resolvers.sweep();
        core.release_memory_when_quiet();
        for tag in core.sweep() {
            let removed =
                DaemonEvent::Untagged { cgroup: tag.cgroup, policy: tag.policy, reason: Some("cgroup removed") };
            let _ = shared.notices.send(DaemonLine::now(removed));
        }
    }
}

async fn metrics_only(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> String {
    let snapshot = api::snapshot(&*shared.core.lock().await);
    shared.metrics.render(&snapshot)
}

/// API connections served at once; more are closed at once (followers count).
const API_CONNECTIONS_MAX: usize = 512;
/// Time a client has to send a request's headers (also between requests):
/// a connection that sends nothing does not hold a slot for ever.
const API_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts API connections; each peer is checked before it is served.
async fn serve(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    let router = api::router(shared.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(API_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("API connection refused: {API_CONNECTIONS_MAX} connections are open");
            continue;
        };
        let cred = stream.peer_cred().ok();
        let service = match api::refuse_peer(&shared, cred).await {
            None => {
                let pid = cred.and_then(|c| c.pid()).unwrap_or(0);
                router.clone().layer(axum::Extension(api::Peer { pid }))
            }
            Some(why) => {
                tracing::warn!("API request refused: {why}");
                api::refusing(why)
            }
        };
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(service);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(API_HEADER_TIMEOUT)
                .serve_connection(io, service)
                .await;
            drop(slot);
        });
    }
}
