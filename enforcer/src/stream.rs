//! Reads the denial ring buffer and writes one JSON object per line.

use std::{collections::HashMap, io::Write, path::Path};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroups::Names,
    events::{self, Clock, Context, Lost},
};

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
        })
    }

    pub fn add_policy(&mut self, id: u32, name: &str) {
        self.policies.insert(id, name.to_owned());
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
        let Self { ring, sink, clock, names, policies, .. } = self;
        let ring = ring.get_mut();
        while let Some(item) = ring.next() {
            match events::decode(&item) {
                Ok(record) => {
                    let policy = policies.get(&record.header.policy_id).map_or("unknown", String::as_str);
                    let cgroup = names.name(record.header.cgroup_id);
                    sink.line(&record.into_event(Context { clock, policy, cgroup }));
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
