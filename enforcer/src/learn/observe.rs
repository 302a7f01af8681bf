//! What a run did, from its audit-mode events: every operation the learning
//! policy would have refused, grouped the way a policy names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::roots::{self, Places};

/// How often something was seen, and one example of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub example: String,
}

impl Seen {
    fn add(&mut self, example: &str) {
        if self.count == 0 {
            example.clone_into(&mut self.example);
        }
        self.count += 1;
    }
}

/// A destination: the name it was resolved from (or the address, if no name
/// was), the port and the protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    pub udp: bool,
    /// No name resolved to the address: the entry is the address itself.
    pub by_address: bool,
}

/// Everything a policy would have to allow for the run to pass.
#[derive(Debug, Default)]
pub struct Observed {
    /// Write trees, collapsed (`roots::write_root`).
    pub writes: BTreeMap<PathBuf, Seen>,
    /// Secret trees of the learning policy the run read (go to `sensitive`).
    pub secrets: BTreeMap<PathBuf, Seen>,
    /// Exec trees, collapsed (`roots::exec_root`).
    pub execs: BTreeMap<PathBuf, Seen>,
    pub destinations: BTreeMap<Destination, Seen>,
    /// Destinations connected to after the first secret was read (what
    /// `after_sensitive_read` must hold for the run to pass).
    pub after_secret: BTreeSet<Destination>,
    /// Names asked that no connection went to afterwards.
    pub names_only: BTreeSet<String>,
    pub unix: BTreeMap<String, Seen>,
    pub sockets: BTreeMap<String, Seen>,
    /// Syscalls outside `@default-agent`, by name.
    pub syscalls: BTreeMap<String, Seen>,
    /// Refusals no policy can lift (the floor), as one line each.
    pub floor: BTreeMap<String, Seen>,
    /// Events the kernel could not deliver: the policy may miss what they were.
    pub lost: u64,
}

impl Observed {
    /// From event lines (JSON), those of `cgroup` (and below it) if given.
    /// `secret_trees` are the learning policy's `read_deny` trees.
    pub fn from_lines<'a>(
        lines: impl IntoIterator<Item = &'a str>,
        cgroup: Option<&str>,
        places: &Places,
        secret_trees: &[PathBuf],
    ) -> Self {
        let mut observed = Self::default();
        let mut answered: HashMap<IpAddr, String> = HashMap::new();
        let mut asked = BTreeSet::new();
        let mut connects = Vec::new();
        for line in lines {
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            let text = |key: &str| event[key].as_str().unwrap_or_default();
            if text("kind") == "lost" {
                observed.lost += event["count"].as_u64().unwrap_or(0);
                continue;
            }
            if !matches!(text("action"), "audit" | "deny") {
                continue;
            }
            if let Some(cgroup) = cgroup
                && !below(text("cgroup"), cgroup)
            {
                continue;
            }
            observed.add(&event, places, secret_trees, &mut answered, &mut asked, &mut connects);
        }
        for Connect { addr, port, udp, after_secret } in connects {
            let (host, by_address) = match answered.get(&addr) {
                Some(name) => (name.clone(), false),
                None => (addr.to_string(), true),
            };
            asked.remove(&host);
            let destination = Destination { host, port, udp, by_address };
            if after_secret {
                observed.after_secret.insert(destination.clone());
            }
            observed.destinations.entry(destination).or_default().add(&format!("{addr}:{port}"));
        }
        observed.names_only = asked;
        observed
    }

    fn add(
        &mut self,
        event: &Value,
        places: &Places,
        secret_trees: &[PathBuf],
        answered: &mut HashMap<IpAddr, String>,
        asked: &mut BTreeSet<String>,
        connects: &mut Vec<Connect>,
    ) {
        let text = |key: &str| event[key].as_str().unwrap_or_default();
        let path = text("path");
        match (text("kind"), text("reason")) {
            ("file_write", "outside_write_trees") => {
                self.writes.entry(roots::write_root(Path::new(path), places)).or_default().add(path);
            }
            ("file_read" | "file_write", "read_deny") => {
                let tree = secret_trees.iter().find(|t| Path::new(path).starts_with(t));
                let tree = tree.cloned().unwrap_or_else(|| PathBuf::from(path));
                self.secrets.entry(tree).or_default().add(path);
            }
            ("exec", "outside_exec_trees") => {
                self.execs.entry(roots::exec_root(Path::new(path))).or_default().add(path);
            }
            ("connect" | "sendmsg", "not_allowed") => {
                let (Some(addr), Some(port)) = (text("daddr").parse().ok(), event["dport"].as_u64()) else { return };
                if let Some(name) = event["resolved_from"].as_str() {
                    answered.insert(addr, name.to_owned());
                }
                let after_secret = !self.secrets.is_empty();
                connects.push(Connect {
                    addr,
                    port: u16::try_from(port).unwrap_or(0),
                    udp: text("proto") == "udp",
                    after_secret,
                });
            }
            ("dns", _) => {
                let name = text("qname").to_ascii_lowercase();
                for addr in event["answers"].as_array().into_iter().flatten() {
                    if let Some(addr) = addr.as_str().and_then(|a| a.parse().ok()) {
                        answered.insert(addr, name.clone());
                    }
                }
                asked.insert(name);
            }
            ("unix_connect", _) => self.unix.entry(path.to_owned()).or_default().add(text("comm")),
            ("socket", _) => self.sockets.entry(text("class").to_owned()).or_default().add(text("comm")),
            ("syscall", _) => self.syscalls.entry(text("syscall").to_owned()).or_default().add(text("comm")),
            ("floor", _) => {
                let what = format!("{} {}", text("op"), path).trim().to_owned();
                self.floor.entry(what).or_default().add(text("comm"));
            }
            _ => {}
        }
    }
}

