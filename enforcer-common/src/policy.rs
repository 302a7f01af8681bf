//! Policy as the kernel sees it: tagged cgroups and inode-keyed tree roots.

/// The policy tables, as one [`Tables`] (an array-of-maps holding one
/// single-entry array).
pub const TABLES_MAP: &str = "TABLES";
/// The table maps' flags: `BPF_F_MMAPABLE`, so userspace writes a new table
/// straight into the map's memory (a map update copies its 2.5 MiB twice).
pub const TABLE_MAP_FLAGS: usize = 1 << 10;
/// The programs' `.bss`: their [`TagFilter`], `TAG_FILTER`.
pub const TAG_FILTER_MAP: &str = ".bss";

/// Tagged cgroups at most (a [`TagTable`] stays at most a quarter full,
/// where cuckoo placement practically never fails).
pub const TAGGED_MAX: usize = TAG_SLOTS / 4;
pub const TAG_SLOTS: usize = 1 << 14;
/// Tree roots at most, over all policies (a [`FileTable`], 2 MiB, stays at
/// most a quarter full).
pub const FILE_RULES_MAX: usize = FILE_SLOTS / 4;
pub const FILE_SLOTS: usize = 1 << 17;
/// Deepest cgroup level that can be tagged (see `TagFilter::levels`).
pub const MAX_TAG_LEVEL: u32 = 63;

// Policy tables are cuckoo hash tables in plain array memory: every key
// lives in one of its two home slots, so a lookup is two multiplies, two
// shifts and two compares, with no loop for the verifier to walk, where a
// BPF hash map costs a jhash, a bucket walk and a memcmp (about 180
// instructions). The tables are never changed in place: userspace builds a
// new one and swaps it into the array-of-maps, so the kernel's RCU hands each
// program run one consistent table, old or new.

/// A policy version's id, as every kernel table, tag and event names it:
/// from 1 (`enforcer run` uses 1; the daemon gives each version its own) to
/// 65 534; [`PolicyId::NONE`] marks an empty slot and [`PolicyId::LOCKED`]
/// the tag of cgroups whose path the kernel could not read whole.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyId(pub u16);

impl PolicyId {
    /// No policy: an empty table slot, an untagged selector slot.
    pub const NONE: Self = Self(0);
    /// The tag of cgroups a selector may match but whose path the kernel
    /// could not read whole: no rules carry it, so nothing is allowed.
    pub const LOCKED: Self = Self(u16::MAX);
}

impl core::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const SECOND: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// The two home slots of a hashed key in a table of `2^bits` slots.
#[expect(clippy::cast_possible_truncation, reason = "the shift leaves `bits` bits")]
const fn homes(hash: u64, bits: u32) -> [usize; 2] {
    [(hash.wrapping_mul(GOLDEN) >> (64 - bits)) as usize, (hash.wrapping_mul(SECOND) >> (64 - bits)) as usize]
}

/// Home slots of a cgroup id in a [`TagTable`].
#[must_use]
pub const fn tag_homes(cgroup_id: u64, seed: u64) -> [usize; 2] {
    homes(cgroup_id ^ seed, TAG_SLOTS.trailing_zeros())
}

/// The part of a file key's hash shared by one walk segment (one
/// filesystem, one policy), computed once per mount rather than per level.
#[must_use]
pub const fn file_hash_base(dev: u32, policy_id: PolicyId, seed: u64) -> u64 {
    ((dev as u64) << 16 | policy_id.0 as u64).wrapping_mul(SECOND).rotate_left(29) ^ seed
}

/// Home slots of an inode in a [`FileTable`], given [`file_hash_base`].
#[must_use]
pub const fn file_homes(ino: u64, base: u64) -> [usize; 2] {
    homes(ino ^ base, FILE_SLOTS.trailing_zeros())
}

/// Bits in the tag pre-filter's bloom filter.
pub const TAG_BLOOM_BITS: u64 = 1 << 16;
pub const TAG_BLOOM_WORDS: usize = (TAG_BLOOM_BITS / 64) as usize;

