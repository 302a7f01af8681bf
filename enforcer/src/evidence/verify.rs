//! `enforcer verify FILE...`: walks the daemon's event files (rotations in
//! any order) along the hash chain and checks every signed head, and
//! reports the first line changed, removed or moved, or a cut tail. Only
//! heads and the lines around a break are parsed: each line is hashed, so
//! it runs at the speed of reading and hashing.

use std::{
    fmt,
    io::BufRead as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use super::{
    chain::{self, GENESIS, HEAD_KIND, Hash},
    keys,
};

/// Where a line is.
#[derive(Clone, Debug)]
pub struct Place {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The first thing found wrong.
#[derive(Debug)]
pub struct Break {
    pub at: Place,
    pub what: String,
    /// The `seq` that should have been here (a gap): looked for elsewhere
    /// to tell a removed line from a moved one.
    missing: Option<u64>,
}

impl Break {
    fn new(at: Place, what: String) -> Self {
        Self { at, what, missing: None }
    }
}

/// What was checked.
#[derive(Debug, Default)]
pub struct Report {
    /// Each file, in chain order.
    pub files: Vec<FileRead>,
    pub lines: u64,
    /// Lines before the chain started (written by an enforcer without it).
    pub unchained: u64,
    /// The chain's first line starts it (`prev_hash` all zeros): nothing
    /// was rotated away before it.
    pub from_genesis: bool,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub heads: u64,
    /// Fingerprints of the keys that signed heads.
    pub signers: Vec<String>,
    /// The `seq` of the last signed head's line.
    pub signed_through: Option<u64>,
    /// The sidecar copy of the last head that was checked, if any.
    pub sidecar: Option<(PathBuf, u64)>,
    /// Lines cut short by a daemon that stopped mid-write (and restarted).
    pub torn: Vec<Place>,
}

/// One file walked.
#[derive(Debug)]
pub struct FileRead {
    pub path: PathBuf,
    /// Its first and last `seq` (none: no whole line).
    pub seqs: Option<(u64, u64)>,
    pub lines: u64,
}

/// The answer: a report, and a break if the files are not intact.
pub struct Outcome {
    pub report: Report,
    pub broken: Option<Break>,
}

/// A file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot read: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
    move |source| ReadError { path: path.to_owned(), source }
}

/// Checks `paths` (event files and, named `*.head`, copies of the last
/// signed head; the current file's copy is found beside it); heads must be
/// signed by `key` when it is given.
pub fn verify(paths: &[PathBuf], key: Option<&VerifyingKey>) -> Result<Outcome, ReadError> {
    let (heads, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.iter().partition(|p| p.extension().is_some_and(|e| e == "head"));
    let sidecar = match heads.first() {
        Some(path) => Some(((*path).clone(), std::fs::read(path).map_err(read_err(path))?)),
        None => files.iter().map(|f| chain::head_path(f)).find_map(|p| {
            let text = std::fs::read(&p).ok()?;
            Some((p, text))
        }),
    };
    let mut ordered = Vec::new();
    for file in files {
        ordered.push((first_seq(file).map_err(read_err(file))?, file.clone()));
    }
    ordered.sort_by_key(|(seq, _)| *seq);
    let mut walk = Walk::new(key, sidecar.as_ref().map(|(p, t)| (p.as_path(), t.as_slice())));
    let count = ordered.len();
    for (i, (_, file)) in ordered.iter().enumerate() {
        if let Err(mut broken) = walk.file(file, i + 1 == count).map_err(read_err(file))? {
            if let Some(missing) = broken.missing
                && let Some(found) = find_seq(ordered.iter().map(|(_, f)| f.as_path()), missing)
            {
                broken.what = format!("seq {missing} is not here but at {found}: lines were moved");
            }
            return Ok(Outcome { report: walk.report, broken: Some(broken) });
        }
    }
    let broken = walk.finish().err();
    Ok(Outcome { report: walk.report, broken })
}

/// Where the line numbered `seq` is in `files`, if anywhere (they were
/// read once already: one unreadable now is skipped).
fn find_seq<'p>(files: impl Iterator<Item = &'p Path>, seq: u64) -> Option<Place> {
    for file in files {
        let Ok(opened) = std::fs::File::open(file) else { continue };
        let reader = std::io::BufReader::with_capacity(1 << 20, opened);
        for (i, line) in reader.split(b'\n').map_while(Result::ok).enumerate() {
            if line_head(&line).is_some_and(|(s, _)| s == seq) {
                return Some(Place { file: file.to_owned(), line: i as u64 + 1 });
            }
        }
    }
    None
}

/// The `seq` of a file's first line (`u64::MAX` for an empty file: last).
fn first_seq(file: &Path) -> std::io::Result<u64> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(file)?);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    Ok(line_head(&line).map_or(u64::MAX, |(seq, _)| seq))
}

