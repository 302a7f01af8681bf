//! What `enforcer tail --since` replays from before the daemon's in-memory
//! history: the events file and its rotations, oldest first, read a line
//! at a time as the follower takes them (never the whole files in memory).
//! The sequence numbers are the seam: file lines stop where the history
//! (or, with none, the live feed) takes over.

use std::{
    collections::VecDeque,
    io::BufRead as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use super::fanout::{Line, parse_line, rotated};

/// The events file a feed's lines are written to, and how many rotations
/// are kept beside it.
#[derive(Clone, Debug)]
pub struct Archive {
    pub path: PathBuf,
    pub keep: u32,
}

/// The lines of an [`Archive`] at or after `since` and before `before_seq`.
pub struct FileBacklog {
    /// Files not opened yet, oldest first.
    files: VecDeque<PathBuf>,
    reader: Option<std::io::BufReader<std::fs::File>>,
    since: SystemTime,
    before_seq: u64,
}

impl FileBacklog {
    #[must_use]
    pub fn new(archive: &Archive, since: SystemTime, before_seq: u64) -> Self {
        let mut files: VecDeque<PathBuf> = (1..=archive.keep).rev().map(|n| rotated(&archive.path, n)).collect();
        files.push_back(archive.path.clone());
        Self { files, reader: None, since, before_seq }
    }

    /// The next line to replay; `None` once the files reach `before_seq` or
    /// end. Lines that do not parse are skipped (a torn last line).
    pub fn next_line(&mut self) -> Option<Arc<Line>> {
        let mut raw = Vec::new();
        loop {
            let Some(reader) = self.reader.as_mut() else {
                let file = self.files.pop_front()?;
                self.reader = open(&file);
                continue;
            };
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => self.reader = None,
                Ok(_) => {
                    let Some(line) = parse_line(raw.strip_suffix(b"\n").unwrap_or(&raw)) else { continue };
                    if line.seq >= self.before_seq {
                        self.files.clear();
                        self.reader = None;
                        return None;
                    }
                    if line.at >= self.since {
                        return Some(line);
                    }
                }
            }
        }
    }
}

fn open(path: &Path) -> Option<std::io::BufReader<std::fs::File>> {
    std::fs::File::open(path).ok().map(std::io::BufReader::new)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn line(seq: u64, ts: &str) -> String {
        format!("{{\"seq\":{seq},\"ts\":\"{ts}\",\"kind\":\"daemon_started\"}}\n")
    }

    #[test]
    fn replays_the_rotations_oldest_first_from_since_up_to_the_history() {
        let dir = std::env::temp_dir().join(format!("enforcer-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        std::fs::write(rotated(&path, 2), line(1, "2026-12-01T10:00:00Z") + &line(2, "2026-12-01T11:00:00Z")).unwrap();
        std::fs::write(rotated(&path, 1), line(3, "2026-12-01T12:00:00Z") + "{torn\n").unwrap();
        std::fs::write(&path, line(4, "2026-12-01T13:00:00Z") + &line(5, "2026-12-01T14:00:00Z")).unwrap();
        let archive = Archive { path, keep: 3 };
        let since = humantime::parse_rfc3339("2026-12-01T11:00:00Z").unwrap();
        let mut backlog = FileBacklog::new(&archive, since, 5);
        let seqs: Vec<u64> = std::iter::from_fn(|| backlog.next_line()).map(|l| l.seq).collect();
        assert_eq!(seqs, [2, 3, 4], "from `since`, oldest first, up to the history's first line");
        let mut everything = FileBacklog::new(&archive, since - Duration::from_hours(2), u64::MAX);
        assert_eq!(std::iter::from_fn(|| everything.next_line()).count(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
