//! Counters for Prometheus (text exposition format 0.0.4).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Counted as lines pass; gauges come from the daemon's state at scrape time.
#[derive(Default)]
pub struct Metrics {
    /// (kind, policy, action) -> lines.
    events: Mutex<BTreeMap<(String, String, String), u64>>,
    pub follower_cuts: AtomicU64,
    /// Lines a cut-off follower did not get.
    pub follower_dropped: AtomicU64,
    pub followers: AtomicU64,
    sink_errors: AtomicU64,
    stdout_dropped: AtomicU64,
    /// Seccomp listeners runtimes handed over (containers supervised).
    pub seccomp_listeners: AtomicU64,
    /// Syscall refusals of the seccomp agent the stream had no room for.
    pub seccomp_dropped: AtomicU64,
}

/// What the daemon knows at scrape time.
pub struct Snapshot {
    pub tagged_cgroups: usize,
    /// Cgroups selectors tagged.
    pub selected_cgroups: usize,
    /// Share of the kernel's selected-cgroup filter bits set, in thousandths.
    pub selected_filter_fill: u64,
    /// (name, version, hash, tagged cgroups).
    pub policies: Vec<(String, u32, String, usize)>,
    pub reloads: u64,
    pub reload_failures: u64,
    pub lost_events: u64,
    /// Resolver refusals the stream had no room for.
    pub dns_refusals_dropped: u64,
    /// Bytes waiting in the ring buffer, and its size.
    pub ring: Option<(u64, u64)>,
    pub lsm_enforced: bool,
    pub not_enforced: usize,
    /// Agents whose egress a sensitive read locked.
    pub egress_locked: usize,
    /// What each agent sent under each upload budget.
    pub upload_budgets: Vec<crate::daemon::wire::BudgetUsed>,
    /// How many destinations each agent reached under its budget of new
    /// destinations.
    pub new_destinations: Vec<crate::daemon::wire::DestinationsUsed>,
}

impl Metrics {
    pub fn count_event(&self, kind: &str, policy: &str, action: &str) {
        if let Ok(mut events) = self.events.lock() {
            // Lookups by borrowed key first: the common case allocates nothing.
            if let Some((_, count)) = events.iter_mut().find(|((k, p, a), _)| k == kind && p == policy && a == action) {
                *count += 1;
            } else {
                events.insert((kind.to_owned(), policy.to_owned(), action.to_owned()), 1);
            }
        }
    }

