//! Selectors in the daemon: which slot each policy with `cgroups` globs has
//! (stable, saved: the kernel records slots), the table the kernel runs as
//! cgroups are created, and reconciling `SELECTED` with the cgroup tree (the
//! cgroups that existed before a selector, and the ones removed since).

use std::collections::{BTreeMap, HashMap, HashSet};

use enforcer_common::{
    policy::{PolicyId, TAG_EXEC, TAG_FILES, TAG_NET, TagFilter, TagInfo},
    select::{SELECTOR_SLOTS, SLOT_UNRESOLVED, Selected, SelectorTable},
};
use serde::Serialize;

use super::policies::Loaded;
use crate::{
    bpf::{Enforcer, LoadError},
    cgroups::Hierarchy,
    policy::selectors::{self, SelectorError},
};

/// A cgroup a selector tagged.
#[derive(Clone, Debug, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SelectedCgroup {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub level: u32,
    pub policy: String,
}

/// The selectors in force and the cgroups they tagged.
#[derive(Default)]
pub struct Selection {
    /// Policy name -> slot.
    pub slots: BTreeMap<String, u32>,
    /// The globs in force, by policy name.
    globs: BTreeMap<String, Vec<String>>,
    /// What the last reconcile found (explicitly tagged cgroups left out).
    pub cgroups: BTreeMap<u64, SelectedCgroup>,
}

/// What `Selection::table` built, for `Enforcer::replace_all`.
pub struct Built {
    pub table: Box<SelectorTable>,
    /// The levels the globs select at.
    pub levels: TagFilter,
    pub choice: Choice,
}

/// The slots and globs of a [`Built`] table, for [`Selection::commit`].
pub struct Choice {
    slots: BTreeMap<String, u32>,
    globs: BTreeMap<String, Vec<String>>,
}