/// Where a cgroup id lands in the bloom filter.
#[must_use]
pub const fn tag_bloom_bit(cgroup_id: u64) -> u64 {
    cgroup_id.wrapping_mul(GOLDEN) >> (64 - TAG_BLOOM_BITS.trailing_zeros())
}

/// The pre-filter that keeps untagged processes nearly free, read as a
/// global (no map lookup): the cgroup levels at which tagged cgroups exist,
/// and a bloom filter of their ids. A process whose ancestors at those
/// levels all miss the filter is not tagged, decided without the tag table.
/// Userspace keeps it a superset of the current table while tables change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TagFilter {
    /// The shallowest level with a tagged cgroup (`u32::MAX`: none): a task
    /// above it is untagged, decided by one compare.
    pub shallowest: u32,
    pub pad: u32,
    /// Bit `n`: some tagged cgroup sits at level `n`.
    pub level_bits: u64,
    pub bloom: [u64; TAG_BLOOM_WORDS],
}
const _: () = assert!(core::mem::size_of::<TagFilter>() == 8 + 8 + 8 * TAG_BLOOM_WORDS);

impl TagFilter {
    pub const EMPTY: Self = Self { shallowest: u32::MAX, pad: 0, level_bits: 0, bloom: [0; TAG_BLOOM_WORDS] };

    pub fn insert(&mut self, cgroup_id: u64, level: u32) {
        let bit = tag_bloom_bit(cgroup_id);
        self.shallowest = self.shallowest.min(level);
        if level <= MAX_TAG_LEVEL {
            self.level_bits |= 1 << level;
        }
        self.bloom[Self::word(bit)] |= 1 << (bit % 64);
    }

    #[must_use]
    pub fn may_contain(&self, cgroup_id: u64) -> bool {
        let bit = tag_bloom_bit(cgroup_id);
        self.bloom[Self::word(bit)] & (1 << (bit % 64)) != 0
    }

    /// Everything either filter lets through.
    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        let mut union = *self;
        union.shallowest = union.shallowest.min(other.shallowest);
        union.level_bits |= other.level_bits;
        for (word, other) in union.bloom.iter_mut().zip(other.bloom) {
            *word |= other;
        }
        union
    }

    /// The word holding `bit`, masked so the bound is evident (no panic path
    /// in the BPF programs).
    #[must_use]
    pub const fn word(bit: u64) -> usize {
        (bit / 64) as usize & (TAG_BLOOM_WORDS - 1)
    }
}

/// One tagged cgroup; `cgroup_id == 0` marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TagSlot {
    pub cgroup_id: u64,
    pub tag: TagInfo,
}
const _: () = assert!(core::mem::size_of::<TagSlot>() == 16);

/// Every tagged cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TagTable {
    pub seed: u64,
    pub slots: [TagSlot; TAG_SLOTS],
}

/// One tree root of one policy; an empty slot is all zero (policy ids start
/// at 1, so it matches no key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FileSlot {
    pub ino: u64,
    pub dev: u32,
    pub policy_id: PolicyId,
    /// `FILE_*` bits.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<FileSlot>() == 16);

impl FileSlot {
    /// A slot's second word less its flags (little-endian, as its bytes
    /// lie): where a root is (`dev`) and whose (`policy_id`), one value to
    /// compare.
    #[must_use]
    pub const fn place(dev: u32, policy_id: PolicyId) -> u64 {
        dev as u64 | (policy_id.0 as u64) << 32
    }

    /// The slot's flags if it holds the root `ino` on `dev` of `policy_id`.
    #[inline]
    #[must_use]
    pub fn flags_if_holds(&self, ino: u64, dev: u32, policy_id: PolicyId) -> Option<u16> {
        (self.ino == ino && self.dev == dev && self.policy_id == policy_id).then_some(self.flags)
    }
}

/// Every policy's tree roots.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FileTable {
    pub seed: u64,
    pub slots: [FileSlot; FILE_SLOTS],
}

/// Every table the programs judge by, swapped as one: a tagged open finds
/// its tag and its tree roots with one map lookup, and always from the same
/// generation of the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Tables {
    pub tags: TagTable,
    pub files: FileTable,
    pub selectors: crate::select::SelectorTable,
}

