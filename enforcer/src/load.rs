//! Loading and attaching the BPF programs, and the maps userspace fills.
//!
//! One `Enforcer` holds the loaded programs for as long as it lives; policy
//! and tags are table swaps (see `tables`), so a long-running daemon can add
//! and remove them without reloading anything.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Lsm, ProgramError},
};
use enforcer_common::{
    KernelOffsets,
    events::{EVENTS_MAP, LOST_MAP},
    net::{
        DNS_GRANTS_MAP, DnsGrant, NET_KEY_POLICY_BITS, NET_RULES_MAP, NetKey, NetPorts, RESOLVERS_MAP, Resolver,
        UNIX_RULES_MAP, UnixKey,
    },
    policy::{
        FileRuleKey, FileTable, MAX_TAG_LEVEL, PROTECTED_MAP, Protected, TABLES_MAP, TAG_FILTER_MAP, Tables, TagFilter,
        TagInfo, TagTable,
    },
    select::{SELECTED_BLOOM_MAP, SELECTED_MAP, Selected, SelectedBloom, SelectorTable},
};

mod jit_dump;
mod pinned;
pub use pinned::{PinError, Start, adopted_build, build_id, remove_pins, short_sha256};

use crate::{
    btf::Btf,
    cgroups::Cgroup,
    field_loads,
    kernel::{self, KernelError},
    policy::network::NetRules,
    policy::tables::{self, TableError},
    table_map,
};

/// The programs, built by `build.rs`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));
/// The same programs for kernels without `bpf_loop` or `bpf_get_retval`
/// (see `enforcer-ebpf/src/compat.rs`).
static COMPAT_PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-compat"));

/// The build of the programs this kernel can load: the compat build where
/// a probe finds `bpf_loop` (5.17) or `bpf_get_retval` (5.18) missing.
/// `ENFORCER_PROGRAMS=compat` forces it (to test it on a newer kernel).
fn build_for_kernel() -> (bool, &'static [u8]) {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    let has = |helper| is_helper_supported(ProgramType::CgroupSockAddr, helper).unwrap_or(false);
    let forced = std::env::var("ENFORCER_PROGRAMS").is_ok_and(|v| v == "compat");
    if forced || !has(BpfHelper::BPF_FUNC_loop) || !has(BpfHelper::BPF_FUNC_get_retval) {
        (true, COMPAT_PROGRAMS)
    } else {
        (false, PROGRAMS)
    }
}

/// A copy of the programs with this kernel's field offsets in their loads,
/// in 8-byte aligned memory (the ELF reader needs aligned headers).
struct Programs {
    words: Vec<u64>,
    len: usize,
    compat: bool,
}

