//! The daemon's programs and maps, pinned under bpffs: they stay attached
//! and enforcing when the daemon exits, crashes or is killed, and the next
//! daemon adopts them instead of loading a second copy.
//!
//! Layout, below `<root>/<build>/` (`build`: a hash of the programs, so a
//! daemon of another build never adopts programs it does not match):
//! `maps/<NAME>`, `links/<hook>` (BPF LSM), `progs/<name>` (the cgroup socket
//! programs, to attach to cgroups tagged later) and `net/<cgroup id>/<name>`
//! (their links on each tagged cgroup and selector root), and
//! `tracing/<name>` (the tracepoint links: `cgroup_mkdir` for selectors,
//! `sched_process_exec` for tags armed at exec).

use std::path::{Path, PathBuf};

use aya::{
    maps::{Map, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, FExit, SockOps,
        cgroup_sock::CgroupSockAttachType, cgroup_sock_addr::CgroupSockAddrAttachType, links::FdLink,
    },
};
use sha2::Digest as _;

use super::{
    Enforcer, LoadError, chain,
    hooks::{
        HOOKS, INBOUND_PROGRAM, SEND_COUNTERS, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM, TLS_SOCK_OPS_PROGRAM,
        TRACEPOINT_PROGRAMS,
    },
    maps::{MAP_NAMES, Maps},
    object::{LsmLink, PROGRAMS, attach_tracepoint_program, load_everything, program_of},
};
use crate::cgroups::Cgroup;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot pin {what} at {}: {source}", path.display())]
    Pin { what: &'static str, path: PathBuf, source: aya::pin::PinError },
    #[error(
        "cannot open the pinned {what} at {}: {detail}\n  hint: `enforcer daemon --uninstall` removes the pins (the \
         agents \
         are not enforced until a daemon starts again)",
        path.display()
    )]
    Open { what: &'static str, path: PathBuf, detail: String },
    #[error("cannot attach the network programs to cgroup {cgroup}: {detail}")]
    Attach { cgroup: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_owned(), source }
}

/// This build's programs: the first 16 hex digits of their SHA-256
/// (hashed once: every save of the daemon's state names it).
#[must_use]
pub fn build_id() -> String {
    static BUILD_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILD_ID.get_or_init(|| short_sha256(PROGRAMS)).clone()
}