/// The daemon's own files and directories, which no tagged task may change
/// (the programs' global `PROTECTED`, in a section of its own).
pub const PROTECTED_MAP: &str = ".bss.protected";
/// Inodes in [`Protected`] at most.
pub const PROTECTED_MAX: usize = 16;

/// One protected inode (`ino == 0`: an unused slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ProtectedInode {
    pub ino: u64,
    /// Kernel encoding, as in [`FileRuleKey`].
    pub dev: u32,
    pub pad: u32,
}

/// The protected inodes: writing, truncating, renaming, removing or
/// changing attributes of one, or adding or removing an entry in one that is
/// a directory, is refused for every tagged task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Protected {
    /// [`protected_bit`] of every inode number in `inodes`: a check of an
    /// inode whose bit is clear (nearly every tagged write) ends here
    /// instead of comparing all of them.
    pub filter: [u64; PROTECTED_FILTER_WORDS],
    pub inodes: [ProtectedInode; PROTECTED_MAX],
}

impl Protected {
    /// The set of `inodes` (past [`PROTECTED_MAX`], the rest are left out).
    pub fn new(inodes: impl IntoIterator<Item = ProtectedInode>) -> Self {
        let mut protected = Self::default();
        for (slot, inode) in protected.inodes.iter_mut().zip(inodes) {
            *slot = inode;
            let (word, bit) = protected_bit(inode.ino);
            protected.filter[word] |= bit;
        }
        protected
    }

    /// Whether inode number `ino` passes the filter (no false negatives).
    #[must_use]
    #[inline]
    pub fn may_protect(&self, ino: u64) -> bool {
        let (word, bit) = protected_bit(ino);
        self.filter[word] & bit != 0
    }
}

/// Words of [`Protected::filter`]: 256 bits, so that with the 16 inodes at
/// most one check in sixteen goes on to compare them.
pub const PROTECTED_FILTER_WORDS: usize = 4;

/// Where inode number `ino` lands in [`Protected::filter`]: a word, and
/// the bit in it.
#[must_use]
#[inline]
pub const fn protected_bit(ino: u64) -> (usize, u64) {
    let hash = ino.wrapping_mul(GOLDEN) >> 56;
    ((hash >> 6) as usize & (PROTECTED_FILTER_WORDS - 1), 1 << (hash & 63))
}

/// `TagInfo::flags`: report but allow (policy `mode = "audit"`).
pub const TAG_AUDIT: u32 = 1 << 0;
/// `TagInfo::flags`: the policy has a `[files]` section.
pub const TAG_FILES: u32 = 1 << 1;
/// `TagInfo::flags`: the policy has `read_deny` or `sensitive` trees
/// (every open is judged).
pub const TAG_READ_DENY: u32 = 1 << 2;
/// `TagInfo::flags`: the policy has a `[network]` section (destinations,
/// unix sockets and socket classes are judged). Bits from 8 up are the
/// socket classes it allows (`crate::net::SOCKET_CLASSES`).
pub const TAG_NET: u32 = 1 << 3;
/// `TagInfo::flags`: the policy has an `[exec]` section (programs may only
/// be executed from its trees).
pub const TAG_EXEC: u32 = 1 << 4;
/// `TagInfo::flags`: `syscalls.require_seccomp`: a task without a seccomp
/// filter may not execute anything.
pub const TAG_REQUIRE_SECCOMP: u32 = 1 << 5;
/// `TagInfo::flags`: some `read_deny` trees did not exist when the policy
/// was loaded; they are keyed by name (`FILE_PENDING`), and judged by a
/// second, short walk.
pub const TAG_PENDING: u32 = 1 << 6;
/// `TagInfo::flags` of one tag (not a policy's): the tag judges nothing
/// until a process of the cgroup executes a program (`enforcer oci-hook`:
/// the runtime still sets the container up in it). The programs record the
/// armed cgroups in `ARMED`.
pub const TAG_FROM_EXEC: u32 = 1 << 31;
/// The tag table key of a tag that waits for an exec: the cgroup id with
/// this bit (no cgroup id has it), so the lookup of a tagged cgroup by its
/// id finds only tags in force and tests no flag; the programs look for
/// this key only where that lookup missed.
pub const TAG_PENDING_KEY: u64 = 1 << 63;