impl Programs {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

fn programs_for(offsets: &KernelOffsets) -> Result<Programs, field_loads::FieldLoadError> {
    let (compat, object) = build_for_kernel();
    if std::env::var_os("ENFORCER_DEBUG_LOAD").is_some() {
        eprintln!("enforcer: loading the {} build of the programs", if compat { "compat" } else { "main" });
    }
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` spans at least `object.len()` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    field_loads::patch(bytes, offsets)?;
    let rdonly_cast = Some(offsets.rdonly_cast).filter(|&id| id != KernelOffsets::ABSENT);
    field_loads::patch_rdonly_cast(bytes, rdonly_cast)?;
    Ok(Programs { words, len: object.len(), compat })
}

/// Hooks the compat build judges in another hook: `path_chown` takes
/// `kuid_t` by value, and trampolines before Linux 6.0 refuse struct
/// arguments; `inode_setattr` judges owner changes there.
const COMPAT_JUDGED_ELSEWHERE: &[&str] = &["path_chown"];

/// Every hook, and whether the enforcer can work without it. Optional hooks
/// appeared in later kernels, where they close paths older kernels send
/// through the required ones.
pub const HOOKS: &[(&str, bool)] = &[
    ("file_open", true),
    ("path_mknod", true),
    ("path_mkdir", true),
    ("path_rmdir", true),
    ("path_unlink", true),
    ("path_symlink", true),
    ("path_rename", true),
    ("path_link", true),
    ("path_truncate", true),
    ("path_chmod", true),
    ("path_chown", true),
    ("inode_setattr", true),
    ("inode_setxattr", true),
    ("inode_removexattr", true),
    ("file_truncate", false),    // Linux 6.2
    ("inode_set_acl", false),    // Linux 6.2
    ("inode_remove_acl", false), // Linux 6.2
];

/// The network hooks of BPF LSM kernels: socket classes of every family and
/// unix socket peers (the cgroup programs see IPv4 and IPv6 only).
pub const NET_HOOKS: &[(&str, bool)] =
    &[("socket_create", true), ("unix_stream_connect", true), ("unix_may_send", true)];

/// What a missing optional hook leaves unenforced; `None` where older
/// kernels send the same operations through a required hook (`ftruncate`
/// through `path_truncate`, ACLs through the xattr hooks, 32-bit ioctls
/// through `file_ioctl`).
fn lost_without(hook: &str) -> Option<&'static str> {
    match hook {
        "userns_create" => Some(
            "creating user namespaces (the floor's `userns_create` hook is Linux 6.1+; a `[syscalls]` rule on clone and unshare still applies)",
        ),
        _ => None,
    }
}

/// Exec control and the built-in floor: every tagged cgroup, whatever its
/// policy says (see `enforcer-ebpf/src/floor.rs`).
pub const FLOOR_HOOKS: &[(&str, bool)] = &[
    ("bprm_check_security", true),
    ("bpf", true),
    ("perf_event_open", true),
    ("kernel_module_request", true),
    ("kernel_load_data", true),
    ("kernel_read_file", true),
    ("sb_mount", true),
    ("sb_umount", true),
    ("sb_pivotroot", true),
    ("move_mount", true),
    ("userns_create", false), // Linux 6.1
    ("task_fix_setuid", true),
    ("task_fix_setgid", false),
    ("task_kill", true),
    ("ptrace_access_check", true),
    ("ptrace_traceme", true),
    // The agent boundary (`enforcer-ebpf/src/boundary.rs`).
    ("task_setrlimit", true),
    ("task_setscheduler", true),
    ("task_setnice", true),
    ("task_setioprio", true),
    ("task_movememory", true),
    ("task_alloc", true),
    ("file_set_fowner", true),
    ("file_send_sigiotask", true),
    ("file_ioctl", true),
    ("file_ioctl_compat", false), // Linux 6.8
    ("socket_setsockopt", true),
    ("socket_sendmsg", true),
];

/// The `cgroup_mkdir` tracepoint program (daemon only).
const SELECTOR_PROGRAM: &str = "cgroup_mkdir";

/// The cgroup socket programs, attached to each tagged cgroup (and, in the
/// daemon, each selector root).
const SOCK_ADDR_PROGRAMS: &[&str] = &["connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6"];
const SOCK_CREATE_PROGRAM: &str = "sock_create";
/// Inbound connections and datagrams (`enforcer-ebpf/src/inbound.rs`).
const INBOUND_PROGRAM: &str = "inbound";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Btf(#[from] crate::btf::BtfError),
    #[error(
        "the kernel refused to load the BPF LSM program for `{hook}` (EPERM, empty verifier log) \
         although `bpf` is in the active LSM list: this kernel cannot attach BPF trampolines, which \
         BPF LSM needs. Run on a kernel where BPF LSM works (e.g. Debian's; see `cargo xtask demo`)"
    )]
    TrampolineRefused { hook: &'static str },
    #[error("the verifier rejected the program for `{hook}`: {source}")]
    Program { hook: &'static str, source: ProgramError },
    #[error("the verifier rejected the program for `{hook}` ({errno}); the end of its log:\n{log_tail}")]
    Verifier { hook: &'static str, errno: std::io::Error, log_tail: String },
    #[error("loading the BPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("BPF map `{name}`: {}", chain(source))]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Selectors(#[from] crate::policy::selectors::SelectorError),
    #[error(transparent)]
    FieldLoads(#[from] field_loads::FieldLoadError),
    #[error("cannot create a table map for `{name}`: {source}")]
    TableMap { name: &'static str, source: std::io::Error },
    #[error("BPF map `{0}` is missing from the programs")]
    MissingMap(&'static str),
    #[error("the kernel refused the program `{name}`: {}", chain(source))]
    SockProgram { name: &'static str, source: ProgramError },
    #[error("cannot attach the network programs to cgroup {cgroup}: {}", chain(source))]
    Attach { cgroup: String, source: ProgramError },
    #[error("cannot open cgroup {}: {source}", path.display())]
    OpenCgroup { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("{0}")]
    Adopted(&'static str),
    #[error(
        "cgroup {name} is {level} levels deep; the programs find tagged cgroups only down to level \
         {MAX_TAG_LEVEL}: tag a shallower ancestor"
    )]
    TooDeep { name: String, level: u32 },
}

/// An error and its sources, `: `-separated (aya's say "`call` failed" and
/// keep the errno in the source).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text = format!("{text}: {error}");
        source = error.source();
    }
    text
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

/// A table map: an array-of-maps whose slot 0 holds the current table.
type TableMaps = ArrayOfMaps<MapData, Array<MapData, Tables>>;

/// Loaded and attached programs and their maps.
pub struct Enforcer {
    /// The loaded object (`None` when adopted from pins: the kernel holds
    /// the programs through their pinned links).
    ebpf: Option<Ebpf>,
    /// The daemon's pins, and the socket programs reopened from them.
    pinned: Option<pinned::Pinned>,
    /// `enforcer run`'s BPF LSM links (the daemon's are pinned instead).
    lsm_links: Vec<LsmLink>,
    net_rules: LpmTrie<MapData, NetKey, NetPorts>,
    unix_rules: BpfHashMap<MapData, UnixKey, u8>,
    resolvers: BpfHashMap<MapData, u32, Resolver>,
    dns_grants: Option<BpfHashMap<MapData, NetKey, DnsGrant>>,
    /// Why BPF LSM programs are not loaded (`None`: they are): only the
    /// cgroup socket programs enforce then.
    lsm_missing: Option<LoadError>,
    tables: TableMaps,
    /// What the published tables hold.
    tag_table: Box<TagTable>,
    file_table: Box<FileTable>,
    /// The published selectors (the daemon's).
    selector_table: Box<SelectorTable>,
    /// The programs' `TAG_FILTER`, and what it holds: the tags' entries and
    /// `extra_filter`'s (the levels selectors can select at, and the ids the
    /// daemon put in `SELECTED`).
    tag_filter: Array<MapData, TagFilter>,
    published_filter: TagFilter,
    extra_filter: TagFilter,
    selected: BpfHashMap<MapData, u64, Selected>,
    selected_bloom: Array<MapData, SelectedBloom>,
    lost: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    protected: Array<MapData, Protected>,
    /// Tagged cgroup id -> (level, tag): what the tag table is built from.
    tags: StdHashMap<u64, (u32, TagInfo)>,
    /// Every loaded policy's tree roots: what the file table is built from.
    file_rules: StdHashMap<FileRuleKey, u16>,
    /// Optional hooks this kernel does not have.
    pub missing_hooks: Vec<&'static str>,
}

impl Enforcer {
    /// Checks the kernel, loads every program and attaches the BPF LSM ones.
    /// A kernel that cannot run BPF LSM programs is not an error here (see
    /// `lsm_missing`): the caller decides whether what remains is enough.
    pub fn load() -> Result<Self, LoadError> {
        let (mut ebpf, lsm_missing, missing_hooks, links) = load_everything()?;
        let maps = Maps::take(&mut ebpf)?;
        let mut enforcer = Self::assemble(Some(ebpf), None, maps, lsm_missing, missing_hooks)?;
        enforcer.lsm_links = links;
        Ok(enforcer)
    }

    /// Assembles an enforcer from its maps and publishes empty tables: until
    /// tables are in place nothing is tagged.
    fn assemble(
        ebpf: Option<Ebpf>,
        pinned: Option<pinned::Pinned>,
        maps: Maps,
        lsm_missing: Option<LoadError>,
        missing_hooks: Vec<&'static str>,
    ) -> Result<Self, LoadError> {
        let mut enforcer = Self::from_maps(ebpf, pinned, maps, lsm_missing, missing_hooks)?;
        enforcer.publish(&tables::combine(&enforcer.tag_table, &enforcer.file_table, &enforcer.selector_table))?;
        enforcer.set_filter(&TagFilter::EMPTY)?;
        Ok(enforcer)
    }

    fn from_maps(
        ebpf: Option<Ebpf>,
        pinned: Option<pinned::Pinned>,
        maps: Maps,
        lsm_missing: Option<LoadError>,
        missing_hooks: Vec<&'static str>,
    ) -> Result<Self, LoadError> {
        let Maps {
            tables,
            tag_filter,
            lost,
            events,
            net_rules,
            unix_rules,
            resolvers,
            dns_grants,
            protected,
            selected,
            selected_bloom,
        } = maps;
        let tag_table = tables::tag_table(&StdHashMap::new())?;
        let file_table = tables::file_table(&StdHashMap::new())?;
        Ok(Self {
            ebpf,
            pinned,
            lsm_links: Vec::new(),
            net_rules,
            unix_rules,
            resolvers,
            dns_grants: Some(dns_grants),
            lsm_missing,
            tables,
            tag_table,
            file_table,
            selector_table: tables::no_selectors(),
            tag_filter,
            published_filter: TagFilter::EMPTY,
            extra_filter: TagFilter::EMPTY,
            selected,
            selected_bloom,
            lost,
            events: Some(events),
            protected,
            tags: StdHashMap::new(),
            file_rules: StdHashMap::new(),
            missing_hooks,
        })
    }

    /// The denial stream (taken once, by the event reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Events the ring buffer could not take, since load, over all CPUs.
    pub fn lost_events(&self) -> Result<u64, LoadError> {
        let per_cpu = self.lost.get(&0, 0).map_err(map_err(LOST_MAP))?;
        Ok(per_cpu.iter().sum())
    }

    /// Installs file tree roots (of a policy loaded before it is tagged).
    pub fn add_file_rules(&mut self, rules: &[(FileRuleKey, u16)]) -> Result<(), LoadError> {
        let before = self.file_rules.clone();
        self.file_rules.extend(rules.iter().copied());
        self.publish_files().inspect_err(|_| self.file_rules = before)
    }

    pub fn remove_file_rules(&mut self, rules: &[(FileRuleKey, u16)]) -> Result<(), LoadError> {
        for (key, _) in rules {
            self.file_rules.remove(key);
        }
        self.publish_files()
    }

    /// Installs a policy's network rules (before a cgroup is tagged with it).
    pub fn add_net_rules(&mut self, rules: &NetRules) -> Result<(), LoadError> {
        for (prefix, key, ports) in &rules.prefixes {
            let key = Key::new(NET_KEY_POLICY_BITS + prefix, *key);
            self.net_rules.insert(&key, ports, 0).map_err(map_err(NET_RULES_MAP))?;
        }
        for key in &rules.unix {
            self.unix_rules.insert(key, 1, 0).map_err(map_err(UNIX_RULES_MAP))?;
        }
        Ok(())
    }

    /// Why the BPF LSM programs could not be loaded, if they could not.
    #[must_use]
    pub fn lsm_missing(&self) -> Option<&LoadError> {
        self.lsm_missing.as_ref()
    }

    /// What this kernel's missing optional hooks leave unenforced.
    #[must_use]
    pub fn not_enforced_for_missing_hooks(&self) -> Vec<&'static str> {
        self.missing_hooks.iter().filter_map(|hook| lost_without(hook)).collect()
    }

    /// The grants of resolved addresses (taken once, by the resolver).
    pub fn take_dns_grants(&mut self) -> Option<BpfHashMap<MapData, NetKey, DnsGrant>> {
        self.dns_grants.take()
    }

    /// Sends the DNS of tagged cgroups under policy `policy_id` to the
    /// resolver at `resolver`.
    pub fn set_resolver(&mut self, policy_id: u32, resolver: Resolver) -> Result<(), LoadError> {
        self.resolvers.insert(policy_id, resolver, 0).map_err(map_err(RESOLVERS_MAP))
    }

    /// Attaches the cgroup socket programs to `cgroup`: from now on its
    /// sockets' connects, sends and creations are judged. Returns what
    /// [`Enforcer::detach_net`] takes.
    pub fn attach_net(&mut self, cgroup: &Cgroup) -> Result<NetAttachment, LoadError> {
        let dir = std::fs::File::open(&cgroup.path)
            .map_err(|source| LoadError::OpenCgroup { path: cgroup.path.clone(), source })?;
        let attach_err = |source| LoadError::Attach { cgroup: cgroup.name.clone(), source };
        // A link: the kernel runs it along with any other program on the
        // cgroup or its ancestors (links take no attach flags).
        let mode = CgroupAttachMode::Single;
        let mut attachment = NetAttachment::default();
        for &name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_of(self.object()?, name)?;
            attachment.sock_addr.push((name, program.attach(&dir, mode).map_err(attach_err)?));
        }
        // It judges socket classes where BPF LSM is missing (`socket_create`
        // judges them first where it is), and records agents' sockets.
        let program: &mut CgroupSock = program_of(self.object()?, SOCK_CREATE_PROGRAM)?;
        attachment.sock_create.push(program.attach(&dir, mode).map_err(attach_err)?);
        let program: &mut CgroupSkb = program_of(self.object()?, INBOUND_PROGRAM)?;
        attachment.inbound.push(program.attach(&dir, CgroupSkbAttachType::Ingress, mode).map_err(attach_err)?);
        Ok(attachment)
    }

    pub fn detach_net(&mut self, attachment: NetAttachment) -> Result<(), LoadError> {
        for (name, link) in attachment.sock_addr {
            let program: &mut CgroupSockAddr = program_of(self.object()?, name)?;
            program.detach(link).map_err(|source| LoadError::SockProgram { name, source })?;
        }
        for link in attachment.sock_create {
            let program: &mut CgroupSock = program_of(self.object()?, SOCK_CREATE_PROGRAM)?;
            program.detach(link).map_err(|source| LoadError::SockProgram { name: SOCK_CREATE_PROGRAM, source })?;
        }
        for link in attachment.inbound {
            let program: &mut CgroupSkb = program_of(self.object()?, INBOUND_PROGRAM)?;
            program.detach(link).map_err(|source| LoadError::SockProgram { name: INBOUND_PROGRAM, source })?;
        }
        Ok(())
    }

    fn object(&mut self) -> Result<&mut Ebpf, LoadError> {
        self.ebpf
            .as_mut()
            .ok_or(LoadError::SockProgram { name: "cgroup socket programs", source: ProgramError::NotLoaded })
    }

    /// Tags `cgroup`: from now on it and all its descendants are judged by
    /// `tag`.
    pub fn tag(&mut self, cgroup: &Cgroup, tag: TagInfo) -> Result<(), LoadError> {
        if cgroup.level > MAX_TAG_LEVEL {
            return Err(LoadError::TooDeep { name: cgroup.name.clone(), level: cgroup.level });
        }
        let previous = self.tags.insert(cgroup.id, (cgroup.level, tag));
        self.publish_tags().inspect_err(|_| match previous {
            Some(previous) => _ = self.tags.insert(cgroup.id, previous),
            None => _ = self.tags.remove(&cgroup.id),
        })
    }

    pub fn untag(&mut self, cgroup: &Cgroup) -> Result<(), LoadError> {
        self.tags.remove(&cgroup.id);
        self.publish_tags()
    }

    /// Replaces every tag and tree root at once, in one table swap: each
    /// tagged cgroup goes from its old policy to its new one with nothing in
    /// between (the daemon's reloads and adoption).
    /// `selectors` and `extra_filter` (the levels its selectors can select
    /// at) replace the published ones in the same swap.
    pub fn replace_all(
        &mut self,
        file_rules: StdHashMap<FileRuleKey, u16>,
        tags: StdHashMap<u64, (u32, TagInfo)>,
        selectors: Box<SelectorTable>,
        extra_filter: TagFilter,
    ) -> Result<(), LoadError> {
        if let Some((&id, _)) = tags.iter().find(|(_, (level, _))| *level > MAX_TAG_LEVEL) {
            return Err(LoadError::TooDeep { name: format!("id {id}"), level: tags[&id].0 });
        }
        let file_table = tables::file_table(&file_rules)?;
        let tag_table = tables::tag_table(&tags)?;
        let filter = filter_of(&tags).union(&extra_filter);
        self.set_filter(&self.published_filter.union(&filter))?;
        self.publish(&tables::combine(&tag_table, &file_table, &selectors))?;
        (self.file_rules, self.tags, self.file_table, self.tag_table) = (file_rules, tags, file_table, tag_table);
        (self.selector_table, self.extra_filter) = (selectors, extra_filter);
        self.set_filter(&filter)
    }

    /// Lets the tag check look for more selected cgroups (before they go in
    /// `SELECTED`), or fewer (after they left it).
    pub fn set_extra_filter(&mut self, extra_filter: TagFilter) -> Result<(), LoadError> {
        self.extra_filter = extra_filter;
        let filter = filter_of(&self.tags).union(&extra_filter);
        if filter == self.published_filter {
            return Ok(());
        }
        self.set_filter(&filter)
    }

    /// The selectors in force.
    #[must_use]
    pub fn selector_table(&self) -> &SelectorTable {
        &self.selector_table
    }

    #[must_use]
    pub fn extra_filter(&self) -> TagFilter {
        self.extra_filter
    }

    /// Whether cgroup `id` is in `SELECTED`.
    #[must_use]
    pub fn is_selected(&self, id: u64) -> bool {
        self.selected.get(&id, 0).is_ok()
    }

    /// Every cgroup in `SELECTED`.
    #[must_use]
    pub fn selected(&self) -> Vec<(u64, Selected)> {
        self.selected.iter().filter_map(Result::ok).collect()
    }

    /// Records a selected cgroup (its id must pass the filter first: see
    /// [`Self::set_extra_filter`]).
    pub fn select(&mut self, cgroup_id: u64, selected: Selected) -> Result<(), LoadError> {
        self.selected.insert(cgroup_id, selected, 0).map_err(map_err(SELECTED_MAP))
    }

    pub fn unselect(&mut self, cgroup_id: u64) -> Result<(), LoadError> {
        match self.selected.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(SELECTED_MAP)(e)),
        }
    }

    /// How full the kernel's half of the selected cgroups' bloom filter is
    /// (0 to 1): it only fills, and past about a half it lets many untagged
    /// cgroups through to a map lookup.
    #[must_use]
    pub fn selected_bloom_fill(&self) -> f64 {
        let Ok(bloom) = self.selected_bloom.get(&0, 0) else { return 0.0 };
        let set: u32 = bloom.bloom.iter().map(|w| w.count_ones()).sum();
        f64::from(set) / f64::from(u32::try_from(enforcer_common::policy::TAG_BLOOM_BITS).unwrap_or(u32::MAX))
    }

    /// Removes the network rules of every policy id not in `live`.
    pub fn retain_net_rules(&mut self, live: &std::collections::HashSet<u32>) -> Result<(), LoadError> {
        let stale: Vec<Key<NetKey>> =
            self.net_rules.keys().filter_map(Result::ok).filter(|key| !live.contains(&key.data().policy())).collect();
        for key in stale {
            self.net_rules.remove(&key).map_err(map_err(NET_RULES_MAP))?;
        }
        let stale: Vec<UnixKey> =
            self.unix_rules.keys().filter_map(Result::ok).filter(|key| !live.contains(&key.policy_id)).collect();
        for key in stale {
            self.unix_rules.remove(&key).map_err(map_err(UNIX_RULES_MAP))?;
        }
        let stale: Vec<u32> = self.resolvers.keys().filter_map(Result::ok).filter(|id| !live.contains(id)).collect();
        for id in stale {
            self.resolvers.remove(&id).map_err(map_err(RESOLVERS_MAP))?;
        }
        Ok(())
    }

    /// Sets the inodes no tagged task may change (the daemon's own files).
    pub fn set_protected(&mut self, protected: &Protected) -> Result<(), LoadError> {
        self.protected.set(0, protected, 0).map_err(map_err(PROTECTED_MAP))
    }

    /// How many cgroups are tagged.
    #[must_use]
    pub fn tagged_count(&self) -> usize {
        self.tags.len()
    }

    fn publish_tags(&mut self) -> Result<(), LoadError> {
        let table = tables::tag_table(&self.tags)?;
        let filter = filter_of(&self.tags).union(&self.extra_filter);
        // A filter bit goes up before the table that needs it, and down only
        // after the table without it: a task the table tags always passes.
        self.set_filter(&self.published_filter.union(&filter))?;
        self.publish(&tables::combine(&table, &self.file_table, &self.selector_table))?;
        self.tag_table = table;
        self.set_filter(&filter)
    }

    fn set_filter(&mut self, filter: &TagFilter) -> Result<(), LoadError> {
        self.tag_filter.set(0, filter, 0).map_err(map_err(TAG_FILTER_MAP))?;
        self.published_filter = *filter;
        Ok(())
    }

    fn publish_files(&mut self) -> Result<(), LoadError> {
        let table = tables::file_table(&self.file_rules)?;
        self.publish(&tables::combine(&self.tag_table, &table, &self.selector_table))?;
        self.file_table = table;
        Ok(())
    }

    /// Puts `tables` in a new map and swaps it into slot 0 of the programs'
    /// `TABLES`: programs running now finish with the old tables (the kernel
    /// frees them after an RCU grace period), later runs see the new ones.
    /// Never a half-written table.
    fn publish(&mut self, tables: &Tables) -> Result<(), LoadError> {
        let name = TABLES_MAP;
        let mut inner = table_map::create::<Tables>(name).map_err(|source| LoadError::TableMap { name, source })?;
        inner.set(0, tables, 0).map_err(map_err(name))?;
        self.tables.set(0, &inner, 0).map_err(map_err(name))
    }
}

/// The pre-filter entries of `tags`.
fn filter_of(tags: &StdHashMap<u64, (u32, TagInfo)>) -> TagFilter {
    let mut filter = TagFilter::EMPTY;
    for (&id, &(level, _)) in tags {
        filter.insert(id, level);
    }
    filter
}

/// The cgroup socket programs attached to one cgroup.
#[derive(Debug, Default)]
pub struct NetAttachment {
    sock_addr: Vec<(&'static str, aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId)>,
    sock_create: Vec<aya::programs::cgroup_sock::CgroupSockLinkId>,
    inbound: Vec<aya::programs::cgroup_skb::CgroupSkbLinkId>,
}

fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(LoadError::SockProgram { name, source: ProgramError::NotLoaded })?;
    program.try_into().map_err(|source| LoadError::SockProgram { name, source })
}

/// Loads (does not attach) the cgroup socket programs.
fn load_sock_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for &name in SOCK_ADDR_PROGRAMS {
        load_sock_program(name, program_of::<CgroupSockAddr>(ebpf, name)?, CgroupSockAddr::load, CgroupSockAddr::info)?;
    }
    load_sock_program(
        SOCK_CREATE_PROGRAM,
        program_of::<CgroupSock>(ebpf, SOCK_CREATE_PROGRAM)?,
        CgroupSock::load,
        CgroupSock::info,
    )?;
    load_sock_program(
        INBOUND_PROGRAM,
        program_of::<CgroupSkb>(ebpf, INBOUND_PROGRAM)?,
        CgroupSkb::load,
        CgroupSkb::info,
    )
}

/// Loads one socket program (`load`), then [`debug_loaded`] (`info`).
fn load_sock_program<P>(
    name: &'static str,
    program: &mut P,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
    info: impl FnOnce(&P) -> Result<aya::programs::ProgramInfo, ProgramError>,
) -> Result<(), LoadError> {
    let started = std::time::Instant::now();
    load(program).map_err(|source| LoadError::SockProgram { name, source })?;
    debug_loaded(&name, started, || info(program));
    Ok(())
}

/// With `ENFORCER_DEBUG_LOAD=1`: how long a program took to load and how
/// many instructions the verifier processed (Linux 5.16+ counts them).
/// `info` (a syscall) runs only then.
fn debug_loaded(
    name: &dyn std::fmt::Display,
    started: std::time::Instant,
    info: impl FnOnce() -> Result<aya::programs::ProgramInfo, ProgramError>,
) {
    if std::env::var_os("ENFORCER_DEBUG_LOAD").is_some() {
        let insns = info().ok().and_then(|i| i.verified_instruction_count());
        eprintln!("enforcer: loaded {name} in {:?}, verifier processed {insns:?} insns", started.elapsed());
    }
}

/// The floor of any BPF LSM design, for benchmarks: an empty program
/// (`floor_<hook>`, returning 0) attached on every hook the enforcer uses
/// (optional hooks only where the kernel has them), and nothing else. Held
/// attached for as long as the value lives.
pub struct Floor {
    _ebpf: Ebpf,
    _links: Vec<LsmLink>,
    /// Optional hooks this kernel does not have.
    pub missing_hooks: Vec<&'static str>,
}

/// Loads and attaches the floor programs only (see [`Floor`]).
pub fn load_floor() -> Result<Floor, LoadError> {
    let mut object = load_object()?;
    if let Some(lsm) = object.lsm.take() {
        return Err(lsm);
    }
    let (missing_hooks, links) = object.load_lsm("floor_", HOOKS)?;
    Ok(Floor { _ebpf: object.ebpf, _links: links, missing_hooks })
}

/// The loaded object (every map created, no program loaded yet) and the
/// kernel's BTF, parsed once for the loads that follow.
struct LoadedObject {
    ebpf: Ebpf,
    btf: Btf,
    aya_btf: aya::Btf,
    /// Why BPF LSM is not active, if it is not.
    lsm: Option<LoadError>,
    /// The compat build (see `build_for_kernel`).
    compat: bool,
}

/// Every map userspace works with, taken from the object or its pins.
struct Maps {
    tables: TableMaps,
    tag_filter: Array<MapData, TagFilter>,
    lost: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    net_rules: LpmTrie<MapData, NetKey, NetPorts>,
    unix_rules: BpfHashMap<MapData, UnixKey, u8>,
    resolvers: BpfHashMap<MapData, u32, Resolver>,
    dns_grants: BpfHashMap<MapData, NetKey, DnsGrant>,
    protected: Array<MapData, Protected>,
    selected: BpfHashMap<MapData, u64, Selected>,
    selected_bloom: Array<MapData, SelectedBloom>,
}

/// The maps userspace works with, by their names in the object.
const MAP_NAMES: &[&str] = &[
    TABLES_MAP,
    TAG_FILTER_MAP,
    LOST_MAP,
    EVENTS_MAP,
    NET_RULES_MAP,
    UNIX_RULES_MAP,
    RESOLVERS_MAP,
    DNS_GRANTS_MAP,
    PROTECTED_MAP,
    SELECTED_MAP,
    SELECTED_BLOOM_MAP,
];

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Self::from(|name| ebpf.take_map(name).ok_or(LoadError::MissingMap(name)))
    }

    fn from(mut take: impl FnMut(&'static str) -> Result<aya::maps::Map, LoadError>) -> Result<Self, LoadError> {
        Ok(Self {
            tables: ArrayOfMaps::try_from(take(TABLES_MAP)?).map_err(map_err(TABLES_MAP))?,
            tag_filter: Array::try_from(take(TAG_FILTER_MAP)?).map_err(map_err(TAG_FILTER_MAP))?,
            lost: PerCpuArray::try_from(take(LOST_MAP)?).map_err(map_err(LOST_MAP))?,
            events: RingBuf::try_from(take(EVENTS_MAP)?).map_err(map_err(EVENTS_MAP))?,
            net_rules: LpmTrie::try_from(take(NET_RULES_MAP)?).map_err(map_err(NET_RULES_MAP))?,
            unix_rules: BpfHashMap::try_from(take(UNIX_RULES_MAP)?).map_err(map_err(UNIX_RULES_MAP))?,
            resolvers: BpfHashMap::try_from(take(RESOLVERS_MAP)?).map_err(map_err(RESOLVERS_MAP))?,
            dns_grants: BpfHashMap::try_from(take(DNS_GRANTS_MAP)?).map_err(map_err(DNS_GRANTS_MAP))?,
            protected: Array::try_from(take(PROTECTED_MAP)?).map_err(map_err(PROTECTED_MAP))?,
            selected: BpfHashMap::try_from(take(SELECTED_MAP)?).map_err(map_err(SELECTED_MAP))?,
            selected_bloom: Array::try_from(take(SELECTED_BLOOM_MAP)?).map_err(map_err(SELECTED_BLOOM_MAP))?,
        })
    }
}

/// Loads the object and every program, attaching the BPF LSM ones; a kernel
/// without BPF LSM is reported in the second value, not as an error.
#[expect(clippy::type_complexity, reason = "one private call site per caller")]
fn load_everything() -> Result<(Ebpf, Option<LoadError>, Vec<&'static str>, Vec<LsmLink>), LoadError> {
    let mut object = load_object()?;
    let lsm = object.lsm.take().map_or(Ok(()), Err);
    let (lsm_missing, missing_hooks, links) =
        match lsm.and_then(|()| object.load_lsm("", &[HOOKS, NET_HOOKS, FLOOR_HOOKS].concat())) {
            Ok((missing_hooks, links)) => (None, missing_hooks, links),
            Err(e @ (LoadError::TrampolineRefused { .. } | LoadError::Kernel(KernelError::BpfLsmInactive { .. }))) => {
                (Some(e), Vec::new(), Vec::new())
            }
            Err(e) => return Err(e),
        };
    let mut ebpf = object.ebpf;
    load_sock_programs(&mut ebpf)?;
    Ok((ebpf, lsm_missing, missing_hooks, links))
}

/// The program on the `cgroup_mkdir` tracepoint that tags new cgroups a
/// selector matches (see `enforcer-ebpf/src/select.rs`), for the daemon to
/// pin: loaded and attached, its link returned.
fn attach_selector_program(ebpf: &mut Ebpf) -> Result<aya::programs::links::FdLink, LoadError> {
    let name = SELECTOR_PROGRAM;
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(e.into()))?;
    let program: &mut aya::programs::BtfTracePoint = program_of(ebpf, name)?;
    program.load(name, &btf).map_err(|source| LoadError::SockProgram { name, source })?;
    let id = program.attach().map_err(|source| LoadError::SockProgram { name, source })?;
    let link = program.take_link(id).map_err(|source| LoadError::SockProgram { name, source })?;
    Ok(link.into())
}

/// Checks the kernel and loads the object.
fn load_object() -> Result<LoadedObject, LoadError> {
    kernel::check_root()?;
    let lsm = kernel::check_bpf_lsm().err().map(LoadError::from);
    let btf = Btf::from_sys_fs()?;
    let offsets = kernel::offsets(&btf)?;
    raise_memlock_limit();
    let aya_btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Object(e.into()))?;
    let programs = programs_for(&offsets)?;
    // The compat build finds a task's tag through one of these.
    if programs.compat
        && offsets.cgroup_ancestor_ids == KernelOffsets::ABSENT
        && offsets.cgroup_ancestors == KernelOffsets::ABSENT
    {
        return Err(crate::btf::BtfError::NoField {
            strukt: "cgroup".into(),
            field: "ancestor_ids (or ancestors)".into(),
        }
        .into());
    }
    let ebpf =
        EbpfLoader::new().btf(Some(&aya_btf)).override_global("OFFSETS", &offsets, true).load(programs.bytes())?;
    Ok(LoadedObject { ebpf, btf, aya_btf, lsm, compat: programs.compat })
}

impl LoadedObject {
    /// Loads and attaches the program `<prefix><hook>` for each of `hooks`
    /// this kernel has. Returns the optional hooks the kernel lacks.
    fn load_lsm(
        &mut self,
        prefix: &str,
        hooks: &[(&'static str, bool)],
    ) -> Result<(Vec<&'static str>, Vec<LsmLink>), LoadError> {
        let Self { ebpf, btf, aya_btf, compat, .. } = self;
        let mut missing_hooks = Vec::new();
        let mut links = Vec::new();
        for &(hook, required) in hooks {
            if *compat && COMPAT_JUDGED_ELSEWHERE.contains(&hook) {
                continue;
            }
            if !required && !btf.has_function(&format!("bpf_lsm_{hook}")) {
                missing_hooks.push(hook);
                continue;
            }
            let program: &mut Lsm = ebpf
                .program_mut(&format!("{prefix}{hook}"))
                .ok_or(LoadError::Program { hook, source: ProgramError::NotLoaded })?
                .try_into()
                .map_err(|source| LoadError::Program { hook, source })?;
            let started = std::time::Instant::now();
            program.load(hook, aya_btf).map_err(|source| classify(hook, source))?;
            let link = program.attach().map_err(|source| LoadError::Program { hook, source })?;
            links.push(LsmLink {
                hook,
                link: program.take_link(link).map_err(|source| LoadError::Program { hook, source })?,
            });
            debug_loaded(&format_args!("{prefix}{hook}"), started, || program.info());
            if let Some(dir) = std::env::var_os("ENFORCER_DUMP_JIT")
                && let Ok(fd) = program.fd()
            {
                jit_dump::write(std::path::Path::new(&dir), &format!("{prefix}{hook}"), std::os::fd::AsFd::as_fd(fd));
            }
        }
        Ok((missing_hooks, links))
    }
}

/// An attached BPF LSM program's link (dropping it detaches the program,
/// unless it is pinned).
pub struct LsmLink {
    pub hook: &'static str,
    pub link: aya::programs::lsm::LsmLink,
}

/// Turns the kernel's refusal into a message that says what to do.
fn classify(hook: &'static str, source: ProgramError) -> LoadError {
    let ProgramError::LoadError { io_error, verifier_log } = source else {
        return LoadError::Program { hook, source };
    };
    let log = verifier_log.to_string();
    if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
        return LoadError::TrampolineRefused { hook };
    }
    // The whole log can run to megabytes; the reason is at its end.
    let lines: Vec<&str> = log.lines().collect();
    // `ENFORCER_DEBUG_LOAD=1` keeps more of it, for whoever works on the programs.
    let keep = if std::env::var_os("ENFORCER_DEBUG_LOAD").is_some() { 3000 } else { 30 };
    let log_tail = lines[lines.len().saturating_sub(keep)..].join("\n");
    LoadError::Verifier { hook, errno: io_error, log_tail }
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    use super::{
        COMPAT_JUDGED_ELSEWHERE, COMPAT_PROGRAMS, FLOOR_HOOKS, HOOKS, INBOUND_PROGRAM, NET_HOOKS, PROGRAMS,
        SELECTOR_PROGRAM, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM,
    };

    /// The programs an object holds: its functions in program sections
    /// (`lsm/file_open`, `cgroup/connect4`, ...; helpers and global functions
    /// live in `.text`).
    fn programs_in(object: &[u8]) -> std::collections::BTreeSet<String> {
        let file = object::File::parse(object).unwrap();
        file.symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
            .filter(|s| {
                let section = s.section_index().and_then(|i| file.section_by_index(i).ok());
                section.and_then(|section| section.name().ok().map(|name| name.contains('/'))).unwrap_or(false)
            })
            .map(|s| s.name().unwrap().to_string())
            .collect()
    }

    /// Every program the loader's tables name, by the name it looks up.
    fn programs_named_by_tables() -> std::collections::BTreeSet<String> {
        let hooks = HOOKS.iter().chain(NET_HOOKS).chain(FLOOR_HOOKS).map(|(hook, _)| (*hook).to_string());
        // `enforcer bench-floor` loads empty programs on the file hooks.
        let floor = HOOKS.iter().map(|(hook, _)| format!("floor_{hook}"));
        let others = SOCK_ADDR_PROGRAMS.iter().chain(&[SOCK_CREATE_PROGRAM, INBOUND_PROGRAM, SELECTOR_PROGRAM]);
        hooks.chain(floor).chain(others.map(|name| (*name).to_string())).collect()
    }

    /// A program missing from the tables would never load, and one the tables
    /// name but the object lacks fails every load: both builds hold exactly
    /// the programs the tables name (the compat build less the hooks it
    /// judges elsewhere).
    #[test]
    fn the_loader_tables_name_every_program() {
        let named = programs_named_by_tables();
        let compat_named = named.iter().filter(|name| !COMPAT_JUDGED_ELSEWHERE.contains(&name.as_str())).cloned();
        for (build, object, expected) in
            [("main", PROGRAMS, named.clone()), ("compat", COMPAT_PROGRAMS, compat_named.collect())]
        {
            let found = programs_in(object);
            let unnamed: Vec<_> = found.difference(&named).collect();
            let absent: Vec<_> = expected.difference(&found).collect();
            assert!(
                unnamed.is_empty() && absent.is_empty(),
                "{build} build: programs no loader table names {unnamed:?}; named but not in the object {absent:?}"
            );
        }
    }

    /// The compiler turns struct copies and zeroed runs into `memset` and
    /// `memcpy` calls, which in BPF are byte loops (about five instructions a
    /// byte): one on the open path once cost 1.1 points of the benchmark.
    #[test]
    fn no_byte_loop_builtins() {
        no_byte_loop_builtins_in(PROGRAMS);
        no_byte_loop_builtins_in(COMPAT_PROGRAMS);
    }

    fn no_byte_loop_builtins_in(programs: &[u8]) {
        let file = object::File::parse(programs).unwrap();
        let functions: Vec<_> = file.symbols().filter(|s| s.kind() == object::SymbolKind::Text).collect();
        let mut offenders = Vec::new();
        for section in file.sections().filter(|s| s.kind() == object::SectionKind::Text) {
            for (offset, relocation) in section.relocations() {
                let RelocationTarget::Symbol(index) = relocation.target() else { continue };
                let target = file.symbol_by_index(index).unwrap().name().unwrap_or_default();
                if !matches!(target, "memset" | "memcpy" | "memmove" | "memcmp" | "bcmp") {
                    continue;
                }
                let caller = functions
                    .iter()
                    .filter(|f| f.section_index() == Some(section.index()) && f.address() <= offset)
                    .max_by_key(|f| f.address())
                    .map_or("?", |f| f.name().unwrap_or("?"));
                offenders
                    .push(format!("{} calls {target} at {offset:#x} (in {caller})", section.name().unwrap_or("?")));
            }
        }
        assert!(offenders.is_empty(), "byte-loop builtins in the programs:\n{}", offenders.join("\n"));
    }
}
