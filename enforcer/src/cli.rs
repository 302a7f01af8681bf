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
        /// Append denial events here (default: /run/enforcer/run-<pid>.jsonl;
        /// never the command's own stderr, where it could forge or split lines).
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
        /// Load the programs for this run, even where the daemon runs (by
        /// default a run goes through the daemon answering on --socket:
        /// no second copy of the programs, and its refusals are in the
        /// daemon's stream).
        #[arg(long)]
        standalone: bool,
        #[command(flatten)]
        socket: SocketArg,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// The fleet daemon: loads the programs once (pinned under bpffs, so
    /// enforcement outlives it), serves the API on a unix socket, reloads
    /// policies when their files change, and streams events.
    Daemon {
        /// The daemon's configuration (default: /etc/enforcer/enforcer.toml
        /// if it exists, else built-in defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// On a kernel without BPF LSM, enforce what the cgroup programs can
        /// (network destinations) instead of refusing to start.
        #[arg(long)]
        degraded: bool,
        /// Remove the pinned programs, maps and saved state (every agent
        /// cgroup is then unenforced) and exit.
        #[arg(long)]
        uninstall: bool,
    },
    /// Tag a cgroup (and everything below it) as an agent cgroup under a
    /// policy the daemon has loaded.
    Tag {
        /// The cgroup, as a path below the cgroup2 mount (`/agents.slice/a.scope`).
        cgroup: String,
        /// The policy's name.
        #[arg(long)]
        policy: String,
        /// A label kept with the tag (`--label team=infra`), repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Judge nothing until a process of the cgroup executes a program,
        /// then everything (for runtimes that still set the cgroup's first
        /// process up; a cgroup tagged already stays judged).
        #[arg(long)]
        from_exec: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// An OCI runtime hook (stage `createRuntime`): tags the container's
    /// cgroup with the policy its `enforcer.dev/policy` annotation names,
    /// before its program starts; fails (so the runtime refuses the
    /// container) if it cannot. Reads the container's state on stdin.
    #[command(name = "oci-hook")]
    OciHook {
        /// The policy for a container whose state has no annotation (a hook
        /// registered for one policy's pods: CRI-O matches a hook against
        /// the pod's annotations, which it does not always copy into the
        /// container's).
        #[arg(long)]
        policy: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop enforcing on a cgroup.
    Untag {
        cgroup: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The daemon's programs, policies, tagged cgroups and counters.
    Status {
        /// The daemon's JSON as it is.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The policies the daemon has in force, with version and hash.
    Policies {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Load the policy directory again now (the daemon also does on every
    /// change to it).
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Follow the daemon's event stream as JSON lines.
    Tail {
        /// Only events of this cgroup and those below it.
        #[arg(long)]
        cgroup: Option<String>,
        /// Only events judged by this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only events of this kind (`file_write`, `connect`, `floor`...).
        #[arg(long)]
        kind: Option<String>,
        /// First the recent events since then: a duration (`10m`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Benchmarks only: run a command with empty BPF LSM programs attached
    /// on the enforcer's file hooks, enforcing nothing.
    #[command(name = "bench-empty", hide = true)]
    BenchEmpty {
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
    /// Check the daemon's event files: the hash chain through every line
    /// and each signed head. Reports the first line changed, removed or
    /// moved, or a cut tail; exits 1 if there is one.
    Verify {
        /// The host's public key (the .pub of `events.signing_key`): heads must be
        /// signed by it (without it, heads are checked with the key they
        /// name, which proves nothing about who wrote them).
        #[arg(long, value_name = "PUBLIC_KEY")]
        key: Option<PathBuf>,
        /// The events file and its rotations, in any order
        /// (`/var/log/enforcer/events.jsonl*`); FILE.head, the copy of the
        /// last signed head, is read beside the current file.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// A digest of the event files for auditors: per policy and agent what
    /// was refused, grouped by reason and target, what is new, the top
    /// talkers, and (HTML) a timeline.
    Report {
        /// Only refusals since then: a duration (`24h`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only refusals judged by this policy.
        #[arg(long)]
        policy: Option<String>,
        /// `md` (Markdown), `html` (one self-contained page) or `json`.
        #[arg(long, value_enum, default_value = "md")]
        format: crate::report::Format,
        /// A JSON report from before (`--format json`): rows already in it
        /// are not marked new (by default a row is new if the files hold
        /// no earlier such refusal).
        #[arg(long, value_name = "REPORT.json")]
        previous: Option<PathBuf>,
        /// The event files: the daemon's and its rotations, or an
        /// `enforcer run --events` file (default: the daemon's,
        /// /var/log/enforcer/events.jsonl*).
        #[arg(value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Learn a policy from what a command does: run it under the learning
    /// policy (audit mode, nothing allowed, so everything it does is
    /// reported) and write a minimal policy that lets exactly that pass,
    /// each entry explained. Or learn from a daemon's events (--from) for a
    /// cgroup tagged with the learning policy (--print-learning-policy).
    Learn {
        /// Write the learned policy here (default: standard output).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The learned policy's name.
        #[arg(long, default_value = "learned")]
        name: String,
        /// An existing policy: print what the run needs beyond it, each
        /// addition with what the run did that needs it.
        #[arg(long, value_name = "POLICY")]
        policy: Option<PathBuf>,
        /// The workspace: everything written below it is one write tree
        /// (default: the current directory).
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Learn from these audit-mode event files (the daemon's, or an
        /// `enforcer run --events` file) instead of running a command.
        #[arg(long = "from", value_name = "FILE")]
        from: Vec<PathBuf>,
        /// With --from: only the events of this cgroup and those below it.
        #[arg(long, requires = "from")]
        cgroup: Option<String>,
        /// The resolver the run's names are asked of (`enforcer run --dns-upstream`).
        #[arg(long, value_name = "ADDR:PORT")]
        dns_upstream: Option<String>,
        /// Print the learning policy (to tag a cgroup with under a daemon, then
        /// learn --from its events) and exit.
        #[arg(long)]
        print_learning_policy: bool,
        /// The command to learn from, and its arguments.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
    /// Make an Ed25519 key pair: FILE (private, PKCS#8 PEM, mode 0600) and
    /// FILE.pub, to sign policies (or as the daemon's host key).
    Keygen {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Where the daemon's API is.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's socket.
    #[arg(long, env = "ENFORCER_SOCKET", default_value = crate::daemon::config::DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
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
        /// `oci` only: hand syscalls outside the allowlist to the daemon's
        /// seccomp agent on this socket (`[seccomp] listener` of its
        /// configuration), which refuses them and streams each refusal.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = crate::daemon::config::DEFAULT_SECCOMP_LISTENER)]
        listener: Option<PathBuf>,
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
        /// Also check its signature (FILE.sig) against this public key
        /// (repeatable: any of them), as a daemon with `policy_keys` does.
        #[arg(long = "key", value_name = "PUBLIC_KEY")]
        keys: Vec<PathBuf>,
    },
    /// Sign policy files: writes FILE.sig beside each (a daemon with
    /// `policy_keys` loads only policies signed by one of them).
    Sign {
        /// The private key (`enforcer keygen`).
        #[arg(long, value_name = "PRIVATE_KEY")]
        key: PathBuf,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}
