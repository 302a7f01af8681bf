//! Named syscall groups for `syscalls.allow`, in the spirit of systemd's
//! `SystemCallFilter=` sets.
//!
//! Versioned: a group's members only change with `GROUPS_VERSION`, and the
//! README lists them. Names are the kernel's (x86-64 and aarch64 tables); a
//! name missing on an architecture is skipped there (e.g. `open` on aarch64).
//! Every syscall libseccomp knows is in exactly one leaf group (a unit test
//! checks), so nothing is left out of the classification by accident.

/// Bumped whenever a group's members change.
pub const GROUPS_VERSION: u32 = 1;

pub struct Group {
    pub name: &'static str,
    pub about: &'static str,
    /// Syscall names and `@group`s.
    pub members: &'static [&'static str],
    /// In `@default-agent`.
    pub default: bool,
}

/// What shells, compilers, package managers, git, Python, Node and Rust
/// toolchains use; none of the groups marked `default: false`.
pub const DEFAULT_AGENT: &str = "@default-agent";

pub const GROUPS: &[Group] = &[
    Group {
        name: "@basic-io",
        about: "reading, writing and duplicating file descriptors",
        default: true,
        members: &[
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
            "lseek", "close", "close_range", "dup", "dup2", "dup3", "pipe", "pipe2", "sendfile", "splice", "tee",
            "vmsplice", "copy_file_range", "ioctl",
        ],
    },
    Group {
        name: "@file-system",
        about: "files and directories (the [files] section judges which ones)",
        default: true,
        members: &[
            "open", "openat", "openat2", "creat", "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs",
            "access", "faccessat", "faccessat2", "getcwd", "chdir", "fchdir", "getdents", "getdents64", "mkdir",
            "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "symlink",
            "symlinkat", "readlink", "readlinkat", "truncate", "ftruncate", "fallocate", "chmod", "fchmod", "fchmodat",
            "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask", "utime", "utimes", "utimensat", "futimesat",
            "fcntl", "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "fadvise64", "readahead",
            "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "setxattr", "lsetxattr",
            "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr",
            "lremovexattr", "fremovexattr", "memfd_create", "mknod", "mknodat", "cachestat",
        ],
    },
    Group {
        name: "@process",
        about: "creating, running and waiting for processes and threads (namespace flags excluded)",
        default: true,
        members: &[
            "clone", "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "getpid",
            "getppid", "gettid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid", "set_tid_address", "prctl",
            "arch_prctl", "personality", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "getpriority",
            "setpriority", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
            "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max",
            "sched_get_priority_min", "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getcpu", "unshare",
            "set_robust_list", "get_robust_list", "rseq", "pidfd_open", "pidfd_send_signal", "membarrier",
            "restart_syscall", "ioprio_get", "ioprio_set", "capget", "capset", "uname", "sysinfo", "getrandom",
            "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
        ],
    },
    Group {
        name: "@credentials",
        about: "reading and changing user and group ids (the floor refuses becoming root)",
        default: true,
        members: &[
            "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "setuid", "setgid",
            "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups",
        ],
    },
    Group {
        name: "@signal",
        about: "signal handling and sending (the floor refuses signals outside the agent's cgroup)",
        default: true,
        members: &[
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo",
            "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "kill", "tkill", "tgkill", "pause", "signalfd",
            "signalfd4", "alarm",
        ],
    },
    Group {
        name: "@memory",
        about: "mapping and managing the process's own memory",
        default: true,
        members: &[
            "brk", "mmap", "munmap", "mremap", "mprotect", "msync", "mincore", "madvise", "mlock", "mlock2", "munlock",
            "mlockall", "munlockall", "remap_file_pages", "mbind", "get_mempolicy", "set_mempolicy",
            "set_mempolicy_home_node", "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack",
        ],
    },
    Group {
        name: "@ipc",
        about: "System V and POSIX message queues, semaphores and shared memory",
        default: true,
        members: &[
            "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
            "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
            "mq_getsetattr",
        ],
    },
    Group {
        name: "@network-io",
        about: "sockets (the [network] section judges destinations and socket classes)",
        default: true,
        members: &[
            "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
            "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt",
        ],
    },
    Group {
        name: "@io-event",
        about: "waiting for file descriptors and events",
        default: true,
        members: &[
            "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
            "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create", "timerfd_settime",
            "timerfd_gettime",
        ],
    },
    Group {
        name: "@time",
        about: "reading clocks, sleeping and timers (not setting the clock)",
        default: true,
        members: &[
            "time", "gettimeofday", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "getitimer",
            "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
        ],
    },
    Group {
        name: "@sync",
        about: "futexes",
        default: true,
        members: &["futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue"],
    },
    Group {
        name: "@aio",
        about: "POSIX asynchronous I/O (not io_uring)",
        default: true,
        members: &["io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"],
    },
    Group {
        name: "@debug",
        about: "inspecting and changing other processes",
        default: false,
        members: &[
            "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
            "process_mrelease", "perf_event_open", "lookup_dcookie",
        ],
    },
    Group {
        name: "@namespaces",
        about: "entering and creating namespaces (also lifts the namespace-flag check on clone and unshare)",
        default: false,
        members: &["setns", "clone3"],
    },
    Group {
        name: "@mount",
        about: "mounting, changing the root",
        default: false,
        members: &[
            "mount", "umount2", "pivot_root", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "open_tree",
            "mount_setattr", "chroot",
        ],
    },
    Group {
        name: "@module",
        about: "loading and unloading kernel modules",
        default: false,
        members: &["init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms"],
    },
    Group {
        name: "@reboot",
        about: "rebooting and loading a new kernel",
        default: false,
        members: &["reboot", "kexec_load", "kexec_file_load"],
    },
    Group {
        name: "@swap",
        about: "enabling swap",
        default: false,
        members: &["swapon", "swapoff"],
    },
    Group {
        name: "@keyring",
        about: "the kernel keyring",
        default: false,
        members: &["keyctl", "add_key", "request_key"],
    },
    Group {
        name: "@io-uring",
        about: "io_uring (its operations bypass syscall filtering)",
        default: false,
        members: &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    },
    Group {
        name: "@privileged",
        about: "BPF, the system clock, host name, raw I/O ports, accounting, quotas, file handles and other \
                administration",
        default: false,
        members: &[
            "bpf", "userfaultfd", "iopl", "ioperm", "modify_ldt", "acct", "syslog", "settimeofday", "clock_settime",
            "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "quotactl", "quotactl_fd", "vhangup",
            "open_by_handle_at", "name_to_handle_at", "fanotify_init", "fanotify_mark", "migrate_pages",
            "move_pages", "memfd_secret",
        ],
    },
    Group {
        name: "@obsolete",
        about: "syscalls the kernel no longer implements or that nothing current uses",
        default: false,
        members: &[
            "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "getpmsg", "putpmsg", "afs_syscall", "tuxcall",
            "security", "vserver", "set_thread_area", "get_thread_area", "epoll_ctl_old", "epoll_wait_old",
        ],
    },
];

/// The group called `name` (with its `@`).
#[must_use]
pub fn group(name: &str) -> Option<&'static Group> {
    GROUPS.iter().find(|g| g.name == name)
}

/// Every syscall name `@default-agent` holds.
pub fn default_agent() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().filter(|g| g.default).flat_map(|g| g.members.iter().copied())
}