/// A connection or datagram, before its address is named.
struct Connect {
    addr: IpAddr,
    port: u16,
    udp: bool,
    after_secret: bool,
}

/// Whether cgroup path `path` is `cgroup` or below it.
fn below(path: &str, cgroup: &str) -> bool {
    let cgroup = cgroup.trim_end_matches('/');
    path == cgroup || path.strip_prefix(cgroup).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places {
        Places { workspace: "/workspace/project".into(), home: "/root".into() }
    }

    #[test]
    fn groups_what_the_learning_policy_would_have_refused() {
        let lines = [
            r#"{"kind":"file_write","action":"audit","reason":"outside_write_trees","path":"/workspace/project/a/b.o","cgroup":"/a"}"#,
            r#"{"kind":"file_write","action":"audit","reason":"outside_write_trees","path":"/tmp/x/y","cgroup":"/a"}"#,
            r#"{"kind":"file_read","action":"audit","reason":"read_deny","path":"/root/.aws/credentials","cgroup":"/a"}"#,
            r#"{"kind":"exec","action":"audit","reason":"outside_exec_trees","path":"/usr/bin/git","cgroup":"/a"}"#,
            r#"{"kind":"dns","action":"audit","reason":"not_allowed","qname":"Git.Corp.test","qtype":"A","answers":["10.0.0.2"],"cgroup":"/a"}"#,
            r#"{"kind":"dns","action":"audit","reason":"not_allowed","qname":"unused.test","qtype":"A","cgroup":"/a"}"#,
            r#"{"kind":"connect","action":"audit","reason":"not_allowed","daddr":"10.0.0.2","dport":443,"proto":"tcp","cgroup":"/a/b"}"#,
            r#"{"kind":"sendmsg","action":"audit","reason":"not_allowed","daddr":"192.0.2.1","dport":123,"proto":"udp","cgroup":"/a"}"#,
            r#"{"kind":"syscall","action":"audit","reason":"not_allowed","syscall":"io_uring_setup","comm":"x","cgroup":"/a"}"#,
            r#"{"kind":"file_write","action":"audit","reason":"outside_write_trees","path":"/elsewhere","cgroup":"/other"}"#,
            r#"{"kind":"lost","count":3}"#,
            "not json",
        ];
        let observed = Observed::from_lines(lines, Some("/a"), &places(), &[PathBuf::from("/root/.aws")]);
        assert_eq!(
            observed.writes.keys().collect::<Vec<_>>(),
            [Path::new("/tmp"), Path::new("/workspace/project")],
            "{observed:?}"
        );
        assert_eq!(observed.secrets.keys().collect::<Vec<_>>(), [Path::new("/root/.aws")]);
        assert_eq!(observed.execs.keys().collect::<Vec<_>>(), [Path::new("/usr")]);
        let destinations: Vec<_> = observed.destinations.keys().map(|d| (d.host.as_str(), d.port, d.udp)).collect();
        assert_eq!(destinations, [("192.0.2.1", 123, true), ("git.corp.test", 443, false)]);
        assert_eq!(observed.names_only.iter().collect::<Vec<_>>(), ["unused.test"]);
        assert!(observed.syscalls.contains_key("io_uring_setup"));
        assert_eq!(observed.lost, 3);
    }
}
