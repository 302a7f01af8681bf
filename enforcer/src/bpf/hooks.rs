//! Every program the enforcer loads, by the name it has in the object: the
//! BPF LSM hooks in one table, and the cgroup and tracepoint programs. A
//! unit test holds this file to the programs in both compiled objects.

/// A BPF LSM hook the enforcer attaches a program to.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// The hook's name: its program's name, and `bpf_lsm_<name>` in the kernel.
    pub name: &'static str,
    /// Whether the enforcer can work without it. Optional hooks appeared in
    /// later kernels, where they close paths older kernels send through the
    /// required ones.
    pub required: bool,
    pub group: Group,
}

/// What a hook is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// File operations judged against the policy's trees (and, in
    /// `enforcer bench-empty`, the hooks of its empty programs).
    Files,
    /// Socket classes of every family and unix socket peers (the cgroup
    /// programs see IPv4 and IPv6 only).
    Net,
    /// Exec control, the built-in floor and the agent boundary: every tagged
    /// cgroup, whatever its policy says (`enforcer-ebpf/src/floor.rs`,
    /// `boundary.rs`).
    Floor,
}

impl Hook {
    const fn required(name: &'static str, group: Group) -> Self {
        Self { name, required: true, group }
    }

    const fn optional(name: &'static str, group: Group) -> Self {
        Self { name, required: false, group }
    }
}

/// Every BPF LSM hook, in the order they are loaded.
pub const HOOKS: &[Hook] = &[
    // Files.
    Hook::required("file_open", Group::Files),
    Hook::required("path_mknod", Group::Files),
    Hook::required("path_mkdir", Group::Files),
    Hook::required("path_rmdir", Group::Files),
    Hook::required("path_unlink", Group::Files),
    Hook::required("path_symlink", Group::Files),
    Hook::required("path_rename", Group::Files),
    Hook::required("path_link", Group::Files),
    Hook::required("path_truncate", Group::Files),
    Hook::required("path_chmod", Group::Files),
    Hook::required("path_chown", Group::Files),
    Hook::required("inode_setattr", Group::Files),
    Hook::required("inode_setxattr", Group::Files),
    Hook::required("inode_removexattr", Group::Files),
    Hook::optional("file_truncate", Group::Files),    // Linux 6.2
    Hook::optional("inode_set_acl", Group::Files),    // Linux 6.2
    Hook::optional("inode_remove_acl", Group::Files), // Linux 6.2
    // Net.
    Hook::required("socket_create", Group::Net),
    Hook::required("unix_stream_connect", Group::Net),
    Hook::required("unix_may_send", Group::Net),
    // Floor.
    Hook::required("bprm_check_security", Group::Floor),
    Hook::required("bpf", Group::Floor),
    Hook::required("perf_event_open", Group::Floor),
    Hook::required("kernel_module_request", Group::Floor),
    Hook::required("kernel_load_data", Group::Floor),
    Hook::required("kernel_read_file", Group::Floor),
    Hook::required("sb_mount", Group::Floor),
    Hook::required("sb_umount", Group::Floor),
    Hook::required("sb_pivotroot", Group::Floor),
    Hook::required("move_mount", Group::Floor),
    Hook::optional("userns_create", Group::Floor), // Linux 6.1
    Hook::required("task_fix_setuid", Group::Floor),
    Hook::optional("task_fix_setgid", Group::Floor),
    Hook::required("task_kill", Group::Floor),
    Hook::required("ptrace_access_check", Group::Floor),
    Hook::required("ptrace_traceme", Group::Floor),
    // The agent boundary (`enforcer-ebpf/src/boundary.rs`).
    Hook::required("task_setrlimit", Group::Floor),
    Hook::required("task_setscheduler", Group::Floor),
    Hook::required("task_setnice", Group::Floor),
    Hook::required("task_setioprio", Group::Floor),
    Hook::required("task_movememory", Group::Floor),
    Hook::required("task_alloc", Group::Floor),
    Hook::required("file_set_fowner", Group::Floor),
    Hook::required("file_send_sigiotask", Group::Floor),
    Hook::required("file_ioctl", Group::Floor),
    Hook::optional("file_ioctl_compat", Group::Floor), // Linux 6.8
    Hook::required("socket_setsockopt", Group::Floor),
    Hook::required("socket_sendmsg", Group::Floor),
];

/// The file hooks.
pub fn file_hooks() -> impl Iterator<Item = &'static Hook> {
    HOOKS.iter().filter(|hook| hook.group == Group::Files)
}

/// Hooks the compat build judges in another hook: `path_chown` takes
/// `kuid_t` by value, and trampolines before Linux 6.0 refuse struct
/// arguments; `inode_setattr` judges owner changes there.
pub(super) const COMPAT_JUDGED_ELSEWHERE: &[&str] = &["path_chown"];

