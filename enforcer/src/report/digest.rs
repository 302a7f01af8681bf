//! From event lines to a digest: refusals grouped by policy, agent (the
//! cgroup), and what was refused (kind, action, reason, target), so a loop
//! that was refused 10 000 times is one row with its count.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use super::read::Line;

/// Rows shown per agent; the rest are counted.
pub const GROUPS_PER_AGENT: usize = 25;
/// Top talkers shown.
const TOP: usize = 10;
/// Programs named per row.
const PROGRAMS_PER_GROUP: usize = 3;
/// More distinct targets than this under one pattern become one row (a
/// DNS tunnel's names, a scan's ports, a tree of files).
const COLLAPSE_OVER: usize = 8;
/// Targets named in a collapsed row.
const EXAMPLES: usize = 3;
/// About this many bars in the timeline.
const BUCKETS: u64 = 60;

/// The digest (`enforcer report --format json` writes it as it is).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Digest {
    /// When the report was made.
    pub generated: String,
    /// The window: refusals at or after `since` (none: all).
    pub since: Option<String>,
    /// Only this policy's refusals, if given.
    pub policy: Option<String>,
    pub files: Vec<String>,
    /// Lines read, in the window or not.
    pub lines: u64,
    /// Lines that are not events (not JSON, or cut short).
    pub unreadable: u64,
    /// Refusals (and audited operations) in the window.
    pub refusals: u64,
    /// Events the kernel could not deliver, in the window (`lost` lines).
    pub lost: u64,
    /// The first and last refusal in the window.
    pub first: Option<String>,
    pub last: Option<String>,
    /// Rows never seen before: not in the previous report given, nor in
    /// the files before the window.
    pub new_groups: u64,
    pub policies: Vec<PolicyDigest>,
    pub top_agents: Vec<Talker>,
    pub top_programs: Vec<Talker>,
    pub timeline: Timeline,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PolicyDigest {
    pub name: String,
    pub refusals: u64,
    pub agents: Vec<AgentDigest>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AgentDigest {
    /// The agent's cgroup (`(no cgroup)` for lines without one).
    pub cgroup: String,
    pub refusals: u64,
    /// The most frequent rows, at most [`GROUPS_PER_AGENT`].
    pub groups: Vec<Group>,
    /// Rows left out, and their refusals.
    pub more_groups: u64,
    pub more_refusals: u64,
}

/// One row: refusals of one kind, action, reason and target.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Group {
    pub kind: String,
    pub action: String,
    pub reason: String,
    pub target: String,
    pub count: u64,
    pub first: String,
    pub last: String,
    /// A few of the programs that did it.
    pub programs: Vec<String>,
    /// Never seen before (see [`Digest::new_groups`]).
    pub new: bool,
    /// A row that stands for many targets under one pattern (`target`,
    /// e.g. `*.x.exfil.example`): how many, and a few of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Talker {
    pub name: String,
    pub refusals: u64,
}

/// Refusals per time bucket, denials apart from the rest (audit, kill,
/// allowed sensitive reads).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// The first bucket's start (Unix seconds) and each bucket's length.
    pub start: i64,
    pub bucket_s: u64,
    pub denied: Vec<u64>,
    pub other: Vec<u64>,
}

/// What to count.
pub struct Filter {
    /// Unix seconds.
    pub since: Option<i64>,
    pub policy: Option<String>,
    /// Row keys of a previous report: rows in it are not new.
    pub known: HashSet<String>,
}

/// A row's counts while reading.
struct Counting {
    count: u64,
    first: String,
    last: String,
    programs: Vec<String>,
}

/// The digest being built.
pub struct Builder {
    filter: Filter,
    /// Rows by key (see [`row_key`]).
    rows: HashMap<String, Counting>,
    /// Keys seen before the window.
    before: HashSet<String>,
    agents: HashMap<String, u64>,
    programs: HashMap<String, u64>,
    /// Each refusal's second and whether it was denied.
    times: Vec<(i64, bool)>,
    key: String,
    digest: Digest,
}

/// A row's key: policy, cgroup, kind, action, reason and target, split by
/// NUL (no field holds one: JSON strings from the kernel are cut at it).
fn row_key(out: &mut String, line: &Line<'_>) {
    out.clear();
    for field in [
        line.policy.as_deref().unwrap_or(""),
        line.cgroup.as_deref().unwrap_or("(no cgroup)"),
        &line.kind,
        line.action.as_deref().unwrap_or(""),
        line.reason.as_deref().unwrap_or(""),
    ] {
        out.push_str(field);
        out.push('\0');
    }
    line.target(out);
}

