//! The enforcer: loads BPF LSM programs, keeps policy in BPF maps, tags agent
//! cgroups, and streams every denial as JSON lines.

pub(crate) mod bench;
pub(crate) mod bpf;
pub mod btf;
pub mod cgroups;
pub(crate) mod cli;
pub(crate) mod client;
pub mod commands;
pub(crate) mod ctl;
pub mod daemon;
pub(crate) mod dns;
pub(crate) mod events;
pub(crate) mod evidence;
pub(crate) mod field_loads;
pub(crate) mod kernel;
pub(crate) mod learn;
pub(crate) mod log;
pub(crate) mod mounts;
pub mod oci_hook;
pub mod policy;
pub(crate) mod report;
pub(crate) mod ring_fill;
pub(crate) mod run;
pub(crate) mod stream;
pub(crate) mod syscalls;