impl Selection {
    /// The table for `policies` (the versions in force; the globs of
    /// `without_globs` are left out), giving each policy with globs a slot
    /// and keeping the slots in use. Takes effect with [`Self::commit`].
    pub fn table<'a>(
        &self,
        policies: impl IntoIterator<Item = &'a Loaded>,
        without_globs: &HashSet<String>,
        recorded: &[(u64, Selected)],
    ) -> Result<Built, SelectorError> {
        let policies: Vec<&Loaded> = policies.into_iter().collect();
        let globs: BTreeMap<String, Vec<String>> = policies
            .iter()
            .filter(|p| !p.policy.cgroups.is_empty() && !without_globs.contains(&p.name))
            .map(|p| (p.name.clone(), p.policy.cgroups.clone()))
            .collect();
        // A policy keeps its slot while it is in force (cgroups recorded
        // with it are switched in the same swap as its new version).
        let mut slots: BTreeMap<String, u32> = self
            .slots
            .iter()
            .filter(|(name, _)| policies.iter().any(|p| p.name == **name))
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        for name in globs.keys() {
            if !slots.contains_key(name) {
                // Not a slot cgroups are still recorded with, either.
                let used: HashSet<u32> = slots.values().copied().chain(recorded.iter().map(|(_, r)| r.slot)).collect();
                let slot = (0..SLOT_UNRESOLVED)
                    .find(|s| !used.contains(s))
                    .ok_or(SelectorError::TooManySlots { count: globs.len() })?;
                slots.insert(name.clone(), slot);
            }
        }
        let pairs: Vec<(u32, String)> =
            globs.iter().flat_map(|(name, globs)| globs.iter().map(|g| (slots[name], g.clone()))).collect();
        let mut table = selectors::compile(&pairs)?;
        for policy in &policies {
            if let Some(&slot) = slots.get(&policy.name) {
                table.tags[slot as usize % SELECTOR_SLOTS] = policy.tag;
            }
        }
        table.tags[SLOT_UNRESOLVED as usize] = TagInfo::new(PolicyId::LOCKED, TAG_FILES | TAG_NET | TAG_EXEC);
        let levels = selectors::levels_filter(globs.values().flatten().map(String::as_str));
        Ok(Built { table, levels, choice: Choice { slots, globs } })
    }

    /// Makes a built table's choice the selection in force (once the kernel
    /// has the table).
    pub fn commit(&mut self, choice: Choice) {
        self.slots = choice.slots;
        self.globs = choice.globs;
    }

    /// The cgroups below which selected cgroups appear (socket programs go
    /// on each).
    pub fn roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = self.globs.values().flatten().map(|g| selectors::root_of(g)).collect();
        roots.sort();
        roots.dedup();
        roots
    }

    fn policy_of(&self, slot: u32) -> String {
        if slot == SLOT_UNRESOLVED {
            return "(unresolved selector)".to_owned();
        }
        self.slots.iter().find(|(_, s)| **s == slot).map_or_else(|| format!("(slot {slot})"), |(n, _)| n.clone())
    }

    /// Brings `SELECTED` in line with the cgroup tree: existing cgroups the
    /// selectors match go in, cgroups that no longer match or are gone come
    /// out. Returns the cgroups that came in and went out since the last
    /// call.
    pub fn reconcile(
        &mut self,
        enforcer: &mut Enforcer,
        hierarchy: &Hierarchy,
        tagged: &HashSet<u64>,
    ) -> Result<(Vec<SelectedCgroup>, Vec<SelectedCgroup>), LoadError> {
        let started = monotonic_ns();
        let found = walk(hierarchy, &self.roots());
        let recorded: HashMap<u64, Selected> = enforcer.selected.all().into_iter().collect();
        let changes = changes(&found, enforcer.tables.selector_table(), &recorded, started);
        // The filter lets a cgroup through before it is recorded.
        let mut filter = enforcer.tables.extra_filter();
        for (id, selected) in &changes.select {
            filter.insert(*id, selected.level);
        }
        enforcer.tables.set_extra_filter(&filter)?;
        for &(id, selected) in &changes.select {
            enforcer.selected.insert(id, selected)?;
        }
        for &id in &changes.unselect {
            enforcer.selected.remove(id)?;
        }
        let mut filter = self.levels();
        let now = enforcer.selected.all();
        for (id, selected) in &now {
            filter.insert(*id, selected.level);
        }
        enforcer.tables.set_extra_filter(&filter)?;
        // A cgroup created since the walk is recorded by the kernel but not
        // named yet: walk once more rather than report it without a path.
        let named: HashSet<u64> = found.iter().map(|f| f.id).collect();
        let found = if now.iter().any(|(id, _)| !named.contains(id) && !tagged.contains(id)) {
            walk(hierarchy, &self.roots())
        } else {
            found
        };
        Ok(self.take_listing(&now, &found, tagged))
    }

    /// Makes `now` (the kernel's records, tagged cgroups left out) the
    /// listing of selected cgroups; returns those that came and went. A
    /// record `found` does not name waits for a reconcile that does (it is
    /// enforced meanwhile; only its `selected` line waits).
    fn take_listing(
        &mut self,
        now: &[(u64, Selected)],
        found: &[Found],
        tagged: &HashSet<u64>,
    ) -> (Vec<SelectedCgroup>, Vec<SelectedCgroup>) {
        let names: HashMap<u64, &Found> = found.iter().map(|f| (f.id, f)).collect();
        let current: BTreeMap<u64, SelectedCgroup> = now
            .iter()
            .filter(|(id, _)| !tagged.contains(id))
            .filter_map(|&(id, selected)| {
                let cgroup = names.get(&id)?.name.clone();
                let policy = self.policy_of(selected.slot);
                Some((id, SelectedCgroup { cgroup, cgroup_id: id, level: selected.level, policy }))
            })
            .collect();
        let came: Vec<SelectedCgroup> =
            current.iter().filter(|(id, _)| !self.cgroups.contains_key(id)).map(|(_, c)| c.clone()).collect();
        let went: Vec<SelectedCgroup> =
            self.cgroups.iter().filter(|(id, _)| !current.contains_key(id)).map(|(_, c)| c.clone()).collect();
        self.cgroups = current;
        (came, went)
    }

    /// The levels the globs in force select at.
    pub fn levels(&self) -> TagFilter {
        selectors::levels_filter(self.globs.values().flatten().map(String::as_str))
    }
}

