//! What the daemon holds: the policies in force, the tagged cgroups, and the
//! enforcer whose tables express them. Every change goes through here, is
//! published to the kernel in one table swap, and is saved for a restarted
//! daemon to adopt.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ed25519_dalek::VerifyingKey;
use enforcer_common::{
    budget::{BUDGET_NEW_DESTINATIONS, BudgetUseKey, split_budget_key},
    policy::{FileRuleKey, PolicyId, TAG_FROM_EXEC, TagInfo},
};
use serde::{Deserialize, Serialize};

use super::{
    config::Config,
    net_versions,
    policies::{self, Ids, Loaded, Rejected, VersionIds},
    reload::{self, Plan},
    resolvers::Resolvers,
    runs::{self, RunRecord},
    selection::{SelectedCgroup, Selection},
    tagging::{self, NetStep},
    wire::{RunAnswer, RunRequest, Tag, TagRequest},
};
use crate::{
    bpf::{Enforcer, LoadError, NetRuleMaps},
    cgroups::{Cgroup, Hierarchy},
    events::{DaemonEvent, DaemonLine},
    evidence::policy_sig,
    policy::budgets,
    stream::{Labels, PolicyLabel},
};

/// How long the heap a reload used stays mapped after the last reload.
const RELOAD_MEMORY_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

/// A policy version in force, as saved (its text in `versions/<id>-<hash>.toml`
/// of the state directory: written once per version, not on every save).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedPolicy {
    name: String,
    file: PathBuf,
    /// The `PolicyId`.
    id: u16,
    /// The id its destinations are keyed by (states written before there
    /// was one: `id`).
    #[serde(default)]
    net_id: Option<u16>,
    version: u32,
    hash: String,
    /// An `enforcer run`'s own policy.
    #[serde(default)]
    run: bool,
}

/// What a restarted daemon adopts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    build: String,
    lost_reported: u64,
    policies: Vec<SavedPolicy>,
    tags: Vec<Tag>,
    /// Selector slots by policy name (the kernel records cgroups by slot).
    #[serde(default)]
    slots: BTreeMap<String, u32>,
    /// The runs served, by cgroup id.
    #[serde(default)]
    runs: BTreeMap<u64, RunRecord>,
}

/// An error of an API operation, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl From<LoadError> for OpError {
    fn from(e: LoadError) -> Self {
        Self::Failed(e.to_string())
    }
}

/// What one reload did (`POST /v1/reload` answers with it).
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReloadReport {
    /// Policies loaded as a new version: (name, version, hash).
    pub applied: Vec<(String, u32, String)>,
    pub unchanged: Vec<String>,
    pub unloaded: Vec<String>,
    /// Files that were not applied; what was in force stays.
    pub rejected: Vec<Rejected>,
    pub warnings: Vec<String>,
}

/// What the daemon's core starts from.
pub struct Setup {
    pub config: Config,
    /// The configuration file read, if any (protected with the rest).
    pub config_file: Option<PathBuf>,
    pub enforcer: Enforcer,
    pub hierarchy: Hierarchy,
    /// Whether the programs were adopted from an earlier daemon's pins.
    pub adopted: bool,
    /// What the kernel cannot enforce (`--degraded`, missing hooks).
    pub not_enforced: Vec<&'static str>,
    /// The events ring buffer's positions, if they could be mapped.
    pub ring_fill: Option<crate::ring_fill::RingFill>,
    /// Where the resolvers' refusals go (the stream task).
    pub refusals: crate::dns::Refusals,
    /// The keys trusted to sign policies (`policy_keys`; none: any policy).
    pub policy_keys: Vec<VerifyingKey>,
}

pub struct Core {
    pub enforcer: Enforcer,
    /// See [`Setup::policy_keys`].
    policy_keys: Vec<VerifyingKey>,
    pub hierarchy: Hierarchy,
    pub config: Config,
    policies: BTreeMap<String, Loaded>,
    tags: BTreeMap<u64, Tag>,
    ids: Ids,
    /// The files the last reload rejected (in `status` until they load).
    pub rejected: Vec<Rejected>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// When the last reload ended, until the memory it used is given back
    /// (see [`Core::release_memory_when_quiet`]).
    reloaded_at: Option<std::time::Instant>,
    pub lost_reported: u64,
    pub labels: Arc<Mutex<Labels>>,
    /// What the kernel cannot enforce (`--degraded`).
    pub not_enforced: Vec<&'static str>,
    pub started_at: String,
    pub adopted: bool,
    /// The configuration file read, if any (protected with the rest).
    pub config_file: Option<PathBuf>,
    selection: Selection,
    /// Policies whose file was removed while cgroups are tagged with them:
    /// in force for those, but their selectors are not.
    orphaned: HashSet<String>,
    /// The daemon's lines (selections here), to the stream task: the one
    /// channel every daemon line goes through.
    notices: tokio::sync::mpsc::UnboundedSender<DaemonLine>,
    /// The events ring buffer's positions (metrics).
    pub ring_fill: Option<crate::ring_fill::RingFill>,
    /// The policies' resolvers and the grants of what they answered.
    pub resolvers: Resolvers,
    /// `enforcer run`s served, by their cgroup's id.
    runs: BTreeMap<u64, RunRecord>,
}

