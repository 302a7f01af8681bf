//! Builds the policy tables the programs look in: cuckoo hash tables in
//! plain array memory (see `enforcer_common::policy::TagTable`), built
//! anew for every change (a tag changed in a copy of its table) and swapped
//! in by the loader.

use std::collections::HashMap;

use enforcer_common::policy::{
    FILE_RULES_MAX, FILE_SLOTS, FileRuleKey, FileSlot, FileTable, TAG_PENDING_KEY, TAG_SLOTS, TAGGED_MAX, Tables,
    TagInfo, TagSlot, TagTable, file_hash_base, file_homes, tag_homes, tag_key,
};
use enforcer_common::select::SelectorTable;

/// Seeds tried before giving up: at a quarter load, cuckoo placement fails
/// for a seed with a probability of about one in the number of keys.
const SEEDS: u64 = 16;
/// Evictions tried for one key before the seed is given up.
const MAX_KICKS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{count} tagged cgroups: the enforcer tags at most {TAGGED_MAX}; untag some first")]
    TooManyTags { count: usize },
    #[error(
        "{count} file tree roots over all loaded policies: the enforcer holds at most {FILE_RULES_MAX}; \
         unload policies or name fewer trees"
    )]
    TooManyFileRules { count: usize },
    #[error("no seed placed every {what} in one of its two slots; please report this")]
    Unplaceable { what: &'static str },
}

/// The tag table for `tags` (cgroup id -> (level, tag)).
#[expect(clippy::implicit_hasher, reason = "the loader's maps use the default hasher")]
pub fn tag_table(tags: &HashMap<u64, (u32, TagInfo)>) -> Result<Box<TagTable>, TableError> {
    if tags.len() > TAGGED_MAX {
        return Err(TableError::TooManyTags { count: tags.len() });
    }
    let keys: Vec<(u64, TagInfo)> = tags.iter().map(|(&id, &(_, tag))| (tag_key(id, tag), tag)).collect();
    let homes = |seed| keys.iter().map(|&(key, _)| tag_homes(key, seed)).collect();
    let (seed, positions) = place_seeded(homes, TAG_SLOTS).ok_or(TableError::Unplaceable { what: "tagged cgroup" })?;
    let mut table = zeroed::<TagTable>();
    table.seed = seed;
    for ((key, tag), position) in keys.into_iter().zip(positions) {
        table.slots[position] = TagSlot { cgroup_id: key, tag };
    }
    Ok(table)
}

/// `table` with cgroup `id` tagged `tag` (or untagged: `None`), changed
/// in place under its seed: a copy of a quarter-full table and a cuckoo
/// insert, where [`tag_table`] places every tag anew. A tag goes in under
/// its key ([`tag_key`]: apart while it waits for an exec). `None` if the
/// insert found no place (then build the table with [`tag_table`]).
#[must_use]
pub fn retagged(table: &TagTable, id: u64, tag: Option<TagInfo>) -> Option<Box<TagTable>> {
    let mut table = copied(table);
    // Out under either key (waiting for an exec or not), in under its own.
    for key in [id, id | TAG_PENDING_KEY] {
        if let Some(&home) = tag_homes(key, table.seed).iter().find(|&&h| table.slots[h].cgroup_id == key) {
            table.slots[home] = TagSlot::default();
        }
    }
    let Some(tag) = tag else { return Some(table) };
    if table.slots.iter().filter(|s| s.cgroup_id != 0).count() >= TAGGED_MAX {
        return None;
    }
    let (seed, moving) = (table.seed, TagSlot { cgroup_id: tag_key(id, tag), tag });
    let empty = |slot: &TagSlot| slot.cgroup_id == 0;
    cuckoo_insert(&mut table.slots, moving, empty, |slot| tag_homes(slot.cgroup_id, seed)).then_some(table)
}

/// A heap copy of `table` (a `Box::new` of it would pass through the stack).
#[expect(clippy::unnecessary_box_returns, reason = "a table: the point is not to have it on the stack")]
fn copied<T: bytemuck::Pod>(table: &T) -> Box<T> {
    let mut copy = zeroed::<T>();
    bytemuck::bytes_of_mut(&mut *copy).copy_from_slice(bytemuck::bytes_of(table));
    copy
}

