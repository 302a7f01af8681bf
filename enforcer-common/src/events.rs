//! Denial events, as written into the ring buffer by the programs.
//!
//! An event is an [`EventHeader`] followed by `path_len` bytes of the
//! file's path and `exe_len` bytes of the acting program's path, each as
//! components leaf first, each terminated by NUL (the programs walk dentry
//! chains upwards; userspace reverses and joins). A network event (kinds
//! from `Connect` on) is an [`EventHeader`] followed by one [`NetDetail`].

pub const EVENTS_MAP: &str = "EVENTS";
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 4 << 20;
/// Per-CPU count of events the ring buffer could not take.
pub const LOST_MAP: &str = "LOST";

/// Deepest path the programs walk; a deeper one is denied (fail closed).
pub const MAX_PATH_DEPTH: u32 = 64;
/// Bytes of path components an event can carry (file path and exe together).
pub const PATH_BYTES: usize = 4096;
/// Longest single component read (`NAME_MAX` + NUL).
pub const NAME_BYTES: usize = 256;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    FileWrite = 1,
    FileRead = 2,
    /// `connect` to an IP destination.
    Connect = 3,
    /// UDP `sendto`/`sendmsg` with a destination address.
    Sendmsg = 4,
    /// Creating a socket of a class the policy does not allow.
    Socket = 5,
    /// Connecting or sending to a unix socket.
    UnixConnect = 6,
    /// Executing a program (the path is the program's).
    Exec = 7,
    /// An operation the built-in floor refuses (`Op` says which); a
    /// [`FloorDetail`] follows the header.
    Floor = 8,
    /// A connection (TCP) or datagram (UDP) from outside the agent to one of
    /// its sockets; the [`NetDetail`] holds the source address and the local
    /// port.
    Inbound = 9,
    /// Opening a file below a `files.sensitive` tree (to read or to write
    /// it): allowed, and from then on the agent's egress is judged by
    /// `network.after_sensitive_read`.
    SensitiveRead = 10,
    /// A [`Self::SensitiveRead`] that locked the agent's egress (the first
    /// one): userspace writes it as a `sensitive_read` line and an
    /// `egress_locked` line.
    EgressLocked = 11,
    /// A send past an upload budget (`network.upload`), refused with
    /// `EDQUOT`, or a connect or datagram to one destination more than
    /// `network.new_destinations` allows, refused with `EPERM`; a
    /// [`BudgetDetail`] follows the [`NetDetail`].
    BudgetExceeded = 12,
    /// The first bytes of a connection to an address granted by name did
    /// not name one of the names granted it (`network.allow` `tls`): refused
    /// with `EACCES`; a `TlsDetail` (the name sent) follows the
    /// [`NetDetail`].
    SniMismatch = 13,
}

impl Kind {
    /// Whether the record carries a [`NetDetail`] rather than paths.
    #[must_use]
    pub const fn is_net(self) -> bool {
        matches!(
            self,
            Self::Connect
                | Self::Sendmsg
                | Self::Socket
                | Self::UnixConnect
                | Self::Inbound
                | Self::BudgetExceeded
                | Self::SniMismatch
        )
    }
}

/// What a `budget_exceeded` event says about the budget, after its
/// [`NetDetail`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BudgetDetail {
    /// Bytes sent under the budget in its current window, before this send
    /// (destinations reached, for the budget of new destinations).
    pub used: u64,
    /// The budget: bytes (destinations) per window.
    pub limit: u64,
    pub window_ns: u64,
    /// Bytes the refused send carried (1: one destination).
    pub size: u64,
    /// The budget's index in the policy's `network.upload` (0: `*`;
    /// `BUDGET_NEW_DESTINATIONS`: the budget of new destinations).
    pub index: u16,
    /// Zero (two fields: an array would be filled by a `memset` call).
    pub pad: u16,
    pub pad2: u32,
}
pub const BUDGET_DETAIL_BYTES: usize = 40;
const _: () = assert!(core::mem::size_of::<BudgetDetail>() == BUDGET_DETAIL_BYTES);

