//! What can go wrong loading the programs and working their maps.

use aya::programs::ProgramError;
use enforcer_common::policy::MAX_TAG_LEVEL;

use super::pinned::PinError;
use crate::{field_loads, kernel::KernelError, policy::tables::TableError};

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
    #[error(transparent)]
    Resolver(#[from] crate::dns::DnsError),
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
    #[error(
        "this kernel refused the programs that count sends (fexit on `inet_sendmsg` and `inet6_sendmsg`), so \
         upload budgets cannot be enforced: remove `network.upload` from the policy, or see the log of the start \
         for why"
    )]
    NoSendCounters,
}

/// An error and its sources, `: `-separated (aya's say "`call` failed" and
/// keep the errno in the source).
pub(super) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text = format!("{text}: {error}");
        source = error.source();
    }
    text
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}