impl Builder {
    #[must_use]
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            rows: HashMap::new(),
            before: HashSet::new(),
            agents: HashMap::new(),
            programs: HashMap::new(),
            times: Vec::new(),
            key: String::new(),
            digest: Digest::default(),
        }
    }

    /// One line of a file.
    pub fn line(&mut self, raw: &[u8]) {
        self.digest.lines += 1;
        let Ok(line) = serde_json::from_slice::<Line>(raw) else {
            self.digest.unreadable += 1;
            return;
        };
        let Some(at) = super::read::unix_seconds(&line.ts) else {
            self.digest.unreadable += 1;
            return;
        };
        let in_window = self.filter.since.is_none_or(|since| at >= since);
        if line.kind == "lost" {
            self.digest.lost += line.count.unwrap_or(0) * u64::from(in_window);
            return;
        }
        // The daemon's own lines are not judged.
        let Some(action) = line.action.as_deref() else { return };
        if self.filter.policy.as_ref().is_some_and(|p| line.policy.as_deref() != Some(p)) {
            return;
        }
        row_key(&mut self.key, &line);
        if !in_window {
            if !self.before.contains(self.key.as_str()) {
                self.before.insert(self.key.clone());
            }
            return;
        }
        self.count(&line, action, at);
    }

    fn count(&mut self, line: &Line<'_>, action: &str, at: i64) {
        self.digest.refusals += 1;
        let ts = &*line.ts;
        if self.digest.first.as_deref().is_none_or(|first| ts < first) {
            self.digest.first = Some(ts.to_owned());
        }
        if self.digest.last.as_deref().is_none_or(|last| ts > last) {
            self.digest.last = Some(ts.to_owned());
        }
        let program = line.program();
        if let Some(row) = self.rows.get_mut(self.key.as_str()) {
            row.count += 1;
            if ts < row.first.as_str() {
                ts.clone_into(&mut row.first);
            }
            if ts > row.last.as_str() {
                ts.clone_into(&mut row.last);
            }
            if let Some(program) = program
                && row.programs.len() < PROGRAMS_PER_GROUP
                && !row.programs.iter().any(|p| p == program)
            {
                row.programs.push(program.to_owned());
            }
        } else {
            let row = Counting {
                count: 1,
                first: ts.to_owned(),
                last: ts.to_owned(),
                programs: program.into_iter().map(str::to_owned).collect(),
            };
            self.rows.insert(self.key.clone(), row);
        }
        bump(&mut self.agents, line.cgroup.as_deref().unwrap_or("(no cgroup)"));
        if let Some(program) = program {
            bump(&mut self.programs, program);
        }
        self.times.push((at, action == "deny"));
    }

    /// The digest, with `files` named.
    #[must_use]
    pub fn finish(self, files: Vec<String>) -> Digest {
        let Self { filter, rows, before, agents, programs, times, mut digest, .. } = self;
        digest.files = files;
        digest.generated = crate::events::Clock::now();
        digest.since = filter.since.map(|s| {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0));
            humantime::format_rfc3339_seconds(at).to_string()
        });
        digest.policy = filter.policy;
        let mut policies: HashMap<String, HashMap<String, Vec<Group>>> = HashMap::new();
        for (key, row) in rows {
            let mut fields = key.splitn(6, '\0');
            let mut next = || fields.next().unwrap_or_default().to_owned();
            let (policy, cgroup) = (next(), next());
            let new = !before.contains(&key) && !filter.known.contains(&key);
            digest.new_groups += u64::from(new);
            let group = Group {
                kind: next(),
                action: next(),
                reason: next(),
                target: next(),
                count: row.count,
                first: row.first,
                last: row.last,
                programs: row.programs,
                new,
                targets: None,
                examples: Vec::new(),
            };
            policies.entry(policy).or_default().entry(cgroup).or_default().push(group);
        }
        digest.policies = policies.into_iter().map(|(name, agents)| policy_digest(name, agents)).collect();
        digest.policies.sort_by(|a, b| b.refusals.cmp(&a.refusals).then_with(|| a.name.cmp(&b.name)));
        digest.top_agents = top(agents);
        digest.top_programs = top(programs);
        digest.timeline = timeline(&times);
        digest
    }
}

/// The row keys of a digest (a previous report's, read back).
#[must_use]
pub fn keys_of(digest: &Digest) -> HashSet<String> {
    let mut keys = HashSet::new();
    for policy in &digest.policies {
        for agent in &policy.agents {
            for g in &agent.groups {
                keys.insert(
                    [&policy.name, &agent.cgroup, &g.kind, &g.action, &g.reason, &g.target]
                        .map(String::as_str)
                        .join("\0"),
                );
            }
        }
    }
    keys
}

fn bump(counts: &mut HashMap<String, u64>, name: &str) {
    match counts.get_mut(name) {
        Some(count) => *count += 1,
        None => {
            counts.insert(name.to_owned(), 1);
        }
    }
}

