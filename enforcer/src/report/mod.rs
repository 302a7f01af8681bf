//! `enforcer report`: a digest of the event files for auditors (the
//! daemon's, or an `enforcer run --events` file): per policy and agent what
//! was refused, grouped by reason and target, what is new, the top talkers
//! and a timeline; as Markdown, a self-contained HTML page, or JSON.

mod digest;
mod html;
mod markdown;
mod read;

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

pub use digest::Digest;
use digest::{Builder, Filter};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Md,
    Html,
    Json,
}

pub struct Options {
    pub files: Vec<PathBuf>,
    pub since: Option<String>,
    pub policy: Option<String>,
    /// A JSON report from before: its rows are not new.
    pub previous: Option<PathBuf>,
    pub format: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--since {0}: neither a duration (`24h`) nor an RFC 3339 time (`2026-12-07T00:00:00Z`)")]
    Since(String),
    #[error("{}: not a JSON report of `enforcer report --format json` ({source})", path.display())]
    Previous { path: PathBuf, source: serde_json::Error },
    #[error(
        "no events file given, and none at {0}\nhint: name the files: `enforcer report /var/log/enforcer/events.jsonl*` \
         or an `enforcer run --events` file"
    )]
    NoFiles(String),
}

/// `enforcer report`: the report's text, or 2 with the error printed.
#[must_use]
pub fn main(opts: &Options) -> i32 {
    match report(opts) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("enforcer report: {e}");
            2
        }
    }
}

/// The report `opts` asks for.
pub fn report(opts: &Options) -> Result<String, ReportError> {
    let digest = digest(opts)?;
    Ok(match opts.format {
        Format::Md => markdown::render(&digest),
        Format::Html => html::render(&digest),
        Format::Json => serde_json::to_string_pretty(&digest).unwrap_or_default() + "\n",
    })
}

/// Reads the files into a digest.
pub fn digest(opts: &Options) -> Result<Digest, ReportError> {
    let since = opts
        .since
        .as_deref()
        .map(|s| crate::events::parse_since(s).ok_or_else(|| ReportError::Since(s.to_owned())))
        .transpose()?
        .map(|at| at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0)));
    let known = match &opts.previous {
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| ReportError::Read { path: path.clone(), source })?;
            let previous: Digest =
                serde_json::from_slice(&text).map_err(|source| ReportError::Previous { path: path.clone(), source })?;
            digest::keys_of(&previous)
        }
        None => std::collections::HashSet::default(),
    };
    let files = if opts.files.is_empty() { daemon_files()? } else { opts.files.clone() };
    let mut builder = Builder::new(Filter { since, policy: opts.policy.clone(), known });
    for file in &files {
        read_file(file, &mut builder).map_err(|source| ReportError::Read { path: file.clone(), source })?;
    }
    Ok(builder.finish(files.iter().map(|f| f.display().to_string()).collect()))
}

/// The daemon's events file and its rotations, oldest first.
fn daemon_files() -> Result<Vec<PathBuf>, ReportError> {
    let current = PathBuf::from(crate::daemon::config::DEFAULT_EVENTS_FILE);
    let rotated = |n| crate::daemon::fanout::rotated(&current, n);
    let mut files: Vec<PathBuf> = (1..100).map(rotated).take_while(|f| f.exists()).collect();
    files.reverse();
    if current.exists() {
        files.push(current);
    }
    if files.is_empty() {
        return Err(ReportError::NoFiles(crate::daemon::config::DEFAULT_EVENTS_FILE.to_owned()));
    }
    Ok(files)
}

