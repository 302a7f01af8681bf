//! Where the daemon's event lines go: a rotated file, stdout, recent
//! history, and every follower (`enforcer tail`). Nothing here can block the
//! reader of the ring buffer: followers get lines through a bounded
//! broadcast and are cut off when they fall behind.

use std::{
    collections::VecDeque,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::broadcast;

use super::{
    config,
    metrics::Metrics,
    replay::Archive,
    stdout_lines::{StdoutLines, stdout_is_journal},
};
use crate::{
    evidence::chain::{self, Hash},
    stream::{LineMeta, LineOut},
};

/// One event line and what followers filter on.
#[derive(Debug)]
pub struct Line {
    pub seq: u64,
    pub kind: Arc<str>,
    pub policy: Arc<str>,
    pub cgroup: Option<Arc<str>>,
    pub at: SystemTime,
    pub bytes: bytes::Bytes,
}

/// What followers subscribe to: live lines, the recent past, and the
/// events file for what is older.
#[derive(Clone)]
pub struct Feed {
    pub live: broadcast::Sender<Arc<Line>>,
    pub history: Arc<Mutex<VecDeque<Arc<Line>>>>,
    pub archive: Option<Archive>,
}

impl Feed {
    #[must_use]
    pub fn new(buffer: usize, archive: Option<Archive>) -> Self {
        Self { live: broadcast::channel(buffer).0, history: Arc::new(Mutex::new(VecDeque::new())), archive }
    }
}

/// The daemon's [`LineOut`].
pub struct Fanout {
    feed: Feed,
    history_max: usize,
    stdout: Option<StdoutLines>,
    file: Option<RotatingFile>,
    metrics: Arc<Metrics>,
    /// See [`Fanout::resumed_from`].
    resumed_from: u64,
    /// See [`Fanout::resumed_hash`].
    resumed_hash: Hash,
    /// A `chain_head` line written in this batch: copied beside the events
    /// file once the batch is on disk (see [`chain::head_path`]).
    pending_head: Option<bytes::Bytes>,
    /// The last lines' kind, policy and cgroup: a storm's lines share them.
    recent: RecentNames,
    /// When this batch's lines were written (one clock read per batch: a
    /// follower's `--since` counts in seconds).
    batch_at: Option<SystemTime>,
}

#[derive(Default)]
struct RecentNames {
    kind: Recent,
    policy: Recent,
    cgroup: Recent,
}

/// The last name a line had, shared by the next line with that name.
#[derive(Default)]
struct Recent(Option<Arc<str>>);

impl Recent {
    fn get(&mut self, name: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *name => last.clone(),
            _ => self.0.insert(Arc::from(name)).clone(),
        }
    }
}

impl Fanout {
    /// Opens the sinks; the history starts with the recent lines of the
    /// events file (a restarted daemon's followers can replay the lines
    /// written before it started).
    pub fn new(events: &config::Events, feed: Feed, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let file = events
            .file
            .as_ref()
            .map(|path| RotatingFile::open(path.clone(), events.file_max_bytes, events.file_keep))
            .transpose()?;
        // At least the last line, for its `seq`.
        let recent = events
            .file
            .as_deref()
            .map_or_else(Vec::new, |path| recent_lines(path, events.file_keep, events.history.max(1)));
        let resumed_from = recent.last().map_or(0, |line| line.seq);
        let resumed_hash = recent
            .last()
            .map_or(chain::GENESIS, |line| chain::hash_line(line.bytes.strip_suffix(b"\n").unwrap_or(&line.bytes)));
        if let Ok(mut history) = feed.history.lock() {
            history.extend(recent.into_iter().rev().take(events.history).rev());
        }
        Ok(Self {
            resumed_from,
            resumed_hash,
            pending_head: None,
            feed,
            history_max: events.history,
            stdout: (events.stdout || (events.journal && stdout_is_journal()))
                .then(|| StdoutLines::start(metrics.clone()))
                .transpose()?,
            file,
            metrics,
            recent: RecentNames::default(),
            batch_at: None,
        })
    }

    /// The `seq` of the events file's last line when the daemon started
    /// (0: none): the stream numbers on from it.
    #[must_use]
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// The hash of that line ([`chain::GENESIS`]: none): the chain goes on
    /// from it.
    #[must_use]
    pub fn resumed_hash(&self) -> Hash {
        self.resumed_hash
    }

