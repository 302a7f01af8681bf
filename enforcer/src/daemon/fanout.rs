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

use super::{config, metrics::Metrics};
use crate::stream::{LineMeta, LineOut};

/// One event line and what followers filter on.
#[derive(Debug)]
pub struct Line {
    pub seq: u64,
    pub kind: String,
    pub policy: String,
    pub cgroup: Option<String>,
    pub at: SystemTime,
    pub bytes: bytes::Bytes,
}

/// What followers subscribe to: live lines and the recent past.
#[derive(Clone)]
pub struct Feed {
    pub live: broadcast::Sender<Arc<Line>>,
    pub history: Arc<Mutex<VecDeque<Arc<Line>>>>,
}

impl Feed {
    #[must_use]
    pub fn new(buffer: usize) -> Self {
        Self { live: broadcast::channel(buffer).0, history: Arc::new(Mutex::new(VecDeque::new())) }
    }
}

/// The daemon's [`LineOut`].
pub struct Fanout {
    feed: Feed,
    history_max: usize,
    stdout: Option<std::io::BufWriter<std::io::Stdout>>,
    file: Option<RotatingFile>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    pub fn new(events: &config::Events, feed: Feed, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let file = events
            .file
            .as_ref()
            .map(|path| RotatingFile::open(path.clone(), events.file_max_bytes, events.file_keep))
            .transpose()?;
        Ok(Self {
            feed,
            history_max: events.history,
            stdout: events.stdout.then(|| std::io::BufWriter::new(std::io::stdout())),
            file,
            metrics,
        })
    }
}

impl LineOut for Fanout {
    fn line(&mut self, meta: &LineMeta<'_>, line: Vec<u8>) {
        self.metrics.count_event(meta.kind, meta.policy, meta.action);
        if let Some(file) = &mut self.file
            && let Err(e) = file.write(&line)
        {
            self.metrics.count_sink_error();
            tracing::warn!("cannot write the events file: {e}");
        }
        if let Some(stdout) = &mut self.stdout {
            let _ = stdout.write_all(&line);
        }
        let line = Arc::new(Line {
            seq: meta.seq,
            kind: meta.kind.to_owned(),
            policy: meta.policy.to_owned(),
            cgroup: meta.cgroup.map(str::to_owned),
            at: SystemTime::now(),
            bytes: line.into(),
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
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
        if let Some(stdout) = &mut self.stdout {
            let _ = stdout.flush();
        }
    }
}

/// A JSON-lines file rotated at a size: `events.jsonl` is current,
/// `events.jsonl.1` the newest rotated, up to `.keep`.
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
        // Root's and its group's: the lines name the files and addresses agents tried.
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, max_bytes, keep, file: std::io::BufWriter::new(file), size })
    }

    pub fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.file = std::io::BufWriter::new(file);
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
        }
        file.flush().unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let first = read(&dir.path().join("events.jsonl.1"));
        let second = read(&dir.path().join("events.jsonl.2"));
        assert!(!dir.path().join("events.jsonl.3").exists(), "keeps 2");
        assert!(current.len() <= 100 && first.len() <= 100 && second.len() <= 100);
        assert!(current.contains("\"seq\":9"), "{current}");
        assert!(first.contains("\"seq\":") && second.contains("\"seq\":"));
        // Lines are whole: every line in every file parses.
        for line in [current, first, second].concat().lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}
