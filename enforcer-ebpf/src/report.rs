//! Denial (and audit) events into the ring buffer; what does not fit is
//! counted, never dropped silently.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel_str},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use enforcer_common::{
    events::{
        Action, EVENT_HEADER_BYTES, EVENT_PATH_FROM_FS_ROOT, EVENT_PATH_TRUNCATED, EVENTS_BYTES, EventHeader, Kind,
        MAX_PATH_DEPTH, NAME_BYTES, Op, PATH_BYTES, Reason,
    },
    policy::TagInfo,
};

use crate::kernel::{Probe, Read, mount_of, off, vfsmount_of};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// An event is assembled here (too big for the 512-byte BPF stack), then
/// copied into the ring buffer at its real length.
#[repr(C)]
pub struct EventBuf {
    header: EventHeader,
    /// Room for one more name past `PATH_BYTES`, so a read that starts below
    /// `PATH_BYTES` always fits.
    path: [u8; PATH_BYTES + NAME_BYTES],
}

#[map]
static SCRATCH: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        unsafe { *lost += 1 };
    }
}

pub struct Denial {
    pub kind: Kind,
    pub op: Op,
    pub reason: Reason,
    pub dentry: *const u8,
    /// Null when the hook gave no mount (the path then starts at the root of
    /// the dentry's filesystem).
    pub vfsmount: *const u8,
}

/// Emits one event for `denial` under `tag`.
#[inline(never)]
pub fn report(tag: &TagInfo, denial: &Denial, action: Action, errno: u32) {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count_lost();
        return;
    };
    let truncated = write_path(buf, denial.dentry, denial.vfsmount);
    let buf = unsafe { &mut *buf };
    let path_len = buf.header.path_len;
    let pid_tgid = bpf_get_current_pid_tgid();
    buf.header = EventHeader {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        policy_id: tag.policy_id,
        errno,
        path_len,
        kind: denial.kind as u8,
        op: denial.op as u8,
        action: action as u8,
        reason: denial.reason as u8,
        flags: if truncated { EVENT_PATH_TRUNCATED } else { 0 }
            | if denial.vfsmount.is_null() { EVENT_PATH_FROM_FS_ROOT } else { 0 },
        _pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let len = EVENT_HEADER_BYTES + (path_len as usize).min(PATH_BYTES + NAME_BYTES);
    let bytes = unsafe { core::slice::from_raw_parts((buf as *const EventBuf).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost();
    }
}

/// State of the path writer, shared with its `bpf_loop` step. The length
/// written so far lives in the map value (`header.path_len`), not here: the
/// verifier does not track map memory, so the step converges at once instead
/// of once per possible length.
#[repr(C)]
struct PathWriter {
    buf: *mut EventBuf,
    dentry: *const u8,
    mount: *const u8,
    mnt_root: *const u8,
    /// 0 while writing, 1 when complete, 2 when cut short.
    done: u32,
}

/// Writes one name and moves up, crossing mounts like `d_path`.
extern "C" fn write_step(_level: u32, ctx: *mut c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<PathWriter>() };
    let d = w.dentry;
    if !w.mount.is_null() && d == w.mnt_root {
        let parent_mount = unsafe { Probe::ptr(w.mount, off!(mount_mnt_parent)) };
        if parent_mount.is_null() || parent_mount == w.mount {
            w.done = if parent_mount.is_null() { 2 } else { 1 };
            return 1;
        }
        w.dentry = unsafe { Probe::ptr(w.mount, off!(mount_mnt_mountpoint)) };
        w.mount = parent_mount;
        w.mnt_root = unsafe { Probe::ptr(vfsmount_of(parent_mount), off!(vfsmount_mnt_root)) };
        return 0;
    }
    let parent = unsafe { Probe::ptr(d, off!(dentry_d_parent)) };
    if parent.is_null() || parent == d {
        w.done = if parent.is_null() { 2 } else { 1 };
        return 1;
    }
    let buf = unsafe { &mut *w.buf };
    let len = buf.header.path_len as usize;
    if len >= PATH_BYTES {
        w.done = 2;
        return 1;
    }
    let name = unsafe { Probe::ptr(d, off!(dentry_d_name_ptr)) };
    let dst = buf.path.as_mut_ptr().wrapping_add(len & (PATH_BYTES - 1));
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), NAME_BYTES as u32, name.cast()) };
    if n <= 0 {
        w.done = 2;
        return 1;
    }
    buf.header.path_len = (len + (n as usize & (NAME_BYTES * 2 - 1))) as u32;
    w.dentry = parent;
    0
}

/// Writes the names from `dentry` up to the root into `buf.path`, leaf
/// first, each ending in NUL, and their length into `buf.header.path_len`.
/// Returns whether the path was cut short.
#[inline(always)]
fn write_path(buf: *mut EventBuf, dentry: *const u8, vfsmount: *const u8) -> bool {
    let (mount, mnt_root) = if vfsmount.is_null() {
        (core::ptr::null(), core::ptr::null())
    } else {
        (mount_of(vfsmount), unsafe { Probe::ptr(vfsmount, off!(vfsmount_mnt_root)) })
    };
    unsafe { (*buf).header.path_len = 0 };
    let mut writer = PathWriter { buf, dentry, mount, mnt_root, done: 0 };
    unsafe { bpf_loop(2 * MAX_PATH_DEPTH, write_step as *mut c_void, (&raw mut writer).cast(), 0) };
    writer.done != 1
}
