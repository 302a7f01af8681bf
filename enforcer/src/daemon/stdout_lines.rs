//! Event lines on stdout (the journal under systemd) without ever blocking
//! the stream: a thread of its own writes them, behind a bounded queue. A
//! stalled reader (a journald that stopped reading, a pipe nobody drains)
//! fills the queue, and lines that find it full are dropped and counted
//! (`enforcer_stdout_dropped_lines_total`); the file, the followers and the
//! ring buffer's reader go on.

use std::{
    io::Write as _,
    sync::{
        Arc,
        mpsc::{self, SyncSender},
    },
};

use super::metrics::Metrics;

/// Lines queued for stdout at most (about half a KiB each).
const QUEUE_LINES: usize = 4096;

pub struct StdoutLines {
    queue: SyncSender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

impl StdoutLines {
    /// Starts the writer thread; `metrics` counts the lines it could not take.
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new().name("enforcer-stdout".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Ok(line) = lines.recv() {
                let _ = out.write_all(&line);
                // Batch while more wait; flush when the queue is empty.
                while let Ok(line) = lines.try_recv() {
                    let _ = out.write_all(&line);
                }
                let _ = out.flush();
            }
        })?;
        Ok(Self { queue, metrics })
    }

    /// Queues `line`, or counts it dropped if the queue is full.
    pub fn line(&self, line: &[u8]) {
        if self.queue.try_send(line.to_vec()).is_err() {
            self.metrics.count_stdout_dropped();
        }
    }
}

/// Whether stdout is the journal: systemd sets `JOURNAL_STREAM` to the
/// device and inode of the stream it connected (`StandardOutput=journal`).
#[must_use]
pub fn stdout_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(stat) = rustix::fs::fstat(std::io::stdout()) else { return false };
    dev.parse() == Ok(stat.st_dev) && ino.parse() == Ok(stat.st_ino)
}