    pub fn count_sink_error(&self) {
        self.sink_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_stdout_dropped(&self) {
        self.stdout_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The sinks' counters: followers, the file, stdout.
    fn render_sinks(&self, metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)])) {
        let cuts = self.follower_cuts.load(Ordering::Relaxed);
        metric("enforcer_follower_cuts_total", "counter", "Followers cut off for falling behind.", &unlabeled(cuts));
        let dropped = self.follower_dropped.load(Ordering::Relaxed);
        metric(
            "enforcer_follower_dropped_lines_total",
            "counter",
            "Lines cut-off followers did not get.",
            &unlabeled(dropped),
        );
        let followers = self.followers.load(Ordering::Relaxed);
        metric("enforcer_followers", "gauge", "Followers of the event stream now.", &unlabeled(followers));
        let sink_errors = self.sink_errors.load(Ordering::Relaxed);
        metric(
            "enforcer_sink_errors_total",
            "counter",
            "Lines the events file could not take.",
            &unlabeled(sink_errors),
        );
        let listeners = self.seccomp_listeners.load(Ordering::Relaxed);
        metric(
            "enforcer_seccomp_listeners_total",
            "counter",
            "Seccomp listeners OCI runtimes handed to the daemon (containers whose syscalls it judges).",
            &unlabeled(listeners),
        );
        let dropped = self.seccomp_dropped.load(Ordering::Relaxed);
        metric(
            "enforcer_seccomp_refusals_dropped_total",
            "counter",
            "Syscall refusals of containers (syscall events) the stream had no room for.",
            &unlabeled(dropped),
        );
        let stdout_dropped = self.stdout_dropped.load(Ordering::Relaxed);
        metric(
            "enforcer_stdout_dropped_lines_total",
            "counter",
            "Lines stdout (the journal) was too slow to take.",
            &unlabeled(stdout_dropped),
        );
    }

    /// The exposition text.
    #[must_use]
    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let events: Vec<(String, u64)> = self.events.lock().map_or_else(
            |_| Vec::new(),
            |events| {
                events
                    .iter()
                    .map(|((k, p, a), n)| {
                        (format!("{{kind=\"{}\",policy=\"{}\",action=\"{}\"}}", esc(k), esc(p), esc(a)), *n)
                    })
                    .collect()
            },
        );
        metric("enforcer_events_total", "counter", "Event lines streamed, by kind, policy and action.", &events);
        metric(
            "enforcer_lost_events_total",
            "counter",
            "Events the kernel could not put in the full ring buffer.",
            &unlabeled(s.lost_events),
        );
        metric(
            "enforcer_dns_refusals_dropped_total",
            "counter",
            "Resolver refusals (dns events) the stream had no room for.",
            &unlabeled(s.dns_refusals_dropped),
        );
        self.render_sinks(&mut metric);
        metric("enforcer_tagged_cgroups", "gauge", "Tagged agent cgroups.", &unlabeled(s.tagged_cgroups as u64));
        metric(
            "enforcer_selected_cgroups",
            "gauge",
            "Agent cgroups tagged by policy selectors.",
            &unlabeled(s.selected_cgroups as u64),
        );
        let fill = s.selected_filter_fill;
        metric(
            "enforcer_selected_filter_fill_permille",
            "gauge",
            "How full the kernel's filter of selected cgroups is (it only fills; past 500, untagged tasks look up).",
            &unlabeled(fill),
        );
        let policies: Vec<(String, u64)> = s
            .policies
            .iter()
            .map(|(name, version, hash, _)| {
                (format!("{{policy=\"{}\",version=\"{version}\",hash=\"{hash}\"}}", esc(name)), 1)
            })
            .collect();
        metric("enforcer_policy_info", "gauge", "Policy versions in force.", &policies);
        let users: Vec<(String, u64)> = s
            .policies
            .iter()
            .map(|(name, _, _, users)| (format!("{{policy=\"{}\"}}", esc(name)), *users as u64))
            .collect();
        metric("enforcer_policy_tagged_cgroups", "gauge", "Tagged cgroups per policy.", &users);
        metric("enforcer_policy_reloads_total", "counter", "Policy directory reloads.", &unlabeled(s.reloads));
        metric(
            "enforcer_policy_reload_failures_total",
            "counter",
            "Reloads that rejected a file.",
            &unlabeled(s.reload_failures),
        );
        if let Some((used, size)) = s.ring {
            metric(
                "enforcer_ring_buffer_used_bytes",
                "gauge",
                "Bytes of events waiting in the ring buffer.",
                &unlabeled(used),
            );
            metric("enforcer_ring_buffer_size_bytes", "gauge", "The ring buffer's size.", &unlabeled(size));
        }
        metric(
            "enforcer_bpf_lsm_enforced",
            "gauge",
            "1 if the BPF LSM programs are attached.",
            &unlabeled(u64::from(s.lsm_enforced)),
        );
        metric(
            "enforcer_not_enforced_parts",
            "gauge",
            "Policy parts this kernel cannot enforce (--degraded).",
            &unlabeled(s.not_enforced as u64),
        );
        metric(
            "enforcer_agents_egress_locked",
            "gauge",
            "Agents whose egress a sensitive read locked down to after_sensitive_read.",
            &unlabeled(s.egress_locked as u64),
        );
        budget_metrics(&mut metric, &s.upload_budgets);
        destinations_metrics(&mut metric, &s.new_destinations);
        out
    }
}

/// The upload budgets' gauges: used and allowed bytes per agent and budget.
fn budget_metrics(
    metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
    budgets: &[crate::daemon::wire::BudgetUsed],
) {
    let label = |b: &crate::daemon::wire::BudgetUsed| {
        let cgroup = b.cgroup.clone().unwrap_or_else(|| b.cgroup_id.to_string());
        format!("{{cgroup=\"{}\",policy=\"{}\",budget=\"{}\"}}", esc(&cgroup), esc(&b.policy), esc(&b.budget))
    };
    let used: Vec<(String, u64)> = budgets.iter().map(|b| (label(b), b.bytes_used)).collect();
    metric(
        "enforcer_upload_budget_used_bytes",
        "gauge",
        "Bytes an agent sent under an upload budget in its current window.",
        &used,
    );
    let limits: Vec<(String, u64)> = budgets.iter().map(|b| (label(b), b.bytes_limit)).collect();
    metric("enforcer_upload_budget_limit_bytes", "gauge", "Bytes an upload budget allows per window.", &limits);
}

/// The budgets of new destinations' gauges: destinations reached and
/// allowed per agent.
fn destinations_metrics(
    metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
    agents: &[crate::daemon::wire::DestinationsUsed],
) {
    let label = |d: &crate::daemon::wire::DestinationsUsed| {
        let cgroup = d.cgroup.clone().unwrap_or_else(|| d.cgroup_id.to_string());
        format!("{{cgroup=\"{}\",policy=\"{}\"}}", esc(&cgroup), esc(&d.policy))
    };
    let used: Vec<(String, u64)> = agents.iter().map(|d| (label(d), d.used)).collect();
    metric(
        "enforcer_new_destinations_used",
        "gauge",
        "Distinct destinations an agent reached in the current window of its network.new_destinations budget.",
        &used,
    );
    let limits: Vec<(String, u64)> = agents.iter().map(|d| (label(d), d.limit)).collect();
    metric(
        "enforcer_new_destinations_limit",
        "gauge",
        "Distinct destinations per window network.new_destinations allows.",
        &limits,
    );
}

/// The one sample of a metric without labels.
fn unlabeled(value: u64) -> [(String, u64); 1] {
    [(String::new(), value)]
}

/// A label value escaped for the text format.
fn esc(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