fn policy_digest(name: String, agents: HashMap<String, Vec<Group>>) -> PolicyDigest {
    let mut agents: Vec<AgentDigest> = agents
        .into_iter()
        .map(|(cgroup, groups)| {
            let mut groups = collapse(groups);
            groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.target.cmp(&b.target)));
            let refusals = groups.iter().map(|g| g.count).sum();
            let rest = groups.split_off(groups.len().min(GROUPS_PER_AGENT));
            AgentDigest {
                cgroup,
                refusals,
                groups,
                more_groups: rest.len() as u64,
                more_refusals: rest.iter().map(|g| g.count).sum(),
            }
        })
        .collect();
    agents.sort_by(|a, b| b.refusals.cmp(&a.refusals).then_with(|| a.cgroup.cmp(&b.cgroup)));
    PolicyDigest { name, refusals: agents.iter().map(|a| a.refusals).sum(), agents }
}

/// What many targets of one kind share: a name's parent domain, a path's
/// directory, an address's host (any port). `None`: never collapsed.
fn pattern(kind: &str, target: &str) -> Option<String> {
    match kind {
        "dns" => {
            let (name, qtype) = target.rsplit_once(' ').unwrap_or((target, ""));
            let (_, parent) = name.split_once('.')?;
            parent.contains('.').then(|| format!("*.{parent} {qtype}"))
        }
        "connect" | "sendmsg" => {
            let (host, _) = target.rsplit_once(':')?;
            Some(format!("{host}:*"))
        }
        "file_write" | "file_read" | "exec" | "unix_connect" => {
            let (dir, _) = target.rsplit_once('/')?;
            Some(format!("{dir}/*"))
        }
        _ => None,
    }
}

/// Rows of one kind, action and reason whose targets share a pattern, when
/// there are more than [`COLLAPSE_OVER`] of them, become one row.
fn collapse(groups: Vec<Group>) -> Vec<Group> {
    let mut families: HashMap<(String, String, String, String), Vec<Group>> = HashMap::new();
    let mut kept = Vec::new();
    for group in groups {
        match pattern(&group.kind, &group.target) {
            Some(p) => {
                let key = (group.kind.clone(), group.action.clone(), group.reason.clone(), p);
                families.entry(key).or_default().push(group);
            }
            None => kept.push(group),
        }
    }
    for ((.., pattern), mut members) in families {
        if members.len() <= COLLAPSE_OVER {
            kept.extend(members);
            continue;
        }
        members.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.target.cmp(&b.target)));
        let mut row = members[0].clone();
        row.targets = Some(members.len() as u64);
        row.examples = members.iter().take(EXAMPLES).map(|m| m.target.clone()).collect();
        row.target = pattern;
        for m in &members[1..] {
            row.count += m.count;
            row.new |= m.new;
            if m.first < row.first {
                row.first.clone_from(&m.first);
            }
            if m.last > row.last {
                row.last.clone_from(&m.last);
            }
            for program in &m.programs {
                if row.programs.len() < PROGRAMS_PER_GROUP && !row.programs.contains(program) {
                    row.programs.push(program.clone());
                }
            }
        }
        kept.push(row);
    }
    kept
}

fn top(counts: HashMap<String, u64>) -> Vec<Talker> {
    let mut talkers: Vec<Talker> = counts.into_iter().map(|(name, refusals)| Talker { name, refusals }).collect();
    talkers.sort_by(|a, b| b.refusals.cmp(&a.refusals).then_with(|| a.name.cmp(&b.name)));
    talkers.truncate(TOP);
    talkers
}

/// Buckets of a round length (a minute, 5, 15 minutes, an hour...) giving
/// about [`BUCKETS`] bars.
fn timeline(times: &[(i64, bool)]) -> Timeline {
    let (Some(start), Some(end)) = (times.iter().map(|t| t.0).min(), times.iter().map(|t| t.0).max()) else {
        return Timeline::default();
    };
    let span = u64::try_from(end - start).unwrap_or(0) + 1;
    let bucket_s = [1, 10, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86_400, 7 * 86_400]
        .into_iter()
        .find(|&b| span.div_ceil(b) <= BUCKETS)
        .unwrap_or(30 * 86_400);
    let start = start - start.rem_euclid(i64::try_from(bucket_s).unwrap_or(1));
    let count = usize::try_from(u64::try_from(end - start).unwrap_or(0) / bucket_s + 1).unwrap_or(1);
    let mut timeline = Timeline { start, bucket_s, denied: vec![0; count], other: vec![0; count] };
    for &(at, denied) in times {
        let i = usize::try_from(u64::try_from(at - start).unwrap_or(0) / bucket_s).unwrap_or(0).min(count - 1);
        if denied {
            timeline.denied[i] += 1;
        } else {
            timeline.other[i] += 1;
        }
    }
    timeline
}
