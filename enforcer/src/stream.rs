//! Reads the denial ring buffer and writes one JSON object per line.

use std::{
    collections::HashMap,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{events::Kind, policy::PolicyId};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroups::Names,
    dns::{DnsEvent, grants::Grants},
    events::{self, Clock, Context, DaemonEvent, DaemonLine, DnsLine, Lost, SyscallLine},
    evidence::chain::{self, Chain, Hash},
    syscalls::notify::SyscallEvent,
};

/// What a line is about, for those who route or count lines (the daemon).
#[derive(Clone, Copy)]
pub struct LineMeta<'a> {
    /// The daemon's sequence number, continued across restarts from its
    /// events file (`enforcer run`: none).
    pub seq: u64,
    pub kind: &'a str,
    pub action: &'a str,
    pub policy: &'a str,
    pub cgroup: Option<&'a str>,
}

/// Where the daemon's lines go (its file, stdout and followers).
pub trait LineOut: Send {
    fn line(&mut self, meta: &LineMeta<'_>, line: bytes::Bytes);
    /// After a batch: push buffered lines out.
    fn flush(&mut self) {}
    /// Whether the chain's head should be signed before the next flush
    /// (the events file is about to rotate).
    fn wants_head(&self) -> bool {
        false
    }
}

/// Where JSON lines go: a file (appended) or stderr (`enforcer run`), or
/// the daemon's outputs, numbered.
pub struct Sink {
    out: Out,
    /// The next sequence number, for numbered lines.
    next_seq: Option<u64>,
}

#[expect(clippy::large_enum_variant, reason = "one sink per stream: its size does not matter")]
enum Out {
    Writer(Box<dyn Write + Send>),
    /// Numbered lines, and the hash chain through them.
    Lines(Box<dyn LineOut>, LineBuffers, Chain),
}

/// Where numbered lines are built, and the memory they are handed out in:
/// lines share chunks, so a storm's lines cost no allocation each (a chunk
/// is freed when the last line in it is).
#[derive(Default)]
struct LineBuffers {
    building: Vec<u8>,
    chunk: bytes::BytesMut,
}

impl LineBuffers {
    /// The line built, in the current chunk (a new one if it does not fit).
    fn share(&mut self) -> bytes::Bytes {
        let Self { building, chunk } = self;
        if chunk.capacity() < building.len() {
            *chunk = bytes::BytesMut::with_capacity(LINE_CHUNK.max(building.len()));
        }
        chunk.extend_from_slice(building);
        chunk.split().freeze()
    }
}

/// The memory numbered lines are handed out in, at a time.
const LINE_CHUNK: usize = 64 << 10;

/// A JSON object (written by `object`) as a line with `"seq":N` and
/// `"prev_hash":"…"` (the chain's, see [`crate::evidence::chain`]) first,
/// in `line` (spliced in: serde's `flatten` goes through a map and costs a
/// third of the line's time).
fn numbered_line(line: &mut Vec<u8>, seq: u64, prev: &Hash, object: impl FnOnce(&mut Vec<u8>)) {
    // `{"seq":N,"prev_hash":"…"` and then the object's members, its opening
    // brace turned into a comma (or dropped, for an empty object).
    line.clear();
    line.extend_from_slice(b"{\"seq\":");
    line.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    line.push(b',');
    line.extend_from_slice(chain::PREV_FIELD);
    line.extend_from_slice(&chain::to_hex(prev));
    line.push(b'"');
    let body = line.len();
    object(line);
    if line.get(body) != Some(&b'{') {
        line.truncate(body);
        line.push(b'}');
    } else if line.len() == body + 2 {
        line.truncate(body + 1);
        line[body] = b'}';
    } else {
        line[body] = b',';
    }
    line.push(b'\n');
}

/// `value`'s JSON object; left empty if it cannot be serialized.
fn serialized(value: &impl serde::Serialize) -> impl FnOnce(&mut Vec<u8>) {
    move |out: &mut Vec<u8>| {
        let start = out.len();
        if serde_json::to_writer(&mut *out, value).is_err() {
            out.truncate(start);
        }
    }
}

/// Room for a typical event line, so building one seldom reallocates.
const LINE_CAPACITY: usize = 640;

impl Sink {
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let writer: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stderr()),
            Some(path) => Box::new(open_events_file(path)?),
        };
        Ok(Self { out: Out::Writer(writer), next_seq: None })
    }

    /// Lines numbered from `first` to `out`, chained on from `chain`.
    #[must_use]
    pub fn numbered(out: Box<dyn LineOut>, first: u64, chain: Chain) -> Self {
        Self { out: Out::Lines(out, LineBuffers::default(), chain), next_seq: Some(first) }
    }

    fn line(&mut self, meta: &LineMeta<'_>, value: &impl serde::Serialize) {
        self.object(meta, serialized(value));
    }

    /// A kernel event's line (see [`events::write_event`]).
    fn event(&mut self, meta: &LineMeta<'_>, event: &events::Event<'_>) {
        self.object(meta, |out| events::write_event(out, event));
    }

    /// The line of the JSON object `object` writes.
    fn object(&mut self, meta: &LineMeta<'_>, object: impl FnOnce(&mut Vec<u8>)) {
        match &mut self.out {
            Out::Writer(writer) => {
                let mut line = Vec::with_capacity(LINE_CAPACITY);
                object(&mut line);
                line.push(b'\n');
                // An auditor's pipe closing must not stop enforcement; report once.
                if let Err(e) = writer.write_all(&line).and_then(|()| writer.flush()) {
                    tracing::warn!("cannot write event: {e}");
                }
            }
            Out::Lines(out, buffers, chain) => {
                let seq = self.next_seq.unwrap_or(1);
                self.next_seq = Some(seq + 1);
                numbered_line(&mut buffers.building, seq, &chain.prev, object);
                chain.advance(buffers.building.strip_suffix(b"\n").unwrap_or(&buffers.building));
                out.line(&LineMeta { seq, ..*meta }, buffers.share());
            }
        }
    }

    /// Pushes the lines out, signing the chain's head first when it is
    /// time or the events file is about to rotate.
    pub fn flush(&mut self) {
        let Out::Lines(out, _, chain) = &self.out else { return };
        if chain.head_due(out.wants_head()) {
            self.write_head();
        }
        if let Out::Lines(out, ..) = &mut self.out {
            out.flush();
        }
    }

    /// Writes a `chain_head` line signing the last line, if any line is
    /// unsigned and a key signs (the daemon does at stop).
    pub fn sign_head(&mut self) {
        if matches!(&self.out, Out::Lines(.., chain) if chain.head_due(true)) {
            self.write_head();
        }
    }

    fn write_head(&mut self) {
        let (Out::Lines(.., chain), Some(next)) = (&mut self.out, self.next_seq) else { return };
        let Some(head) = chain.sign(next - 1) else { return };
        let head = DaemonEvent::ChainHead { head_seq: head.seq, head_hash: head.hash, key: head.key, sig: head.sig };
        self.daemon_line(&DaemonLine::now(head));
    }

    /// A line the daemon writes itself (`daemon` events: reloads, starts).
    pub fn daemon_line(&mut self, line: &DaemonLine) {
        self.line(&LineMeta { seq: 0, kind: line.kind(), action: "", policy: "", cgroup: line.cgroup() }, line);
    }
}

