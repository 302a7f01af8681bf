//! The learned policy as TOML a person reviews (every entry says what the
//! run did that needs it), and what a run needs beyond an existing policy.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::observe::{Destination, Observed, Seen};
use super::roots;
use crate::policy::destinations::{Target, host_matches};
use crate::policy::parse::Policy;
use crate::syscalls::groups;

/// A TOML string.
fn quoted(text: &str) -> String {
    toml::Value::from(text).to_string()
}

/// `entries` as a TOML array, one per line, each with its comment.
fn array(out: &mut String, key: &str, entries: &[(String, String)]) {
    if entries.is_empty() {
        let _ = writeln!(out, "{key} = []");
        return;
    }
    let _ = writeln!(out, "{key} = [");
    let width = entries.iter().map(|(e, _)| e.len()).max().unwrap_or(0) + 1;
    for (entry, why) in entries {
        let _ = writeln!(out, "  {:<width$} # {why}", format!("{entry},"));
    }
    let _ = writeln!(out, "]");
}

fn times(seen: &Seen, what: &str) -> String {
    let plural = if seen.count == 1 { "" } else { "s" };
    format!("{} {what}{plural}, e.g. {}", seen.count, seen.example)
}

/// A `network.allow` entry for `destination`.
pub fn destination_entry(destination: &Destination) -> String {
    let host = match destination.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => destination.host.clone(),
    };
    let proto = if destination.udp { "/udp" } else { "/tcp" };
    format!("{host}:{}{proto}", destination.port)
}

/// The learned policy. `secret_trees`: the learning policy's `read_deny`;
/// those the run did not read stay denied.
pub fn policy(name: &str, observed: &Observed, secret_trees: &[PathBuf], source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Learned by `enforcer learn` from {source}.");
    let _ = writeln!(out, "# Every entry is something the run did; review each before enforcing it.");
    let _ = writeln!(out, "name = {}\nmode = \"enforce\"\n\n[files]", quoted(name));
    let writes: Vec<(String, String)> = roots::outermost(observed.writes.keys().cloned())
        .into_iter()
        .map(|tree| {
            let seen = &observed.writes[&tree];
            (quoted(&tree.to_string_lossy()), times(seen, "write"))
        })
        .collect();
    array(&mut out, "write", &writes);
    let denied: Vec<(String, String)> = secret_trees
        .iter()
        .filter(|t| !observed.secrets.contains_key(*t))
        .map(|t| (quoted(&t.to_string_lossy()), "secrets the run did not read: still denied".to_owned()))
        .collect();
    array(&mut out, "read_deny", &denied);
    let sensitive: Vec<(String, String)> = observed
        .secrets
        .iter()
        .map(|(tree, seen)| {
            (quoted(&tree.to_string_lossy()), format!("{}: reading it locks egress", times(seen, "read")))
        })
        .collect();
    if !sensitive.is_empty() {
        let _ = writeln!(out, "# Secrets the run read: allowed to be read, but the first read locks the");
        let _ = writeln!(out, "# agent's network down to network.after_sensitive_read.");
    }
    array(&mut out, "sensitive", &sensitive);

    let _ = writeln!(out, "\n[network]");
    let mut allow: Vec<(String, String)> = observed
        .destinations
        .iter()
        .map(|(d, seen)| {
            let how = if d.by_address { "; no name resolved to it" } else { "" };
            (quoted(&destination_entry(d)), format!("{}{how}", times(seen, "connection")))
        })
        .collect();
    // A name asked but never connected to: refused in enforce mode unless listed.
    for name in &observed.names_only {
        for port in guessed_ports(observed) {
            let entry = quoted(&format!("{name}:{port}/tcp"));
            allow.push((entry, "resolved, never connected to: the port is a guess".into()));
        }
    }
    array(&mut out, "allow", &allow);
    if !observed.secrets.is_empty() {
        let after: Vec<(String, String)> = observed
            .after_secret
            .iter()
            .map(|d| (quoted(&destination_entry(d)), "connected to after a secret was read".to_owned()))
            .collect();
        array(&mut out, "after_sensitive_read", &after);
    }
    let unix: Vec<(String, String)> =
        observed.unix.iter().map(|(path, seen)| (quoted(path), times(seen, "connection by"))).collect();
    array(&mut out, "unix", &unix);
    let sockets: Vec<(String, String)> =
        observed.sockets.iter().map(|(class, seen)| (quoted(class), times(seen, "socket by"))).collect();
    if !sockets.is_empty() {
        array(&mut out, "sockets", &sockets);
    }

    let _ = writeln!(out, "\n[syscalls]");
    let mut syscalls = vec![(quoted(groups::DEFAULT_AGENT), "what shells, compilers and package managers make".into())];
    for (name, seen) in &observed.syscalls {
        let group = groups::GROUPS.iter().find(|g| g.members.contains(&name.as_str()));
        let group = group.map(|g| format!("; in {}", g.name)).unwrap_or_default();
        syscalls.push((quoted(name), format!("{}{group}", times(seen, "call by"))));
    }
    array(&mut out, "allow", &syscalls);

    let _ = writeln!(out, "\n[exec]");
    let execs: Vec<(String, String)> = roots::outermost(observed.execs.keys().cloned())
        .into_iter()
        .map(|tree| {
            let seen = &observed.execs[&tree];
            let writable = if observed.writes.keys().any(|w| tree.starts_with(w) || w.starts_with(&tree)) {
                "; the agent writes there too: it may run what it writes"
            } else {
                ""
            };
            (quoted(&tree.to_string_lossy()), format!("{}{writable}", times(seen, "program run")))
        })
        .collect();
    array(&mut out, "allow", &execs);
    out
}

