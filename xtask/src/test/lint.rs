//! Lint tier: formatting (`rustfmt.toml`) and clippy with warnings as errors, one
//! check each, so a change that adds a warning fails the run like a failing test.
//!
//! The eBPF crate is checked apart: clippy needs nightly and the bpf target, and
//! rustfmt does not follow the `include!` its two roots share, so its files are
//! named one by one.

use std::process::{Command, Stdio};

use super::{Outcome, Tier};
use crate::cmd;
use crate::libtest::Summary;

/// The host crates, as the unit tier builds them.
const HOST_CRATES: &[&str] = &["enforcer", "enforcer-common", "enforcer-tests", "xtask"];

pub fn run() -> Tier {
    println!("\n== tier lint ==");
    let root = cmd::workspace_root();
    let checks: Vec<(&str, Command)> = vec![
        ("rustfmt (workspace)", {
            let mut c = Command::new("cargo");
            c.args(["fmt", "--all", "--check"]);
            c
        }),
        ("rustfmt (eBPF modules)", {
            let mut c = Command::new("rustfmt");
            // No files would make rustfmt read standard input: `true` fails the check then.
            match ebpf_sources(&root) {
                files if files.is_empty() => c = Command::new("false"),
                files => _ = c.args(["--edition", "2024", "--check"]).args(files),
            }
            c
        }),
        ("clippy (host crates)", {
            let mut c = Command::new("cargo");
            c.arg("clippy");
            for krate in HOST_CRATES {
                c.args(["-p", krate]);
            }
            c.args(["--all-targets", "--", "-D", "warnings"]);
            c
        }),
        ("clippy (eBPF crate)", {
            let mut c = Command::new("cargo");
            // Its own target directory: the bpf target's artifacts are not the host's.
            c.env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("LD_LIBRARY_PATH")
                .env("CARGO_TARGET_DIR", root.join("target/lint-bpf"))
                .args(["+nightly", "clippy", "-p", "enforcer-ebpf", "--target", "bpfel-unknown-none"])
                .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"]);
            c
        }),
    ];
    let mut summary = Summary { results: 1, ..Summary::default() };
    for (name, mut check) in checks {
        println!("lint: {name}: {}", cmd::describe(&check));
        let ok = check.current_dir(&root).stdin(Stdio::null()).status().is_ok_and(|s| s.success());
        if ok {
            summary.passed += 1;
        } else {
            println!("lint: {name} FAILED (run the command above to see why; `cargo fmt --all` fixes formatting)");
            summary.failed += 1;
            summary.failed_tests.push(name.to_string());
        }
    }
    Tier { name: "lint".into(), outcome: Outcome::Ran { summary, problem: None } }
}

/// The eBPF crate's source files, sorted.
fn ebpf_sources(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = root.join("enforcer-ebpf/src");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|ext| ext == "rs"));
    files.sort();
    files
}