impl Core {
    /// Restores the saved state (the policies and tags an earlier daemon
    /// had in force), then loads the policy directory; publishes it all in
    /// one swap.
    pub fn start(
        setup: Setup,
        notices: tokio::sync::mpsc::UnboundedSender<DaemonLine>,
    ) -> Result<(Self, ReloadReport), LoadError> {
        let Setup {
            config,
            config_file,
            mut enforcer,
            hierarchy,
            adopted,
            not_enforced,
            ring_fill,
            refusals,
            policy_keys,
        } = setup;
        // Taken once: the loader hands the map out a single time.
        let grants = enforcer.take_dns_grants().ok_or(LoadError::MissingMap("DNS_GRANTS"))?;
        let resolvers = Resolvers::new(grants, config.dns.upstream, refusals);
        let labels = Labels { policies: HashMap::new(), names: crate::cgroups::Names::new(hierarchy.clone()) };
        let mut core = Self {
            enforcer,
            hierarchy,
            config,
            policies: BTreeMap::new(),
            tags: BTreeMap::new(),
            ids: Ids::new(),
            rejected: Vec::new(),
            reloads: 0,
            reload_failures: 0,
            reloaded_at: None,
            lost_reported: 0,
            labels: Arc::new(Mutex::new(labels)),
            not_enforced,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            adopted,
            config_file,
            selection: Selection::default(),
            orphaned: HashSet::new(),
            notices,
            ring_fill,
            resolvers,
            runs: BTreeMap::new(),
            policy_keys,
        };
        let mut report = ReloadReport::default();
        let state = core.read_state();
        if adopted {
            core.lost_reported = state.lost_reported;
        }
        core.selection.slots = state.slots;
        for saved in state.policies {
            let source =
                std::fs::read_to_string(core.version_file(PolicyId(saved.id), &saved.hash)).unwrap_or_default();
            let ids = VersionIds {
                id: PolicyId(saved.id),
                net_id: PolicyId(saved.net_id.unwrap_or(saved.id)),
                version: saved.version,
            };
            match policies::compile_file(&saved.file, &source, ids) {
                Ok(mut loaded) => {
                    // A run's own policy keeps its name (the file's says less).
                    loaded.run = saved.run;
                    loaded.name.clone_from(&saved.name);
                    core.policies.insert(saved.name.clone(), loaded);
                }
                Err(e) => report.warnings.push(format!(
                    "the saved version {} of policy `{}` no longer compiles: {e}",
                    saved.version, saved.name
                )),
            }
        }
        core.runs = state.runs;
        for tag in state.tags {
            if !core.still_there(&tag) {
                report.warnings.push(format!("cgroup {} is gone: its tag is dropped", tag.cgroup));
            } else if !core.policies.contains_key(&tag.policy) {
                report
                    .warnings
                    .push(format!("cgroup {}: its policy `{}` could not be restored", tag.cgroup, tag.policy));
            } else {
                core.tags.insert(tag.cgroup_id, tag);
            }
        }
        // What the pinned maps hold for versions not restored (a lost state
        // directory, another daemon's pins) must not serve the new version
        // that gets the same id: rules, resolvers and grants go.
        let restored: HashSet<PolicyId> = core.policies.values().map(|p| p.id).collect();
        core.resolvers.retire(&restored);
        let tagged: HashSet<u64> = core.tags.keys().copied().collect();
        if let Err(e) = core.enforcer.armed.retain(|id| tagged.contains(&id)) {
            report.warnings.push(format!("cannot forget the armed cgroups no longer tagged: {e}"));
        }
        let restored_nets: HashSet<PolicyId> = core.policies.values().map(|p| p.net_id).collect();
        if let Err(e) = core.enforcer.net.retain(&restored, &restored_nets) {
            report.warnings.push(format!("cannot remove the network rules of versions no longer in force: {e}"));
        }
        let max_id = policies::ids_in_use(core.policies.values()).last().copied().unwrap_or(PolicyId::NONE);
        core.ids = Ids::after(max_id);
        let mut reload = core.reload_inner(true);
        reload.warnings.splice(0..0, report.warnings);
        Ok((core, reload))
    }

    /// Loads the policy directory again: changed files become new versions,
    /// switched to atomically; files that fail leave what was in force.
    pub fn reload(&mut self) -> ReloadReport {
        self.reload_inner(false)
    }

    fn reload_inner(&mut self, publish_always: bool) -> ReloadReport {
        let started = std::time::Instant::now();
        self.reloads += 1;
        let scan = reload::scan(&self.config.policies, &self.policy_keys);
        tracing::debug!("reload: files read after {:?}", started.elapsed());
        let tags = &self.tags;
        let users = |name: &str| tags.values().filter(|t| t.policy == name).count();
        let plan = reload::plan(scan, &self.policies, &users, &mut self.ids);
        let Plan { mut fresh, mut unload, orphaned, mut report } = plan;
        self.orphaned = orphaned;
        tracing::debug!("reload: compiled after {:?}", started.elapsed());
        let applied = if fresh.is_empty() && unload.is_empty() && !publish_always {
            Ok(Vec::new())
        } else {
            self.apply(&fresh, &unload)
        };
        match applied {
            Ok(warnings) => report.warnings.extend(warnings),
            Err(e) => {
                for loaded in fresh.values() {
                    report.rejected.push(Rejected { file: loaded.file.clone(), error: format!("cannot apply: {e}") });
                }
                fresh.clear();
                unload.clear();
            }
        }
        for (name, loaded) in fresh {
            report.applied.push((name.clone(), loaded.version, loaded.hash.clone()));
            self.policies.insert(name, loaded);
        }
        for name in unload {
            self.policies.remove(&name);
            report.unloaded.push(name);
        }
        if let Err(e) = self.reconcile() {
            report.warnings.push(format!("cannot bring the selected cgroups up to date: {e}"));
        }
        if !report.rejected.is_empty() {
            self.reload_failures += 1;
        }
        self.rejected.clone_from(&report.rejected);
        self.save();
        self.reloaded_at = Some(std::time::Instant::now());
        report
    }