/// What the run needs that `existing` does not allow: one line per addition,
/// with what the run did that needs it.
pub fn additions(existing: &Policy, observed: &Observed) -> Vec<String> {
    let mut needed = Vec::new();
    let files = existing.files.clone().unwrap_or_default();
    let inside = |path: &Path, trees: &[PathBuf]| trees.iter().any(|t| path.starts_with(t));
    for tree in roots::outermost(observed.writes.keys().cloned()) {
        if !inside(&tree, &files.write) {
            let seen = &observed.writes[&tree];
            needed.push(format!("files.write += {}  ({})", quoted(&tree.to_string_lossy()), times(seen, "write")));
        }
    }
    for (tree, seen) in &observed.secrets {
        if inside(tree, &files.read_deny) {
            needed.push(format!(
                "files.read_deny -= {}  ({}: the policy refuses it; if the agent must read it, move it to files.sensitive)",
                quoted(&tree.to_string_lossy()),
                times(seen, "read")
            ));
        } else if !inside(tree, &files.sensitive) {
            needed.push(format!("files.sensitive += {}  ({})", quoted(&tree.to_string_lossy()), times(seen, "read")));
        }
    }
    let network = existing.network.as_ref();
    for (destination, seen) in &observed.destinations {
        if !network.is_some_and(|n| allows(&n.allow, destination)) {
            let entry = quoted(&destination_entry(destination));
            needed.push(format!("network.allow += {entry}  ({})", times(seen, "connection")));
        }
    }
    for name in &observed.names_only {
        let asked = |n: &crate::policy::parse::Network| {
            n.allow.iter().any(
                |(d, _)| matches!(&d.target, Target::Host { name: h, wildcard } if host_matches(h, *wildcard, name)),
            )
        };
        if !network.is_some_and(asked) {
            for port in guessed_ports(observed) {
                let entry = quoted(&format!("{name}:{port}/tcp"));
                needed.push(format!("network.allow += {entry}  (resolved, never connected to: the port is a guess)"));
            }
        }
    }
    for (path, seen) in &observed.unix {
        if !network.is_some_and(|n| n.unix.contains(path)) {
            needed.push(format!("network.unix += {}  ({})", quoted(path), times(seen, "connection by")));
        }
    }
    for (class, seen) in &observed.sockets {
        if !network.is_some_and(|n| n.sockets.contains(&class.as_str())) {
            needed.push(format!("network.sockets += {}  ({})", quoted(class), times(seen, "socket by")));
        }
    }
    for (name, seen) in &observed.syscalls {
        if !existing.syscalls.as_ref().is_some_and(|s| s.allow.contains(name)) {
            needed.push(format!("syscalls.allow += {}  ({})", quoted(name), times(seen, "call by")));
        }
    }
    let exec = existing.exec.clone().unwrap_or_default();
    for tree in roots::outermost(observed.execs.keys().cloned()) {
        if existing.exec.is_some() && !inside(&tree, &exec.allow) {
            let seen = &observed.execs[&tree];
            needed.push(format!("exec.allow += {}  ({})", quoted(&tree.to_string_lossy()), times(seen, "program run")));
        }
    }
    needed
}

/// The ports for a name the run resolved but never connected to: those it
/// connected to elsewhere, or 443.
fn guessed_ports(observed: &Observed) -> std::collections::BTreeSet<u16> {
    let ports: std::collections::BTreeSet<u16> = observed.destinations.keys().map(|d| d.port).collect();
    if ports.is_empty() { [443].into() } else { ports }
}