/// A line's `seq` and `prev_hash` (none: a line from before the chain),
/// read from where the daemon writes them: first.
fn line_head(line: &[u8]) -> Option<(u64, Option<Hash>)> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",")?;
    let prev = rest.strip_prefix(chain::PREV_FIELD).and_then(|hex| chain::from_hex(hex.get(..64)?));
    Some((seq, prev))
}

/// A `chain_head` line's fields.
#[derive(Deserialize)]
struct HeadLine {
    seq: u64,
    kind: String,
    head_seq: u64,
    head_hash: String,
    key: String,
    sig: String,
}

/// A head line's fields, the hash it signs and its signer's fingerprint,
/// if its signature verifies (by `key`, when given); `None`: not a head.
fn signed_head(line: &[u8], key: Option<&VerifyingKey>) -> Result<Option<(HeadLine, Hash, String)>, String> {
    let head: HeadLine = serde_json::from_slice(line).map_err(|e| format!("its fields do not parse ({e})"))?;
    if head.kind != HEAD_KIND {
        return Ok(None);
    }
    let hash = chain::from_hex(head.head_hash.as_bytes()).ok_or("its head_hash is no SHA-256")?;
    let signer = keys::decode_public(&head.key).ok_or("its key is no Ed25519 key")?;
    let fingerprint = keys::fingerprint(&signer);
    if key.is_some_and(|k| *k != signer) {
        return Err(format!("signed by key {fingerprint}, not the key given"));
    }
    if !chain::head_signed_by(&signer, head.head_seq, &hash, &head.sig) {
        return Err("the signature does not verify".to_owned());
    }
    Ok(Some((head, hash, fingerprint)))
}

/// Whether a line may be a head: `"kind":"chain_head"` cannot occur inside
/// a JSON string (its quotes would be escaped), so only a member matches.
fn may_be_head(line: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"kind\":\"chain_head\""));
    FINDER.find(line).is_some()
}

/// The walk along the chain.
struct Walk<'a> {
    key: Option<&'a VerifyingKey>,
    /// The copy of the last signed head: where it is, and its line.
    sidecar: Option<(&'a Path, &'a [u8])>,
    sidecar_seen: bool,
    /// The last whole line: its seq, hash and place.
    last: Option<(u64, Hash, Place)>,
    /// A line cut short just before, not yet explained.
    torn: Option<Place>,
    report: Report,
}

impl<'a> Walk<'a> {
    fn new(key: Option<&'a VerifyingKey>, sidecar: Option<(&'a Path, &'a [u8])>) -> Self {
        Self { key, sidecar, sidecar_seen: false, last: None, torn: None, report: Report::default() }
    }

