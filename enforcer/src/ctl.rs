//! The CLI commands that talk to the daemon: tag, untag, status, policies,
//! reload, tail.

use std::{io::Write as _, path::Path};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::{
    client::{Client, ClientError, read},
    daemon::wire::{PoliciesAnswer, PolicyInfo, Rejected, ReloadReport, StatusAnswer, Tag, TagRequest},
};

/// Where tags are made, listed and removed.
const TAGS: &str = "/v1/tags";

/// Runs one client command on a small runtime; returns the exit code.
pub fn run(future: impl Future<Output = Result<i32, ClientError>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

/// Prints the daemon's error answer; the exit code for it.
fn failed(status: StatusCode, answer: &Value) -> i32 {
    let message = answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_owned);
    tracing::error!("{message}");
    if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST { 2 } else { 1 }
}

pub async fn tag(socket: &Path, request: TagRequest) -> Result<i32, ClientError> {
    let body = serde_json::to_value(&request).unwrap_or_default();
    let (status, answer) = Client::new(socket).request(Method::POST, TAGS, Some(&body)).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    let tag: Tag = read(TAGS, answer)?;
    println!("tagged {} (id {}) with policy `{}`", tag.cgroup, tag.cgroup_id, tag.policy);
    Ok(0)
}

pub async fn untag(socket: &Path, cgroup: &str) -> Result<i32, ClientError> {
    let path = format!("{TAGS}?cgroup={}", encode(cgroup));
    let (status, answer) = Client::new(socket).request(Method::DELETE, &path, None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    let tag: Tag = read(TAGS, answer)?;
    println!("untagged {} (was policy `{}`)", tag.cgroup, tag.policy);
    Ok(0)
}

pub async fn reload(socket: &Path) -> Result<i32, ClientError> {
    let path = "/v1/reload";
    let (status, answer) = Client::new(socket).request(Method::POST, path, None).await?;
    if !status.is_success() && status != StatusCode::UNPROCESSABLE_ENTITY {
        return Ok(failed(status, &answer));
    }
    let report: ReloadReport = read(path, answer)?;
    for (name, version, hash) in &report.applied {
        println!("applied policy `{name}` version {version} ({hash})");
    }
    for name in &report.unloaded {
        println!("unloaded policy `{name}`");
    }
    for rejected in &report.rejected {
        eprintln!("{}", rejected.error);
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        tracing::warn!("some files were rejected; the policies that were in force for them stay");
        return Ok(2);
    }
    Ok(0)
}

pub async fn policies(socket: &Path) -> Result<i32, ClientError> {
    let path = "/v1/policies";
    let (status, answer) = Client::new(socket).request(Method::GET, path, None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    let answer: PoliciesAnswer = read(path, answer)?;
    print_policies(&answer.policies, &answer.rejected);
    Ok(0)
}

fn print_policies(policies: &[PolicyInfo], rejected: &[Rejected]) {
    for p in policies {
        println!(
            "{}  version {}  hash {}  mode {}  {} tagged cgroup(s)  {}",
            p.name,
            p.version,
            p.hash,
            p.mode,
            p.tagged_cgroups,
            p.file.display()
        );
    }
    for r in rejected {
        println!("rejected: {}", r.error);
    }
}

pub async fn status(socket: &Path, as_json: bool) -> Result<i32, ClientError> {
    let path = "/v1/status";
    let (status, answer) = Client::new(socket).request(Method::GET, path, None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        return Ok(0);
    }
    let StatusAnswer {
        daemon: d,
        kernel: k,
        policies,
        rejected,
        tags,
        selected,
        egress_locked,
        upload_budgets,
        new_destinations,
        counters: c,
    } = read(path, answer)?;
    println!(
        "daemon: pid {}, version {}, build {}, started {}{}",
        d.pid,
        d.version,
        d.build,
        d.started_at,
        if d.adopted { ", adopted the pinned programs" } else { "" }
    );
    println!("pins: {}", d.pins.map_or_else(|| "?".to_owned(), |p| p.display().to_string()));
    if k.bpf_lsm {
        println!("BPF LSM: enforced");
    } else {
        println!("BPF LSM: NOT enforced ({})", k.bpf_lsm_missing.as_deref().unwrap_or("?"));
        for part in &k.not_enforced {
            println!("  not enforced: {part}");
        }
    }
    println!("policies:");
    print_policies(&policies, &rejected);
    println!("tagged cgroups:");
    for t in &tags {
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {}  policy {}  {}", t.cgroup, t.policy, labels.join(" "));
    }
    for t in &selected {
        println!("  {}  policy {}  (selector)", t.cgroup, t.policy);
    }
    if !egress_locked.is_empty() {
        println!("egress locked (a sensitive read):");
    }
    for l in &egress_locked {
        println!(
            "  {}  since {}  by pid {}  (file {} inode {})",
            agent_label(l.cgroup.as_deref(), l.cgroup_id),
            l.locked_at,
            l.pid,
            l.dev,
            l.ino
        );
    }
    if !upload_budgets.is_empty() {
        println!("upload budgets (bytes sent in the current window):");
    }
    for b in &upload_budgets {
        println!(
            "  {}  {}  {} of {} per {}s  (policy {})",
            agent_label(b.cgroup.as_deref(), b.cgroup_id),
            b.budget,
            b.bytes_used,
            b.bytes_limit,
            b.window_s,
            b.policy
        );
    }
    if !new_destinations.is_empty() {
        println!("new destinations (distinct destinations reached in the current window):");
    }
    for d in &new_destinations {
        println!(
            "  {}  {} of {} per {}s  (policy {})",
            agent_label(d.cgroup.as_deref(), d.cgroup_id),
            d.used,
            d.limit,
            d.window_s,
            d.policy
        );
    }
    println!(
        "counters: lost events {}, reloads {} ({} with rejected files), followers {}, followers cut off {}",
        c.lost_events, c.reloads, c.reload_failures, c.followers, c.follower_cuts
    );
    Ok(0)
}

/// An agent cgroup as status lists it: its path, or its id when the daemon
/// no longer knows where it is.
fn agent_label(cgroup: Option<&str>, id: u64) -> String {
    cgroup.map_or_else(|| format!("cgroup id {id}"), str::to_owned)
}

pub async fn tail(
    socket: &Path,
    cgroup: Option<&str>,
    policy: Option<&str>,
    kind: Option<&str>,
    since: Option<&str>,
) -> Result<i32, ClientError> {
    let query: Vec<String> = [("cgroup", cgroup), ("policy", policy), ("kind", kind), ("since", since)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    let path = format!("/v1/events?{}", query.join("&"));
    let mut stdout = std::io::stdout().lock();
    let mut body = Vec::new();
    let mut pipe_closed = false;
    let status = Client::new(socket)
        .follow(&path, |chunk| {
            body.extend_from_slice(chunk);
            if !pipe_closed && (stdout.write_all(chunk).is_err() || stdout.flush().is_err()) {
                pipe_closed = true;
            }
        })
        .await?;
    if !status.is_success() {
        let answer = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Ok(failed(status, &answer));
    }
    // The daemon ends a follow only when it stops or cuts the follower off.
    Ok(3)
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
