//! The enforcer's handle on the loaded programs: one value holds them
//! attached for as long as it lives, with a handle on each map userspace
//! fills (`handles.rs`). Policy and tags are table swaps (`swap.rs`), so a
//! long-running daemon adds and removes them without reloading anything.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, FExit, ProgramError, SockOps,
    },
};
use enforcer_common::policy::{MAX_TAG_LEVEL, TagInfo};

use super::{
    LoadError,
    handles::{
        ArmedCgroups, BudgetUsage, GrantMaps, LockedAgents, LostEvents, NetRuleMaps, ProtectedInodes, SelectedCgroups,
    },
    hooks::{
        INBOUND_PROGRAM, SEND_COUNTERS, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM, TLS_SOCK_OPS_PROGRAM, lost_without,
    },
    maps::Maps,
    object::{LsmLink, load_everything, program_of},
    pinned,
    swap::{KernelTables, Swap},
};
use crate::cgroups::Cgroup;

/// Loaded and attached programs and their maps.
pub struct Enforcer {
    /// The loaded object (`None` when adopted from pins: the kernel holds
    /// the programs through their pinned links).
    ebpf: Option<Ebpf>,
    /// The daemon's pins, and the socket programs reopened from them.
    pub(super) pinned: Option<pinned::Pinned>,
    /// `enforcer run`'s BPF LSM links (the daemon's are pinned instead).
    lsm_links: Vec<LsmLink>,
    /// Each policy's network rules.
    pub net: NetRuleMaps,
    grants: Option<GrantMaps>,
    /// Why BPF LSM programs are not loaded (`None`: they are): only the
    /// cgroup socket programs enforce then.
    lsm_missing: Option<LoadError>,
    /// The policy tables (tags, tree roots, selectors) and the tag check's
    /// filter, and what they are built from.
    pub tables: Swap<KernelTables>,
    /// The cgroups selectors tagged.
    pub selected: SelectedCgroups,
    pub armed: ArmedCgroups,
    /// The agents whose egress a sensitive read locked.
    pub locked: LockedAgents,
    /// What each agent sent under each upload budget.
    pub budget_usage: BudgetUsage,
    /// Events the ring buffer could not take.
    pub lost: LostEvents,
    events: Option<RingBuf<MapData>>,
    /// The daemon's own files.
    pub protected: ProtectedInodes,
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
        enforcer.tables.publish_empty()?;
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
            mut net,
            mut grants,
            protected,
            selected,
            armed,
            locked,
            budget_usage,
        } = maps;
        // No judge, no names checked: policies keep their other rules.
        if lsm_missing.is_some() || missing_hooks.contains(&TLS_SOCK_OPS_PROGRAM) {
            grants.tls = None;
            net.tls_in_force = None;
        }
        Ok(Self {
            ebpf,
            pinned,
            lsm_links: Vec::new(),
            net,
            grants: Some(grants),
            lsm_missing,
            tables: Swap::new(KernelTables { tables, tag_filter, spare: None })?,
            selected,
            armed,
            locked,
            budget_usage,
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
    pub fn take_dns_grants(&mut self) -> Option<GrantMaps> {
        self.grants.take()
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
        if self.net.tls_in_force() {
            let program: &mut SockOps = program_of(self.object()?, TLS_SOCK_OPS_PROGRAM)?;
            attachment.sock_ops.push(program.attach(&dir, mode).map_err(attach_err)?);
        }
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
        for link in attachment.sock_ops {
            let program: &mut SockOps = program_of(self.object()?, TLS_SOCK_OPS_PROGRAM)?;
            program.detach(link).map_err(|source| LoadError::SockProgram { name: TLS_SOCK_OPS_PROGRAM, source })?;
        }
        Ok(())
    }

    /// Attaches the programs that count sends against upload budgets
    /// (`SEND_COUNTERS`), once: before the first policy with budgets is in
    /// force (until then a send pays no trampoline). Without BPF LSM no
    /// budget is judged, and nothing is counted.
    pub fn count_sends(&mut self) -> Result<(), LoadError> {
        if self.lsm_missing.is_some() {
            return Ok(());
        }
        if SEND_COUNTERS.iter().any(|(name, _)| self.missing_hooks.contains(name)) {
            return Err(LoadError::NoSendCounters);
        }
        if let Some(pinned) = self.pinned.as_mut() {
            return pinned.attach_send_counters();
        }
        for &(hook, _) in SEND_COUNTERS {
            if self.lsm_links.iter().any(|link| link.hook == hook) {
                continue;
            }
            let program: &mut FExit = program_of(self.object()?, hook)?;
            let id = program.attach().map_err(|source| LoadError::Program { hook, source })?;
            let link = program.take_link(id).map_err(|source| LoadError::Program { hook, source })?;
            self.lsm_links.push(LsmLink { hook, link: link.into() });
        }
        Ok(())
    }

    /// Turns the TLS name judge on (`TLS_IN_FORCE`), once: before the first
    /// policy with checked names is in force. Its `sock_ops` program runs
    /// at each TCP callback of a socket of the cgroups it is on, and once
    /// one is attached anywhere every TCP callback on the host looks for
    /// one: so it goes on the socket programs' cgroups from then on, not
    /// before (the daemon then adds it where they are already, see
    /// [`Self::attach_tls_pinned`]). False where the judge is not loaded.
    pub fn judge_tls(&mut self) -> Result<bool, LoadError> {
        self.net.set_tls_in_force()
    }

    /// Installs a policy's network rules (`enforcer run`), counting sends
    /// first if it has upload budgets, and turning the TLS judge on if it
    /// checks names.
    pub fn add_net_rules(&mut self, rules: &crate::policy::network::NetRules) -> Result<(), LoadError> {
        if rules.counts_sends() {
            self.count_sends()?;
        }
        if rules.tls {
            self.judge_tls()?;
        }
        self.net.add(rules)
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
        self.tables.tag(cgroup.id, cgroup.level, tag)
    }

    pub fn untag(&mut self, cgroup: &Cgroup) -> Result<(), LoadError> {
        self.tables.untag(cgroup.id)
    }
}

/// The cgroup socket programs attached to one cgroup.
#[derive(Debug, Default)]
pub struct NetAttachment {
    sock_addr: Vec<(&'static str, aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId)>,
    sock_create: Vec<aya::programs::cgroup_sock::CgroupSockLinkId>,
    inbound: Vec<aya::programs::cgroup_skb::CgroupSkbLinkId>,
    sock_ops: Vec<aya::programs::sock_ops::SockOpsLinkId>,
}