/// What a floor event is about, after its header (in the place of a path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FloorDetail {
    /// The other process (ptrace, signals, limits, scheduling), else 0.
    pub target_pid: u32,
    /// The signal, the `bpf` command, the ptrace mode, the resource, the
    /// ioctl, or 0 (see [`Op`]).
    pub value: u32,
}
pub const FLOOR_DETAIL_BYTES: usize = 8;
const _: () = assert!(core::mem::size_of::<FloorDetail>() == FLOOR_DETAIL_BYTES);

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Open = 1,
    Create = 2,
    Mknod = 3,
    Mkdir = 4,
    Rmdir = 5,
    Unlink = 6,
    Rename = 7,
    Link = 8,
    Symlink = 9,
    Truncate = 10,
    Chmod = 11,
    Chown = 12,
    Setattr = 13,
    Setxattr = 14,
    Removexattr = 15,
    SetAcl = 16,
    RemoveAcl = 17,
    Exec = 18,
    // The floor's operations (kind `Floor`).
    Bpf = 19,
    PerfEvent = 20,
    Ptrace = 21,
    Signal = 22,
    KernelModule = 23,
    Mount = 24,
    Umount = 25,
    PivotRoot = 26,
    MoveMount = 27,
    UserNamespace = 28,
    Setuid = 29,
    Setgid = 30,
    // Acting on a process outside the agent (kind `Floor`, `target_pid` set).
    /// `setrlimit`/`prlimit64` on another process (`value`: the resource).
    Rlimit = 31,
    /// `sched_setscheduler`, `sched_setattr`, `sched_setaffinity`.
    SetScheduler = 32,
    /// `setpriority` (`value`: the nice value, as `u32`).
    SetNice = 33,
    /// `ioprio_set` (`value`: the I/O priority).
    SetIoprio = 34,
    /// `migrate_pages`, `move_pages`.
    MoveMemory = 35,
    /// A SIGIO-style signal (`F_SETOWN` + `F_SETSIG` + `O_ASYNC`) an agent
    /// aimed at a process outside it (`value`: the signal).
    Sigio = 36,
    /// `clone3(CLONE_INTO_CGROUP)`: starting a child in another cgroup.
    CloneIntoCgroup = 37,
    /// `TIOCSTI`/`TIOCLINUX`: typing into a terminal (`value`: the ioctl).
    TtyInject = 38,
    /// `FS_IOC_SETFLAGS`/`FS_IOC_FSSETXATTR` (`chattr`): a file write.
    Setflags = 39,
    /// IP options (`IP_OPTIONS`, `IP_RETOPTS`) or an IPv6 routing header
    /// (`IPV6_RTHDR`): the packet would go to a first hop the connect hook
    /// never saw (`value`: the option).
    SourceRoute = 40,
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Deny = 1,
    Audit = 2,
    /// Allowed, and reported: a sensitive read.
    Allow = 3,
}

/// Why the operation was refused.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not below any `files.write` tree.
    OutsideWriteTrees = 1,
    /// Below a `files.read_deny` tree.
    ReadDenied = 2,
    /// Deeper than [`MAX_PATH_DEPTH`]: cannot be judged, so denied.
    TooDeep = 3,
    /// A kernel structure could not be read: cannot be judged, so denied.
    Unreadable = 4,
    /// The destination (address and port, or unix socket name) is not allowed.
    NotAllowed = 5,
    /// The socket's class (family, type, protocol) is not allowed.
    SocketClass = 6,
    /// A socket made in an agent cgroup was used by a task outside it: no
    /// policy to judge by, so denied.
    Untagged = 7,
    /// Not below any `exec.allow` tree.
    OutsideExecTrees = 8,
    /// The program has no name in any directory (memfd, deleted, `O_TMPFILE`).
    Fileless = 9,
    /// `syscalls.require_seccomp` and the task carries no seccomp filter.
    NoSeccomp = 10,
    /// The built-in floor refuses it whatever the policy says.
    Floor = 11,
    /// A file or directory of the enforcer daemon itself (its binary,
    /// configuration, policies, socket, state, pins).
    Protected = 12,
    /// The path leads to no mounted tree (a dentry disconnected from its
    /// filesystem, e.g. by `open_by_handle_at`, or a detached mount from
    /// `open_tree(OPEN_TREE_CLONE)` or `fsmount`): where it is cannot be
    /// known, so what a rule would have to prove is denied.
    Disconnected = 13,
    /// Every per-CPU slot for a walk's state above its mount was held by
    /// walks preempted on the same CPU: cannot be judged, so denied. Needs
    /// that many walks preempted mid-walk on one CPU at once; the
    /// operation can be retried.
    Interrupted = 14,
    /// Not a refusal: the file is below a `files.sensitive` tree (the reason
    /// of `sensitive_read` and `egress_locked` events).
    Sensitive = 15,
    /// A process of the agent read a sensitive file, and the destination is
    /// not in `network.after_sensitive_read`.
    EgressLocked = 16,
    /// A sensitive file could not be read: the record that locks the
    /// agent's egress could not be made (every slot of the lock map held),
    /// so the read is refused rather than let through unrecorded.
    LockTableFull = 17,
    /// A rename or link would give a file below a `files.sensitive` tree a
    /// name outside every one, where reading it would lock nothing.
    SensitiveMoved = 18,
    /// The agent sent its upload budget's bytes for the window already
    /// (`network.upload`).
    BudgetExceeded = 19,
    /// A send could not be counted against its budget: every slot of the
    /// usage map was held, so it is refused rather than sent uncounted.
    BudgetTableFull = 20,
    /// A ClientHello named a name the resolver did not grant the address
    /// (another site behind the same address).
    SniMismatch = 21,
    /// The connection did not open with a ClientHello that names a name,
    /// and its host entry says `tls = "require"`.
    TlsNoName = 22,
    /// The first bytes start a TLS record that cannot be read: a
    /// ClientHello over more than one record, or malformed.
    TlsUnparsable = 23,
    /// Bytes sent where they cannot be judged: before the connection was
    /// established (TCP Fast Open), or on a connection the judge could not
    /// take (no memory for its state, its table full).
    TlsUncheckable = 24,
    /// UDP to an address granted by a name whose TLS name is checked: a
    /// QUIC handshake there cannot be judged.
    QuicRefused = 25,
    /// The agent reached as many distinct destinations in the window as
    /// `network.new_destinations` allows, and this one is not among them.
    NewDestinationsExceeded = 26,
}