/// What a missing optional hook leaves unenforced; `None` where older
/// kernels send the same operations through a required hook (`ftruncate`
/// through `path_truncate`, ACLs through the xattr hooks, 32-bit ioctls
/// through `file_ioctl`).
pub(super) fn lost_without(hook: &str) -> Option<&'static str> {
    match hook {
        "userns_create" => Some(
            "creating user namespaces (the floor's `userns_create` hook is Linux 6.1+; a `[syscalls]` rule on clone \
             and unshare still applies)",
        ),
        "count_inet_sendmsg" => Some("network.upload: upload budgets (the kernel refused the send counters)"),
        TLS_SOCK_OPS_PROGRAM => Some("network.allow `tls`: TLS names (the kernel refused the TLS name judge)"),
        _ => None,
    }
}

/// The tracepoint programs (daemon only): `cgroup_mkdir` tags new cgroups a
/// selector matches, `sched_process_exec` arms tags that wait for an exec.
pub(super) const TRACEPOINT_PROGRAMS: &[&str] = &["cgroup_mkdir", "sched_process_exec"];

/// The programs that count what each IPv4 and IPv6 send carried against
/// the sender's upload budgets (`enforcer-ebpf/src/budget.rs`): fexit on
/// the kernel function each runs after, loaded with the BPF LSM hooks (the
/// `socket_sendmsg` hook judges the budgets).
pub const SEND_COUNTERS: &[(&str, &str)] =
    &[("count_inet_sendmsg", "inet_sendmsg"), ("count_inet6_sendmsg", "inet6_sendmsg")];

/// The cgroup socket programs, attached to each tagged cgroup (and, in the
/// daemon, each selector root).
pub(super) const SOCK_ADDR_PROGRAMS: &[&str] =
    &["connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6"];
pub(super) const SOCK_CREATE_PROGRAM: &str = "sock_create";
/// Inbound connections and datagrams (`enforcer-ebpf/src/inbound.rs`).
pub(super) const INBOUND_PROGRAM: &str = "inbound";
/// The TLS name judge (`enforcer-ebpf/src/tls.rs`), loaded with the BPF LSM
/// hooks: the `sock_ops` program (attached to each tagged cgroup, like the
/// socket programs) puts checked connections in `TLS_HELLO`, whose `sk_msg`
/// program judges their first bytes.
pub const TLS_SOCK_OPS_PROGRAM: &str = "tls_established";
pub(super) const TLS_HELLO_PROGRAM: &str = "tls_hello";

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::{
        COMPAT_JUDGED_ELSEWHERE, HOOKS, INBOUND_PROGRAM, SEND_COUNTERS, SOCK_ADDR_PROGRAMS, SOCK_CREATE_PROGRAM,
        TLS_HELLO_PROGRAM, TLS_SOCK_OPS_PROGRAM, TRACEPOINT_PROGRAMS, file_hooks,
    };
    use crate::bpf::object::{COMPAT_PROGRAMS, PROGRAMS};

    /// The programs an object holds: its functions in program sections
    /// (`lsm/file_open`, `cgroup/connect4`, `sk_msg`, `sockops`, ...; helpers
    /// and global functions live in `.text`).
    fn programs_in(object: &[u8]) -> std::collections::BTreeSet<String> {
        let file = object::File::parse(object).unwrap();
        file.symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
            .filter(|s| {
                let section = s.section_index().and_then(|i| file.section_by_index(i).ok());
                let name = section.and_then(|section| section.name().ok());
                name.is_some_and(|name| name.contains('/') || name == "sk_msg" || name == "sockops")
            })
            .map(|s| s.name().unwrap().to_string())
            .collect()
    }

    /// Every program the loader's tables name, by the name it looks up.
    fn programs_named_by_tables() -> std::collections::BTreeSet<String> {
        let hooks = HOOKS.iter().map(|hook| hook.name.to_string());
        // `enforcer bench-empty` loads empty programs on the file hooks.
        let empty = file_hooks().map(|hook| format!("empty_{}", hook.name));
        let counters = SEND_COUNTERS.iter().map(|(name, _)| name);
        let others = SOCK_ADDR_PROGRAMS
            .iter()
            .chain(&[SOCK_CREATE_PROGRAM, INBOUND_PROGRAM, TLS_SOCK_OPS_PROGRAM, TLS_HELLO_PROGRAM])
            .chain(TRACEPOINT_PROGRAMS)
            .chain(counters);
        hooks.chain(empty).chain(others.map(|name| (*name).to_string())).collect()
    }

    /// A program missing from the tables would never load, and one the tables
    /// name but the object lacks fails every load: both builds hold exactly
    /// the programs the tables name (the compat build less the hooks it
    /// judges elsewhere).
    #[test]
    fn the_loader_tables_name_every_program() {
        let named = programs_named_by_tables();
        let compat_named = named.iter().filter(|name| !COMPAT_JUDGED_ELSEWHERE.contains(&name.as_str())).cloned();
        for (build, object, expected) in
            [("main", PROGRAMS, named.clone()), ("compat", COMPAT_PROGRAMS, compat_named.collect())]
        {
            let found = programs_in(object);
            let unnamed: Vec<_> = found.difference(&named).collect();
            let absent: Vec<_> = expected.difference(&found).collect();
            assert!(
                unnamed.is_empty() && absent.is_empty(),
                "{build} build: programs no loader table names {unnamed:?}; named but not in the object {absent:?}"
            );
        }
    }
}
