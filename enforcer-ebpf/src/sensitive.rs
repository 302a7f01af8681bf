//! Secret reads lock egress down: when a process of an agent opens a file
//! below a `files.sensitive` tree (to read it, or to write it: `O_RDWR`
//! reads too), its agent (the tagged
//! cgroup its tag was found at, every process in it and below, existing and
//! future) is recorded in `LOCKED`, in the same hook, before the open
//! returns. From then on the network programs judge the agent's
//! destinations by the policy's `after_sensitive_read` entries
//! (`net::locked_allows`): the next `connect` or `sendmsg` of any of its
//! processes already sees the lock. The map is pinned, so the lock outlives
//! the daemon; the daemon removes the entries of cgroups that are gone.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
    macros::map,
    maps::HashMap,
};
use enforcer_common::{
    events::{Kind, Reason},
    policy::{EgressLock, LOCKED_MAX, TAG_SENSITIVE},
};

use crate::{
    kernel::{Direct, InodeIno, Read, SuperBlockDev},
    report::Denial,
    tag::Tagged,
    walk::Start,
};

#[map]
static LOCKED: HashMap<u64, EgressLock> = HashMap::with_max_entries(LOCKED_MAX, 0);

/// Set (never cleared) once some agent was locked: until then, a send
/// whose task is in no agent ends at one load (`boundary::socket_sendmsg`).
/// In a section of its own: userspace writes `.bss` (the tag filter) whole.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.locked")]
static mut ANY_LOCKED: u64 = 0;

const EEXIST: i32 = 17;

/// Locks the egress of `tag`'s agent for an open of the file at `start`
/// (the open `read` describes, judged below a `sensitive` tree): the event
/// to report, `egress_locked` for the open that locked it, `sensitive_read`
/// for those after. Where the lock cannot be recorded (the map is full),
/// the open is refused: a secret read the lock does not follow would be
/// the escape.
#[inline(always)]
pub fn read(tag: &Tagged, start: &Start, read: Denial) -> Denial {
    let lock = unsafe {
        EgressLock {
            boot_ns: bpf_ktime_get_boot_ns(),
            ino: Direct::get::<InodeIno>(start.inode),
            dev: Direct::get::<SuperBlockDev>(start.sb) as u32,
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        }
    };
    let (kind, reason) = match LOCKED.insert(&tag.agent, &lock, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            unsafe { (&raw mut ANY_LOCKED).write_volatile(1) };
            (Kind::EgressLocked, Reason::Sensitive)
        }
        Err(e) if e == -EEXIST => (Kind::SensitiveRead, Reason::Sensitive),
        Err(_) => (Kind::FileRead, Reason::LockTableFull),
    };
    Denial { kind, reason, ..read }
}

/// Whether some agent was locked since the programs were loaded.
#[inline(always)]
pub fn any_locked() -> bool {
    unsafe { (&raw const ANY_LOCKED).read_volatile() != 0 }
}

/// Whether `tag`'s agent read a sensitive file: only looked up for a
/// policy that has `sensitive` trees.
#[inline(always)]
pub fn locked(tag: &Tagged) -> bool {
    // SAFETY: only whether the entry exists is read.
    tag.info.flags & TAG_SENSITIVE != 0 && unsafe { LOCKED.get(&tag.agent) }.is_some()
}