/// What a network event is about, after its header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetDetail {
    /// The destination as IPv6 (IPv4 as `::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// The address family the caller used (`AF_INET6` for a v4-mapped one).
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    /// Bytes of `unix_path` used (unix events).
    pub unix_len: u16,
    pub pad: [u8; 6],
    /// The unix socket's bound name (an abstract one starts with NUL).
    pub unix_path: [u8; 108],
}
pub const NET_DETAIL_BYTES: usize = 140;
const _: () = assert!(core::mem::size_of::<NetDetail>() == NET_DETAIL_BYTES);

/// `EventHeader::flags`: the path did not fit and was cut at the root end.
pub const EVENT_PATH_TRUNCATED: u8 = 1 << 0;
/// `EventHeader::flags`: the hook gave no mount, so the path starts at the
/// root of the file's filesystem rather than at `/`.
pub const EVENT_PATH_FROM_FS_ROOT: u8 = 1 << 1;
/// `EventHeader::flags`: the program's path did not fit.
pub const EVENT_EXE_TRUNCATED: u8 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EventHeader {
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub policy_id: crate::policy::PolicyId,
    /// Zero.
    pub reserved: u16,
    pub errno: u32,
    pub path_len: u16,
    pub exe_len: u16,
    pub kind: u8,
    pub op: u8,
    pub action: u8,
    pub reason: u8,
    pub flags: u8,
    pub pad: [u8; 7],
    pub comm: [u8; 16],
}
pub const EVENT_HEADER_BYTES: usize = 64;
const _: () = assert!(core::mem::size_of::<EventHeader>() == EVENT_HEADER_BYTES);

impl Kind {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::FileWrite,
            2 => Self::FileRead,
            3 => Self::Connect,
            4 => Self::Sendmsg,
            5 => Self::Socket,
            6 => Self::UnixConnect,
            7 => Self::Exec,
            8 => Self::Floor,
            9 => Self::Inbound,
            10 => Self::SensitiveRead,
            11 => Self::EgressLocked,
            12 => Self::BudgetExceeded,
            13 => Self::SniMismatch,
            _ => return None,
        })
    }

    /// Its name in the event lines (a contract: never renamed).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::FileWrite => "file_write",
            Kind::FileRead => "file_read",
            Kind::Connect => "connect",
            Kind::Sendmsg => "sendmsg",
            Kind::Socket => "socket",
            Kind::UnixConnect => "unix_connect",
            Kind::Exec => "exec",
            Kind::Floor => "floor",
            Kind::Inbound => "inbound",
            Kind::SensitiveRead => "sensitive_read",
            Kind::EgressLocked => "egress_locked",
            Kind::BudgetExceeded => "budget_exceeded",
            Kind::SniMismatch => "sni_mismatch",
        }
    }
}

impl Action {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Deny,
            2 => Self::Audit,
            3 => Self::Allow,
            _ => return None,
        })
    }

    /// Its name in the event lines (a contract: never renamed).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::Allow => "allow",
        }
    }
}