fn read_file(path: &Path, builder: &mut Builder) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        builder.line(line.strip_suffix(b"\n").unwrap_or(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the enforcer writes them: a loop refused many times, a
    /// secret read, a name refused, an audited write, a lost count.
    fn lines() -> String {
        let mut text = String::new();
        let line = |ts: &str, rest: &str| format!("{{\"ts\":\"{ts}\",{rest}}}\n");
        let agent = r#""policy":"coding-agent","cgroup":"/agents/a1","comm":"curl","exe":"/usr/bin/curl""#;
        text += &line(
            "2026-12-06T09:00:00Z",
            &format!(
                r#""kind":"connect","action":"deny",{agent},"daddr":"203.0.113.9","dport":22,"resolved_from":null,"reason":"not_allowed""#
            ),
        );
        for s in 0..50 {
            text += &line(
                &format!("2026-12-07T10:00:{s:02}Z"),
                &format!(
                    r#""kind":"connect","action":"deny",{agent},"daddr":"203.0.113.9","dport":22,"resolved_from":null,"reason":"not_allowed""#
                ),
            );
        }
        text += &line(
            "2026-12-07T10:01:00Z",
            &format!(
                r#""kind":"file_read","action":"deny",{agent},"path":"/root/.aws/credentials","reason":"read_deny""#
            ),
        );
        text += &line(
            "2026-12-07T10:02:00Z",
            r#""policy":"coding-agent","cgroup":"/agents/a1","cgroup_id":9,"kind":"dns","action":"deny","qname":"exfil.evil.test","qtype":"A","reason":"not_allowed""#,
        );
        text += &line(
            "2026-12-07T10:03:00Z",
            r#""kind":"file_write","action":"audit","policy":"learning","cgroup":"/agents/b","comm":"sh","path":"/etc/hosts","reason":"outside_write_trees""#,
        );
        text += &line("2026-12-07T10:04:00Z", r#""kind":"lost","count":3"#);
        text += &line(
            "2026-12-07T10:05:00Z",
            r#""kind":"tagged","cgroup":"/agents/a1","policy":"coding-agent","labels":{}"#,
        );
        text += "{\"ts\":\"2026-12-07T10:06:00Z\",\"kind\":\"conn";
        text
    }

    fn digest_of(since: Option<&str>, policy: Option<&str>) -> Digest {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, lines()).unwrap();
        let opts = Options {
            files: vec![file],
            since: since.map(str::to_owned),
            policy: policy.map(str::to_owned),
            previous: None,
            format: Format::Json,
        };
        digest(&opts).unwrap()
    }

    #[test]
    fn a_loop_is_one_row_with_its_count_per_policy_and_agent() {
        let digest = digest_of(Some("2026-12-07T00:00:00Z"), None);
        assert_eq!((digest.lines, digest.unreadable, digest.refusals, digest.lost), (57, 1, 53, 3));
        let names: Vec<&str> = digest.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["coding-agent", "learning"]);
        let agent = &digest.policies[0].agents[0];
        assert_eq!((agent.cgroup.as_str(), agent.refusals, agent.groups.len()), ("/agents/a1", 52, 3));
        let ssh = &agent.groups[0];
        assert_eq!((ssh.target.as_str(), ssh.count, ssh.reason.as_str()), ("203.0.113.9:22", 50, "not_allowed"));
        assert_eq!(ssh.programs, ["/usr/bin/curl"]);
        assert!(!ssh.new, "seen before the window");
        assert!(agent.groups[1].new && agent.groups[2].new);
        assert_eq!(digest.new_groups, 3, "the read, the name and the audited write");
        assert_eq!(digest.top_agents[0].name, "/agents/a1");
        assert_eq!(digest.top_programs[0].name, "/usr/bin/curl");
        assert_eq!(digest.timeline.denied.iter().sum::<u64>(), 52);
        assert_eq!(digest.timeline.other.iter().sum::<u64>(), 1, "the audited write");
    }

    #[test]
    fn many_targets_under_one_pattern_are_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let dns = |ts: &str, name: &str, qtype: &str| {
            format!(
                "{{\"ts\":\"{ts}\",\"kind\":\"dns\",\"action\":\"deny\",\"policy\":\"p\",\"cgroup\":\"/a\",\"qname\":\
                 \"{name}\",\"qtype\":\"{qtype}\",\"reason\":\"not_allowed\"}}\n"
            )
        };
        let mut text = String::new();
        for i in 0..40 {
            text += &dns(&format!("2026-12-07T10:00:{:02}Z", i % 60), &format!("c{i}x.t.evil.test"), "TXT");
        }
        for name in ["api.github.com", "uploads.github.com"] {
            text += &dns("2026-12-07T11:00:00Z", name, "A");
        }
        std::fs::write(&file, text).unwrap();
        let opts = Options { files: vec![file], since: None, policy: None, previous: None, format: Format::Md };
        let digest = digest(&opts).unwrap();
        let groups = &digest.policies[0].agents[0].groups;
        assert_eq!(groups.len(), 3, "the tunnel is one row, the two names their own: {groups:#?}");
        assert_eq!(
            (groups[0].target.as_str(), groups[0].count, groups[0].targets),
            ("*.t.evil.test TXT", 40, Some(40))
        );
        assert_eq!(groups[0].examples.len(), 3);
        assert!(report(&opts).unwrap().contains("(40 targets, e.g. `c"), "shown with examples");
    }

    #[test]
    fn a_policy_filter_and_every_format() {
        let digest = digest_of(None, Some("learning"));
        assert_eq!((digest.refusals, digest.policies.len()), (1, 1));
        let full = digest_of(None, None);
        assert_eq!(full.refusals, 54);
        let md = markdown::render(&full);
        assert!(md.contains("| 51 |") && md.contains("`203.0.113.9:22`"), "{md}");
        let html = html::render(&full);
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && !html.contains("http"), "{html}");
        assert!(html.contains("/root/.aws/credentials"));
        // Every string is escaped.
        let mut digest = digest_of(None, None);
        digest.policies[0].name = "<script>alert(1)</script>".into();
        assert!(!html::render(&digest).contains("<script>alert"));
        assert!(html.contains("<span class=\"new\">new</span>"));
        let back: Digest = serde_json::from_str(&serde_json::to_string(&full).unwrap()).unwrap();
        assert_eq!(digest::keys_of(&back), digest::keys_of(&full), "a JSON report reads back");
    }
}