/// The file table for every loaded policy's tree roots (key -> `FILE_*`).
#[expect(clippy::implicit_hasher, reason = "the loader's maps use the default hasher")]
pub fn file_table(rules: &HashMap<FileRuleKey, u16>) -> Result<Box<FileTable>, TableError> {
    if rules.len() > FILE_RULES_MAX {
        return Err(TableError::TooManyFileRules { count: rules.len() });
    }
    let keys: Vec<_> = rules.iter().collect();
    let homes =
        |seed| keys.iter().map(|(key, _)| file_homes(key.ino, file_hash_base(key.dev, key.policy_id, seed))).collect();
    let (seed, positions) =
        place_seeded(homes, FILE_SLOTS).ok_or(TableError::Unplaceable { what: "file tree root" })?;
    let mut table = zeroed::<FileTable>();
    table.seed = seed;
    for ((key, &flags), position) in keys.into_iter().zip(positions) {
        table.slots[position] = FileSlot { ino: key.ino, dev: key.dev, policy_id: key.policy_id, flags };
    }
    Ok(table)
}

/// The first seed whose home slots (`homes(seed)`, one pair per key) place
/// every key, and each key's slot.
fn place_seeded(homes: impl Fn(u64) -> Vec<[usize; 2]>, size: usize) -> Option<(u64, Vec<usize>)> {
    (0..SEEDS).map(|i| i.wrapping_mul(0xD6E8_FEB8_6659_FD93)).find_map(|seed| Some((seed, place(&homes(seed), size)?)))
}

/// Cuckoo placement: for each key (given its two home slots), the slot it
/// gets, one of its homes; `None` if some key found no place within
/// `MAX_KICKS` evictions.
fn place(homes: &[[usize; 2]], size: usize) -> Option<Vec<usize>> {
    let mut owner: Vec<Option<usize>> = vec![None; size];
    let homes_of = |owner: &Option<usize>| homes[owner.expect("only keys move: an empty slot takes one")];
    for key in 0..homes.len() {
        if !cuckoo_insert(&mut owner, Some(key), Option::is_none, homes_of) {
            return None;
        }
    }
    let mut positions = vec![0; homes.len()];
    for (slot, key) in owner.iter().enumerate() {
        if let Some(key) = key {
            positions[*key] = slot;
        }
    }
    Some(positions)
}

/// Puts `moving` in one of its two home slots (`homes`), evicting the
/// occupant of the first to its other home, and so on; false if no place
/// was found within `MAX_KICKS` evictions (then an evicted entry is out of
/// `slots`: the caller gives the attempt up).
fn cuckoo_insert<S: Copy>(
    slots: &mut [S],
    mut moving: S,
    empty: impl Fn(&S) -> bool,
    homes: impl Fn(&S) -> [usize; 2],
) -> bool {
    let mut slot = homes(&moving)[0];
    for _ in 0..MAX_KICKS {
        if empty(&slots[slot]) {
            slots[slot] = moving;
            return true;
        }
        let [first, second] = homes(&moving);
        if slot == first && empty(&slots[second]) {
            slots[second] = moving;
            return true;
        }
        // Take the slot and send its owner to the owner's other home.
        moving = std::mem::replace(&mut slots[slot], moving);
        let [a, b] = homes(&moving);
        slot = if a == slot { b } else { a };
    }
    false
}

/// The tables the programs get: `tags`, `files` and `selectors`, copied in
/// the heap (slice copies: the 2 MiB file table and the 130 KiB selector
/// table never pass through the stack).
#[must_use]
pub fn combine(tags: &TagTable, files: &FileTable, selectors: &SelectorTable) -> Box<Tables> {
    let mut tables = zeroed::<Tables>();
    tables.tags.seed = tags.seed;
    tables.tags.slots.copy_from_slice(&tags.slots);
    tables.files.seed = files.seed;
    tables.files.slots.copy_from_slice(&files.slots);
    std::slice::from_mut(&mut tables.selectors).copy_from_slice(std::slice::from_ref(selectors));
    tables
}

/// A selector table with no selectors.
#[must_use]
pub fn no_selectors() -> Box<SelectorTable> {
    zeroed()
}

/// A table on the heap, all slots empty (all-zero is empty), without
/// building megabytes on the stack first.
#[expect(clippy::unnecessary_box_returns, reason = "megabytes: the point is not to have them on the stack")]
fn zeroed<T: bytemuck::Zeroable>() -> Box<T> {
    bytemuck::zeroed_box()
}

#[cfg(test)]
mod tests {
    use enforcer_common::policy::{FILE_WRITE, PolicyId};

    use super::*;

    /// What the programs do: look in the key's two home slots.
    fn probe_file(table: &FileTable, key: FileRuleKey) -> Option<u16> {
        let homes = file_homes(key.ino, file_hash_base(key.dev, key.policy_id, table.seed));
        homes.iter().find_map(|&home| table.slots[home].flags_if_holds(key.ino, key.dev, key.policy_id))
    }