/// A run's events file, appended to; created readable by its owner only
/// (denials name the paths and addresses an agent tried).
pub fn open_events_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// What names a policy in events.
#[derive(Clone, Debug, Default)]
pub struct PolicyLabel {
    pub name: String,
    /// Daemon: the version and hash.
    pub version: Option<(u32, String)>,
    /// Its upload budgets by index, as `network.upload` names them.
    pub budgets: Vec<(u16, String)>,
}

/// Names for the ids in kernel records, shared with whoever tags and loads
/// policies (the daemon changes them while the stream runs).
pub struct Labels {
    pub policies: HashMap<PolicyId, PolicyLabel>,
    pub names: Names,
}

/// The ring buffer plus what is needed to name things in events.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    sink: Sink,
    clock: Clock,
    labels: Arc<Mutex<Labels>>,
    lost_reported: u64,
    /// The resolver's grants: which name a denied address was resolved from.
    grants: Option<Arc<Mutex<Grants>>>,
    /// The last drain was a storm's (see [`STORM_BATCH`]).
    pause: bool,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>, sink: Sink, labels: Arc<Mutex<Labels>>) -> std::io::Result<Self> {
        Ok(Self {
            // SAFETY: the ring buffer owns its fd and keeps it open while
            // the AsyncFd holds it.
            ring: unsafe { AsyncFd::register(ring)? },
            sink,
            clock: Clock::new(),
            labels,
            lost_reported: 0,
            grants: None,
            pause: false,
        })
    }

    /// Counts lost events from `reported` on (an adopted ring buffer's
    /// counter did not start at zero).
    pub fn set_lost_reported(&mut self, reported: u64) {
        self.lost_reported = reported;
    }

    #[must_use]
    pub fn lost_reported(&self) -> u64 {
        self.lost_reported
    }

    /// The sink, for lines of the stream's owner.
    pub fn sink(&mut self) -> &mut Sink {
        &mut self.sink
    }

    pub fn set_grants(&mut self, grants: Arc<Mutex<Grants>>) {
        self.grants = Some(grants);
    }

    /// Writes a `dns` event of the resolver.
    pub fn dns_event(&mut self, event: &DnsEvent, policy: &str, cgroup: &str, cgroup_id: u64) {
        let meta = LineMeta { seq: 0, kind: event.kind, action: event.action, policy, cgroup: Some(cgroup) };
        self.sink.line(&meta, &DnsLine { ts: Clock::now(), policy, cgroup, cgroup_id, event });
    }

    /// Writes a `dns` event of one of the daemon's resolvers, naming its
    /// policy and the asking cgroup (`(unknown)`, id 0, if the kernel
    /// could not say which).
    pub fn resolver_event(&mut self, event: &DnsEvent) {
        let Ok(mut labels) = self.labels.lock() else { return };
        let policy =
            labels.policies.get(&event.policy_id).map_or_else(|| event.policy_id.to_string(), |l| l.name.clone());
        let cgroup = event.asker.and_then(|id| labels.names.name(id)).map(str::to_owned);
        drop(labels);
        let cgroup_id = if cgroup.is_some() { event.asker.unwrap_or(0) } else { 0 };
        self.dns_event(event, &policy, cgroup.as_deref().unwrap_or("(unknown)"), cgroup_id);
    }

    /// Writes a `syscall` event of a seccomp supervisor, judged by `policy`.
    pub fn syscall_event(&mut self, event: &SyscallEvent, policy: &PolicyLabel) {
        let name = policy.name.as_str();
        let meta =
            LineMeta { seq: 0, kind: "syscall", action: event.action, policy: name, cgroup: event.cgroup.as_deref() };
        let (policy_version, policy_hash) = policy.version.as_ref().map(|(v, h)| (v, h.as_str())).unzip();
        let line =
            SyscallLine { ts: Clock::now(), policy: name, policy_version: policy_version.copied(), policy_hash, event };
        self.sink.line(&meta, &line);
    }

    /// Waits until records are available, then writes at most
    /// [`DRAIN_BATCH`] of them: a denial storm must not keep the caller's
    /// loop (and the labels lock, which tagging needs) for itself. Records
    /// left over keep the ring buffer ready for the next call.
    pub async fn next_batch(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.pause) {
            tokio::time::sleep(STORM_PAUSE).await;
        }
        let Self { ring, sink, clock, labels, grants, .. } = self;
        let mut guard = ring.readable_mut().await?;
        let (written, empty) = write_records(guard.get_inner_mut(), sink, clock, labels, grants.as_ref());
        if empty {
            guard.clear_ready();
            self.pause = written >= STORM_BATCH;
        }
        Ok(())
    }

    /// Writes every record available now (at the end of a run, at shutdown).
    pub fn drain(&mut self) {
        let Self { ring, sink, clock, labels, grants, .. } = self;
        while !write_records(ring.get_mut(), sink, clock, labels, grants.as_ref()).1 {}
    }

    /// Reports events lost since the last report (`total` counts since load).
    pub fn report_lost(&mut self, total: u64) {
        if total > self.lost_reported {
            let lost = Lost { ts: Clock::now(), kind: "lost", count: total - self.lost_reported };
            self.sink.line(&LineMeta { seq: 0, kind: "lost", action: "", policy: "", cgroup: None }, &lost);
            self.lost_reported = total;
        }
    }
}