/// The tag table key of cgroup `id` tagged `tag`.
#[must_use]
pub const fn tag_key(id: u64, tag: TagInfo) -> u64 {
    if tag.flags & TAG_FROM_EXEC != 0 { id | TAG_PENDING_KEY } else { id }
}
/// The map of armed cgroups: as many as the tag table holds.
pub const ARMED_MAP: &str = "ARMED";
#[expect(clippy::cast_possible_truncation, reason = "16 384")]
pub const ARMED_MAX: u32 = TAG_SLOTS as u32;
/// `TagInfo::flags`: no inode the policy's file table keys is a regular
/// file (its trees are directories, its devices device nodes), so the walk
/// of an open of a regular file starts at its directory: one table probe
/// fewer on the hot path.
pub const TAG_NO_REGULAR_FILE_ROOTS: u32 = 1 << 7;

/// `TagInfo::flags`: the policy has `sensitive` trees: a read below one
/// locks the agent's egress (`LOCKED`), and the network programs look the
/// agent up there.
pub const TAG_SENSITIVE: u32 = 1 << 15;
/// `TagInfo::flags`: the policy has upload budgets (`network.upload`):
/// every send of its agents is counted (`crate::budget`).
pub const TAG_BUDGET: u32 = 1 << 16;
/// `TagInfo::flags`: the policy checks the TLS names of connections to
/// addresses granted by name (`tls` on a host entry of `network.allow`, see
/// `crate::tls`).
pub const TAG_TLS: u32 = 1 << 17;
/// `TagInfo::flags`: the policy has a budget of new destinations
/// (`network.new_destinations`): every destination its agents connect or
/// send to is counted once per window.
pub const TAG_NEW_DESTINATIONS: u32 = 1 << 18;

/// The agents whose egress is locked: tagged cgroup id -> [`EgressLock`].
/// Pinned, so a lock outlives the daemon that saw it made.
pub const LOCKED_MAP: &str = "LOCKED";
/// Locked agents at most: every tagged cgroup, four times over (entries of
/// cgroups that are gone are removed by the daemon, not at once).
#[expect(clippy::cast_possible_truncation, reason = "16 384")]
pub const LOCKED_MAX: u32 = TAG_SLOTS as u32;

/// The read that locked an agent's egress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EgressLock {
    /// `bpf_ktime_get_boot_ns()` at the read.
    pub boot_ns: u64,
    /// The file read: its inode number and device (kernel encoding).
    pub ino: u64,
    pub dev: u32,
    /// The process that read it.
    pub tgid: u32,
}

/// What a tagged cgroup is judged by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TagInfo {
    /// The [`PolicyId`] (low half) and the id its destinations are keyed
    /// by in the network rules (high half, see [`Self::with_net_id`]): one
    /// word, as the programs keep a tag in two 32-bit registers (as `u16`
    /// fields, LLVM packs it into one 64-bit register and every flag test
    /// pays for it).
    policy: u32,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<TagInfo>() == 8);

impl TagInfo {
    #[inline]
    #[must_use]
    pub const fn new(policy_id: PolicyId, flags: u32) -> Self {
        Self { policy: policy_id.0 as u32 | (policy_id.0 as u32) << 16, flags }
    }

    /// The tag with its destinations keyed by `net_id` (by default its own
    /// id). The daemon keys every version of a policy's destinations by
    /// one id, so a new version changes only the entries that differ.
    #[inline]
    #[must_use]
    pub const fn with_net_id(self, net_id: PolicyId) -> Self {
        Self { policy: self.policy & 0xffff | (net_id.0 as u32) << 16, flags: self.flags }
    }

    /// The id the policy's destinations are keyed by.
    #[inline]
    #[must_use]
    pub const fn net_id(&self) -> PolicyId {
        PolicyId((self.policy >> 16) as u16)
    }

    /// The tag with other flags.
    #[inline]
    #[must_use]
    pub const fn with_flags(self, flags: u32) -> Self {
        Self { policy: self.policy, flags }
    }

