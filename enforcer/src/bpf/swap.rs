//! The table swap: what the programs' tables hold (tags, file tree roots,
//! selectors) and the order in which a change reaches them.
//!
//! Every change builds whole new tables and swaps them in at once (see
//! [`KernelTables::publish`]), so a program never sees half a change. The tag
//! check's pre-filter (`TAG_FILTER`, see `enforcer_common::policy::TagFilter`)
//! is a separate global: it is kept a superset of every table a program can
//! see, by raising it before a table that needs more and lowering it only
//! after the table that needs less. A task the table tags always passes it.

use std::collections::HashMap;

use aya::maps::{Array, MapData};
use enforcer_common::{
    policy::{FileRuleKey, MAX_TAG_LEVEL, TABLES_MAP, TAG_FILTER_MAP, Tables, TagFilter, TagInfo},
    select::SelectorTable,
};

use super::table_map::MappedTable;
use super::{LoadError, map_err, maps::TableMaps};
use crate::policy::tables;

/// Where the tables and the filter go: the programs' maps, or a recorder in
/// the tests.
pub trait Target {
    /// Makes `tables` the ones programs look in from now on, whole.
    fn publish(&mut self, tables: &Tables) -> Result<(), LoadError>;
    /// Makes `filter` the tag check's pre-filter.
    fn set_filter(&mut self, filter: &TagFilter) -> Result<(), LoadError>;
}

/// The programs' `TABLES` (an array of maps, slot 0 the tables in force) and
/// `TAG_FILTER`.
pub struct KernelTables {
    pub(super) tables: TableMaps,
    pub(super) tag_filter: Array<MapData, TagFilter>,
    /// A table map made after the last swap, for the next: creating one
    /// (2.5 MiB for the kernel to zero and map in) is off a change's way to
    /// the programs.
    pub(super) spare: Option<MappedTable<Tables>>,
}

impl KernelTables {
    /// The filter in force (an earlier daemon's, when adopting its pins).
    pub(super) fn filter_in_force(&self) -> Result<TagFilter, LoadError> {
        self.tag_filter.get(&0, 0).map_err(map_err(TAG_FILTER_MAP))
    }
}

impl Target for KernelTables {
    /// Puts `tables` in a new map and swaps it into slot 0 of the programs'
    /// `TABLES`: programs running now finish with the old tables (the kernel
    /// frees them after an RCU grace period), later runs see the new ones.
    /// Never a half-written table.
    fn publish(&mut self, tables: &Tables) -> Result<(), LoadError> {
        let name = TABLES_MAP;
        let create = || MappedTable::create(name).map_err(|source| LoadError::TableMap { name, source });
        let mut inner = match self.spare.take() {
            Some(spare) => spare,
            None => create()?,
        };
        // No program has this map yet: it is written whole before the swap.
        inner.write(tables);
        // Returns once no program runs with the old tables (the kernel waits
        // an RCU grace period); the new ones are in force before that.
        self.tables.set(0, inner.map(), 0).map_err(map_err(name))?;
        self.spare = create().ok();
        Ok(())
    }

    fn set_filter(&mut self, filter: &TagFilter) -> Result<(), LoadError> {
        self.tag_filter.set(0, filter, 0).map_err(map_err(TAG_FILTER_MAP))
    }
}

/// The tables in force and what they are built from.
pub struct Swap<T: Target> {
    target: T,
    /// Tagged cgroup id -> (level, tag): what the tag table is built from.
    tags: HashMap<u64, (u32, TagInfo)>,
    /// Every loaded policy's tree roots: what the file table is built from.
    file_rules: HashMap<FileRuleKey, u16>,
    /// The published tables (selectors: the daemon's), kept whole: a change
    /// swaps its part in and publishes this, with no 2.5 MiB table built
    /// anew (a fresh allocation's page faults cost a millisecond).
    published: Box<Tables>,
    /// The filter in force: the tags' entries and `extra_filter`'s (the
    /// levels selectors can select at, and the ids the daemon put in
    /// `SELECTED`).
    published_filter: TagFilter,
    extra_filter: TagFilter,
}

