//! The command line.

use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};

/// A deterministic, kernel-level boundary around AI agents (BPF LSM).
#[derive(Debug, Parser)]
#[command(name = "enforcer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a fresh agent cgroup, enforcing a policy on it and
    /// everything it starts. Denials stream as JSON lines.
    Run {
        /// The policy file (TOML).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Append denial events here instead of stderr.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// On a kernel that cannot enforce the whole policy (no BPF LSM),
        /// enforce what it can (the network destinations) instead of
        /// refusing; what is not enforced is printed first.
        #[arg(long)]
        degraded: bool,
        /// The DNS resolver to ask for allowed host names (default: the
        /// first nameserver in /etc/resolv.conf).
        #[arg(long, value_name = "ADDRESS:PORT")]
        dns_upstream: Option<std::net::SocketAddr>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Benchmarks only: run a command with empty BPF LSM programs attached
    /// on the enforcer's hooks (the floor), enforcing nothing.
    #[command(name = "bench-floor", hide = true)]
    BenchFloor {
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Work with policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Write a policy's parts for orchestrators that apply them themselves.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// The syscall groups `syscalls.allow` accepts.
    Syscalls {
        #[command(subcommand)]
        command: SyscallsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// The policy's syscall allowlist as a seccomp profile, on stdout.
    Seccomp {
        /// The policy file (TOML); it needs a [syscalls] section.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// `oci`: the runtime spec's `linux.seccomp` JSON (containerd,
        /// CRI-O, Kubernetes `localhost` profiles); `systemd`: unit settings.
        #[arg(long, value_enum)]
        format: SeccompFormat,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SeccompFormat {
    Oci,
    Systemd,
}

#[derive(Debug, Subcommand)]
pub enum SyscallsCommand {
    /// List the groups and their syscalls.
    Groups,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: errors name the file, line and column, with a hint.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
    },
}
