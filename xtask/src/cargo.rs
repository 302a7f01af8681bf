//! Run cargo builds with `--message-format=json` to learn where the executables are.

use std::io::{BufRead as _, BufReader, IsTerminal as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

/// One `compiler-artifact` message.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Target name, e.g. `enforcer`, `host`.
    pub name: String,
    /// Target kinds, e.g. `["bin"]`, `["test"]`.
    pub kinds: Vec<String>,
    pub executable: Option<PathBuf>,
}

/// `cargo ARGS --message-format=json` in the workspace root. Compiler diagnostics are
/// printed (rendered) on stderr; fails if the build fails.
pub fn build(args: &[&str]) -> Result<Vec<Artifact>> {
    let mut cargo = Command::new("cargo");
    cargo
        .args(args)
        .arg(if std::io::stderr().is_terminal() {
            "--message-format=json-diagnostic-rendered-ansi"
        } else {
            "--message-format=json"
        })
        .current_dir(cmd::workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let line = cmd::describe(&cargo);
    println!("+ {line}");
    let mut child = cargo.spawn().with_context(|| format!("could not start `{line}`"))?;
    let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut artifacts = Vec::new();
    for json in stdout.lines() {
        let json = json.context("could not read cargo's output")?;
        let Ok(msg) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-message") => {
                if let Some(rendered) = msg["message"]["rendered"].as_str() {
                    eprint!("{rendered}");
                }
            }
            Some("compiler-artifact") => artifacts.push(Artifact {
                name: msg["target"]["name"].as_str().unwrap_or_default().to_string(),
                kinds: msg["target"]["kind"]
                    .as_array()
                    .map(|k| k.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                executable: msg["executable"].as_str().map(PathBuf::from),
            }),
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status}); see the compiler errors above");
    }
    Ok(artifacts)
}

/// The executable of the target `name` of kind `kind` among `artifacts`.
pub fn executable(artifacts: &[Artifact], kind: &str, name: &str) -> Result<PathBuf> {
    artifacts
        .iter()
        .find(|a| a.name == name && a.kinds.iter().any(|k| k == kind))
        .and_then(|a| a.executable.clone())
        .with_context(|| format!("the build produced no {kind} executable named {name:?}"))
}
