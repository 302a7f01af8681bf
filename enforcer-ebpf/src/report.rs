//! Denial (and audit) events into the ring buffer; what does not fit is
//! counted, never dropped silently.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_kernel_str},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use enforcer_common::{
    events::{
        Action, EVENT_EXE_TRUNCATED, EVENT_HEADER_BYTES, EVENT_PATH_FROM_FS_ROOT, EVENT_PATH_TRUNCATED, EVENTS_BYTES, EventHeader, Kind,
        MAX_PATH_DEPTH, NAME_BYTES, Op, PATH_BYTES, Reason,
    },
    policy::TagInfo,
};

use crate::kernel::{Direct, Probe, Read, mount_of, off, vfsmount_of};

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
    /// Bytes of `path` written so far. It lives in map memory on purpose:
    /// the verifier does not track it, so the writer's `bpf_loop` step
    /// converges at once instead of once per possible length.
    cursor: u32,
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
    unsafe { (*buf).cursor = 0 };
    let path_truncated = write_path(buf, denial.dentry, denial.vfsmount);
    let path_len = unsafe { (*buf).cursor };
    let exe_truncated = write_exe(buf);
    let buf = unsafe { &mut *buf };
    let total = buf.cursor;
    let pid_tgid = bpf_get_current_pid_tgid();
    buf.header = EventHeader {
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        policy_id: tag.policy_id,
        errno,
        path_len: path_len as u16,
        exe_len: total.wrapping_sub(path_len) as u16,
        kind: denial.kind as u8,
        op: denial.op as u8,
        action: action as u8,
        reason: denial.reason as u8,
        flags: if path_truncated { EVENT_PATH_TRUNCATED } else { 0 }
            | if exe_truncated { EVENT_EXE_TRUNCATED } else { 0 }
            | if denial.vfsmount.is_null() { EVENT_PATH_FROM_FS_ROOT } else { 0 },
        _pad: [0; 7],
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let len = EVENT_HEADER_BYTES + (total as usize).min(PATH_BYTES + NAME_BYTES);
    let bytes = unsafe { core::slice::from_raw_parts((buf as *const EventBuf).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost();
    }
}

/// State of the path writer, shared with its `bpf_loop` step (the length
/// written so far is `EventBuf::cursor`).
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
    let len = buf.cursor as usize;
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
    buf.cursor = (len + (n as usize & (NAME_BYTES * 2 - 1))) as u32;
    w.dentry = parent;
    0
}

/// Appends the names from `dentry` up to the root to `buf.path` at
/// `buf.cursor`, leaf first, each ending in NUL. Returns whether the path
/// was cut short.
#[inline(always)]
fn write_path(buf: *mut EventBuf, dentry: *const u8, vfsmount: *const u8) -> bool {
    let (mount, mnt_root) = if vfsmount.is_null() {
        (core::ptr::null(), core::ptr::null())
    } else {
        (mount_of(vfsmount), unsafe { Probe::ptr(vfsmount, off!(vfsmount_mnt_root)) })
    };
    let mut writer = PathWriter { buf, dentry, mount, mnt_root, done: 0 };
    unsafe { bpf_loop(2 * MAX_PATH_DEPTH, write_step as *mut c_void, (&raw mut writer).cast(), 0) };
    writer.done != 1
}

/// Appends the current task's executable path (`mm->exe_file`). Returns
/// whether it was cut short; a task without one (a kernel thread) adds
/// nothing.
#[inline(always)]
fn write_exe(buf: *mut EventBuf) -> bool {
    let task = unsafe { bpf_get_current_task_btf() }.cast::<u8>().cast_const();
    let (dentry, vfsmount) = unsafe {
        let mm = Direct::ptr(task, off!(task_struct_mm));
        if mm.is_null() {
            return false;
        }
        let file = Direct::ptr(mm, off!(mm_struct_exe_file));
        if file.is_null() {
            return false;
        }
        let path = file.wrapping_add(off!(file_f_path));
        (Direct::ptr(path, off!(path_dentry)), Direct::ptr(path, off!(path_mnt)))
    };
    write_path(buf, dentry, vfsmount)
}