    /// Walks one file; `Ok(Err(_))` is a break.
    fn file(&mut self, path: &Path, last_file: bool) -> std::io::Result<Result<(), Break>> {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut buf = Vec::with_capacity(4096);
        let mut range: Option<(u64, u64)> = None;
        let mut number = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            number += 1;
            let at = Place { file: path.to_owned(), line: number };
            let Some(line) = buf.strip_suffix(b"\n") else {
                let what = if last_file {
                    format!("the file is cut: its last line ({} bytes) has no end", buf.len())
                } else {
                    "a rotated file ends in a line cut short".to_owned()
                };
                return Ok(Err(Break::new(at, what)));
            };
            if let Err(broken) = self.line(line, at) {
                return Ok(Err(broken));
            }
            if let Some((seq, _, _)) = &self.last {
                range = Some((range.map_or(*seq, |r| r.0), *seq));
            }
        }
        self.report.files.push(FileRead { path: path.to_owned(), seqs: range, lines: number });
        Ok(Ok(()))
    }

    fn line(&mut self, line: &[u8], at: Place) -> Result<(), Break> {
        self.report.lines += 1;
        if !line.ends_with(b"}") {
            // Cut short: only a daemon restarting right after may explain it.
            if let Some(earlier) = self.torn.replace(at.clone()) {
                return Err(Break::new(earlier, "a line that is not whole".to_owned()));
            }
            return Ok(());
        }
        let Some((seq, prev)) = line_head(line) else {
            return Err(Break::new(at, "not a line of the daemon's (no `seq` first)".to_owned()));
        };
        self.follows(seq, prev, &at)?;
        if let Some(torn) = self.torn.take() {
            if memchr::memmem::find(line, b"\"kind\":\"daemon_started\"").is_none() {
                return Err(Break::new(torn, "a line that is not whole".to_owned()));
            }
            self.report.torn.push(torn);
        }
        if may_be_head(line) {
            self.head(line, seq, &at)?;
        }
        self.sidecar_line(line, seq, &at)?;
        let hash = chain::hash_line(line);
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(seq);
        self.last = Some((seq, hash, at));
        Ok(())
    }

    /// Checks that line `seq` follows the last one: the next number, and
    /// its `prev_hash` the last line's hash.
    fn follows(&mut self, seq: u64, prev: Option<Hash>, at: &Place) -> Result<(), Break> {
        let broken = |what: String| Err(Break::new(at.clone(), what));
        let Some((last_seq, last_hash, last_at)) = &self.last else {
            match prev {
                None => self.report.unchained += 1,
                Some(prev) => self.report.from_genesis = prev == GENESIS,
            }
            return Ok(());
        };
        if seq <= *last_seq {
            return broken(format!("seq {seq} comes after seq {last_seq} ({last_at}): lines were moved or repeated"));
        }
        if seq > last_seq + 1 {
            let missing = if seq == last_seq + 2 {
                format!("seq {} is missing", last_seq + 1)
            } else {
                format!("seq {}–{} are missing", last_seq + 1, seq - 1)
            };
            let what = format!("{missing} (after {last_at}, seq {last_seq}): lines were removed");
            return Err(Break { at: at.clone(), what, missing: Some(last_seq + 1) });
        }
        match prev {
            Some(prev) if prev == *last_hash => Ok(()),
            Some(_) => broken(format!(
                "the line before ({last_at}, seq {last_seq}) is not the one this line was written after (its hash is \
                 not this line's prev_hash): it, or this line, was changed"
            )),
            None if self.report.unchained + 1 == self.report.lines => {
                self.report.unchained += 1;
                Ok(())
            }
            None => broken("a line without prev_hash after chained lines: it was changed".to_owned()),
        }
    }

    /// Checks a `chain_head` line: it signs the line before it, with the
    /// key given (or its own, reported).
    fn head(&mut self, line: &[u8], seq: u64, at: &Place) -> Result<(), Break> {
        let broken = |what: String| Err(Break::new(at.clone(), format!("signed head: {what}")));
        let (head, hash, fingerprint) = match signed_head(line, self.key) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(what) => return broken(what),
        };
        let Some((last_seq, last_hash, _)) = &self.last else {
            return broken("it is the first line: the line it signs is not in these files".to_owned());
        };
        if head.seq != seq || head.head_seq != *last_seq || hash != *last_hash {
            return broken("it does not name the line before it".to_owned());
        }
        if !self.report.signers.contains(&fingerprint) {
            self.report.signers.push(fingerprint);
        }
        self.report.heads += 1;
        self.report.signed_through = Some(seq);
        Ok(())
    }

    /// The line the sidecar copied must be in the files unchanged.
    fn sidecar_line(&mut self, line: &[u8], seq: u64, at: &Place) -> Result<(), Break> {
        let Some((path, copy)) = self.sidecar else { return Ok(()) };
        let copy = copy.strip_suffix(b"\n").unwrap_or(copy);
        if line_head(copy).is_some_and(|(s, _)| s == seq) {
            if copy != line {
                let what = format!("this line differs from the signed head copied in {}", path.display());
                return Err(Break::new(at.clone(), what));
            }
            self.sidecar_seen = true;
        }
        Ok(())
    }

    /// After the last line: a cut tail shows as a signed head (copied
    /// beside the file) that is not in it.
    fn finish(&mut self) -> Result<(), Break> {
        let end = self.last.as_ref().map_or(Place { file: PathBuf::new(), line: 0 }, |(_, _, at)| at.clone());
        if let Some(torn) = self.torn.take() {
            return Err(Break::new(torn, "the last line is not whole".to_owned()));
        }
        let Some((path, copy)) = self.sidecar else { return Ok(()) };
        let copy = copy.strip_suffix(b"\n").unwrap_or(copy);
        let seq = match signed_head(copy, self.key) {
            Ok(Some((head, _, _))) => head.seq,
            Ok(None) => return Err(Break::new(end, format!("{} holds no signed head", path.display()))),
            Err(what) => {
                return Err(Break::new(Place { file: path.to_owned(), line: 1 }, format!("signed head: {what}")));
            }
        };
        self.report.sidecar = Some((path.to_owned(), seq));
        if !self.sidecar_seen {
            let last = self.report.last_seq.unwrap_or(0);
            let what = format!(
                "the files end at seq {last}, but the signed head copied in {} is seq {seq}: the tail was cut",
                path.display()
            );
            return Err(Break::new(end, what));
        }
        Ok(())
    }
}