impl<T: Target> Swap<T> {
    /// Nothing tagged and no rules; publishes nothing (see
    /// [`Self::publish_empty`]).
    pub(super) fn new(target: T) -> Result<Self, LoadError> {
        Ok(Self {
            target,
            tags: HashMap::new(),
            file_rules: HashMap::new(),
            published: tables::combine(
                &*tables::tag_table(&HashMap::new())?,
                &*tables::file_table(&HashMap::new())?,
                &tables::no_selectors(),
            ),
            published_filter: TagFilter::EMPTY,
            extra_filter: TagFilter::EMPTY,
        })
    }

    /// Publishes the empty tables and filter: until tables are in place
    /// nothing is tagged.
    pub(super) fn publish_empty(&mut self) -> Result<(), LoadError> {
        self.target.publish(&self.published)?;
        self.set_filter(&TagFilter::EMPTY)
    }

    /// Tags cgroup `id` at `level`: from now on it and its descendants are
    /// judged by `tag`. Nothing changes if publishing fails.
    pub(super) fn tag(&mut self, id: u64, level: u32, tag: TagInfo) -> Result<(), LoadError> {
        let previous = self.tags.insert(id, (level, tag));
        self.publish_tags(id).inspect_err(|_| match previous {
            Some(previous) => _ = self.tags.insert(id, previous),
            None => _ = self.tags.remove(&id),
        })
    }

    pub(super) fn untag(&mut self, id: u64) -> Result<(), LoadError> {
        self.tags.remove(&id);
        self.publish_tags(id)
    }

    /// Replaces every tag, tree root and selector at once, in one table
    /// swap: each tagged cgroup goes from its old policy to its new one with
    /// nothing in between. `extra_filter` (the levels the selectors can
    /// select at) replaces the published one with it.
    pub fn replace_all(
        &mut self,
        file_rules: HashMap<FileRuleKey, u16>,
        tags: HashMap<u64, (u32, TagInfo)>,
        selectors: Box<SelectorTable>,
        extra_filter: &TagFilter,
    ) -> Result<(), LoadError> {
        if let Some((&id, &(level, _))) = tags.iter().find(|(_, (level, _))| *level > MAX_TAG_LEVEL) {
            return Err(LoadError::TooDeep { name: format!("id {id}"), level });
        }
        let mut file_table = tables::file_table(&file_rules)?;
        let mut tag_table = tables::tag_table(&tags)?;
        let mut selectors = selectors;
        let filter = filter_of(&tags).union(extra_filter);
        self.set_filter(&self.published_filter.union(&filter))?;
        let swap_in = |published: &mut Tables| {
            swap_whole(&mut published.tags, &mut tag_table);
            swap_whole(&mut published.files, &mut file_table);
            swap_whole(&mut published.selectors, &mut selectors);
        };
        self.publish_swapped(swap_in)?;
        (self.file_rules, self.tags, self.extra_filter) = (file_rules, tags, *extra_filter);
        self.set_filter(&filter)
    }

    /// Adds tree roots (of a policy loaded before it is tagged). Nothing
    /// changes if publishing fails.
    pub fn add_file_rules(&mut self, rules: &[(FileRuleKey, u16)]) -> Result<(), LoadError> {
        let before = self.file_rules.clone();
        self.file_rules.extend(rules.iter().copied());
        self.publish_files().inspect_err(|_| self.file_rules = before)
    }

    /// Lets the tag check look for more selected cgroups (before they go in
    /// `SELECTED`), or fewer (after they left it).
    pub fn set_extra_filter(&mut self, extra_filter: &TagFilter) -> Result<(), LoadError> {
        self.extra_filter = *extra_filter;
        let filter = filter_of(&self.tags).union(extra_filter);
        if filter == self.published_filter {
            return Ok(());
        }
        self.set_filter(&filter)
    }

    /// The tag cgroup `id` has in the tables.
    #[must_use]
    pub fn tag_info(&self, id: u64) -> Option<TagInfo> {
        self.tags.get(&id).map(|&(_, tag)| tag)
    }

    pub fn selector_table(&self) -> &SelectorTable {
        &self.published.selectors
    }

    pub fn extra_filter(&self) -> TagFilter {
        self.extra_filter
    }

