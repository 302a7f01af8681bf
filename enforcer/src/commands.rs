//! What each command of the `enforcer` binary does (`cli.rs` parses them).

use std::process::ExitCode;

use crate::{
    bench,
    cli::{Cli, Command, ExportCommand, PolicyCommand, SeccompFormat, SyscallsCommand},
    ctl,
    daemon::{self, DaemonOptions, wire::TagRequest},
    evidence, policy,
    run::{self, RunOptions},
    syscalls::{export, groups},
};
use clap::Parser as _;

/// The `enforcer` command line: parses it and runs the command.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::log::init();
    let code = match cli.command {
        Command::Run { policy, events, degraded, dns_upstream, standalone, socket, command } => {
            let socket = socket.socket;
            run_command(RunOptions { policy, events, degraded, dns_upstream, command, standalone, socket })
        }
        Command::Daemon { config, degraded, uninstall } => daemon::main(DaemonOptions { config, degraded, uninstall }),
        Command::Tag { cgroup, policy, labels, from_exec, socket } => {
            let labels = labels.into_iter().collect();
            ctl::run(ctl::tag(&socket.socket, TagRequest { cgroup, policy, labels, from_exec }))
        }
        Command::OciHook { policy, socket } => crate::oci_hook::main(&socket.socket, policy.as_deref()),
        Command::Untag { cgroup, socket } => ctl::run(ctl::untag(&socket.socket, &cgroup)),
        Command::Status { json, socket } => ctl::run(ctl::status(&socket.socket, json)),
        Command::Policies { socket } => ctl::run(ctl::policies(&socket.socket)),
        Command::Reload { socket } => ctl::run(ctl::reload(&socket.socket)),
        Command::Tail { cgroup, policy, kind, since, socket } => {
            ctl::run(ctl::tail(&socket.socket, cgroup.as_deref(), policy.as_deref(), kind.as_deref(), since.as_deref()))
        }
        Command::Policy { command: PolicyCommand::Check { file, keys } } => {
            let code = check_policy(&file);
            if code == 0 && !keys.is_empty() { evidence::commands::check_signature(&file, &keys) } else { code }
        }
        Command::Policy { command: PolicyCommand::Sign { key, files } } => evidence::commands::sign(&key, &files),
        Command::Verify { key, files } => evidence::commands::verify(key.as_deref(), &files),
        Command::Keygen { file } => evidence::commands::keygen(&file),
        Command::Learn {
            output,
            name,
            policy,
            workspace,
            from,
            cgroup,
            dns_upstream,
            print_learning_policy,
            command,
        } => crate::learn::main(&crate::learn::Options {
            command,
            from,
            cgroup,
            existing: policy,
            output,
            name,
            workspace,
            dns_upstream,
            print_learning_policy,
        }),
        Command::Report { since, policy, format, previous, files } => {
            crate::report::main(&crate::report::Options { files, since, policy, previous, format })
        }
        Command::BenchEmpty { command } => bench::run_empty(&command),
        Command::Export { command: ExportCommand::Seccomp { policy, format, listener } } => {
            export_seccomp(&policy, format, listener.as_deref())
        }
        Command::Syscalls { command: SyscallsCommand::Groups } => list_groups(),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run_command(opts: RunOptions) -> i32 {
    // One thread: the child is forked from it, and nothing else runs then.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return 125;
        }
    };
    match runtime.block_on(run::run(opts)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

fn check_policy(file: &std::path::Path) -> i32 {
    match policy::load(file) {
        Ok((policy, warnings)) => {
            for warning in &warnings {
                eprintln!("{warning}");
            }
            if let Some(files) = &policy.files {
                for path in files.read_deny.iter().chain(&files.sensitive).filter(|p| !p.exists()) {
                    eprintln!(
                        "{}: note: {} does not exist here: it is judged by name from the moment it is created",
                        file.display(),
                        path.display()
                    );
                }
            }
            let files = policy.files.as_ref().map_or_else(
                || "files unrestricted".to_owned(),
                |f| {
                    format!(
                        "{} write trees, {} read_deny trees, {} sensitive trees",
                        f.write.len(),
                        f.read_deny.len(),
                        f.sensitive.len()
                    )
                },
            );
            let network = policy.network.as_ref().map_or_else(
                || "network unrestricted".to_owned(),
                |n| {
                    let hosts = n
                        .allow
                        .iter()
                        .filter(|(d, _)| matches!(d.target, crate::policy::destinations::Target::Host { .. }))
                        .count();
                    format!(
                        "{} destinations ({hosts} by host name), {} upload budgets, {} unix sockets, extra socket \
                         classes: {}",
                        n.allow.len(),
                        n.upload.len(),
                        n.unix.len(),
                        if n.sockets.is_empty() { "none".to_owned() } else { n.sockets.join(", ") }
                    )
                },
            );
            let syscalls = policy.syscalls.as_ref().map_or_else(
                || "syscalls unrestricted".to_owned(),
                |s| {
                    let action = if s.deny_action == crate::syscalls::DenyAction::Kill { "kill" } else { "EPERM" };
                    let seccomp = if s.require_seccomp { ", seccomp required" } else { "" };
                    format!("{} syscalls allowed (others: {action}){seccomp}", s.allow.len())
                },
            );
            let exec = policy
                .exec
                .as_ref()
                .map_or_else(|| "exec unrestricted".to_owned(), |e| format!("{} exec trees", e.allow.len()));
            println!(
                "{}: ok: policy `{}`, mode {}, {files}, {network}, {syscalls}, {exec}",
                file.display(),
                policy.name,
                policy.mode.as_str()
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

fn export_seccomp(file: &std::path::Path, format: SeccompFormat, listener: Option<&std::path::Path>) -> i32 {
    let policy = match policy::load(file) {
        Ok((policy, _)) => policy,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let Some(syscalls) = &policy.syscalls else {
        eprintln!(
            "{}: error: the policy has no [syscalls] section, so there is no allowlist to export\n  \
             hint: add [syscalls] with allow = [\"@default-agent\"]",
            file.display()
        );
        return 2;
    };
    let text = match format {
        SeccompFormat::Oci => match export::oci(syscalls, listener.map(|path| (path, policy.name.as_str()))) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        },
        SeccompFormat::Systemd if listener.is_some() => {
            eprintln!(
                "error: --listener is for --format oci (an OCI runtime hands the listener over); systemd installs \
                 the filter itself\n  hint: drop --listener"
            );
            return 2;
        }
        SeccompFormat::Systemd => export::systemd(syscalls, &policy.name),
    };
    print!("{text}");
    0
}

fn list_groups() -> i32 {
    println!("# syscall groups, version {}", groups::GROUPS_VERSION);
    println!("{}: every group marked (default) below", groups::DEFAULT_AGENT);
    for group in groups::GROUPS {
        let default = if group.default { " (default)" } else { "" };
        println!("{}{default}: {}\n    {}", group.name, group.about, group.members.join(" "));
    }
    0
}