    #[test]
    fn a_full_file_table_finds_every_root_and_nothing_else() {
        let rules: HashMap<FileRuleKey, u16> = (0..FILE_RULES_MAX as u64)
            .map(|i| {
                (FileRuleKey { ino: 1000 + i, dev: 0x80_0001, policy_id: PolicyId((i % 3) as u16 + 1) }, FILE_WRITE)
            })
            .collect();
        let table = file_table(&rules).expect("half load fits");
        for key in rules.keys() {
            assert_eq!(probe_file(&table, *key), Some(FILE_WRITE), "{key:?}");
        }
        let other_policy = FileRuleKey { ino: 1000, dev: 0x80_0001, policy_id: PolicyId(9) };
        assert_eq!(probe_file(&table, other_policy), None);
        let other_dev = FileRuleKey { ino: 1000, dev: 0x80_0002, policy_id: PolicyId(1) };
        assert_eq!(probe_file(&table, other_dev), None);
    }

    #[test]
    fn too_many_rules_is_an_error_that_says_the_limit() {
        let rules: HashMap<FileRuleKey, u16> = (0..=FILE_RULES_MAX as u64)
            .map(|i| (FileRuleKey { ino: i + 1, dev: 1, policy_id: PolicyId(1) }, FILE_WRITE))
            .collect();
        let err = file_table(&rules).unwrap_err().to_string();
        assert!(err.contains(&FILE_RULES_MAX.to_string()), "{err}");
    }

    #[test]
    fn tag_table_finds_each_tag() {
        let tags: HashMap<u64, (u32, TagInfo)> =
            (1..=TAGGED_MAX as u64).map(|id| (id * 7, ((id % 5) as u32, TagInfo::new(PolicyId(1), 2)))).collect();
        let table = tag_table(&tags).expect("half load fits");
        for (&id, &(_, tag)) in &tags {
            let found = tag_homes(id, table.seed).map(|home| table.slots[home]);
            assert!(found.contains(&TagSlot { cgroup_id: id, tag }), "{id}");
        }
    }

    #[test]
    fn retagging_one_cgroup_at_a_time_keeps_every_other_tag_and_fills_to_the_limit() {
        let tag = |p| TagInfo::new(PolicyId(p), 0);
        let find = |table: &TagTable, id: u64| {
            let found = tag_homes(id, table.seed).map(|home| table.slots[home]);
            found.iter().find(|s| s.cgroup_id == id).map(|s| s.tag)
        };
        let mut table = tag_table(&HashMap::new()).unwrap();
        let mut ids = Vec::new();
        while let Some(next) = retagged(&table, ids.len() as u64 * 13 + 5, Some(tag(1))) {
            ids.push(ids.len() as u64 * 13 + 5);
            table = next;
        }
        assert_eq!(ids.len(), TAGGED_MAX, "an insert is refused at the limit, not before");
        assert!(ids.iter().all(|&id| find(&table, id) == Some(tag(1))));
        // A new tag for one, another untagged: the rest stay.
        table = retagged(&table, ids[7], Some(tag(2))).unwrap();
        table = retagged(&table, ids[8], None).unwrap();
        assert_eq!((find(&table, ids[7]), find(&table, ids[8])), (Some(tag(2)), None));
        assert!(ids.iter().skip(9).all(|&id| find(&table, id) == Some(tag(1))));
        assert_eq!(table.slots.iter().filter(|s| s.cgroup_id != 0).count(), TAGGED_MAX - 1);
    }

    #[test]
    fn a_tag_that_waits_for_an_exec_is_keyed_apart_until_it_is_tagged_again_without() {
        use enforcer_common::policy::TAG_FROM_EXEC;
        let waiting = TagInfo::new(PolicyId(1), 2 | TAG_FROM_EXEC);
        let in_force = TagInfo::new(PolicyId(1), 2);
        let keys = |table: &TagTable| {
            let mut keys: Vec<u64> = table.slots.iter().map(|s| s.cgroup_id).filter(|&k| k != 0).collect();
            keys.sort_unstable();
            keys
        };
        let built = tag_table(&HashMap::from([(7, (1, waiting)), (8, (1, in_force))])).unwrap();
        assert_eq!(keys(&built), [8, 7 | TAG_PENDING_KEY]);
        // Armed and re-keyed: one entry, under the plain id.
        let table = retagged(&built, 7, Some(in_force)).unwrap();
        assert_eq!(keys(&table), [7, 8]);
        // Waiting again (a new tag), and untagged: no entry is left behind.
        let table = retagged(&table, 7, Some(waiting)).unwrap();
        assert_eq!(keys(&table), [8, 7 | TAG_PENDING_KEY]);
        assert_eq!(keys(&retagged(&table, 7, None).unwrap()), [8]);
    }
}