    /// Publishes the tags after cgroup `changed`'s changed.
    fn publish_tags(&mut self, changed: u64) -> Result<(), LoadError> {
        let tag = self.tags.get(&changed).map(|&(_, tag)| tag);
        let table = match tables::retagged(&self.published.tags, changed, tag) {
            Some(table) => table,
            None => tables::tag_table(&self.tags)?,
        };
        let filter = filter_of(&self.tags).union(&self.extra_filter);
        // A filter bit goes up before the table that needs it, and down only
        // after the table without it: a task the table tags always passes.
        self.set_filter(&self.published_filter.union(&filter))?;
        let mut table = table;
        self.publish_swapped(|published| swap_whole(&mut published.tags, &mut table))?;
        self.set_filter(&filter)
    }

    fn publish_files(&mut self) -> Result<(), LoadError> {
        let mut table = tables::file_table(&self.file_rules)?;
        self.publish_swapped(|published| swap_whole(&mut published.files, &mut table))
    }

    /// Publishes the tables with `swap_in`'s parts swapped in; if that
    /// fails, swaps them back out (`swap_in` is its own inverse), so the
    /// tables kept are the ones in force.
    fn publish_swapped(&mut self, mut swap_in: impl FnMut(&mut Tables)) -> Result<(), LoadError> {
        swap_in(&mut self.published);
        self.target.publish(&self.published).inspect_err(|_| swap_in(&mut self.published))
    }

    fn set_filter(&mut self, filter: &TagFilter) -> Result<(), LoadError> {
        self.target.set_filter(filter)?;
        self.published_filter = *filter;
        Ok(())
    }
}

impl Swap<KernelTables> {
    /// Takes the filter in force as the published one: an earlier daemon's,
    /// when adopting its pins (kept a superset until this one publishes).
    pub(super) fn keep_filter_in_force(&mut self) -> Result<(), LoadError> {
        self.published_filter = self.target.filter_in_force()?;
        Ok(())
    }
}

/// Swaps two tables in place, byte slice by byte slice (`mem::swap` would
/// put megabytes on the stack in a debug build).
fn swap_whole<T: bytemuck::Pod>(a: &mut T, b: &mut T) {
    bytemuck::bytes_of_mut(a).swap_with_slice(bytemuck::bytes_of_mut(b));
}