impl Report {
    /// The summary printed for an auditor, a line per fact.
    #[must_use]
    pub fn summary(&self, key_given: bool) -> String {
        let mut lines = Vec::new();
        let files: Vec<String> = self
            .files
            .iter()
            .map(|file| match file.seqs {
                Some((a, b)) => format!("{} (seq {a}–{b}, {} lines)", file.path.display(), file.lines),
                None => format!("{} ({} lines, none whole)", file.path.display(), file.lines),
            })
            .collect();
        lines.push(format!("files: {}", files.join(", ")));
        let start = match (self.first_seq, self.from_genesis) {
            (Some(seq), true) => format!("from seq {seq}, the chain's start"),
            (Some(seq), false) => format!("from seq {seq} (earlier lines are not in these files)"),
            (None, _) => "no lines".to_owned(),
        };
        lines.push(format!("{} lines, chained {start}", self.lines));
        if self.unchained > 0 {
            lines.push(format!("{} lines before the chain began (no prev_hash: nothing proves them)", self.unchained));
        }
        for torn in &self.torn {
            lines.push(format!("{torn}: a line cut short (the daemon stopped mid-write and restarted)"));
        }
        let whose =
            if key_given { "the key given" } else { "not checked against a trusted key: pass --key HOST_KEY.pub" };
        if self.heads > 0 {
            lines.push(format!("{} signed heads, by key {} ({whose})", self.heads, self.signers.join(", ")));
        }
        lines.push(match (self.signed_through, self.last_seq) {
            (Some(signed), Some(last)) if last > signed => format!(
                "signed through seq {signed}; the {} lines after it are not signed yet (nothing shows if they are cut)",
                last - signed
            ),
            (Some(signed), _) => format!("signed through seq {signed}, the last line"),
            (None, _) => "no signed head: nothing shows a cut tail".to_owned(),
        });
        match &self.sidecar {
            Some((path, seq)) => {
                lines.push(format!("the last signed head, copied in {}: seq {seq}, present", path.display()));
            }
            None if self.heads > 0 => lines.push(
                "no copy of the last signed head (FILE.head) beside the files: lines cut after the last head in them \
                 would not show"
                    .to_owned(),
            ),
            None => {}
        }
        let mut out = String::new();
        for line in lines {
            out.push_str("  ");
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::Duration};

    use super::*;
    use crate::{
        daemon::{
            config,
            fanout::{Fanout, Feed},
            metrics::Metrics,
        },
        events::{DaemonEvent, DaemonLine},
        evidence::chain::{Chain, HeadSigner},
        stream::Sink,
    };

    /// A daemon's writer on `dir/events.jsonl` (rotated at 4 KiB), going
    /// on from what is there, as a restarted daemon does.
    fn writer(dir: &Path, key: &ed25519_dalek::SigningKey) -> Sink {
        let events = config::Events {
            file: Some(dir.join("events.jsonl")),
            file_max_bytes: 4096,
            file_keep: 30,
            history: 1,
            ..config::Events::default()
        };
        let fanout = Fanout::new(&events, Feed::new(16, None), Arc::new(Metrics::default())).unwrap();
        let signer = HeadSigner { key: key.clone(), every: Duration::from_hours(1) };
        let chain = Chain::resume(fanout.resumed_hash(), Some(signer));
        let first = fanout.resumed_from() + 1;
        Sink::numbered(Box::new(fanout), first, chain)
    }

    fn write(sink: &mut Sink, from: u32, count: u32) {
        for i in from..from + count {
            let labels = BTreeMap::from([("n".to_owned(), i.to_string())]);
            let line = DaemonEvent::Tagged { cgroup: format!("/agents/a{i}"), policy: "agent".into(), labels };
            sink.daemon_line(&DaemonLine::now(line));
            if i % 7 == 0 {
                sink.flush();
            }
        }
    }

    fn stop(mut sink: Sink) {
        sink.sign_head();
        sink.flush();
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|p| !p.extension().is_some_and(|e| e == "head" || e == "tmp"));
        files
    }

