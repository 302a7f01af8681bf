//! Read libtest's (the default Rust test harness's) plain output.

use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cmd;

/// How a test process run by [`run`] ended.
pub struct Finished {
    pub summary: Summary,
    /// Exited with status 0.
    pub success: bool,
    /// Killed at the timeout.
    pub timed_out: bool,
}

/// Run `command` with stdout and stderr merged into one pipe (so they stay in order),
/// echoing it live on our stdout and reading libtest lines from it. Kill it after `timeout`.
pub fn run(command: &mut Command, timeout: Duration) -> Result<Finished> {
    let line = cmd::describe(command);
    println!("+ {line}");
    let (output, input) = std::io::pipe().context("could not create a pipe")?;
    let spawned = command
        .stdin(Stdio::null())
        .stdout(input.try_clone().context("could not duplicate a pipe")?)
        .stderr(input)
        .spawn();
    // Drop the command's copies of the pipe's write end, or the reader never sees EOF.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned.with_context(|| format!("could not start `{line}`"))?;
    let (tx, rx) = mpsc::channel();
    let reader = cmd::forward_lines(output, tx);
    let deadline = Instant::now() + timeout;
    let mut summary = Summary::default();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(out) => {
                println!("{out}");
                summary.feed(&out);
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("test: `{line}` still running after {timeout:?}; killing it");
                let _ = child.kill();
                timed_out = true;
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().with_context(|| format!("could not wait for `{line}`"))?;
    if !timed_out {
        // (After a kill a grandchild may still hold the pipe open: do not wait for it.)
        let _ = reader.join();
    }
    Ok(Finished { summary, success: status.success() && !timed_out, timed_out })
}

/// Totals from `test result: ...` lines and the names from `test NAME ... FAILED` lines.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// How many `test result:` lines were seen (one per test binary run).
    pub results: usize,
    pub failed_tests: Vec<String>,
}

impl Summary {
    pub fn parse(text: &str) -> Self {
        let mut summary = Self::default();
        for line in text.lines() {
            summary.feed(line);
        }
        summary
    }

    /// Account for one output line. Lines may carry a prefix (kernel messages on a VM
    /// console can interleave), so markers are searched anywhere in the line.
    pub fn feed(&mut self, line: &str) {
        // "test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ..."
        if let Some(rest) = line.split("test result: ").nth(1) {
            self.results += 1;
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
            return;
        }
        // "test policy::tests::denies_home ... FAILED", or with `--report-time`
        // "test policy::tests::denies_home ... FAILED <1.234s>"
        if let Some(name) = line
            .find("test ")
            .map(|i| &line[i + 5..])
            .and_then(|rest| without_time(rest.trim_end()).strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push(name.to_string());
        }
    }
}

/// `line` without the ` <1.234s>` that `--report-time` adds to a test's outcome.
fn without_time(line: &str) -> &str {
    match line.rsplit_once(" <") {
        Some((rest, time)) if time.ends_with("s>") => rest,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn sums_result_lines_and_collects_failures() {
        let out = "\
running 3 tests
test a ... ok
test b::c ... FAILED
test d ... FAILED <12.345s>
[   12.3] some kernel line
test result: FAILED. 2 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.00s
";
        let s = Summary::parse(out);
        assert_eq!((s.passed, s.failed, s.ignored, s.results), (7, 2, 2, 2));
        assert_eq!(s.failed_tests, ["b::c", "d"]);
    }

    #[test]
    fn nothing_without_result_lines() {
        let s = Summary::parse("error: could not compile\n");
        assert_eq!(s.results, 0);
        assert_eq!(s.passed + s.failed, 0);
    }
}