/// The pre-filter entries of `tags`.
fn filter_of(tags: &HashMap<u64, (u32, TagInfo)>) -> TagFilter {
    let mut filter = TagFilter::EMPTY;
    for (&id, &(level, _)) in tags {
        filter.insert(id, level);
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use enforcer_common::policy::{FILE_WRITE, PolicyId, TAG_PENDING_KEY};

    use super::*;

    /// What the programs would see: the tags of the tables in force (id ->
    /// level), the file keys, and the filter, after each step.
    #[derive(Default)]
    struct Programs {
        tagged: BTreeMap<u64, u32>,
        file_keys: usize,
        filter: Option<TagFilter>,
        tables_published: usize,
        /// Fail the next publish.
        refuse: bool,
    }

    impl Programs {
        /// The invariant: every cgroup the tables tag passes the filter in
        /// force, at its level.
        fn check(&self) {
            let Some(filter) = self.filter else { return };
            for (&id, &level) in &self.tagged {
                assert!(filter.may_contain(id), "tagged cgroup {id} misses the filter's bloom");
                assert!(filter.level_bits >> level & 1 == 1, "tagged cgroup {id}: level {level} not in the filter");
                assert!(filter.shallowest <= level, "tagged cgroup {id} above the filter's shallowest level");
            }
        }
    }

    impl Target for Programs {
        fn publish(&mut self, tables: &Tables) -> Result<(), LoadError> {
            if std::mem::take(&mut self.refuse) {
                return Err(LoadError::MissingMap("refused by the test"));
            }
            // The levels come from the filter the test gave the swap; the
            // table only says which ids are tagged.
            let ids = tables.tags.slots.iter().map(|slot| slot.cgroup_id & !TAG_PENDING_KEY).filter(|&id| id != 0);
            self.tagged = ids.map(|id| (id, level_of(id))).collect();
            self.file_keys = tables.files.slots.iter().filter(|slot| slot.policy_id != PolicyId::NONE).count();
            self.tables_published += 1;
            self.check();
            Ok(())
        }

        fn set_filter(&mut self, filter: &TagFilter) -> Result<(), LoadError> {
            self.filter = Some(*filter);
            self.check();
            Ok(())
        }
    }

    /// The tests tag cgroup `id` at level `id / 100`.
    fn level_of(id: u64) -> u32 {
        u32::try_from(id / 100).unwrap()
    }

    fn tag(policy_id: u16) -> TagInfo {
        TagInfo::new(PolicyId(policy_id), 0)
    }

    fn swap() -> Swap<Programs> {
        let mut swap = Swap::new(Programs::default()).unwrap();
        swap.publish_empty().unwrap();
        swap
    }

    #[test]
    fn the_filter_covers_every_table_while_cgroups_are_tagged_and_untagged() {
        let mut swap = swap();
        for id in [201, 305, 702, 203] {
            swap.tag(id, level_of(id), tag(1)).unwrap();
        }
        assert_eq!(swap.target.tagged.keys().copied().collect::<Vec<_>>(), [201, 203, 305, 702]);
        for id in [702, 201] {
            swap.untag(id).unwrap();
        }
        assert_eq!(swap.target.tagged.keys().copied().collect::<Vec<_>>(), [203, 305]);
        let filter = swap.target.filter.unwrap();
        assert_eq!(filter.level_bits, 1 << 2 | 1 << 3, "the filter drops the levels no tag needs");
        assert_eq!(filter.shallowest, 2);
    }

    #[test]
    fn a_refused_table_leaves_the_tags_as_they_were() {
        let mut swap = swap();
        swap.tag(301, 3, tag(1)).unwrap();
        swap.target.refuse = true;
        assert!(swap.tag(402, 4, tag(1)).is_err());
        assert_eq!(swap.tags.len(), 1);
        swap.tag(503, 5, tag(1)).unwrap();
        assert_eq!(swap.target.tagged.keys().copied().collect::<Vec<_>>(), [301, 503], "402 never reached a table");
    }

    #[test]
    fn a_refused_file_table_leaves_the_rules_as_they_were() {
        let mut swap = swap();
        let key = |ino| (FileRuleKey { ino, dev: 1, policy_id: PolicyId(1) }, FILE_WRITE);
        swap.add_file_rules(&[key(10)]).unwrap();
        swap.target.refuse = true;
        assert!(swap.add_file_rules(&[key(11)]).is_err());
        swap.add_file_rules(&[key(12)]).unwrap();
        assert_eq!(swap.target.file_keys, 2);
    }

    #[test]
    fn replace_all_moves_every_tag_in_one_table() {
        let mut swap = swap();
        swap.tag(201, 2, tag(1)).unwrap();
        swap.tag(302, 3, tag(1)).unwrap();
        let before = swap.target.tables_published;
        let tags = HashMap::from([(302, (3, tag(2))), (401, (4, tag(2)))]);
        swap.replace_all(HashMap::new(), tags, tables::no_selectors(), &TagFilter::EMPTY).unwrap();
        assert_eq!(swap.target.tables_published, before + 1, "one swap");
        assert_eq!(swap.target.tagged.keys().copied().collect::<Vec<_>>(), [302, 401]);
        assert_eq!(swap.target.filter.unwrap().level_bits, 1 << 3 | 1 << 4);
    }

    #[test]
    fn replace_all_refuses_a_cgroup_too_deep_before_publishing_anything() {
        let mut swap = swap();
        let before = swap.target.tables_published;
        let deep = u64::from(MAX_TAG_LEVEL + 1) * 100;
        let tags = HashMap::from([(deep, (MAX_TAG_LEVEL + 1, tag(1)))]);
        let result = swap.replace_all(HashMap::new(), tags, tables::no_selectors(), &TagFilter::EMPTY);
        assert!(matches!(result, Err(LoadError::TooDeep { .. })));
        assert_eq!(swap.target.tables_published, before);
    }

    #[test]
    fn selectors_levels_stay_in_the_filter_without_tags() {
        let mut swap = swap();
        let mut extra = TagFilter::EMPTY;
        extra.insert(0, 6);
        swap.set_extra_filter(&extra).unwrap();
        swap.tag(201, 2, tag(1)).unwrap();
        swap.untag(201).unwrap();
        let filter = swap.target.filter.unwrap();
        assert_eq!(filter.level_bits, 1 << 6);
        assert_eq!(swap.extra_filter(), extra);
    }
}