    /// Copies the last signed head beside the events file, replacing the
    /// copy before (`enforcer verify` finds a cut tail with it).
    fn save_head(&mut self) {
        let (Some(head), Some(file)) = (self.pending_head.take(), &self.file) else { return };
        let path = chain::head_path(&file.path);
        let temporary = PathBuf::from(format!("{}.tmp", path.display()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&temporary)
            .and_then(|mut f| f.write_all(&head))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(e) = written {
            self.metrics.count_sink_error();
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

impl LineOut for Fanout {
    fn line(&mut self, meta: &LineMeta<'_>, line: bytes::Bytes) {
        self.metrics.count_event(meta.kind, meta.policy, meta.action);
        if meta.kind == chain::HEAD_KIND {
            self.pending_head = Some(line.clone());
        }
        if let Some(file) = &mut self.file
            && let Err(e) = file.write(&line)
        {
            self.metrics.count_sink_error();
            tracing::warn!("cannot write the events file: {e}");
        }
        if let Some(stdout) = &self.stdout {
            stdout.line(&line);
        }
        let line = Arc::new(Line {
            seq: meta.seq,
            kind: self.recent.kind.get(meta.kind),
            policy: self.recent.policy.get(meta.policy),
            cgroup: meta.cgroup.map(|c| self.recent.cgroup.get(c)),
            at: *self.batch_at.get_or_insert_with(SystemTime::now),
            bytes: line,
        });
        if let Ok(mut history) = self.feed.history.lock() {
            if history.len() >= self.history_max {
                history.pop_front();
            }
            if self.history_max > 0 {
                history.push_back(line.clone());
            }
        }
        // No follower is not an error; a full channel drops the oldest line
        // for the slowest follower, who is then cut off.
        let _ = self.feed.live.send(line);
    }

    fn flush(&mut self) {
        self.batch_at = None;
        let Some(file) = &mut self.file else { return };
        if let Err(e) = file.flush() {
            self.metrics.count_sink_error();
            tracing::warn!("cannot write the events file: {e}");
            return;
        }
        self.save_head();
        if let Some(file) = &mut self.file
            && let Err(e) = file.rotate_if_full()
        {
            self.metrics.count_sink_error();
            tracing::warn!("cannot rotate the events file: {e}");
        }
    }

    fn wants_head(&self) -> bool {
        self.file.as_ref().is_some_and(RotatingFile::full)
    }
}

/// Bytes read from the end of a file per line wanted (lines are about half
/// a KiB; a longer one only leaves the history shorter).
const TAIL_BYTES_PER_LINE: u64 = 1024;

/// The last `max` lines of the events file `path` and its rotations,
/// oldest first, read from their ends; lines that do not parse are left out.
fn recent_lines(path: &std::path::Path, keep: u32, max: usize) -> Vec<Arc<Line>> {
    let mut newest_first: Vec<Arc<Line>> = Vec::new();
    let files = std::iter::once(path.to_owned()).chain((1..=keep).map(|n| rotated(path, n)));
    for file in files {
        let wanted = max.saturating_sub(newest_first.len());
        if wanted == 0 {
            break;
        }
        let Ok(text) = read_end(&file, wanted as u64 * TAIL_BYTES_PER_LINE) else { continue };
        let parsed = text.split(|&b| b == b'\n').rev().filter_map(parse_line).take(wanted);
        newest_first.extend(parsed);
    }
    newest_first.reverse();
    newest_first
}

/// The last `bytes` of `file`, from the start of a line.
fn read_end(file: &std::path::Path, bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(file)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(bytes);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    if start > 0 {
        // Cut inside a line: it starts after the first newline.
        let first = text.iter().position(|&b| b == b'\n').map_or(text.len(), |i| i + 1);
        text.drain(..first);
    }
    Ok(text)
}

/// A history line from a line of the events file.
pub(super) fn parse_line(raw: &[u8]) -> Option<Arc<Line>> {
    #[derive(serde::Deserialize)]
    struct Head {
        seq: u64,
        ts: String,
        kind: String,
        action: Option<String>,
        policy: Option<String>,
        cgroup: Option<String>,
    }
    let head: Head = serde_json::from_slice(raw).ok()?;
    // Followers filter the daemon's own lines by kind, and those about a
    // cgroup by cgroup too, never by policy (as when live).
    let judged = head.action.is_some();
    let mut bytes = raw.to_vec();
    bytes.push(b'\n');
    Some(Arc::new(Line {
        seq: head.seq,
        kind: head.kind.into(),
        policy: if judged { head.policy.unwrap_or_default() } else { String::new() }.into(),
        cgroup: head.cgroup.map(Into::into),
        at: humantime::parse_rfc3339_weak(&head.ts).ok()?,
        bytes: bytes.into(),
    }))
}

/// The `n`th rotation of the events file `path`.
pub(crate) fn rotated(path: &std::path::Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// Whether the file's last byte is a newline.
fn ends_with_newline(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)?;
    }
    Ok(last[0] == b'\n')
}

/// Opens (creating) the events file: root's and its group's, as its lines
/// name the files and addresses agents tried.
fn open_events_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// The events file's write buffer: a storm's batch goes out in a few
/// writes (it is flushed after every batch anyway).
const FILE_BUFFER: usize = 256 << 10;

/// A JSON-lines file rotated at a size: `events.jsonl` is current,
/// `events.jsonl.1` the newest rotated, up to `.keep`. It rotates after the
/// batch that fills it (whose last line is then a signed head).
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = open_events_file(&path)?;
        let mut size = file.metadata()?.len();
        if size > 0 && !ends_with_newline(&path)? {
            // A line cut short (the daemon died mid-write) is ended here,
            // or the next line would join it; `enforcer verify` reports it.
            file.write_all(b"\n")?;
            size += 1;
        }
        Ok(Self { path, max_bytes, keep, file: std::io::BufWriter::with_capacity(FILE_BUFFER, file), size })
    }

    pub fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// Whether the file has reached its size.
    #[must_use]
    pub fn full(&self) -> bool {
        self.size >= self.max_bytes
    }

    /// Rotates if full (after a flush).
    pub fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.full() { self.rotate() } else { Ok(()) }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let _ = std::fs::remove_file(rotated(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        let file = open_events_file(&self.path)?;
        self.file = std::io::BufWriter::with_capacity(FILE_BUFFER, file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for i in 0..10 {
            file.write(format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(20)).as_bytes()).unwrap();
            file.flush().unwrap();
            file.rotate_if_full().unwrap();
        }
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let first = read(&dir.path().join("events.jsonl.1"));
        let second = read(&dir.path().join("events.jsonl.2"));
        assert!(!dir.path().join("events.jsonl.3").exists(), "keeps 2");
        // It rotates after the line that fills it.
        let line = 36;
        assert!(current.len() < 100 + line && first.len() < 100 + line && second.len() < 100 + line);
        assert!(first.len() >= 100 && second.len() >= 100, "rotated when full");
        assert!(current.contains("\"seq\":9"), "{current}");
        assert!(first.contains("\"seq\":") && second.contains("\"seq\":"));
        // Lines are whole: every line in every file parses.
        for line in [current, first, second].concat().lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn a_restarted_daemon_starts_with_the_files_recent_lines_and_goes_on_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let line = |seq: u32, kind: &str| {
            let judged = if kind == "connect" { r#","action":"deny","policy":"agent","cgroup":"/a""# } else { "" };
            format!("{{\"seq\":{seq},\"ts\":\"2026-12-06T05:00:{seq:02}.000000Z\",\"kind\":\"{kind}\"{judged}}}\n")
        };
        let older: String = (1..=3).map(|n| line(n, "connect")).collect();
        let newer = format!("{}not json\n{}", line(4, "tagged"), line(5, "connect"));
        std::fs::write(rotated(&path, 1), older).unwrap();
        std::fs::write(&path, newer).unwrap();

        let seqs = |lines: &[Arc<Line>]| lines.iter().map(|l| l.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&recent_lines(&path, 5, 10)), [1, 2, 3, 4, 5], "oldest first, across the rotation");
        assert_eq!(seqs(&recent_lines(&path, 5, 2)), [4, 5], "the newest `max`");
        let lines = recent_lines(&path, 5, 10);
        assert_eq!((&*lines[3].kind, &*lines[3].policy), ("tagged", ""), "a daemon line");
        assert_eq!((&*lines[4].policy, lines[4].cgroup.as_deref()), ("agent", Some("/a")));
        assert!(lines[4].bytes.ends_with(b"}\n"));

        let events = config::Events { file: Some(path), history: 3, ..config::Events::default() };
        let feed = Feed::new(16, None);
        let fanout = Fanout::new(&events, feed.clone(), Arc::new(Metrics::default())).unwrap();
        assert_eq!(fanout.resumed_from(), 5);
        assert_eq!(seqs(&feed.history.lock().unwrap().iter().cloned().collect::<Vec<_>>()), [3, 4, 5]);
        // No history kept: nothing to replay, but the numbering still goes on.
        let events = config::Events { history: 0, ..events };
        let feed = Feed::new(16, None);
        let fanout = Fanout::new(&events, feed.clone(), Arc::new(Metrics::default())).unwrap();
        assert_eq!(fanout.resumed_from(), 5);
        assert!(feed.history.lock().unwrap().is_empty());
    }

    #[test]
    fn reading_a_files_end_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(read_end(&path, 10).unwrap(), b"third\n");
        assert_eq!(read_end(&path, 1000).unwrap(), b"first line\nsecond\nthird\n");
    }
}
