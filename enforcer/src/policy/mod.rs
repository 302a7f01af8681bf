//! Policy file to kernel tables, one stage per file:
//!
//! 1. [`parse`]: the TOML document into a [`Policy`], with errors and
//!    warnings located at `file:line:column`; [`destinations`] parses the
//!    network allowlist's entries.
//! 2. [`compile`]: a parsed policy into what the kernel enforces for one
//!    policy id: its tag, its file rules ([`files`]: trees resolved to
//!    inodes), its network rules ([`network`]). Used alike by `enforcer run`
//!    and the daemon.
//! 3. [`tables`]: the compiled rules of every policy in force, and the tagged
//!    cgroups, as the hash tables the programs look in; [`selectors`]
//!    compiles the daemon's cgroup globs into the kernel's DFA.

pub mod budgets;
pub mod compile;
pub mod destinations;
pub mod files;
pub mod network;
pub mod parse;
pub mod selectors;
pub mod tables;

pub use parse::{
    DNS_MIN_TTL_DEFAULT, Devices, Exec, Files, Location, Mode, Network, Policy, PolicyError, Warning, load, parse,
};
