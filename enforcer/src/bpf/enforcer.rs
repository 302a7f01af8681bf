//! The enforcer's handle on the loaded programs: one value holds them
//! attached for as long as it lives, and every map userspace fills goes
//! through it. Policy and tags are table swaps (`swap.rs`), so a
//! long-running daemon adds and removes them without reloading anything.

use std::collections::HashMap as StdHashMap;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError},
};
use enforcer_common::{
    events::LOST_MAP,
    net::{
        DnsGrant, NET_KEY_POLICY_BITS, NET_RULES_MAP, NetKey, NetPorts, RESOLVERS_MAP, Resolver, UNIX_RULES_MAP,
        UnixKey,
    },
    policy::{FileRuleKey, MAX_TAG_LEVEL, PROTECTED_MAP, PolicyId, Protected, TagFilter, TagInfo},
    select::{SELECTED_MAP, Selected, SelectedBloom, SelectorTable},
};

use super::{
    LoadError,
    hooks::{INBOUND_PROGRAM, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM, lost_without},
    map_err,
    maps::Maps,
    object::{LsmLink, load_everything, program_of},
    pinned,
    swap::{KernelTables, Swap},
};
use crate::{cgroups::Cgroup, policy::network::NetRules};

/// Loaded and attached programs and their maps.
pub struct Enforcer {
    /// The loaded object (`None` when adopted from pins: the kernel holds
    /// the programs through their pinned links).
    ebpf: Option<Ebpf>,
    /// The daemon's pins, and the socket programs reopened from them.
    pub(super) pinned: Option<pinned::Pinned>,
    /// `enforcer run`'s BPF LSM links (the daemon's are pinned instead).
    lsm_links: Vec<LsmLink>,
    net_rules: LpmTrie<MapData, NetKey, NetPorts>,
    unix_rules: BpfHashMap<MapData, UnixKey, u8>,
    resolvers: BpfHashMap<MapData, PolicyId, Resolver>,
    dns_grants: Option<BpfHashMap<MapData, NetKey, DnsGrant>>,
    /// Why BPF LSM programs are not loaded (`None`: they are): only the
    /// cgroup socket programs enforce then.
    lsm_missing: Option<LoadError>,
    /// The tables and the tag check's filter, and what they are built from.
    pub(super) swap: Swap<KernelTables>,
    selected: BpfHashMap<MapData, u64, Selected>,
    selected_bloom: Array<MapData, SelectedBloom>,
    lost: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    protected: Array<MapData, Protected>,
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
    pub(super) fn assemble(
        ebpf: Option<Ebpf>,
        pinned: Option<pinned::Pinned>,
        maps: Maps,
        lsm_missing: Option<LoadError>,
        missing_hooks: Vec<&'static str>,
    ) -> Result<Self, LoadError> {
        let mut enforcer = Self::from_maps(ebpf, pinned, maps, lsm_missing, missing_hooks)?;
        enforcer.swap.publish_empty()?;
        Ok(enforcer)
    }

    pub(super) fn from_maps(
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
        Ok(Self {
            ebpf,
            pinned,
            lsm_links: Vec::new(),
            net_rules,
            unix_rules,
            resolvers,
            dns_grants: Some(dns_grants),
            lsm_missing,
            swap: Swap::new(KernelTables { tables, tag_filter })?,
            selected,
            selected_bloom,
            lost,
            events: Some(events),
            protected,
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
        self.swap.add_file_rules(rules)
    }

    pub fn remove_file_rules(&mut self, rules: &[(FileRuleKey, u16)]) -> Result<(), LoadError> {
        self.swap.remove_file_rules(rules)
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
    pub fn set_resolver(&mut self, policy_id: PolicyId, resolver: Resolver) -> Result<(), LoadError> {
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
        self.swap.tag(cgroup.id, cgroup.level, tag)
    }

    pub fn untag(&mut self, cgroup: &Cgroup) -> Result<(), LoadError> {
        self.swap.untag(cgroup.id)
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
        extra_filter: &TagFilter,
    ) -> Result<(), LoadError> {
        self.swap.replace_all(file_rules, tags, selectors, extra_filter)
    }

    /// Lets the tag check look for more selected cgroups (before they go in
    /// `SELECTED`), or fewer (after they left it).
    pub fn set_extra_filter(&mut self, extra_filter: &TagFilter) -> Result<(), LoadError> {
        self.swap.set_extra_filter(extra_filter)
    }

    /// The selectors in force.
    #[must_use]
    pub fn selector_table(&self) -> &SelectorTable {
        self.swap.selector_table()
    }

    #[must_use]
    pub fn extra_filter(&self) -> TagFilter {
        self.swap.extra_filter()
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
    pub fn retain_net_rules(&mut self, live: &std::collections::HashSet<PolicyId>) -> Result<(), LoadError> {
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
        let stale: Vec<PolicyId> =
            self.resolvers.keys().filter_map(Result::ok).filter(|id| !live.contains(id)).collect();
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
        self.swap.tagged_count()
    }
}

/// The cgroup socket programs attached to one cgroup.
#[derive(Debug, Default)]
pub struct NetAttachment {
    sock_addr: Vec<(&'static str, aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId)>,
    sock_create: Vec<aya::programs::cgroup_sock::CgroupSockLinkId>,
    inbound: Vec<aya::programs::cgroup_skb::CgroupSkbLinkId>,
}