/// Records written per batch (one hold of the labels lock).
pub const DRAIN_BATCH: usize = 1024;

/// A drain this long means a storm: the next waits [`STORM_PAUSE`] for
/// records to gather rather than waking for each (a wakeup costs about as
/// much as writing a line).
const STORM_BATCH: usize = 64;
const STORM_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Writes up to [`DRAIN_BATCH`] records: how many, and whether the ring
/// buffer is empty.
fn write_records(
    ring: &mut RingBuf<MapData>,
    sink: &mut Sink,
    clock: &Clock,
    labels: &Mutex<Labels>,
    grants: Option<&Arc<Mutex<Grants>>>,
) -> (usize, bool) {
    let Ok(mut labels) = labels.lock() else { return (0, true) };
    let Labels { policies, names } = &mut *labels;
    for written in 0..DRAIN_BATCH {
        let Some(item) = ring.next() else {
            sink.flush();
            return (written, true);
        };
        let record = match events::decode(&item) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        let label = policies.get(&record.header.policy_id);
        let policy = label.map_or("unknown", |l| l.name.as_str());
        let version = label.and_then(|l| l.version.as_ref()).map(|(v, h)| (*v, h.as_str()));
        let cgroup = names.name(record.header.cgroup_id);
        let budgets = label.map(|l| l.budgets.as_slice()).unwrap_or_default();
        let mut event = record.event(Context { clock, policy, version, cgroup, budgets });
        if let (Some(net), Some(grants)) = (event.net.as_mut(), grants)
            && let Some(daddr) = net.daddr
            && let Ok(grants) = grants.lock()
        {
            net.resolved_from = Some(grants.resolved_from(daddr).map(str::to_owned));
        }
        if record.header.kind == Kind::EgressLocked as u8 {
            // The read that locked the agent's egress: a `sensitive_read`
            // line like every such read, then the `egress_locked` one.
            event.kind = Kind::SensitiveRead.name();
            let meta =
                LineMeta { seq: 0, kind: event.kind, action: event.action, policy: event.policy, cgroup: event.cgroup };
            sink.event(&meta, &event);
            event.kind = Kind::EgressLocked.name();
        }
        let meta =
            LineMeta { seq: 0, kind: event.kind, action: event.action, policy: event.policy, cgroup: event.cgroup };
        sink.event(&meta, &event);
    }
    sink.flush();
    (DRAIN_BATCH, false)
}