    /// Gives the heap a reload used back to the kernel once reloads have
    /// stopped for [`RELOAD_MEMORY_KEPT`]: a burst of changes (an editor's
    /// saves, a rollout) finds that memory still mapped, with no page faults
    /// on the way to the new verdict (about a millisecond for a
    /// 10 000-destination file), and a quiet daemon stays small.
    pub fn release_memory_when_quiet(&mut self) {
        if self.reloaded_at.is_some_and(|at| at.elapsed() >= RELOAD_MEMORY_KEPT) {
            self.reloaded_at = None;
            super::release_free_memory();
        }
    }

    /// Publishes the policies in force with `fresh` replacing (or joining)
    /// them and `unload` gone; on error nothing changed in the kernel.
    /// Returns what could not be cleaned up or widened after the swap.
    fn apply(&mut self, fresh: &BTreeMap<String, Loaded>, unload: &[String]) -> Result<Vec<String>, LoadError> {
        let timing = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let in_force = |name: &String| fresh.get(name).or_else(|| self.policies.get(name));
        let names: BTreeSet<&String> =
            self.policies.keys().chain(fresh.keys()).filter(|n| !unload.contains(n)).collect();
        let mut file_rules: HashMap<FileRuleKey, u16> = HashMap::new();
        for loaded in names.iter().filter_map(|n| in_force(n)) {
            for &(key, flags) in &loaded.file_rules {
                *file_rules.entry(key).or_default() |= flags;
            }
        }
        let tags: HashMap<_, _> = self
            .tags
            .values()
            .filter_map(|t| {
                let armed = t.from_exec && self.enforcer.armed.contains(t.cgroup_id);
                in_force(&t.policy).map(|p| (t.cgroup_id, (t.level, tagging::tag_info(p.tag, t, armed))))
            })
            .collect();
        let live: HashSet<PolicyId> = names.iter().filter_map(|n| in_force(n)).map(|p| p.id).collect();
        let recorded = self.enforcer.selected.all();
        let built = self.selection.table(names.iter().filter_map(|n| in_force(n)), &self.orphaned, &recorded)?;
        // Recorded cgroups stay visible to the tag check through the swap.
        let mut extra_filter = built.levels;
        for (id, selected) in recorded {
            extra_filter.insert(id, selected.level);
        }
        let old_live: HashSet<PolicyId> = self.policies.values().map(|p| p.id).collect();
        let old_nets: HashSet<PolicyId> = self.policies.values().map(|p| p.net_id).collect();
        let planned = timing.map(|t| t.elapsed());
        // Sends are counted before a budget is in force, and TLS names
        // judged before a policy that checks them is (no-ops once done).
        if fresh.values().any(|p| p.net.as_ref().is_some_and(crate::policy::network::NetRules::counts_sends)) {
            self.enforcer.count_sends()?;
        }
        if fresh.values().any(|p| p.net.as_ref().is_some_and(|net| net.tls)) && self.enforcer.judge_tls()? {
            for point in self.net_points(None) {
                self.enforcer.attach_tls_pinned(&point)?;
            }
        }
        // New policies' destinations go in first; new versions' change in
        // place, narrowed now and widened after the swap.
        let net = &mut self.enforcer.net;
        let undo = |net: &mut NetRuleMaps, resolvers: &mut Resolvers, changes: &[net_versions::Change], error| {
            net_versions::undo(net, changes, &old_nets, &old_live);
            resolvers.retire(&old_live);
            error
        };
        let mut changes = Vec::new();
        if let Err(e) = net_versions::before_swap(net, &self.policies, fresh, &mut changes) {
            return Err(undo(net, &mut self.resolvers, &changes, e));
        }
        // Then their resolvers (and those a restarted daemon serves again),
        // with the grants of the versions they replace.
        let replaced: Vec<(PolicyId, &Loaded)> =
            fresh.values().filter_map(|new| self.policies.get(&new.name).map(|old| (old.id, new))).collect();
        let in_force_now = names.iter().filter_map(|n| in_force(n));
        if let Err(e) = self.resolvers.prepare(in_force_now, &replaced, &mut self.enforcer.net) {
            return Err(undo(&mut self.enforcer.net, &mut self.resolvers, &changes, e));
        }
        let inserted = timing.map(|t| t.elapsed());
        if let Err(e) = self.enforcer.tables.replace_all(file_rules, tags, built.table, &extra_filter) {
            return Err(undo(&mut self.enforcer.net, &mut self.resolvers, &changes, e));
        }
        self.selection.commit(built.choice);
        let published = timing.map(|t| t.elapsed());
        let warnings = net_versions::after_swap(&mut self.enforcer.net, &self.policies, fresh, &changes, &live);
        self.resolvers.retire(&live);
        let retired = timing.map(|t| t.elapsed());
        if let Some(t) = timing {
            tracing::debug!(
                "apply: tables planned after {planned:?}, rules in after {inserted:?}, published after \
                 {published:?}, rules widened and resolvers retired after {retired:?}, old rules out after {:?}",
                t.elapsed()
            );
        }
        if let Ok(mut labels) = self.labels.lock() {
            for loaded in names.iter().filter_map(|n| in_force(n)) {
                let label = PolicyLabel {
                    name: loaded.name.clone(),
                    version: Some((loaded.version, loaded.hash.clone())),
                    budgets: budgets::names(&loaded.policy),
                };
                labels.policies.insert(loaded.id, label);
            }
            let locked = PolicyLabel { name: "(unresolved selector)".to_owned(), ..PolicyLabel::default() };
            labels.policies.insert(PolicyId::LOCKED, locked);
        }
        Ok(warnings)
    }