    /// Every line, in chain order (the oldest rotation first).
    fn all_lines(dir: &Path) -> Vec<String> {
        let base = dir.join("events.jsonl");
        let mut text = String::new();
        for n in (1..=30).rev() {
            text += &std::fs::read_to_string(format!("{}.{n}", base.display())).unwrap_or_default();
        }
        text += &std::fs::read_to_string(&base).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    fn check(dir: &Path, key: &ed25519_dalek::SigningKey) -> Outcome {
        verify(&files(dir), Some(&key.verifying_key())).unwrap()
    }

    /// Writes 200 lines across rotations, signed at each and at stop.
    fn written() -> (tempfile::TempDir, ed25519_dalek::SigningKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate().unwrap();
        let mut sink = writer(dir.path(), &key);
        write(&mut sink, 0, 200);
        stop(sink);
        (dir, key)
    }

    /// Rewrites the current events file with `edit` applied to its lines.
    fn edit_current(dir: &Path, edit: impl FnOnce(&mut Vec<String>)) {
        let path = dir.join("events.jsonl");
        let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
        edit(&mut lines);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn lines_written_across_rotations_and_restarts_verify() {
        let (dir, key) = written();
        let mut sink = writer(dir.path(), &key);
        write(&mut sink, 200, 50);
        stop(sink);
        assert!(files(dir.path()).len() > 3, "rotated");
        let outcome = check(dir.path(), &key);
        assert!(outcome.broken.is_none(), "{:?}", outcome.broken);
        let report = &outcome.report;
        assert_eq!((report.lines, report.first_seq), (all_lines(dir.path()).len() as u64, Some(1)));
        assert!(report.from_genesis && report.heads > 3, "{report:?}");
        assert_eq!(report.signed_through, report.last_seq, "signed at stop");
        assert!(report.sidecar.is_some());
        // Every rotated file ends with a signed head.
        for n in 1..=3 {
            let text = std::fs::read_to_string(dir.path().join(format!("events.jsonl.{n}"))).unwrap();
            assert!(text.lines().last().unwrap().contains("\"kind\":\"chain_head\""), "{n}");
        }
    }

    #[test]
    fn a_changed_line_breaks_the_chain_at_the_next() {
        let (dir, key) = written();
        edit_current(dir.path(), |lines| lines[3] = lines[3].replace("/agents/a", "/agents/b"));
        let broken = check(dir.path(), &key).broken.unwrap();
        assert_eq!(broken.at.line, 5, "{broken:?}");
        assert!(broken.what.contains("was changed"), "{}", broken.what);
    }

    #[test]
    fn a_removed_or_moved_line_is_found() {
        let (dir, key) = written();
        edit_current(dir.path(), |lines| drop(lines.remove(3)));
        let broken = check(dir.path(), &key).broken.unwrap();
        assert!(broken.what.contains("is missing") && broken.what.contains("were removed"), "{}", broken.what);

        let (dir, key) = written();
        edit_current(dir.path(), |lines| lines.swap(3, 4));
        let broken = check(dir.path(), &key).broken.unwrap();
        assert!(broken.what.contains("is not here but at") && broken.what.contains("were moved"), "{}", broken.what);
        assert_eq!(broken.at.line, 4, "{broken:?}");
    }

    #[test]
    fn a_chain_rebuilt_after_a_change_fails_at_the_next_signed_head() {
        let (dir, key) = written();
        edit_current(dir.path(), |lines| {
            lines[3] = lines[3].replace("/agents/a", "/agents/b");
            // Re-chain every line after it, as someone without the key can.
            for i in 4..lines.len() {
                let prev = chain::hex_string(&chain::hash_line(lines[i - 1].as_bytes()));
                let at = lines[i].find("\"prev_hash\":\"").unwrap() + 13;
                lines[i].replace_range(at..at + 64, &prev);
            }
        });
        let broken = check(dir.path(), &key).broken.unwrap();
        assert!(broken.what.starts_with("signed head:"), "{}", broken.what);
    }

    #[test]
    fn a_cut_tail_is_found_with_the_copy_of_the_last_head() {
        let (dir, key) = written();
        edit_current(dir.path(), |lines| lines.truncate(lines.len() - 3));
        let broken = check(dir.path(), &key).broken.unwrap();
        assert!(broken.what.contains("the tail was cut"), "{}", broken.what);

        let (dir, key) = written();
        let path = dir.path().join("events.jsonl");
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 10]).unwrap();
        let broken = check(dir.path(), &key).broken.unwrap();
        assert!(broken.what.contains("has no end"), "{}", broken.what);
    }