    #[inline]
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "the low half")]
    pub const fn policy_id(&self) -> PolicyId {
        PolicyId(self.policy as u16)
    }

    /// Whether it names a policy (an unused selector slot's does not).
    #[inline]
    #[must_use]
    pub const fn has_policy(&self) -> bool {
        self.policy & 0xffff != PolicyId::NONE.0 as u32
    }

    /// The tag as one word (`policy_id | flags << 32`), for a global
    /// function's return value.
    #[inline]
    #[must_use]
    pub const fn to_bits(self) -> u64 {
        self.policy as u64 | (self.flags as u64) << 32
    }

    /// The tag [`Self::to_bits`] gave.
    #[inline]
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "the two halves")]
    pub const fn from_bits(bits: u64) -> Self {
        Self { policy: bits as u32, flags: (bits >> 32) as u32 }
    }

    /// The key of `addr` in this tag's policy's network rules (see
    /// [`crate::net::NetKey::new`]): by its net id.
    #[inline]
    #[must_use]
    pub fn net_key(&self, inbound: bool, addr: [u8; 16]) -> crate::net::NetKey {
        crate::net::NetKey::from_word(self.policy >> 16, inbound, addr)
    }

    /// The key of `addr` in the resolver's grants: by the policy id (each
    /// version has its resolver).
    #[inline]
    #[must_use]
    pub fn grant_key(&self, addr: [u8; 16]) -> crate::net::NetKey {
        crate::net::NetKey::from_word(self.policy & 0xffff, false, addr)
    }

    /// [`Self::net_key`] of an outbound `addr` in the rules that judge the
    /// agent after a sensitive read (`after_sensitive_read`).
    #[inline]
    #[must_use]
    pub fn locked_net_key(&self, addr: [u8; 16]) -> crate::net::NetKey {
        crate::net::NetKey::from_word(self.policy >> 16 | crate::net::NET_KEY_LOCKED, false, addr)
    }

    /// [`Self::grant_key`] of `addr` among the grants of names in
    /// `after_sensitive_read`.
    #[inline]
    #[must_use]
    pub fn locked_grant_key(&self, addr: [u8; 16]) -> crate::net::NetKey {
        crate::net::NetKey::from_word(self.policy & 0xffff | crate::net::NET_KEY_LOCKED, false, addr)
    }
}

/// A tree root: the inode of a directory (or file) named in a policy, on the
/// filesystem whose superblock has device number `dev` (kernel encoding,
/// `MAJOR << 20 | MINOR`, as in `/proc/self/mountinfo`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileRuleKey {
    pub ino: u64,
    pub dev: u32,
    pub policy_id: PolicyId,
}

/// Writing below this root is allowed.
pub const FILE_WRITE: u16 = 1 << 0;
/// Nothing below this root may be read or written.
pub const FILE_READ_DENY: u16 = 1 << 1;
/// Programs below this root may be executed.
pub const FILE_EXEC: u16 = 1 << 2;
/// `FileSlot::flags`: a device node (or a directory of them) the policy's
/// `[devices]` allows opening.
pub const FILE_DEVICE: u16 = 1 << 3;
/// `FileSlot::flags`: a directory some of whose entries do not exist yet but
/// are `read_deny` trees already; they are keyed by [`name_key`].
pub const FILE_PENDING: u16 = 1 << 4;
/// `FileSlot::flags`, always with `FILE_READ_DENY`: the tree may be read,
/// but holds secrets (`files.sensitive`): opening a file below it locks the
/// agent's egress. The walk meets it as a `read_deny` tree (so every rule
/// about where a walk may stop holds for both) and tells them apart only
/// there, off the common path, where it ends: userspace keeps no such root
/// below a `read_deny` tree, and gives it the write and exec trees above it
/// (`FILE_ABOVE_SHIFT`). A root that is both is `read_deny` alone.
pub const FILE_SENSITIVE: u16 = 1 << 6;
/// A `FILE_SENSITIVE` root's flags for the trees strictly above it:
/// `FILE_WRITE << FILE_ABOVE_SHIFT` if a write tree holds it,
/// `FILE_EXEC << FILE_ABOVE_SHIFT` if an exec tree does.
pub const FILE_ABOVE_SHIFT: u16 = 7;
/// `FileSlot::flags`: a `write` or `exec` root that no `read_deny` tree
/// holds (none is the root itself or above it). A walk that has its answer
/// by here (the root allows, or the question is only a read's) stops: the
/// levels above cannot deny. Without it, a policy with `read_deny` trees
/// walks every judged path to the top.
pub const FILE_NO_READ_DENY_ABOVE: u16 = 1 << 5;
/// The `ino` of a `FILE_PENDING` rule on each filesystem (`dev`) that holds a
/// pending directory of the policy: the pending climb stays on one
/// filesystem, so on any other it has nothing to find and is skipped. No
/// inode has this number in practice; if one did, it would only make its
/// children's names judged, never allow more.
pub const PENDING_ON_FILESYSTEM: u64 = u64::MAX;

