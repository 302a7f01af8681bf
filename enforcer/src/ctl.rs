//! The CLI commands that talk to the daemon: tag, untag, status, policies,
//! reload, tail.

use std::{io::Write as _, path::Path};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

/// Runs one client command on a small runtime; returns the exit code.
pub fn run(future: impl Future<Output = Result<i32, ClientError>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("enforcer: error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enforcer: error: {e}");
            1
        }
    }
}

/// Prints the daemon's error answer; the exit code for it.
fn failed(status: StatusCode, answer: &Value) -> i32 {
    let message = answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_owned);
    eprintln!("enforcer: error: {message}");
    if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST { 2 } else { 1 }
}

pub async fn tag(socket: &Path, cgroup: &str, policy: &str, labels: &[(String, String)]) -> Result<i32, ClientError> {
    let labels: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
    let body = json!({ "cgroup": cgroup, "policy": policy, "labels": labels });
    let (status, answer) = Client::new(socket).request(Method::POST, "/v1/tags", Some(&body)).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    println!(
        "tagged {} (id {}) with policy `{}`",
        answer["cgroup"].as_str().unwrap_or(cgroup),
        answer["cgroup_id"],
        policy
    );
    Ok(0)
}

pub async fn untag(socket: &Path, cgroup: &str) -> Result<i32, ClientError> {
    let path = format!("/v1/tags?cgroup={}", encode(cgroup));
    let (status, answer) = Client::new(socket).request(Method::DELETE, &path, None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    println!(
        "untagged {} (was policy `{}`)",
        answer["cgroup"].as_str().unwrap_or(cgroup),
        answer["policy"].as_str().unwrap_or("?")
    );
    Ok(0)
}

pub async fn reload(socket: &Path) -> Result<i32, ClientError> {
    let (status, answer) = Client::new(socket).request(Method::POST, "/v1/reload", None).await?;
    for applied in answer["applied"].as_array().into_iter().flatten() {
        println!(
            "applied policy `{}` version {} ({})",
            applied[0].as_str().unwrap_or("?"),
            applied[1],
            applied[2].as_str().unwrap_or("?")
        );
    }
    for name in answer["unloaded"].as_array().into_iter().flatten() {
        println!("unloaded policy `{}`", name.as_str().unwrap_or("?"));
    }
    for rejected in answer["rejected"].as_array().into_iter().flatten() {
        eprintln!("{}", rejected["error"].as_str().unwrap_or("?"));
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        eprintln!("enforcer: some files were rejected; the policies that were in force for them stay");
        return Ok(2);
    }
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    Ok(0)
}

pub async fn policies(socket: &Path) -> Result<i32, ClientError> {
    let (status, answer) = Client::new(socket).request(Method::GET, "/v1/policies", None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    print_policies(&answer);
    Ok(0)
}

fn print_policies(answer: &Value) {
    for p in answer["policies"].as_array().into_iter().flatten() {
        println!(
            "{}  version {}  hash {}  mode {}  {} tagged cgroup(s)  {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"],
            p["hash"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["tagged_cgroups"],
            p["file"].as_str().unwrap_or("?")
        );
    }
    for r in answer["rejected"].as_array().into_iter().flatten() {
        println!("rejected: {}", r["error"].as_str().unwrap_or("?"));
    }
}

pub async fn status(socket: &Path, as_json: bool) -> Result<i32, ClientError> {
    let (status, answer) = Client::new(socket).request(Method::GET, "/v1/status", None).await?;
    if !status.is_success() {
        return Ok(failed(status, &answer));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
        return Ok(0);
    }
    let d = &answer["daemon"];
    println!(
        "daemon: pid {}, version {}, build {}, started {}{}",
        d["pid"],
        d["version"].as_str().unwrap_or("?"),
        d["build"].as_str().unwrap_or("?"),
        d["started_at"].as_str().unwrap_or("?"),
        if d["adopted"] == true { ", adopted the pinned programs" } else { "" }
    );
    println!("pins: {}", d["pins"].as_str().unwrap_or("?"));
    let k = &answer["kernel"];
    if k["bpf_lsm"] == true {
        println!("BPF LSM: enforced");
    } else {
        println!("BPF LSM: NOT enforced ({})", k["bpf_lsm_missing"].as_str().unwrap_or("?"));
        for part in k["not_enforced"].as_array().into_iter().flatten() {
            println!("  not enforced: {}", part.as_str().unwrap_or("?"));
        }
    }
    println!("policies:");
    print_policies(&answer);
    println!("tagged cgroups:");
    for t in answer["tags"].as_array().into_iter().flatten() {
        let labels: Vec<String> = t["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!(
            "  {}  policy {}  {}",
            t["cgroup"].as_str().unwrap_or("?"),
            t["policy"].as_str().unwrap_or("?"),
            labels.join(" ")
        );
    }
    for t in answer["selected"].as_array().into_iter().flatten() {
        println!(
            "  {}  policy {}  (selector)",
            t["cgroup"].as_str().unwrap_or("?"),
            t["policy"].as_str().unwrap_or("?")
        );
    }
    let c = &answer["counters"];
    println!(
        "counters: lost events {}, reloads {} ({} with rejected files), followers {}, followers cut off {}",
        c["lost_events"], c["reloads"], c["reload_failures"], c["followers"], c["follower_cuts"]
    );
    Ok(0)
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
fn encode(value: &str) -> String {
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