    #[test]
    fn heads_of_another_key_are_refused() {
        let (dir, _) = written();
        let other = keys::generate().unwrap();
        let broken = check(dir.path(), &other).broken.unwrap();
        assert!(broken.what.contains("not the key given"), "{}", broken.what);
        let unchecked = verify(&files(dir.path()), None).unwrap();
        assert!(unchecked.broken.is_none());
        assert!(unchecked.report.summary(false).contains("not checked against a trusted key"));
    }

    #[test]
    fn a_line_cut_short_by_a_dying_daemon_is_reported_not_broken() {
        let (dir, key) = written();
        let path = dir.path().join("events.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"seq\":999,\"prev_hash\":\"00");
        std::fs::write(&path, text).unwrap();
        let mut sink = writer(dir.path(), &key);
        sink.daemon_line(&DaemonLine::now(DaemonEvent::DaemonStarted {
            pid: 1,
            build: String::new(),
            adopted: true,
            pins: None,
            tagged_cgroups: 0,
            policies: Vec::new(),
            not_enforced: Vec::new(),
            errors: Vec::new(),
        }));
        write(&mut sink, 300, 3);
        stop(sink);
        let outcome = check(dir.path(), &key);
        assert!(outcome.broken.is_none(), "{:?}", outcome.broken);
        assert_eq!(outcome.report.torn.len(), 1);
    }
}