/// Whether an `allow` list lets `destination` through.
fn allows(
    allow: &[(crate::policy::destinations::Destination, crate::policy::parse::Location)],
    destination: &Destination,
) -> bool {
    let proto = if destination.udp { enforcer_common::net::PROTO_UDP } else { enforcer_common::net::PROTO_TCP };
    allow.iter().any(|(entry, _)| {
        if !entry.ports.contains(&destination.port) || entry.protos & proto == 0 {
            return false;
        }
        match &entry.target {
            Target::Host { name, wildcard } => {
                !destination.by_address && host_matches(name, *wildcard, &destination.host)
            }
            Target::Net { addr, prefix } => destination.host.parse::<IpAddr>().is_ok_and(|ip| {
                let v6 = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                crate::policy::destinations::mask(v6, *prefix) == *addr
            }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::roots::Places;

    fn observed() -> Observed {
        let lines = [
            r#"{"kind":"file_write","action":"audit","reason":"outside_write_trees","path":"/workspace/p/out.o"}"#,
            r#"{"kind":"file_write","action":"audit","reason":"outside_write_trees","path":"/root/.cache/pip/x/y"}"#,
            r#"{"kind":"exec","action":"audit","reason":"outside_exec_trees","path":"/usr/bin/git"}"#,
            r#"{"kind":"dns","action":"audit","reason":"not_allowed","qname":"git.corp.test","qtype":"A","answers":["10.0.0.2"]}"#,
            r#"{"kind":"connect","action":"audit","reason":"not_allowed","daddr":"10.0.0.2","dport":443,"proto":"tcp"}"#,
            r#"{"kind":"file_read","action":"audit","reason":"read_deny","path":"/root/.netrc"}"#,
            r#"{"kind":"connect","action":"audit","reason":"not_allowed","daddr":"10.0.0.2","dport":443,"proto":"tcp"}"#,
            r#"{"kind":"syscall","action":"audit","reason":"not_allowed","syscall":"io_uring_setup","comm":"x"}"#,
        ];
        let places = Places { workspace: "/workspace/p".into(), home: "/root".into() };
        Observed::from_lines(lines, None, &places, &[PathBuf::from("/root/.netrc"), PathBuf::from("/root/.aws")])
    }

    #[test]
    fn the_learned_policy_loads_and_explains_every_entry() {
        let secrets = [PathBuf::from("/root/.netrc"), PathBuf::from("/root/.aws")];
        let text = policy("learned", &observed(), &secrets, "a test");
        let (parsed, _) = crate::policy::parse::parse(&text, Path::new("learned.toml")).expect(&text);
        let files = parsed.files.expect("[files]");
        assert_eq!(files.write, [PathBuf::from("/root/.cache"), PathBuf::from("/workspace/p")], "{text}");
        assert_eq!(files.sensitive, [PathBuf::from("/root/.netrc")], "secrets read go to sensitive: {text}");
        assert_eq!(files.read_deny, [PathBuf::from("/root/.aws")], "secrets not read stay denied: {text}");
        let network = parsed.network.expect("[network]");
        assert_eq!(network.allow.len(), 1, "{text}");
        assert!(matches!(&network.allow[0].0.target, Target::Host { name, .. } if name == "git.corp.test"), "{text}");
        assert_eq!(network.after_sensitive_read.len(), 1, "connected to after the read: {text}");
        assert!(parsed.syscalls.expect("[syscalls]").allow.contains("io_uring_setup"), "{text}");
        assert_eq!(parsed.exec.expect("[exec]").allow, [PathBuf::from("/usr")], "{text}");
        assert!(text.contains("2 connections, e.g. 10.0.0.2:443"), "{text}");
    }

    #[test]
    fn additions_name_only_what_the_policy_lacks_and_why() {
        let existing = "name = \"x\"\n[files]\nwrite = [\"/workspace\"]\nread_deny = [\"/root/.netrc\"]\n\
                        [network]\nallow = [\"*.corp.test:443\"]\n[syscalls]\nallow = [\"@default-agent\"]\n[exec]\nallow = [\"/usr\"]\n";
        let (existing, _) = crate::policy::parse::parse(existing, Path::new("x.toml")).expect("parses");
        let needed = additions(&existing, &observed());
        assert_eq!(needed.len(), 3, "{needed:#?}");
        assert!(
            needed[0].starts_with("files.write += \"/root/.cache\"  (1 write, e.g. /root/.cache/pip/x/y)"),
            "{needed:#?}"
        );
        assert!(needed[1].starts_with("files.read_deny -= \"/root/.netrc\""), "{needed:#?}");
        assert!(needed[2].starts_with("syscalls.allow += \"io_uring_setup\""), "{needed:#?}");
    }
}