/// A cgroup found below a selector root.
struct Found {
    /// Its path below the cgroup2 mount (`/a/b`).
    name: String,
    id: u64,
    level: u32,
}

/// What a reconcile writes to `SELECTED`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Cgroups the selectors match that are not recorded with that slot.
    select: Vec<(u64, Selected)>,
    /// Recorded cgroups that no longer match, or are gone.
    unselect: Vec<u64>,
}

/// The changes that make `recorded` what `table` selects of `found` (the
/// cgroups a walk that began at `started` saw).
fn changes(found: &[Found], table: &SelectorTable, recorded: &HashMap<u64, Selected>, started: u64) -> Changes {
    let wanted: HashMap<u64, (u32, &Found)> =
        found.iter().filter_map(|f| selectors::selects(table, &f.name).map(|slot| (f.id, (slot, f)))).collect();
    let seen: HashSet<u64> = found.iter().map(|f| f.id).collect();
    let mut select: Vec<(u64, Selected)> = wanted
        .iter()
        .filter(|(id, (slot, _))| recorded.get(id).is_none_or(|r| r.slot != *slot))
        .map(|(&id, &(slot, f))| (id, Selected { slot, level: f.level, since_ns: started }))
        .collect();
    // A recorded cgroup the walk did not see is gone, unless the kernel
    // recorded it after the walk began.
    let mut unselect: Vec<u64> = recorded
        .iter()
        .filter(|(id, selected)| !wanted.contains_key(id) && (seen.contains(id) || selected.since_ns < started))
        .map(|(&id, _)| id)
        .collect();
    select.sort_by_key(|(id, _)| *id);
    unselect.sort_unstable();
    Changes { select, unselect }
}