    /// Resolves a cgroup argument (see [`tagging::cgroup_dir`]) to an
    /// existing cgroup.
    fn cgroup(&self, arg: &str) -> Result<Cgroup, OpError> {
        let path = tagging::cgroup_dir(&self.hierarchy.mount_point, arg)?;
        if !path.join("cgroup.procs").exists() {
            return Err(OpError::NotFound(format!(
                "cgroup `{arg}` does not exist ({} is not a cgroup directory); create it first",
                path.display()
            )));
        }
        Cgroup::open(&self.hierarchy, &path).map_err(|e| OpError::Failed(e.to_string()))
    }

    /// Tags a cgroup with a loaded policy (again: switches its policy).
    /// `from_exec`: judged from the first exec in it on; a cgroup tagged
    /// already stays judged.
    pub fn tag(&mut self, request: TagRequest) -> Result<Tag, OpError> {
        let TagRequest { cgroup, policy, labels, from_exec } = request;
        let policy_tag = tagging::policy_to_tag(&self.policies, &policy, &self.config.policies)?.tag;
        let cgroup = self.cgroup(&cgroup)?;
        tagging::check_taggable(&cgroup)?;
        if from_exec && self.tags.contains_key(&cgroup.id) {
            self.enforcer.armed.arm(cgroup.id)?;
        }
        // The socket programs go on first: once tagged, all is judged.
        let timing = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let tagged = self.tags.values().map(|t| t.cgroup.as_str());
        match tagging::net_step(&cgroup.name, tagged, &self.selection.roots()) {
            NetStep::Covered => {}
            NetStep::AttachHere if self.enforcer.net_attached_at(cgroup.id) => {}
            NetStep::AttachHere => {
                self.enforcer.attach_net_pinned(&cgroup)?;
                if let Ok(mut labels) = self.labels.lock() {
                    labels.names.add_root(&cgroup);
                }
            }
            NetStep::Resync => _ = self.sync_net(Some(&cgroup))?,
        }
        let attached = timing.map(|t| t.elapsed());
        let tag = Tag {
            cgroup: cgroup.name.clone(),
            cgroup_id: cgroup.id,
            level: cgroup.level,
            policy,
            labels,
            tagged_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            from_exec,
        };
        let armed = from_exec && self.enforcer.armed.contains(cgroup.id);
        self.enforcer.tag(&cgroup, tagging::tag_info(policy_tag, &tag, armed))?;
        if let Some(t) = timing {
            tracing::debug!("tag: socket programs after {attached:?}, tagged after {:?}", t.elapsed());
        }
        if let Ok(mut labels) = self.labels.lock() {
            labels.names.add_root(&cgroup);
        }
        let previous = self.tags.insert(cgroup.id, tag.clone());
        if let Err(e) = self.try_save() {
            // A tag a restarted daemon would not know of would vanish with
            // the restart: refuse it now, while the caller can still act.
            self.undo_tag(&cgroup, previous)?;
            return Err(OpError::Failed(format!(
                "cannot save the daemon's state to {}: {e}; the tag was not applied (free space or fix the state \
                 directory, then tag again)",
                self.state_file().display()
            )));
        }
        Ok(tag)
    }

    /// Puts back what `cgroup` had before a tag that could not be saved.
    fn undo_tag(&mut self, cgroup: &Cgroup, previous: Option<Tag>) -> Result<(), OpError> {
        if let Some((tag_info, previous)) =
            previous.and_then(|p| self.policies.get(&p.policy).map(|loaded| (loaded.tag, p)))
        {
            let armed = previous.from_exec && self.enforcer.armed.contains(cgroup.id);
            self.enforcer.tag(cgroup, tagging::tag_info(tag_info, &previous, armed))?;
            self.tags.insert(cgroup.id, previous);
        } else {
            self.enforcer.untag(cgroup)?;
            self.tags.remove(&cgroup.id);
            self.sync_net(None)?;
        }
        Ok(())
    }

    /// Untags a cgroup (by path; a removed cgroup by the path it had).
    pub fn untag(&mut self, cgroup: &str) -> Result<Tag, OpError> {
        let name = tagging::cgroup_name(&self.hierarchy.mount_point, cgroup);
        let id = self.cgroup(cgroup).ok().map(|c| c.id);
        let id = tagging::tagged_id(&self.tags, self.selection.cgroups.values(), cgroup, &name, id)?;
        self.drop_tag(id)
    }

