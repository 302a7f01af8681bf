//! The programs' object: the build this kernel can load, patched with its
//! field offsets, loaded with every map; the BPF LSM programs loaded and
//! attached, the cgroup socket programs loaded for later attaching.

use aya::{
    Ebpf, EbpfLoader,
    maps::SockHash,
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, FExit, Lsm, ProgramError, SkMsg, SockOps},
};
use enforcer_common::{KernelOffsets, tls::TLS_HELLO_MAP};

use super::{
    LoadError, debug_load,
    hooks::{
        COMPAT_JUDGED_ELSEWHERE, HOOKS, Hook, INBOUND_PROGRAM, SEND_COUNTERS, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM,
        TLS_HELLO_PROGRAM, TLS_SOCK_OPS_PROGRAM, file_hooks,
    },
    jit_dump, map_err,
};
use crate::{
    btf::Btf,
    field_loads,
    kernel::{self, KernelError},
};

/// The programs, built by `build.rs`.
pub(super) static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));
/// The same programs for kernels without `bpf_loop` or `bpf_get_retval`
/// (see `enforcer-ebpf/src/compat.rs`).
pub(super) static COMPAT_PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-compat"));

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
    tracing::debug!("loading the {} build of the programs", if compat { "compat" } else { "main" });
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` spans at least `object.len()` bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    field_loads::patch(bytes, offsets)?;
    let rdonly_cast = Some(offsets.rdonly_cast).filter(|&id| id != KernelOffsets::ABSENT);
    field_loads::patch_rdonly_cast(bytes, rdonly_cast)?;
    Ok(Programs { words, len: object.len(), compat })
}

pub(super) fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
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

/// Loads the TLS name judge: the `sock_ops` program (attached per tagged
/// cgroup later) and the `sk_msg` program, attached to `TLS_HELLO` while a
/// descriptor or pin of the map is held (this object's; the daemon's pin).
///
/// The judge first: the daemon pins the `sock_ops` program only where it
/// loaded, and a later daemon that adopts it takes the judge as present.
fn load_tls_judge(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let name = TLS_HELLO_PROGRAM;
    let map = ebpf.map(TLS_HELLO_MAP).ok_or(LoadError::MissingMap(TLS_HELLO_MAP))?;
    let fd = SockHash::<_, u64>::try_from(map).map_err(map_err(TLS_HELLO_MAP))?.fd().try_clone();
    let fd = fd.map_err(|e| LoadError::SockProgram { name, source: ProgramError::IOError(e) })?;
    let program = program_of::<SkMsg>(ebpf, name)?;
    load_sock_program(name, program, SkMsg::load, SkMsg::info)?;
    let id = program.attach(&fd).map_err(|source| LoadError::SockProgram { name, source })?;
    // Kept attached past this object (the daemon pins the map, not the
    // link): the map holds the program.
    let link = program.take_link(id).map_err(|source| LoadError::SockProgram { name, source })?;
    std::mem::forget(link);
    load_sock_program(
        TLS_SOCK_OPS_PROGRAM,
        program_of::<SockOps>(ebpf, TLS_SOCK_OPS_PROGRAM)?,
        SockOps::load,
        SockOps::info,
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
    if tracing::enabled!(tracing::Level::DEBUG) {
        let insns = info().ok().and_then(|i| i.verified_instruction_count());
        tracing::debug!("loaded {name} in {:?}, verifier processed {insns:?} insns", started.elapsed());
    }
}

/// What any BPF LSM design costs, for the benchmarks: an empty program
/// (`empty_<hook>`, returning 0) attached on every file hook (optional hooks
/// only where the kernel has them), and nothing else. Held attached for as
/// long as the value lives.
pub struct EmptyPrograms {
    _ebpf: Ebpf,
    _links: Vec<LsmLink>,
    /// Optional hooks this kernel does not have.
    pub missing_hooks: Vec<&'static str>,
}

/// Loads and attaches the empty programs only (see [`EmptyPrograms`]).
pub fn load_empty_programs() -> Result<EmptyPrograms, LoadError> {
    let mut object = load_object()?;
    if let Some(lsm) = object.lsm.take() {
        return Err(lsm);
    }
    let (missing_hooks, links) = object.load_lsm("empty_", file_hooks())?;
    Ok(EmptyPrograms { _ebpf: object.ebpf, _links: links, missing_hooks })
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

/// Loads the object and every program, attaching the BPF LSM ones; a kernel
/// without BPF LSM is reported in the second value, not as an error.
#[expect(clippy::type_complexity, reason = "one private call site per caller")]
pub(super) fn load_everything() -> Result<(Ebpf, Option<LoadError>, Vec<&'static str>, Vec<LsmLink>), LoadError> {
    let mut object = load_object()?;
    let lsm = object.lsm.take().map_or(Ok(()), Err);
    let loaded = lsm.and_then(|()| object.load_lsm("", HOOKS.iter())).map(|(mut missing_hooks, links)| {
        // Without them only policies with upload budgets are refused.
        if let Err(e) = object.load_send_counters() {
            tracing::warn!("upload budgets cannot be enforced on this kernel: {e}");
            missing_hooks.extend(SEND_COUNTERS.iter().map(|&(name, _)| name));
        }
        // Without it no TLS name is checked (and said so).
        if let Err(e) = load_tls_judge(&mut object.ebpf) {
            tracing::warn!("TLS names cannot be checked on this kernel: {e}");
            missing_hooks.push(TLS_SOCK_OPS_PROGRAM);
        }
        (missing_hooks, links)
    });
    let (lsm_missing, missing_hooks, links) = match loaded {
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

/// A tracepoint program of [`TRACEPOINT_PROGRAMS`] (see
/// `enforcer-ebpf/src/select.rs` and `arm.rs`), for the daemon to pin:
/// loaded and attached, its link returned.
pub(super) fn attach_tracepoint_program(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::programs::links::FdLink, LoadError> {
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
        hooks: impl Iterator<Item = &'static Hook>,
    ) -> Result<(Vec<&'static str>, Vec<LsmLink>), LoadError> {
        let Self { ebpf, btf, aya_btf, compat, .. } = self;
        let mut missing_hooks = Vec::new();
        let mut links = Vec::new();
        for &Hook { name: hook, required, .. } in hooks {
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
                link: program.take_link(link).map_err(|source| LoadError::Program { hook, source })?.into(),
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

    /// Loads (does not attach) the programs that count sends against upload
    /// budgets ([`SEND_COUNTERS`]), with the BPF LSM hooks: the kernel
    /// checks them now; `Enforcer::count_sends` attaches them once a policy
    /// has budgets.
    fn load_send_counters(&mut self) -> Result<(), LoadError> {
        for &(hook, function) in SEND_COUNTERS {
            let program: &mut FExit = program_of(&mut self.ebpf, hook)?;
            let started = std::time::Instant::now();
            program.load(function, &self.aya_btf).map_err(|source| classify(hook, source))?;
            debug_loaded(&format_args!("{hook}"), started, || program.info());
        }
        Ok(())
    }
}

/// An attached BPF LSM (or send counter) program's link: dropping it
/// detaches the program, unless it is pinned.
pub struct LsmLink {
    pub hook: &'static str,
    pub link: aya::programs::links::FdLink,
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
    let keep = if debug_load() { 3000 } else { 30 };
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

    use super::{COMPAT_PROGRAMS, PROGRAMS};

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
