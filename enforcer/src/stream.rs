//! Reads the denial ring buffer and writes one JSON object per line.

use std::{
    collections::HashMap,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroups::Names,
    dns::{DnsEvent, grants::Grants},
    events::{self, Clock, Context, Lost},
    syscalls::notify::SyscallEvent,
};

/// A `dns` event as written out: the resolver's, plus the common fields.
#[derive(serde::Serialize)]
struct DnsLine<'a> {
    ts: String,
    policy: &'a str,
    cgroup: &'a str,
    cgroup_id: u64,
    #[serde(flatten)]
    event: &'a DnsEvent,
}

/// A `syscall` event as written out: the supervisor's, plus the common fields.
#[derive(serde::Serialize)]
struct SyscallLine<'a> {
    ts: String,
    policy: &'a str,
    #[serde(flatten)]
    event: &'a SyscallEvent,
}

/// Where JSON lines go: a file (appended) or stderr.
pub struct Sink(Box<dyn Write + Send>);

impl Sink {
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        Ok(Self(match path {
            None => Box::new(std::io::stderr()),
            Some(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        }))
    }

    fn line(&mut self, value: &impl serde::Serialize) {
        let mut line = serde_json::to_vec(value).unwrap_or_default();
        line.push(b'\n');
        // An auditor's pipe closing must not stop enforcement; report once.
        if let Err(e) = self.0.write_all(&line).and_then(|()| self.0.flush()) {
            eprintln!("enforcer: warning: cannot write event: {e}");
        }
    }
}

/// The ring buffer plus what is needed to name things in events.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    sink: Sink,
    clock: Clock,
    names: Names,
    policies: HashMap<u32, String>,
    lost_reported: u64,
    /// The resolver's grants: which name a denied address was resolved from.
    grants: Option<Arc<Mutex<Grants>>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>, sink: Sink, names: Names) -> std::io::Result<Self> {
        Ok(Self {
            // SAFETY: the ring buffer owns its fd and keeps it open while
            // the AsyncFd holds it.
            ring: unsafe { AsyncFd::register(ring)? },
            sink,
            clock: Clock::new(),
            names,
            policies: HashMap::new(),
            lost_reported: 0,
            grants: None,
        })
    }

    pub fn add_policy(&mut self, id: u32, name: &str) {
        self.policies.insert(id, name.to_owned());
    }

    pub fn set_grants(&mut self, grants: Arc<Mutex<Grants>>) {
        self.grants = Some(grants);
    }

    /// Writes a `dns` event of the resolver.
    pub fn dns_event(&mut self, event: &DnsEvent, policy: &str, cgroup: &str, cgroup_id: u64) {
        self.sink.line(&DnsLine { ts: self.clock.now(), policy, cgroup, cgroup_id, event });
    }

    /// Writes a `syscall` event of the seccomp supervisor.
    pub fn syscall_event(&mut self, event: &SyscallEvent, policy: &str) {
        self.sink.line(&SyscallLine { ts: self.clock.now(), policy, event });
    }

    pub fn names(&mut self) -> &mut Names {
        &mut self.names
    }

    /// Waits until records are available, then writes them all.
    pub async fn next_batch(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        self.drain();
        Ok(())
    }

    /// Writes every record available now.
    pub fn drain(&mut self) {
        let Self { ring, sink, clock, names, policies, grants, .. } = self;
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Ok(record) => {
                    let policy = policies.get(&record.header.policy_id).map_or("unknown", String::as_str);
                    let cgroup = names.name(record.header.cgroup_id);
                    let mut event = record.into_event(Context { clock, policy, cgroup });
                    if let (Some(net), Some(grants)) = (event.net.as_mut(), grants.as_ref())
                        && let Some(daddr) = net.daddr.as_deref().and_then(|d| d.parse().ok())
                        && let Ok(grants) = grants.lock()
                    {
                        net.resolved_from = Some(grants.resolved_from(daddr).map(str::to_owned));
                    }
                    sink.line(&event);
                }
                Err(e) => eprintln!("enforcer: warning: {e}"),
            }
        }
    }

    /// Reports events lost since the last report (`total` counts since load).
    pub fn report_lost(&mut self, total: u64) {
        if total > self.lost_reported {
            let lost = Lost { ts: self.clock.now(), kind: "lost", count: total - self.lost_reported };
            self.sink.line(&lost);
            self.lost_reported = total;
        }
    }
}
