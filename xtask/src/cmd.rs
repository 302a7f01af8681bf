//! Small helpers for running processes and handling paths.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};
use std::{fs, io};

use anyhow::{Context as _, Result, bail};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.contains(' ') || arg.is_empty() {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// Run `cmd` with inherited stdio; fail unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd.status().with_context(|| format!("could not start `{line}`; is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run `cmd` and return its stdout; fail (with its stderr) unless it exits with status 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`; is it installed and on PATH?"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` can be started and exits with status 0 (all output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether a program of this name is found on PATH.
pub fn on_path(program: impl AsRef<OsStr>) -> bool {
    which(program).is_some()
}

/// Where on PATH a program of this name is.
pub fn which(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program.as_ref())).find(|p| p.is_file())
}

/// The workspace root (the xtask crate lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// `target/bench`, where benchmarks keep their raw output.
fn bench_path() -> PathBuf {
    workspace_root().join("target/bench")
}

/// [`bench_path`], created.
pub fn bench_dir() -> Result<PathBuf> {
    let dir = bench_path();
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    Ok(dir)
}

/// Saves a benchmark's raw `output` as `target/bench/NAME`; a failure is
/// told, not fatal (the figures are printed anyway). Returns the path.
pub fn save_bench_output(name: &str, output: &str) -> PathBuf {
    let path = bench_path().join(name);
    if let Err(e) = bench_dir()
        .and_then(|_| fs::write(&path, output).with_context(|| format!("could not write {}", path.display())))
    {
        eprintln!("could not save the raw output: {e:#}");
    }
    path
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Remove the `<prefix>...-<pid>-<nanos>.<n>` directories (made by [`TempDir`]) in `parent`
/// whose process no longer runs: an interrupted run cannot clean up after itself.
pub fn remove_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            println!("removing {} left by an interrupted run", entry.path().display());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `<prefix>-<pid>-<nanos>.<n>`, `n` counting the names this process made:
/// the VM tiers start side by side, and a coarse clock once gave two of
/// them the same nanoseconds.
fn temp_name(prefix: &str, nanos: u32) -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}.{n}", std::process::id())
}

/// A directory removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create a fresh directory named by [`temp_name`] inside `parent`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = parent.join(temp_name(prefix, nanos));
        fs::create_dir(&path).with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self(path))
    }

    /// Create a fresh directory in the system temp directory.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: could not remove {}: {e}", self.0.display()),
        }
    }
}

/// Send each line of `from` (lossily decoded, `\r` stripped) to `to`.
pub fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).replace('\r', "");
            let line = line.strip_suffix('\n').unwrap_or(&line).to_string();
            if to.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_made_in_the_same_nanosecond_differ_and_name_their_process() {
        let (a, b) = (temp_name("x", 5), temp_name("x", 5));
        assert_ne!(a, b);
        for name in [a, b] {
            // What `remove_abandoned` reads as the owner.
            assert_eq!(name.rsplit('-').nth(1), Some(std::process::id().to_string().as_str()), "{name}");
        }
    }
}
