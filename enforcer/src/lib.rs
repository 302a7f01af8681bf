//! The enforcer: loads BPF LSM programs, keeps policy in BPF maps, tags agent
//! cgroups, and streams every denial as JSON lines.

pub mod bench;
pub mod bpf;
pub mod btf;
pub mod cgroups;
pub mod cli;
pub mod client;
pub mod ctl;
pub mod daemon;
pub mod dns;
pub mod events;
pub mod field_loads;
pub mod kernel;
pub mod mounts;
pub mod policy;
pub mod ring_fill;
pub mod run;
pub mod stream;
pub mod syscalls;