    fn drop_tag(&mut self, id: u64) -> Result<Tag, OpError> {
        let tag =
            self.tags.get(&id).cloned().ok_or_else(|| OpError::NotFound(format!("cgroup id {id} is not tagged")))?;
        let cgroup = Cgroup { path: PathBuf::new(), name: tag.cgroup.clone(), id, level: tag.level };
        self.enforcer.untag(&cgroup)?;
        self.tags.remove(&id);
        self.enforcer.armed.retain(|armed| armed != id)?;
        self.sync_net(None)?;
        self.save();
        Ok(tag)
    }

    /// The tagged cgroup's directory.
    fn dir_of(&self, tag: &Tag) -> PathBuf {
        self.hierarchy.mount_point.join(tag.cgroup.trim_start_matches('/'))
    }

    /// Whether the tagged cgroup still exists (a new cgroup at the same path
    /// has another id).
    fn still_there(&self, tag: &Tag) -> bool {
        std::fs::metadata(self.dir_of(tag)).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == tag.cgroup_id)
    }

    /// Serves an `enforcer run` (process `pid`): its policy in force, and a
    /// new cgroup tagged with it.
    pub fn start_run(&mut self, request: &RunRequest, pid: i32) -> Result<RunAnswer, OpError> {
        let started = runs::start_time(pid).ok_or_else(|| OpError::Invalid(format!("process {pid} is gone")))?;
        let name = self.run_policy(request)?;
        let dir = self.hierarchy.mount_point.join(runs::RUNS_CGROUP.trim_start_matches('/')).join(format!("run-{pid}"));
        let created = std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::Failed(format!("cannot create the run's cgroup {}: {e}", dir.display())));
        let cgroup = self.hierarchy.name_of(&dir);
        let labels = BTreeMap::from([("run".to_owned(), pid.to_string())]);
        let tagged = created.and_then(|()| {
            self.tag(TagRequest { cgroup: cgroup.clone(), policy: name.clone(), labels, from_exec: false })
        });
        let tag = match tagged {
            Ok(tag) => tag,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                self.unload_unused_run_policies();
                return Err(e);
            }
        };
        self.runs.insert(tag.cgroup_id, RunRecord { cgroup: cgroup.clone(), policy: name.clone(), pid, started });
        self.save();
        let loaded = &self.policies[&name];
        Ok(RunAnswer {
            cgroup,
            cgroup_id: tag.cgroup_id,
            policy: name,
            policy_version: loaded.version,
            policy_hash: loaded.hash.clone(),
            seccomp_listener: self.config.seccomp.listener.clone(),
            lsm_enforced: self.enforcer.lsm_missing().is_none(),
            not_enforced: self.not_enforced.iter().map(ToString::to_string).collect(),
        })
    }

    /// The policy a run's text is: the policy in force with its name if the
    /// text is the same, else the run's own, loaded now unless another run
    /// loaded it. A run's selectors select nothing.
    fn run_policy(&mut self, request: &RunRequest) -> Result<String, OpError> {
        let (file, text) = (&request.policy_file, &request.policy_text);
        let hash = policies::hash(text);
        let (mut policy, warnings) = crate::policy::parse(text, file).map_err(|e| OpError::Invalid(e.to_string()))?;
        if self.policies.get(&policy.name).is_some_and(|p| p.hash == hash) {
            return Ok(policy.name);
        }
        if !self.policy_keys.is_empty() {
            let sig = request.policy_signature.as_deref();
            policy_sig::check(file, text.as_bytes(), sig, &self.policy_keys)
                .map_err(|e| OpError::Invalid(format!("{}: {e}", file.display())))?;
        }
        let name = runs::own_policy_name(&policy.name, &hash);
        if self.policies.contains_key(&name) {
            return Ok(name);
        }
        policy.cgroups.clear();
        let used = policies::ids_in_use(self.policies.values());
        let id = self.ids.allocate(&used).ok_or_else(|| OpError::Failed("every policy id is in use".to_owned()))?;
        let mut loaded =
            policies::compile_parsed(file, text, policy, &warnings, VersionIds::first(id)).map_err(OpError::Invalid)?;
        loaded.run = true;
        loaded.name.clone_from(&name);
        let fresh = BTreeMap::from([(name.clone(), loaded)]);
        for warning in self.apply(&fresh, &[])? {
            tracing::warn!("{warning}");
        }
        self.policies.extend(fresh);
        Ok(name)
    }

    /// Ends the run whose cgroup is `cgroup`.
    pub fn end_run(&mut self, cgroup: &str) -> Result<RunRecord, OpError> {
        let id = self.runs.iter().find(|(_, r)| r.cgroup == cgroup).map(|(&id, _)| id);
        let id = id.ok_or_else(|| OpError::NotFound(format!("no run of the daemon's has cgroup {cgroup}")))?;
        self.finish_run(id)
    }

    /// Kills what is left of a run while it is still tagged (nothing of it
    /// runs unjudged), removes its cgroup and tag, and the run's own policy
    /// if no other run uses it.
    fn finish_run(&mut self, id: u64) -> Result<RunRecord, OpError> {
        let record = self.runs.get(&id).cloned().ok_or_else(|| OpError::NotFound(format!("no run has id {id}")))?;
        let dir = self.hierarchy.mount_point.join(record.cgroup.trim_start_matches('/'));
        if dir.exists() {
            let cgroup = Cgroup::open(&self.hierarchy, &dir).map_err(|e| OpError::Failed(e.to_string()))?;
            cgroup.kill_and_remove().map_err(|e| OpError::Failed(e.to_string()))?;
        }
        if self.tags.contains_key(&id) {
            self.drop_tag(id)?;
        }
        self.runs.remove(&id);
        self.unload_unused_run_policies();
        self.save();
        Ok(record)
    }

    /// Unloads the runs' own policies no cgroup is tagged with any more.
    fn unload_unused_run_policies(&mut self) {
        let unused: Vec<String> =
            self.policies.values().filter(|p| p.run && self.users(&p.name) == 0).map(|p| p.name.clone()).collect();
        if unused.is_empty() {
            return;
        }
        match self.apply(&BTreeMap::new(), &unused) {
            Ok(warnings) => warnings.iter().for_each(|warning| tracing::warn!("{warning}")),
            Err(e) => {
                tracing::warn!("cannot unload the runs' policies {unused:?}: {e}");
                return;
            }
        }
        for name in unused {
            self.policies.remove(&name);
        }
    }

    /// Keys the tags an exec armed since the last sweep by their plain id
    /// (see [`tagging::tag_info`]): the tag check finds them first, without
    /// looking in `ARMED`. They are judged either way.
    fn promote_armed(&mut self) {
        // Still keyed apart (in memory) first, then armed (a map lookup).
        let waiting =
            |t: &&Tag| self.enforcer.tables.tag_info(t.cgroup_id).is_some_and(|i| i.flags & TAG_FROM_EXEC != 0);
        let armed: Vec<(Cgroup, TagInfo)> = self
            .tags
            .values()
            .filter(waiting)
            .filter(|t| self.enforcer.armed.contains(t.cgroup_id))
            .filter_map(|t| {
                let policy = self.policies.get(&t.policy)?;
                let cgroup = Cgroup { path: self.dir_of(t), name: t.cgroup.clone(), id: t.cgroup_id, level: t.level };
                Some((cgroup, tagging::tag_info(policy.tag, t, true)))
            })
            .collect();
        for (cgroup, info) in armed {
            match self.enforcer.tag(&cgroup, info) {
                Ok(()) => tracing::info!("{}: a first exec armed its tag; keyed by the cgroup's id now", cgroup.name),
                Err(e) => {
                    tracing::warn!("cannot key the armed tag of {} by its id (it stays judged): {e}", cgroup.name);
                }
            }
        }
    }

    /// Drops the tags of cgroups that were removed, ends the runs whose
    /// `enforcer run` is gone, keys armed tags by their id, and brings the
    /// selected cgroups up to date.
    pub fn sweep(&mut self) -> Vec<Tag> {
        self.promote_armed();
        let abandoned: Vec<u64> = self.runs.iter().filter(|(_, r)| !r.caller_alive()).map(|(&id, _)| id).collect();
        let mut dropped = Vec::new();
        for id in abandoned {
            let tag = self.tags.get(&id).cloned();
            match self.finish_run(id) {
                Ok(_) => dropped.extend(tag),
                Err(e) => tracing::warn!("cannot end a run whose `enforcer run` is gone: {e}"),
            }
        }
        let gone: Vec<u64> = self.tags.values().filter(|t| !self.still_there(t)).map(|t| t.cgroup_id).collect();
        dropped.extend(gone.into_iter().filter_map(|id| self.drop_tag(id).ok()));
        // A lock lasts the agent's life: it goes with the cgroup only.
        let hierarchy = &self.hierarchy;
        if let Err(e) = self.enforcer.locked.retain(|id| hierarchy.may_have(id)) {
            tracing::warn!("cannot forget the locked agents whose cgroups are gone: {e}");
        }
        let versions: std::collections::HashSet<PolicyId> = self.policies.values().map(|p| p.id).collect();
        let kept =
            |key: &BudgetUseKey| versions.contains(&split_budget_key(key.budget).0) && hierarchy.may_have(key.agent);
        if let Err(e) = self.enforcer.budget_usage.retain(kept) {
            tracing::warn!("cannot forget the upload budgets of agents or policy versions that are gone: {e}");
        }
        if let Err(e) = self.reconcile() {
            tracing::warn!("cannot bring the selected cgroups up to date: {e}");
        }
        dropped
    }

    /// Records the existing cgroups the selectors match and forgets those
    /// that are gone or no longer match (see `Selection::reconcile`); the
    /// changes become `selected` and `unselected` lines.
    pub fn reconcile(&mut self) -> Result<(), LoadError> {
        let tagged: HashSet<u64> = self.tags.keys().copied().collect();
        let (came, went) = self.selection.reconcile(&mut self.enforcer, &self.hierarchy, &tagged)?;
        for c in came {
            let selected = DaemonEvent::Selected { cgroup: c.cgroup, cgroup_id: c.cgroup_id, policy: c.policy };
            let _ = self.notices.send(DaemonLine::now(selected));
        }
        for c in went {
            let unselected = DaemonEvent::Unselected { cgroup: c.cgroup, cgroup_id: c.cgroup_id, policy: c.policy };
            let _ = self.notices.send(DaemonLine::now(unselected));
        }
        self.sync_net(None)?;
        Ok(())
    }

    /// Where the socket programs go: on each tagged cgroup and under each
    /// selector root (the deepest existing cgroup on its path), the
    /// outermost of them only (see [`tagging::outermost`]).
    fn net_points(&self, also: Option<&Cgroup>) -> Vec<Cgroup> {
        let mut points: Vec<Cgroup> = self
            .tags
            .values()
            .map(|t| Cgroup { path: self.dir_of(t), name: t.cgroup.clone(), id: t.cgroup_id, level: t.level })
            .chain(also.cloned())
            .collect();
        for root in self.selection.roots() {
            let mut dir = self.hierarchy.mount_point.join(root.trim_start_matches('/'));
            while !dir.join("cgroup.procs").exists() && dir.pop() && dir.starts_with(&self.hierarchy.mount_point) {}
            if let Ok(cgroup) = Cgroup::open(&self.hierarchy, &dir) {
                points.push(cgroup);
            }
        }
        tagging::outermost(points)
    }

    /// Attaches the socket programs where [`Self::net_points`] wants them,
    /// then detaches them everywhere else: never a gap.
    fn sync_net(&mut self, also: Option<&Cgroup>) -> Result<Vec<Cgroup>, LoadError> {
        let points = self.net_points(also);
        let attached: HashSet<u64> = self.enforcer.net_attached().into_iter().collect();
        for point in points.iter().filter(|p| !attached.contains(&p.id)) {
            self.enforcer.attach_net_pinned(point)?;
            if let Ok(mut labels) = self.labels.lock() {
                labels.names.add_root(point);
            }
        }
        let wanted: HashSet<u64> = points.iter().map(|p| p.id).collect();
        for id in attached.difference(&wanted) {
            self.enforcer.detach_net_pinned(*id)?;
        }
        Ok(points)
    }

    /// Puts the socket programs where they belong (after adoption by a
    /// daemon of another build, or after tags changed while no daemon ran),
    /// and names events from below each of them.
    pub fn attach_all_net(&mut self) -> Vec<String> {
        match self.sync_net(None) {
            Ok(points) => {
                if let Ok(mut labels) = self.labels.lock() {
                    for point in &points {
                        labels.names.add_root(point);
                    }
                }
                Vec::new()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    /// The agents whose egress is locked, named where they are tagged or
    /// selected.
    #[must_use]
    pub fn locked_agents(&self) -> Vec<crate::daemon::wire::LockedAgent> {
        let clock = crate::events::Clock::new();
        self.enforcer
            .locked
            .all()
            .into_iter()
            .map(|(id, lock)| crate::daemon::wire::LockedAgent {
                cgroup_id: id,
                cgroup: self.cgroup_name(id),
                locked_at: clock.stamp(lock.boot_ns).as_str().to_owned(),
                pid: lock.tgid,
                dev: format!("{}:{}", lock.dev >> 20, lock.dev & 0xfffff),
                ino: lock.ino,
            })
            .collect()
    }

    /// What each agent sent under each upload budget in its current window,
    /// and how many destinations it reached under its budget of new
    /// destinations.
    #[must_use]
    pub fn budget_usage(&self) -> (Vec<crate::daemon::wire::BudgetUsed>, Vec<crate::daemon::wire::DestinationsUsed>) {
        let clock = crate::events::Clock::new();
        let now = crate::dns::grants::boot_ns();
        let (mut bytes, mut destinations) = (Vec::new(), Vec::new());
        for (key, usage) in self.enforcer.budget_usage.all() {
            let (id, index) = split_budget_key(key.budget);
            let Some(loaded) = self.policies.values().find(|p| p.id == id) else { continue };
            let Some(network) = loaded.policy.network.as_ref() else { continue };
            // An upload budget has the destination it counts, the budget of
            // new destinations none.
            let (limit, window, upload) = if index == BUDGET_NEW_DESTINATIONS {
                let Some(budget) = network.new_destinations else { continue };
                (budget.count as u64, budget.window, None)
            } else {
                let Some(budget) = budgets::by_index(&network.upload, index) else { continue };
                (budget.bytes, budget.window, Some(budget.destination()))
            };
            let current =
                now.saturating_sub(usage.window_start_ns) < u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
            // Below zero (a send in flight across a window's start gave back
            // what it reserved in the last one): none.
            let used = if current { u64::try_from(usage.bytes.cast_signed()).unwrap_or(0) } else { 0 };
            let window_started_at = current.then(|| clock.stamp(usage.window_start_ns).as_str().to_owned());
            let (cgroup_id, cgroup, policy) = (key.agent, self.cgroup_name(key.agent), loaded.name.clone());
            let window_s = window.as_secs();
            if let Some(budget) = upload {
                bytes.push(crate::daemon::wire::BudgetUsed {
                    cgroup_id,
                    cgroup,
                    policy,
                    budget,
                    bytes_used: used,
                    bytes_limit: limit,
                    window_s,
                    window_started_at,
                });
            } else {
                destinations.push(crate::daemon::wire::DestinationsUsed {
                    cgroup_id,
                    cgroup,
                    policy,
                    used,
                    limit,
                    window_s,
                    window_started_at,
                });
            }
        }
        bytes.sort_by(|a, b| (a.cgroup_id, &a.budget).cmp(&(b.cgroup_id, &b.budget)));
        destinations.sort_by_key(|d| d.cgroup_id);
        (bytes, destinations)
    }

    /// The path of agent cgroup `id`, if it is tagged or selected now.
    fn cgroup_name(&self, id: u64) -> Option<String> {
        let selected = || self.selected().find(|s| s.cgroup_id == id).map(|s| s.cgroup.clone());
        self.tags.get(&id).map(|t| t.cgroup.clone()).or_else(selected)
    }

    #[must_use]
    pub fn tags(&self) -> Vec<Tag> {
        self.tags.values().cloned().collect()
    }

    /// The cgroups selectors tagged (and no tag names).
    pub fn selected(&self) -> impl Iterator<Item = &SelectedCgroup> {
        self.selection.cgroups.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Loaded> {
        self.policies.values()
    }

    /// Tagged cgroups using each policy.
    #[must_use]
    pub fn users(&self, policy: &str) -> usize {
        self.tags.values().filter(|t| t.policy == policy).count()
            + self.selected().filter(|c| c.policy == policy).count()
    }

    /// Tells the programs which inodes are the daemon's own again (a file
    /// replaced by rename has a new inode).
    pub fn protect_own_files(&mut self) -> Result<(), LoadError> {
        let protected = protected_inodes(&self.config, self.config_file.as_deref());
        self.enforcer.protected.set(&protected)
    }

    /// Whether a process in cgroup `path` (from /proc/PID/cgroup) is in or
    /// below a tagged cgroup.
    #[must_use]
    pub fn is_agent(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        if self.tags.values().any(|t| path == t.cgroup || path.starts_with(&format!("{}/", t.cgroup))) {
            return true;
        }
        // Selected cgroups as the kernel knows them (newer than the last
        // reconcile, too).
        let mut dir = self.hierarchy.mount_point.clone();
        path.split('/').filter(|c| !c.is_empty()).any(|component| {
            dir.push(component);
            std::fs::metadata(&dir)
                .is_ok_and(|m| self.enforcer.selected.contains(std::os::unix::fs::MetadataExt::ino(&m)))
        })
    }

    fn state_file(&self) -> PathBuf {
        self.config.state_dir.join("state.json")
    }

    fn version_file(&self, id: PolicyId, hash: &str) -> PathBuf {
        self.config.state_dir.join("versions").join(format!("{id}-{hash}.toml"))
    }

    /// Writes the text of each version in force not written yet, and removes
    /// those of versions no longer in force.
    fn save_versions(&self) -> std::io::Result<()> {
        let dir = self.config.state_dir.join("versions");
        std::fs::create_dir_all(&dir)?;
        let mut keep = HashSet::new();
        for p in self.policies.values() {
            let path = self.version_file(p.id, &p.hash);
            if !path.exists() {
                let tmp = path.with_extension("new");
                std::fs::write(&tmp, &p.source)?;
                std::fs::rename(&tmp, &path)?;
            }
            keep.insert(path);
        }
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if !keep.contains(&entry.path()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn read_state(&self) -> State {
        let path = self.state_file();
        let Ok(text) = std::fs::read_to_string(&path) else { return State::default() };
        match serde_json::from_str::<State>(&text) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!("{}: unreadable saved state, starting without it: {e}", path.display());
                State::default()
            }
        }
    }

    /// Saves what a restarted daemon adopts; a failure is reported, not
    /// returned (for the callers that have nothing to undo).
    pub fn save(&self) {
        if let Err(e) = self.try_save() {
            tracing::warn!(
                "cannot save state to {}: {e} (a restarted daemon would not adopt it)",
                self.state_file().display()
            );
        }
    }

    /// Saves what a restarted daemon adopts (write and rename: never half a file).
    fn try_save(&self) -> std::io::Result<()> {
        let state = State {
            build: crate::bpf::build_id(),
            lost_reported: self.lost_reported,
            policies: self
                .policies
                .values()
                .map(|p| SavedPolicy {
                    name: p.name.clone(),
                    file: p.file.clone(),
                    id: p.id.0,
                    net_id: Some(p.net_id.0),
                    version: p.version,
                    hash: p.hash.clone(),
                    run: p.run,
                })
                .collect(),
            tags: self.tags.values().cloned().collect(),
            slots: self.selection.slots.clone(),
            runs: self.runs.clone(),
        };
        let path = self.state_file();
        let tmp = path.with_extension("json.new");
        // The versions first: the state must never name a missing one.
        self.save_versions()
            .and_then(|()| serde_json::to_vec(&state).map_err(std::io::Error::other))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
    }
}

/// The daemon's own files and directories, for `Enforcer::set_protected`:
/// its binary, configuration, policy directory, state directory, socket and
/// the events file's directory. Paths that do not exist are left out.
#[must_use]
pub fn protected_inodes(config: &Config, config_file: Option<&Path>) -> enforcer_common::policy::Protected {
    let mut paths: Vec<PathBuf> = Vec::new();
    paths.extend(std::env::current_exe().ok());
    paths.extend(config_file.map(Path::to_owned));
    paths.extend([config.policies.clone(), config.state_dir.clone(), config.socket.clone()]);
    paths.extend(config.events.file.as_ref().and_then(|f| f.parent()).map(Path::to_owned));
    paths.extend(config.seccomp.listener.clone());
    // The host key's directory (no agent may swap the key or its .pub),
    // and the keys trusted to sign policies.
    paths.extend(config.events.signing_key.as_ref().and_then(|k| k.parent()).map(Path::to_owned));
    paths.extend(config.policy_keys.iter().cloned());
    crate::mounts::protected_inodes(&paths)
}