/// The first 16 hex digits of the SHA-256 of `bytes`.
#[must_use]
pub fn short_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    sha2::Sha256::digest(bytes).iter().take(8).fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The builds with pins under `root`.
#[must_use]
pub fn adopted_build(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// The file name of a map's pin (`.bss` would be a hidden file).
fn pin_name(map: &str) -> &str {
    match map {
        enforcer_common::policy::TAG_FILTER_MAP => "TAG_FILTER",
        enforcer_common::select::SELECTED_BLOOM_MAP => "SELECTED_BLOOM",
        enforcer_common::policy::PROTECTED_MAP => "PROTECTED",
        enforcer_common::budget::BUDGETS_IN_FORCE_MAP => "BUDGETS_IN_FORCE",
        enforcer_common::tls::TLS_IN_FORCE_MAP => "TLS_IN_FORCE",
        other => other,
    }
}

const SOCK_ADDR_TYPES: &[(&str, CgroupSockAddrAttachType)] = &[
    ("connect4", CgroupSockAddrAttachType::Connect4),
    ("connect6", CgroupSockAddrAttachType::Connect6),
    ("sendmsg4", CgroupSockAddrAttachType::UDPSendMsg4),
    ("sendmsg6", CgroupSockAddrAttachType::UDPSendMsg6),
    ("recvmsg4", CgroupSockAddrAttachType::UDPRecvMsg4),
    ("recvmsg6", CgroupSockAddrAttachType::UDPRecvMsg6),
];

/// The pins of one build, and its socket programs reopened from them.
pub struct Pinned {
    pub dir: PathBuf,
    sock_addr: Vec<(&'static str, CgroupSockAddr)>,
    sock_create: CgroupSock,
    inbound: CgroupSkb,
    /// The send counters (BPF LSM kernels), attached once a policy has
    /// upload budgets.
    send_counters: Vec<(&'static str, FExit)>,
    /// The TLS name judge's `sock_ops` program, where the kernel took it.
    tls_sock_ops: Option<SockOps>,
}

/// How the daemon got its programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Loaded now and pinned; pins of other builds (older daemons) are
    /// still attached until the caller removes them.
    Fresh { other_builds: Vec<String> },
    /// Adopted from the pins of an earlier daemon of this build.
    Adopted,
}

impl Enforcer {
    /// The daemon's enforcer: adopts this build's pins under `root` if they
    /// exist, else loads everything and pins it there.
    pub fn load_pinned(root: &Path) -> Result<(Self, Start), LoadError> {
        let build = build_id();
        let dir = root.join(&build);
        if dir.join("maps").join(pin_name(enforcer_common::events::EVENTS_MAP)).exists() {
            return Ok((Self::adopt(&dir)?, Start::Adopted));
        }
        let other_builds = adopted_build(root).into_iter().filter(|b| *b != build).collect();
        let (mut ebpf, lsm_missing, missing_hooks, links) = load_everything()?;
        // A half-pinned directory from a failed start must not be adopted.
        if dir.exists() {
            remove_pins(&dir)?;
        }
        for sub in ["maps", "links", "progs", "net", "tracing"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        let result = pin_all(&mut ebpf, &dir, links)
            .and_then(|()| pin_tracepoint_programs(&mut ebpf, &dir))
            .and_then(|()| Maps::take(&mut ebpf));
        let maps = match result {
            Ok(maps) => maps,
            Err(e) => {
                let _ = remove_pins(&dir);
                return Err(e);
            }
        };
        drop(ebpf);
        let pinned = Pinned::open(&dir)?;
        let enforcer = Self::assemble(None, Some(pinned), maps, lsm_missing, missing_hooks)?;
        Ok((enforcer, Start::Fresh { other_builds }))
    }

    /// Opens the maps and programs an earlier daemon pinned in `dir`. The
    /// tables stay as that daemon published them until the caller publishes
    /// its own.
    fn adopt(dir: &Path) -> Result<Self, LoadError> {
        crate::kernel::check_root()?;
        let maps = Maps::from(|name| {
            let path = dir.join("maps").join(pin_name(name));
            let open_err = |detail: String| PinError::Open { what: "map", path: path.clone(), detail };
            let data = MapData::from_pin(&path).map_err(|e| open_err(e.to_string()))?;
            Ok(Map::from_map_data(data).map_err(|e| open_err(e.to_string()))?)
        })?;
        let linked: Vec<String> = std::fs::read_dir(dir.join("links"))
            .map_err(|e| PinError::Io { path: dir.join("links"), source: e })?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let (lsm_missing, mut missing_hooks) = if linked.is_empty() {
            let why = crate::kernel::check_bpf_lsm().err().map_or(
                LoadError::Adopted("the daemon that pinned these programs ran without BPF LSM (--degraded)"),
                LoadError::from,
            );
            (Some(why), Vec::new())
        } else {
            (None, HOOKS.iter().map(|hook| hook.name).filter(|name| !linked.iter().any(|l| l == name)).collect())
        };
        let pinned = Pinned::open(dir)?;
        if pinned.tls_sock_ops.is_none() {
            missing_hooks.push(TLS_SOCK_OPS_PROGRAM);
        }
        let mut enforcer = Self::from_maps(None, Some(pinned), maps, lsm_missing, missing_hooks)?;
        // The filter in force is the earlier daemon's: keep it a superset.
        enforcer.tables.keep_filter_in_force()?;
        Ok(enforcer)
    }

    /// The pins' directory (daemon only).
    #[must_use]
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pinned.as_ref().map(|p| p.dir.as_path())
    }

    /// Attaches the cgroup socket programs to `cgroup` and pins the links:
    /// they stay attached without the daemon. Idempotent.
    pub fn attach_net_pinned(&mut self, cgroup: &Cgroup) -> Result<(), LoadError> {
        let judge_tls = self.net.tls_in_force();
        let pinned = self.pinned.as_mut().ok_or(LoadError::Adopted("not a daemon: nothing is pinned"))?;
        let dir = pinned.dir.join("net").join(cgroup.id.to_string());
        if dir.exists() {
            return Ok(());
        }
        tracing::debug!("attaching the socket programs to {} (id {})", cgroup.name, cgroup.id);
        let attach_err = |detail: String| PinError::Attach { cgroup: cgroup.name.clone(), detail };
        let file = std::fs::File::open(&cgroup.path)
            .map_err(|source| LoadError::OpenCgroup { path: cgroup.path.clone(), source })?;
        let staging = pinned.dir.join("net").join(format!("{}-new", cgroup.id));
        let _ = remove_pins(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let pin = |name: &'static str, link: FdLink| {
            let path = staging.join(name);
            link.pin(&path).map(drop).map_err(|source| PinError::Pin { what: "cgroup link", path, source })
        };
        let result = (|| -> Result<(), PinError> {
            for (name, program) in &mut pinned.sock_addr {
                let id = program.attach(&file, CgroupAttachMode::Single).map_err(|e| attach_err(chain(&e)))?;
                let link = program.take_link(id).map_err(|e| attach_err(chain(&e)))?;
                pin(name, FdLink::try_from(link).map_err(|e| attach_err(chain(&e)))?)?;
            }
            // Judges socket classes without BPF LSM, and records agents' sockets.
            let program = &mut pinned.sock_create;
            let id = program.attach(&file, CgroupAttachMode::Single).map_err(|e| attach_err(chain(&e)))?;
            let link = program.take_link(id).map_err(|e| attach_err(chain(&e)))?;
            pin(SOCK_CREATE_PROGRAM, FdLink::try_from(link).map_err(|e| attach_err(chain(&e)))?)?;
            let program = &mut pinned.inbound;
            let id = program
                .attach(&file, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map_err(|e| attach_err(chain(&e)))?;
            let link = program.take_link(id).map_err(|e| attach_err(chain(&e)))?;
            pin(INBOUND_PROGRAM, FdLink::try_from(link).map_err(|e| attach_err(chain(&e)))?)?;
            if judge_tls && let Some(program) = &mut pinned.tls_sock_ops {
                pin(TLS_SOCK_OPS_PROGRAM, attach_sock_ops(program, &file).map_err(attach_err)?)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = remove_pins(&staging);
            return Err(e.into());
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))?;
        Ok(())
    }

    /// Adds the TLS judge's `sock_ops` program to `cgroup`, whose socket
    /// programs are attached already, once the judge is on (see
    /// `Enforcer::judge_tls`). Idempotent.
    pub fn attach_tls_pinned(&mut self, cgroup: &Cgroup) -> Result<(), LoadError> {
        let pinned = self.pinned.as_mut().ok_or(LoadError::Adopted("not a daemon: nothing is pinned"))?;
        let path = pinned.dir.join("net").join(cgroup.id.to_string()).join(TLS_SOCK_OPS_PROGRAM);
        let Some(program) = &mut pinned.tls_sock_ops else { return Ok(()) };
        if path.exists() || !path.parent().is_some_and(Path::exists) {
            return Ok(());
        }
        let file = std::fs::File::open(&cgroup.path)
            .map_err(|source| LoadError::OpenCgroup { path: cgroup.path.clone(), source })?;
        let link = attach_sock_ops(program, &file)
            .map_err(|detail| PinError::Attach { cgroup: cgroup.name.clone(), detail })?;
        link.pin(&path).map_err(|source| PinError::Pin { what: "cgroup link", path, source })?;
        Ok(())
    }

    /// Detaches the socket programs from the cgroup with id `cgroup_id`
    /// (unpins their links). Idempotent.
    pub fn detach_net_pinned(&mut self, cgroup_id: u64) -> Result<(), LoadError> {
        let pinned = self.pinned.as_ref().ok_or(LoadError::Adopted("not a daemon: nothing is pinned"))?;
        let dir = pinned.dir.join("net").join(cgroup_id.to_string());
        if dir.exists() {
            tracing::debug!("detaching the socket programs from cgroup id {cgroup_id}");
            remove_pins(&dir)?;
        }
        Ok(())
    }

    /// Whether the socket programs are pinned on the cgroup `cgroup_id`.
    #[must_use]
    pub fn net_attached_at(&self, cgroup_id: u64) -> bool {
        self.pinned.as_ref().is_some_and(|pinned| pinned.dir.join("net").join(cgroup_id.to_string()).exists())
    }

    /// Cgroup ids whose socket programs are pinned.
    #[must_use]
    pub fn net_attached(&self) -> Vec<u64> {
        let Some(pinned) = &self.pinned else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(pinned.dir.join("net")) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
    }
}

/// Attaches `program` to the cgroup open as `file`, as a link to pin.
fn attach_sock_ops(program: &mut SockOps, file: &std::fs::File) -> Result<FdLink, String> {
    let id = program.attach(file, CgroupAttachMode::Single).map_err(|e| chain(&e))?;
    let link = program.take_link(id).map_err(|e| chain(&e))?;
    FdLink::try_from(link).map_err(|e| chain(&e))
}

impl Pinned {
    /// Attaches the send counters and pins their links, if that is not done
    /// (see `Enforcer::count_sends`).
    pub(super) fn attach_send_counters(&mut self) -> Result<(), LoadError> {
        // Not pinned: the kernel refused them when the programs were loaded.
        if self.send_counters.len() != SEND_COUNTERS.len() {
            return Err(LoadError::NoSendCounters);
        }
        for (hook, program) in &mut self.send_counters {
            let path = self.dir.join("links").join(*hook);
            if path.exists() {
                continue;
            }
            let hook = *hook;
            let id = program.attach().map_err(|source| LoadError::Program { hook, source })?;
            let link: FdLink = program.take_link(id).map_err(|source| LoadError::Program { hook, source })?.into();
            link.pin(&path).map_err(|source| PinError::Pin { what: "send counter link", path, source })?;
        }
        Ok(())
    }

    fn open(dir: &Path) -> Result<Self, PinError> {
        let open_err = |path: PathBuf, detail: String| PinError::Open { what: "program", path, detail };
        let mut sock_addr = Vec::new();
        for &(name, attach_type) in SOCK_ADDR_TYPES {
            let path = dir.join("progs").join(name);
            let program =
                CgroupSockAddr::from_pin(&path, attach_type).map_err(|e| open_err(path.clone(), chain(&e)))?;
            sock_addr.push((name, program));
        }
        let path = dir.join("progs").join(SOCK_CREATE_PROGRAM);
        let sock_create = CgroupSock::from_pin(&path, CgroupSockAttachType::SockCreate)
            .map_err(|e| open_err(path.clone(), chain(&e)))?;
        let path = dir.join("progs").join(INBOUND_PROGRAM);
        let inbound =
            CgroupSkb::from_pin(&path, CgroupSkbAttachType::Ingress).map_err(|e| open_err(path.clone(), chain(&e)))?;
        let mut send_counters = Vec::new();
        for &(name, _) in SEND_COUNTERS {
            let path = dir.join("progs").join(name);
            // Pinned where BPF LSM is (see `pin_all`).
            if path.exists() {
                send_counters.push((name, FExit::from_pin(&path).map_err(|e| open_err(path.clone(), chain(&e)))?));
            }
        }
        let path = dir.join("progs").join(TLS_SOCK_OPS_PROGRAM);
        // Pinned where the kernel took the judge (see `pin_all`).
        let tls_sock_ops = if path.exists() {
            Some(SockOps::from_pin(&path).map_err(|e| open_err(path.clone(), chain(&e)))?)
        } else {
            None
        };
        Ok(Self { dir: dir.to_owned(), sock_addr, sock_create, inbound, send_counters, tls_sock_ops })
    }
}

/// Pins every map, BPF LSM link and socket program of a fresh load.
fn pin_all(ebpf: &mut aya::Ebpf, dir: &Path, links: Vec<LsmLink>) -> Result<(), LoadError> {
    // `TLS_HELLO` too: a sockhash lets go of its programs (the TLS name
    // judge) when the last descriptor or pin of it goes.
    for &name in MAP_NAMES.iter().chain(&[enforcer_common::tls::TLS_HELLO_MAP]) {
        let path = dir.join("maps").join(pin_name(name));
        let map = ebpf.map(name).ok_or(LoadError::MissingMap(name))?;
        map.pin(&path).map_err(|source| PinError::Pin { what: "map", path, source })?;
    }
    // The send counters, where the kernel took them (with BPF LSM).
    for &(name, _) in SEND_COUNTERS {
        let path = dir.join("progs").join(name);
        let program: &mut FExit = program_of(ebpf, name)?;
        if program.fd().is_ok() {
            program.pin(&path).map_err(|source| PinError::Pin { what: "program", path, source })?;
        }
    }
    for LsmLink { hook, link } in links {
        let path = dir.join("links").join(hook);
        link.pin(&path).map_err(|source| PinError::Pin { what: "BPF LSM link", path, source })?;
    }
    for &name in SOCK_ADDR_PROGRAMS {
        let path = dir.join("progs").join(name);
        let program: &mut CgroupSockAddr = program_of(ebpf, name)?;
        program.pin(&path).map_err(|source| PinError::Pin { what: "program", path, source })?;
    }
    let path = dir.join("progs").join(SOCK_CREATE_PROGRAM);
    let program: &mut CgroupSock = program_of(ebpf, SOCK_CREATE_PROGRAM)?;
    program.pin(&path).map_err(|source| PinError::Pin { what: "program", path, source })?;
    let path = dir.join("progs").join(INBOUND_PROGRAM);
    let program: &mut CgroupSkb = program_of(ebpf, INBOUND_PROGRAM)?;
    program.pin(&path).map_err(|source| PinError::Pin { what: "program", path, source })?;
    let path = dir.join("progs").join(TLS_SOCK_OPS_PROGRAM);
    let program: &mut SockOps = program_of(ebpf, TLS_SOCK_OPS_PROGRAM)?;
    if program.fd().is_ok() {
        program.pin(&path).map_err(|source| PinError::Pin { what: "program", path, source })?;
    }
    Ok(())
}

/// Attaches the tracepoint programs and pins their links.
fn pin_tracepoint_programs(ebpf: &mut aya::Ebpf, dir: &Path) -> Result<(), LoadError> {
    for &name in TRACEPOINT_PROGRAMS {
        let link = attach_tracepoint_program(ebpf, name)?;
        let path = dir.join("tracing").join(name);
        link.pin(&path).map_err(|source| PinError::Pin { what: "tracepoint link", path, source })?;
    }
    Ok(())
}

/// Removes a directory of pins: each program and map is freed (and each link
/// detached) when nothing else holds it.
pub fn remove_pins(dir: &Path) -> Result<(), PinError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            remove_pins(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    std::fs::remove_dir(dir).map_err(io(dir))
}