/// Every cgroup below `roots` (the roots themselves included).
fn walk(hierarchy: &Hierarchy, roots: &[String]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut visit = |dir: &std::path::Path, id: u64| {
        if seen.insert(id) {
            found.push(Found { name: hierarchy.name_of(dir), id, level: hierarchy.level_of(dir) });
        }
    };
    for root in roots {
        let dir = hierarchy.mount_point.join(root.trim_start_matches('/'));
        if let Ok(meta) = std::fs::metadata(&dir) {
            visit(&dir, std::os::unix::fs::MetadataExt::ino(&meta));
            hierarchy.for_each_below(&dir, &mut visit);
        }
    }
    found
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::daemon::policies::{VersionIds, compile_file};

    fn policy(name: &str, id: u16, globs: &[&str]) -> Loaded {
        let globs: Vec<String> = globs.iter().map(|g| format!("\"{g}\"")).collect();
        let text = format!("name = \"{name}\"\nmode = \"enforce\"\ncgroups = [{}]\n", globs.join(", "));
        compile_file(Path::new(&format!("{name}.toml")), &text, VersionIds::first(PolicyId(id))).unwrap()
    }

    fn found(name: &str, id: u64) -> Found {
        Found { name: name.to_owned(), id, level: u32::try_from(name.matches('/').count()).unwrap() }
    }

    fn selected(slot: u32, level: u32, since_ns: u64) -> Selected {
        Selected { slot, level, since_ns }
    }

    /// A selection with `policies` committed.
    fn committed(policies: &[&Loaded]) -> (Selection, Box<SelectorTable>) {
        let mut selection = Selection::default();
        let built = selection.table(policies.iter().copied(), &HashSet::new(), &[]).unwrap();
        selection.commit(built.choice);
        (selection, built.table)
    }

    #[test]
    fn each_policy_with_globs_gets_a_slot_of_its_own_and_keeps_it_across_tables() {
        let (a, b, plain) = (policy("a", 1, &["/agents/a-*"]), policy("b", 2, &["/agents/b-*"]), policy("c", 3, &[]));
        let (selection, table) = committed(&[&a, &b, &plain]);
        assert_eq!(selection.slots, BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 1)]));
        assert_eq!(selectors::selects(&table, "/agents/b-7"), Some(1));
        assert_eq!(selectors::selects(&table, "/agents/c-7"), None);
        assert_eq!(table.tags[1], b.tag);
        // `a` is gone: `b` keeps slot 1 (cgroups are recorded with it).
        let again = selection.table([&b], &HashSet::new(), &[]).unwrap();
        assert_eq!(again.choice.slots, BTreeMap::from([("b".to_owned(), 1)]));
        assert_eq!(selectors::selects(&again.table, "/agents/b-7"), Some(1));
        assert_eq!(selection.roots(), ["/agents"]);
    }

    #[test]
    fn a_new_policy_never_gets_a_slot_cgroups_are_still_recorded_with() {
        let a = policy("a", 1, &["/agents/*"]);
        let recorded = [(40, selected(0, 2, 1)), (41, selected(1, 2, 1))];
        let built = Selection::default().table([&a], &HashSet::new(), &recorded).unwrap();
        assert_eq!(built.choice.slots["a"], 2);
    }

    #[test]
    fn cgroups_whose_path_was_not_read_whole_are_judged_by_the_locked_tag() {
        let (_, table) = committed(&[]);
        let locked = table.tags[SLOT_UNRESOLVED as usize];
        assert_eq!(locked.policy_id(), PolicyId::LOCKED);
        assert_eq!(locked.flags, TAG_FILES | TAG_NET | TAG_EXEC);
    }

    #[test]
    fn an_orphaned_policy_keeps_its_slot_but_selects_nothing_more() {
        let a = policy("a", 1, &["/agents/*"]);
        let (selection, _) = committed(&[&a]);
        let built = selection.table([&a], &HashSet::from(["a".to_owned()]), &[]).unwrap();
        assert_eq!(built.choice.slots["a"], 0);
        assert_eq!(selectors::selects(&built.table, "/agents/x"), None);
        assert_eq!(built.levels, TagFilter::EMPTY);
    }

    #[test]
    fn reconcile_records_matching_cgroups_and_forgets_those_gone_or_no_longer_matching() {
        let a = policy("a", 1, &["/agents/*"]);
        let (_, table) = committed(&[&a]);
        let walk_began = 1_000;
        let found = [found("/agents", 10), found("/agents/new", 11), found("/agents/kept", 12), found("/other", 13)];
        let recorded = HashMap::from([
            (12, selected(0, 2, 5)),
            // Recorded with another slot: recorded again.
            (11, selected(3, 2, 5)),
            // Seen, no longer matching.
            (13, selected(0, 1, 5)),
            // Not seen: gone, unless recorded after the walk began.
            (14, selected(0, 2, walk_began - 1)),
            (15, selected(0, 2, walk_began + 1)),
        ]);
        let changes = changes(&found, &table, &recorded, walk_began);
        assert_eq!(changes, Changes { select: vec![(11, selected(0, 2, walk_began))], unselect: vec![13, 14] });
    }

    #[test]
    fn the_listing_leaves_tagged_cgroups_out_and_reports_what_came_and_went() {
        let a = policy("a", 1, &["/agents/*"]);
        let (mut selection, _) = committed(&[&a]);
        let two = [found("/agents/x", 11), found("/agents/y", 12)];
        let (came, went) = selection.take_listing(&[(11, selected(0, 2, 1))], &two, &HashSet::new());
        assert_eq!((came.len(), went.len()), (1, 0));
        assert_eq!((came[0].cgroup.as_str(), came[0].policy.as_str()), ("/agents/x", "a"));
        let now = [(12, selected(0, 2, 1)), (13, selected(SLOT_UNRESOLVED, 2, 1))];
        // 13 is not named yet: it comes once a walk names it.
        let (came, went) = selection.take_listing(&now, &two, &HashSet::from([12]));
        assert!(came.is_empty(), "{came:?}");
        assert_eq!(went.iter().map(|c| c.cgroup_id).collect::<Vec<_>>(), [11]);
        let named = [found("/agents/x", 11), found("/agents/y", 12), found("/agents/z", 13)];
        let (came, _) = selection.take_listing(&now, &named, &HashSet::from([12]));
        assert_eq!(came.iter().map(|c| c.cgroup.as_str()).collect::<Vec<_>>(), ["/agents/z"]);
        assert_eq!(came[0].policy, "(unresolved selector)");
    }
}