#[cfg(test)]
mod tests {
    use super::numbered_line;

    #[test]
    fn the_sequence_number_comes_first() {
        let mut line = Vec::new();
        let prev = crate::evidence::chain::GENESIS;
        let zeros = "0".repeat(64);
        numbered_line(&mut line, 7, &prev, super::serialized(&serde_json::json!({"kind": "lost", "count": 2})));
        assert_eq!(
            String::from_utf8_lossy(&line),
            format!("{{\"seq\":7,\"prev_hash\":\"{zeros}\",\"count\":2,\"kind\":\"lost\"}}\n")
        );
        numbered_line(&mut line, 8, &prev, super::serialized(&serde_json::json!({})));
        assert_eq!(String::from_utf8_lossy(&line), format!("{{\"seq\":8,\"prev_hash\":\"{zeros}\"}}\n"));
    }

    #[test]
    fn lines_share_chunks_and_keep_their_bytes() {
        let mut buffers = super::LineBuffers::default();
        let mut share = |text: &[u8]| {
            buffers.building = text.to_vec();
            buffers.share()
        };
        let lines: Vec<_> = (0..5000).map(|i| share(format!("line {i}\n").as_bytes())).collect();
        assert!(lines.iter().enumerate().all(|(i, line)| **line == *format!("line {i}\n").as_bytes()));
        let big = vec![b'x'; super::LINE_CHUNK + 1];
        assert_eq!(*share(&big), *big);
    }
}