impl Reason {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::OutsideWriteTrees,
            2 => Self::ReadDenied,
            3 => Self::TooDeep,
            4 => Self::Unreadable,
            5 => Self::NotAllowed,
            6 => Self::SocketClass,
            7 => Self::Untagged,
            8 => Self::OutsideExecTrees,
            9 => Self::Fileless,
            10 => Self::NoSeccomp,
            11 => Self::Floor,
            12 => Self::Protected,
            13 => Self::Disconnected,
            14 => Self::Interrupted,
            15 => Self::Sensitive,
            16 => Self::EgressLocked,
            17 => Self::LockTableFull,
            18 => Self::SensitiveMoved,
            19 => Self::BudgetExceeded,
            20 => Self::BudgetTableFull,
            21 => Self::SniMismatch,
            22 => Self::TlsNoName,
            23 => Self::TlsUnparsable,
            24 => Self::TlsUncheckable,
            25 => Self::QuicRefused,
            26 => Self::NewDestinationsExceeded,
            _ => return None,
        })
    }

    /// Its name in the event lines (a contract: never renamed).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::OutsideWriteTrees => "outside_write_trees",
            Reason::ReadDenied => "read_deny",
            Reason::TooDeep => "path_too_deep",
            Reason::Unreadable => "unreadable",
            Reason::NotAllowed => "not_allowed",
            Reason::SocketClass => "socket_class_not_allowed",
            Reason::Untagged => "socket_used_outside_agent",
            Reason::OutsideExecTrees => "outside_exec_trees",
            Reason::Fileless => "fileless",
            Reason::NoSeccomp => "no_seccomp",
            Reason::Floor => "floor",
            Reason::Protected => "enforcer_protected",
            Reason::Disconnected => "path_disconnected",
            Reason::Interrupted => "walk_interrupted",
            Reason::Sensitive => "sensitive",
            Reason::EgressLocked => "egress_locked",
            Reason::LockTableFull => "lock_table_full",
            Reason::SensitiveMoved => "sensitive_moved_out",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::BudgetTableFull => "budget_table_full",
            Reason::SniMismatch => "sni_mismatch",
            Reason::TlsNoName => "tls_no_name",
            Reason::TlsUnparsable => "tls_unparsable",
            Reason::TlsUncheckable => "tls_uncheckable",
            Reason::QuicRefused => "quic_refused",
            Reason::NewDestinationsExceeded => "new_destinations_exceeded",
        }
    }
}

impl Op {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Open,
            2 => Self::Create,
            3 => Self::Mknod,
            4 => Self::Mkdir,
            5 => Self::Rmdir,
            6 => Self::Unlink,
            7 => Self::Rename,
            8 => Self::Link,
            9 => Self::Symlink,
            10 => Self::Truncate,
            11 => Self::Chmod,
            12 => Self::Chown,
            13 => Self::Setattr,
            14 => Self::Setxattr,
            15 => Self::Removexattr,
            16 => Self::SetAcl,
            17 => Self::RemoveAcl,
            18 => Self::Exec,
            19 => Self::Bpf,
            20 => Self::PerfEvent,
            21 => Self::Ptrace,
            22 => Self::Signal,
            23 => Self::KernelModule,
            24 => Self::Mount,
            25 => Self::Umount,
            26 => Self::PivotRoot,
            27 => Self::MoveMount,
            28 => Self::UserNamespace,
            29 => Self::Setuid,
            30 => Self::Setgid,
            31 => Self::Rlimit,
            32 => Self::SetScheduler,
            33 => Self::SetNice,
            34 => Self::SetIoprio,
            35 => Self::MoveMemory,
            36 => Self::Sigio,
            37 => Self::CloneIntoCgroup,
            38 => Self::TtyInject,
            39 => Self::Setflags,
            40 => Self::SourceRoute,
            _ => return None,
        })
    }

    /// Its name in the event lines (a contract: never renamed).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Create => "create",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Symlink => "symlink",
            Op::Truncate => "truncate",
            Op::Chmod => "chmod",
            Op::Chown => "chown",
            Op::Setattr => "setattr",
            Op::Setxattr => "setxattr",
            Op::Removexattr => "removexattr",
            Op::SetAcl => "set_acl",
            Op::RemoveAcl => "remove_acl",
            Op::Exec => "exec",
            Op::Bpf => "bpf",
            Op::PerfEvent => "perf_event_open",
            Op::Ptrace => "ptrace",
            Op::Signal => "signal",
            Op::KernelModule => "kernel_module",
            Op::Mount => "mount",
            Op::Umount => "umount",
            Op::PivotRoot => "pivot_root",
            Op::MoveMount => "move_mount",
            Op::UserNamespace => "user_namespace",
            Op::Setuid => "setuid",
            Op::Setgid => "setgid",
            Op::Rlimit => "rlimit",
            Op::SetScheduler => "setscheduler",
            Op::SetNice => "setnice",
            Op::SetIoprio => "setioprio",
            Op::MoveMemory => "move_memory",
            Op::Sigio => "sigio",
            Op::CloneIntoCgroup => "clone_into_cgroup",
            Op::TtyInject => "tty_inject",
            Op::Setflags => "setflags",
            Op::SourceRoute => "source_route",
        }
    }
}