/// Bytes of a name that [`name_key`] reads: the first `NAME_KEY_BYTES - 1`
/// (then a NUL, as a bounded string read leaves them). Longer names that
/// share them and their length share a key: more is denied, never less.
pub const NAME_KEY_BYTES: usize = 32;

/// The key of the entry named `name` (its first [`NAME_KEY_BYTES`] as
/// little-endian words, zero past its end, and its length) in the directory
/// with inode number `dir_ino`: the `ino` of a rule for a name that does not
/// exist yet.
#[must_use]
pub const fn name_key(dir_ino: u64, words: [u64; NAME_KEY_BYTES / 8], len: u32) -> u64 {
    let mut h = dir_ino ^ 0x9e37_79b9_7f4a_7c15 ^ (len as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let mut i = 0;
    while i < words.len() {
        h = (h ^ words[i]).wrapping_mul(0xc4ce_b9fe_1a85_ec53).rotate_left(29);
        i += 1;
    }
    // Far from any real inode number: the top bit set.
    h | 1 << 63
}

/// The words of `name` that [`name_key`] takes, zero past its end.
#[must_use]
pub fn name_words(name: &[u8]) -> [u64; NAME_KEY_BYTES / 8] {
    let mut bytes = [0u8; NAME_KEY_BYTES];
    let n = name.len().min(NAME_KEY_BYTES - 1);
    bytes[..n].copy_from_slice(&name[..n]);
    let mut words = [0u64; NAME_KEY_BYTES / 8];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    words
}

#[cfg(feature = "user")]
aya_pod!(PolicyId, TagFilter, Tables, Protected, EgressLock);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{PROTECTED_MAX, Protected, ProtectedInode, TagFilter};

    fn tagged_levels(filter: &TagFilter) -> Vec<usize> {
        (0..64).filter(|&l| filter.level_bits >> l & 1 != 0).collect()
    }

    #[test]
    fn the_filter_knows_the_shallowest_tagged_level() {
        let mut deep = TagFilter::EMPTY;
        assert_eq!(deep.shallowest, u32::MAX, "nothing tagged: every level is above it");
        deep.insert(40, 3);
        deep.insert(41, 5);
        assert_eq!(deep.shallowest, 3);
        assert_eq!(tagged_levels(&deep), [3, 5]);
        let mut shallow = TagFilter::EMPTY;
        shallow.insert(7, 1);
        let union = deep.union(&shallow);
        assert_eq!((union.shallowest, union.level_bits), (1, 1 << 1 | 1 << 3 | 1 << 5));
        assert_eq!(tagged_levels(&union), [1, 3, 5]);
        assert!(union.may_contain(7) && union.may_contain(40) && union.may_contain(41));
    }

    #[test]
    fn the_protected_filter_has_every_inode_kept() {
        let inodes = (1..=20u64).map(|ino| ProtectedInode { ino: ino * 7919, dev: 3, pad: 0 });
        let protected = Protected::new(inodes);
        let kept: Vec<u64> = protected.inodes.iter().map(|p| p.ino).collect();
        assert_eq!(kept.len(), PROTECTED_MAX, "past PROTECTED_MAX the rest are left out");
        for ino in kept {
            assert!(protected.may_protect(ino), "inode {ino} must pass the filter");
        }
        let misses = (1..1000u64).filter(|ino| !protected.may_protect(ino * 104_729)).count();
        assert!(misses > 850, "most other inodes end at the filter ({misses} of 999 did)");
    }
}
