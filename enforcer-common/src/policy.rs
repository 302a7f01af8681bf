//! Policy as the kernel sees it: tagged cgroups and inode-keyed tree roots.

/// Tagged cgroups (cgroup id -> [`TagInfo`]).
pub const TAGGED_MAP: &str = "TAGGED";
pub const TAGGED_MAX: u32 = 4096;
/// The cheap pre-filter every hook reads first (one-entry array).
pub const TAG_FILTER_MAP: &str = "TAG_FILTER";
/// File tree roots ([`FileRuleKey`] -> `FILE_*` flags).
pub const FILE_RULES_MAP: &str = "FILE_RULES";
pub const FILE_RULES_MAX: u32 = 65_536;

/// Bits in the tag pre-filter's bloom filter.
pub const TAG_BLOOM_BITS: u64 = 1 << 16;
pub const TAG_BLOOM_WORDS: usize = (TAG_BLOOM_BITS / 64) as usize;
/// Deepest cgroup level that can be tagged (levels are bits of a u64).
pub const MAX_TAG_LEVEL: u32 = 63;

/// Where a cgroup id lands in the bloom filter (multiplicative hashing: one
/// multiply and a shift, cheap enough for every hook of every process).
#[must_use]
pub const fn tag_bloom_bit(cgroup_id: u64) -> u64 {
    cgroup_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 16)
}

/// The pre-filter that keeps untagged processes nearly free: a mask of the
/// cgroup levels at which tagged cgroups exist and a bloom filter of their
/// ids. A process whose ancestors at those levels all miss the filter is not
/// tagged, decided without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TagFilter {
    /// Bit `n` set: some tagged cgroup sits at level `n`.
    pub levels: u64,
    pub bloom: [u64; TAG_BLOOM_WORDS],
}
const _: () = assert!(core::mem::size_of::<TagFilter>() == 8 + 8 * TAG_BLOOM_WORDS);

impl TagFilter {
    pub const EMPTY: Self = Self { levels: 0, bloom: [0; TAG_BLOOM_WORDS] };

    pub fn insert(&mut self, cgroup_id: u64, level: u32) {
        let bit = tag_bloom_bit(cgroup_id);
        self.levels |= 1 << level;
        self.bloom[Self::word(bit)] |= 1 << (bit % 64);
    }

    #[must_use]
    pub fn may_contain(&self, cgroup_id: u64) -> bool {
        let bit = tag_bloom_bit(cgroup_id);
        self.bloom[Self::word(bit)] & (1 << (bit % 64)) != 0
    }

    /// The word holding `bit`, masked so the bound is evident (no panic path
    /// in the BPF programs).
    const fn word(bit: u64) -> usize {
        (bit / 64) as usize & (TAG_BLOOM_WORDS - 1)
    }
}

/// `TagInfo::flags`: report but allow (policy `mode = "audit"`).
pub const TAG_AUDIT: u32 = 1 << 0;
/// `TagInfo::flags`: the policy has a `[files]` section.
pub const TAG_FILES: u32 = 1 << 1;
/// `TagInfo::flags`: the policy has `read_deny` trees (every open is judged).
pub const TAG_READ_DENY: u32 = 1 << 2;

/// What a tagged cgroup is judged by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagInfo {
    pub policy_id: u32,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<TagInfo>() == 8);

/// A tree root: the inode of a directory (or file) named in a policy, on the
/// filesystem whose superblock has device number `dev` (kernel encoding,
/// `MAJOR << 20 | MINOR`, as in `/proc/self/mountinfo`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileRuleKey {
    pub ino: u64,
    pub dev: u32,
    pub policy_id: u32,
}
const _: () = assert!(core::mem::size_of::<FileRuleKey>() == 16);

/// Writing below this root is allowed.
pub const FILE_WRITE: u32 = 1 << 0;
/// Nothing below this root may be read or written.
pub const FILE_READ_DENY: u32 = 1 << 1;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TagFilter {}
    unsafe impl aya::Pod for super::TagInfo {}
    unsafe impl aya::Pod for super::FileRuleKey {}
}
