//! Denial (and audit) events into the ring buffer; what does not fit is
//! counted, never dropped silently.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        generated::{self as helper, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use enforcer_common::{
    events::{
        Action, BUDGET_DETAIL_BYTES, BudgetDetail, EVENT_EXE_TRUNCATED, EVENT_HEADER_BYTES, EVENT_PATH_FROM_FS_ROOT,
        EVENT_PATH_TRUNCATED, EVENTS_BYTES, EventHeader, FLOOR_DETAIL_BYTES, FloorDetail, Kind, MAX_PATH_DEPTH,
        NAME_BYTES, NET_DETAIL_BYTES, NetDetail, Op, PATH_BYTES, Reason,
    },
    net::{IPPROTO_TCP, SOCK_STREAM},
    policy::{PolicyId, TagInfo},
    tls::{TLS_DETAIL_BYTES, TLS_NAME_BYTES, TlsDetail, TlsNameKey, TlsSocket},
};

const EACCES: u32 = 13;

use crate::kernel::{
    DentryName, DentryParent, MmExeFile, MountMountpoint, MountParent, Probe, Read, Task, TaskMm, VfsmountRoot,
    current_task, file_path, mount_of, vfsmount_of,
};
use crate::repeat::{COMPAT_PATH_DEPTH, repeat_global};

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
    /// Bytes of `path` written so far.
    cursor: u32,
    writer: PathWriter,
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
    let (exe_dentry, exe_vfsmount) = current_exe();
    let buf = unsafe { &mut *buf };
    buf.cursor = 0;
    buf.writer = PathWriter {
        dentry: denial.dentry,
        mount: core::ptr::null(),
        mnt_root: core::ptr::null(),
        exe_dentry,
        exe_vfsmount,
        phase: 0,
        truncated: 0,
        path_len: 0,
    };
    buf.writer.enter(denial.vfsmount);
    let mut ctx = StepCtx { buf };
    repeat_global::<{ 4 * COMPAT_PATH_DEPTH }>(
        4 * MAX_PATH_DEPTH,
        write_step,
        || enforcer_write_step(),
        (&raw mut ctx).cast(),
    );
    let total = buf.cursor;
    let writer = &buf.writer;
    // A loop that ran out mid-path leaves that path cut short.
    let mut truncated = writer.truncated;
    match writer.phase {
        0 => truncated |= EVENT_PATH_TRUNCATED,
        1 => truncated |= EVENT_EXE_TRUNCATED,
        _ => {}
    }
    let path_len = if writer.phase == 0 { total } else { writer.path_len };
    // Field by field: a zeroed run in a struct literal (the padding, the
    // name before the helper fills it) compiles to a `memset` call, a byte
    // loop in BPF.
    let header = &mut buf.header;
    fill_header(header, tag.policy_id(), errno);
    header.path_len = path_len as u16;
    header.exe_len = total.wrapping_sub(path_len) as u16;
    header.kind = denial.kind as u8;
    header.op = denial.op as u8;
    header.action = action as u8;
    header.reason = denial.reason as u8;
    let flags = truncated | if denial.vfsmount.is_null() { EVENT_PATH_FROM_FS_ROOT } else { 0 };
    // `flags` and the padding after it, in one aligned store.
    const {
        assert!(
            core::mem::offset_of!(EventHeader, flags) % 8 == 0
                && core::mem::offset_of!(EventHeader, comm) == core::mem::offset_of!(EventHeader, flags) + 8
        );
    };
    unsafe { (&raw mut header.flags).cast::<u64>().write(u64::from(flags)) };
    let len = EVENT_HEADER_BYTES + (total as usize).min(PATH_BYTES + NAME_BYTES);
    let bytes = unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost();
    }
}

/// A network refusal to report.
pub struct NetDenial {
    pub policy_id: PolicyId,
    pub errno: u32,
    pub kind: Kind,
    pub reason: Reason,
    pub action: Action,
    /// The destination as IPv6 words in network order (IPv4 as
    /// `::ffff:a.b.c.d`).
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    /// A unix socket's bound name (kernel memory), or null.
    pub unix_path: *const u8,
    pub unix_len: u32,
    /// The budget a `budget_exceeded` event is about, or null.
    pub budget: *const BudgetDetail,
}

/// Emits one network event: the header, a [`NetDetail`] (in the place of a
/// file path), then the acting program's path. Task fields are read with
/// `bpf_probe_read_kernel`, so the cgroup socket programs (which get no
/// BTF-typed task) report the same way.
#[inline(never)]
pub fn report_net(denial: &NetDenial) {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count_lost();
        return;
    };
    let buf = unsafe { &mut *buf };
    const { assert!(core::mem::align_of::<NetDetail>() <= 8 && EVENT_HEADER_BYTES.is_multiple_of(8)) };
    let detail = unsafe { &mut *buf.path.as_mut_ptr().cast::<NetDetail>() };
    let words = detail.addr.as_mut_ptr().cast::<u32>();
    for (i, word) in denial.addr.iter().enumerate() {
        // SAFETY: `addr` is 16 bytes at a 4-aligned offset of the buffer.
        unsafe { words.add(i).write(*word) };
    }
    detail.port = denial.port;
    detail.family = denial.family;
    detail.sock_type = denial.sock_type;
    detail.protocol = denial.protocol;
    detail.unix_len = 0;
    let unix_len = denial.unix_len;
    if !denial.unix_path.is_null() && unix_len > 0 && unix_len <= detail.unix_path.len() as u32 {
        let unix_len = crate::net::mask_127(unix_len);
        let read =
            unsafe { bpf_probe_read_kernel(detail.unix_path.as_mut_ptr().cast(), unix_len, denial.unix_path.cast()) };
        if read == 0 {
            detail.unix_len = unix_len as u16;
        }
    }
    let mut len = NET_DETAIL_BYTES as u32;
    if !denial.budget.is_null() {
        const { assert!(NET_DETAIL_BYTES + BUDGET_DETAIL_BYTES <= NAME_BYTES && NET_DETAIL_BYTES.is_multiple_of(4)) };
        // Word by word: a struct copy is a `memcpy` call.
        let from = denial.budget.cast::<u32>();
        let to = unsafe { buf.path.as_mut_ptr().add(NET_DETAIL_BYTES) }.cast::<u32>();
        for i in 0..BUDGET_DETAIL_BYTES / 4 {
            unsafe { to.add(i).write_unaligned(from.add(i).read()) };
        }
        len += BUDGET_DETAIL_BYTES as u32;
    }
    let head = DetailHead {
        policy_id: denial.policy_id,
        errno: denial.errno,
        kind: denial.kind,
        op: 0,
        reason: denial.reason,
        action: denial.action,
    };
    finish_detail_event(buf, &head, len);
}

/// An inbound connection or datagram refused (or audited).
pub struct InboundDenial {
    pub policy_id: PolicyId,
    pub errno: u32,
    pub action: Action,
    /// The receiving socket's cgroup (the task that runs the program is
    /// whichever the packet arrived on).
    pub cgroup_id: u64,
    /// The source, as IPv6 words in network order (IPv4 as `::ffff:a.b.c.d`).
    pub addr: [u32; 4],
    /// The local port it was sent to.
    pub port: u16,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
}

/// The header of an event from a program that gets no task to read (no
/// comm, no program path): inbound packets, the TLS name judge.
struct TasklessHead {
    cgroup_id: u64,
    /// 0 where there is no process (a packet's softirq).
    pid_tgid: u64,
    policy_id: PolicyId,
    errno: u32,
    /// Bytes of detail records after the header.
    detail_len: u16,
    kind: Kind,
    action: Action,
    reason: Reason,
}

/// Writes `head` into a header in the ring buffer, field by field (a struct
/// literal with zeroed runs becomes a `memset`).
#[inline(always)]
unsafe fn fill_taskless_header(header: *mut EventHeader, head: &TasklessHead) {
    unsafe {
        (&raw mut (*header).boot_ns).write(bpf_ktime_get_boot_ns());
        (&raw mut (*header).cgroup_id).write(head.cgroup_id);
        (&raw mut (*header).pid).write(head.pid_tgid as u32);
        (&raw mut (*header).tgid).write((head.pid_tgid >> 32) as u32);
        (&raw mut (*header).policy_id).write(head.policy_id);
        (&raw mut (*header).reserved).write(0);
        (&raw mut (*header).errno).write(head.errno);
        (&raw mut (*header).path_len).write(head.detail_len);
        (&raw mut (*header).exe_len).write(0);
        (&raw mut (*header).kind).write(head.kind as u8);
        (&raw mut (*header).op).write(0);
        (&raw mut (*header).action).write(head.action as u8);
        (&raw mut (*header).reason).write(head.reason as u8);
        // Volatile: three zero stores in a row would become a `memset` call.
        (&raw mut (*header).flags).cast::<u64>().write_volatile(0);
        let comm = (&raw mut (*header).comm).cast::<u64>();
        comm.write_volatile(0);
        comm.add(1).write_volatile(0);
    }
}

/// An inbound event as it goes into the ring buffer.
#[repr(C)]
struct InboundRecord {
    header: EventHeader,
    detail: NetDetail,
}

/// Emits one inbound event: the header (no task: packets arrive in softirq
/// context, so pid 0 and no program) and a [`NetDetail`]. Written in place
/// in the ring buffer: a per-CPU scratch buffer could be in use by a program
/// this softirq interrupted.
#[inline(never)]
pub fn report_inbound(denial: &InboundDenial) {
    let Some(mut entry) = EVENTS.reserve::<InboundRecord>(0) else {
        count_lost();
        return;
    };
    let record = entry.as_mut_ptr();
    let head = TasklessHead {
        cgroup_id: denial.cgroup_id,
        pid_tgid: 0,
        policy_id: denial.policy_id,
        errno: denial.errno,
        detail_len: NET_DETAIL_BYTES as u16,
        kind: Kind::Inbound,
        action: denial.action,
        reason: Reason::NotAllowed,
    };
    // Field by field (a struct literal with zeroed runs becomes a `memset`).
    unsafe {
        fill_taskless_header(&raw mut (*record).header, &head);
        let detail = &raw mut (*record).detail;
        let words = (&raw mut (*detail).addr).cast::<u32>();
        for (i, word) in denial.addr.iter().enumerate() {
            words.add(i).write_unaligned(*word);
        }
        (&raw mut (*detail).port).write(denial.port);
        (&raw mut (*detail).family).write(denial.family);
        (&raw mut (*detail).sock_type).write(denial.sock_type);
        (&raw mut (*detail).protocol).write(denial.protocol);
        (&raw mut (*detail).unix_len).write(0);
    }
    entry.submit(0);
}

/// A ClientHello refused (or audited): `tls::tls_hello`.
pub struct TlsDenial<'a> {
    pub state: &'a TlsSocket,
    pub reason: Reason,
    /// The name it sent (`len` 0: none).
    pub name: *const TlsNameKey,
}

/// A `sni_mismatch` event as it goes into the ring buffer.
#[repr(C)]
struct TlsRecord {
    header: EventHeader,
    detail: NetDetail,
    tls: TlsDetail,
}

/// Emits one `sni_mismatch` event: the header (no program path, no comm:
/// the `sk_msg` program gets no task), a [`NetDetail`] and a [`TlsDetail`].
#[inline(never)]
pub fn report_tls(denial: &TlsDenial) {
    let Some(mut entry) = EVENTS.reserve::<TlsRecord>(0) else {
        count_lost();
        return;
    };
    let record = entry.as_mut_ptr();
    let state = denial.state;
    let audit = state.audit != 0;
    let action = if audit { Action::Audit } else { Action::Deny };
    let head = TasklessHead {
        cgroup_id: state.cgroup_id,
        pid_tgid: bpf_get_current_pid_tgid(),
        policy_id: state.policy_id,
        errno: if audit { 0 } else { EACCES },
        detail_len: (NET_DETAIL_BYTES + TLS_DETAIL_BYTES) as u16,
        kind: Kind::SniMismatch,
        action,
        reason: denial.reason,
    };
    unsafe {
        fill_taskless_header(&raw mut (*record).header, &head);
        let detail = &raw mut (*record).detail;
        let from = state.grant.addr.as_ptr().cast::<u32>();
        let words = (&raw mut (*detail).addr).cast::<u32>();
        for i in 0..4 {
            words.add(i).write_unaligned(from.add(i).read_unaligned());
        }
        (&raw mut (*detail).port).write(state.port);
        (&raw mut (*detail).family).write(u16::from(state.family));
        (&raw mut (*detail).sock_type).write(SOCK_STREAM);
        (&raw mut (*detail).protocol).write(IPPROTO_TCP);
        (&raw mut (*detail).unix_len).write(0);
        let tls = &raw mut (*record).tls;
        let name = denial.name;
        let len = if name.is_null() { 0 } else { (*name).len };
        (&raw mut (*tls).len).write(len);
        (&raw mut (*tls).pad).write(0);
        let to = (&raw mut (*tls).name).cast::<u64>();
        for i in 0..TLS_NAME_BYTES / 8 {
            let word = if name.is_null() { 0 } else { (&raw const (*name).name).cast::<u64>().add(i).read_unaligned() };
            to.add(i).write_volatile(word);
        }
    }
    entry.submit(0);
}

/// A floor refusal to report.
pub struct FloorDenial {
    pub op: Op,
    pub target_pid: u32,
    pub value: u32,
}

/// Emits one floor event: the header, a [`FloorDetail`], the program's path.
#[inline(never)]
pub fn report_floor(tag: &TagInfo, denial: &FloorDenial, action: Action, errno: u32) {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        count_lost();
        return;
    };
    let buf = unsafe { &mut *buf };
    let detail = buf.path.as_mut_ptr().cast::<FloorDetail>();
    unsafe {
        (&raw mut (*detail).target_pid).write(denial.target_pid);
        (&raw mut (*detail).value).write(denial.value);
    }
    let head = DetailHead {
        policy_id: tag.policy_id(),
        errno,
        kind: Kind::Floor,
        op: denial.op as u8,
        reason: Reason::Floor,
        action,
    };
    finish_detail_event(buf, &head, FLOOR_DETAIL_BYTES as u32);
}

/// The header fields of an event whose path slot holds a fixed-size detail.
struct DetailHead {
    policy_id: PolicyId,
    errno: u32,
    kind: Kind,
    op: u8,
    reason: Reason,
    action: Action,
}

/// Writes the acting program's path after the `detail` bytes already in the
/// buffer, then the header, and sends the event.
#[inline(always)]
fn finish_detail_event(buf: &mut EventBuf, head: &DetailHead, detail: u32) {
    let (exe_dentry, exe_vfsmount) = current_exe_probed();
    buf.cursor = detail;
    // Field by field: four null pointers in a row make a `memset` call.
    let writer = &mut buf.writer;
    writer.dentry = exe_dentry;
    writer.phase = 1;
    writer.truncated = 0;
    writer.path_len = detail;
    for null in
        [&raw mut writer.mount, &raw mut writer.exe_dentry, &raw mut writer.mnt_root, &raw mut writer.exe_vfsmount]
    {
        unsafe { null.write_volatile(core::ptr::null()) };
    }
    if exe_dentry.is_null() {
        buf.writer.phase = 2;
    } else {
        buf.writer.enter(exe_vfsmount);
        let mut ctx = StepCtx { buf };
        repeat_global::<{ 2 * COMPAT_PATH_DEPTH }>(
            2 * MAX_PATH_DEPTH,
            write_step,
            || enforcer_write_step(),
            (&raw mut ctx).cast(),
        );
    }
    let total = buf.cursor;
    let flags = buf.writer.truncated | if buf.writer.phase == 1 { EVENT_EXE_TRUNCATED } else { 0 };
    let header = &mut buf.header;
    fill_header(header, head.policy_id, head.errno);
    header.path_len = detail as u16;
    header.exe_len = total.wrapping_sub(detail) as u16;
    header.kind = head.kind as u8;
    header.op = head.op;
    header.action = head.action as u8;
    header.reason = head.reason as u8;
    unsafe { (&raw mut header.flags).cast::<u64>().write(u64::from(flags)) };
    let len = EVENT_HEADER_BYTES + (total as usize).min(PATH_BYTES + NAME_BYTES);
    let bytes = unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        count_lost();
    }
}

/// The header fields every event fills the same way.
#[inline(always)]
fn fill_header(header: &mut EventHeader, policy_id: PolicyId, errno: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Straight into the event (aya's wrapper zeroes a copy on the stack).
    unsafe { helper::bpf_get_current_comm((&raw mut header.comm).cast(), size_of::<[u8; 16]>() as u32) };
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.policy_id = policy_id;
    header.reserved = 0;
    header.errno = errno;
}

/// [`current_exe`] through `bpf_probe_read_kernel`, for programs that get
/// no BTF-typed task.
#[inline(always)]
fn current_exe_probed() -> (*const u8, *const u8) {
    let null = (core::ptr::null(), core::ptr::null());
    let task = unsafe { helper::bpf_get_current_task() } as *const u8;
    unsafe {
        let mm = Probe::ptr::<TaskMm>(task);
        if mm.is_null() {
            return null;
        }
        let file = Probe::ptr::<MmExeFile>(mm);
        if file.is_null() {
            return null;
        }
        file_path::<Probe>(file)
    }
}

/// The current task's executable (`mm->exe_file`), or nulls for a task
/// without one (a kernel thread).
#[inline(always)]
fn current_exe() -> (*const u8, *const u8) {
    let null = (core::ptr::null(), core::ptr::null());
    unsafe {
        let mm = Task::ptr::<TaskMm>(current_task());
        if mm.is_null() {
            return null;
        }
        let file = Task::ptr::<MmExeFile>(mm);
        if file.is_null() {
            return null;
        }
        file_path::<Task>(file)
    }
}

/// State of the path writer: it writes the file's path (phase 0), then the
/// executable's (phase 1), then is done (phase 2). It lives in map memory,
/// which the verifier does not track, so the `bpf_loop` step below is
/// verified in one pass instead of once per combination of values.
///
/// `mount` and `mnt_root`, often both null, are kept apart: the compiler turns
/// a run of zeroed fields into a `memset` call, a byte loop in BPF.
#[repr(C)]
struct PathWriter {
    dentry: *const u8,
    mount: *const u8,
    exe_dentry: *const u8,
    mnt_root: *const u8,
    exe_vfsmount: *const u8,
    phase: u32,
    /// `EVENT_*_TRUNCATED` flags.
    truncated: u8,
    path_len: u32,
}

// SAFETY: per-CPU map memory, used by one program run at a time per CPU.
unsafe impl Sync for PathWriter {}

/// What the step gets on the stack: only the map value.
#[repr(C)]
struct StepCtx {
    buf: *mut EventBuf,
}

impl PathWriter {
    /// Starts on a path whose dentry is already in `self.dentry`.
    #[inline(always)]
    fn enter(&mut self, vfsmount: *const u8) {
        if vfsmount.is_null() {
            self.mount = core::ptr::null();
            self.mnt_root = core::ptr::null();
        } else {
            self.mount = mount_of(vfsmount);
            self.mnt_root = unsafe { Probe::ptr::<VfsmountRoot>(vfsmount) };
        }
    }

    /// The current path ended (`cut`: before its root) at `cursor`. Moves
    /// to the next.
    #[inline(always)]
    fn path_done(&mut self, cut: bool, cursor: u32) -> i64 {
        if self.phase == 0 {
            if cut {
                self.truncated |= EVENT_PATH_TRUNCATED;
            }
            self.path_len = cursor;
            self.phase = 1;
            self.dentry = self.exe_dentry;
            if self.dentry.is_null() {
                self.phase = 2;
                return 1;
            }
            self.enter(self.exe_vfsmount);
            0
        } else {
            if cut {
                self.truncated |= EVENT_EXE_TRUNCATED;
            }
            self.phase = 2;
            1
        }
    }
}

/// [`write_step`] for the compat build's loop: a global function (exported,
/// no pointer arguments), which the verifier checks once per program instead
/// of once per call, that is per step. It finds the buffer itself.
#[unsafe(no_mangle)]
pub extern "C" fn enforcer_write_step() -> i64 {
    match SCRATCH.get_ptr_mut(0) {
        Some(buf) => write_name(unsafe { &mut *buf }),
        None => 1,
    }
}

/// The `bpf_loop` step: [`write_name`].
extern "C" fn write_step(_level: u32, ctx: *mut c_void) -> i64 {
    write_name(unsafe { &mut *(*ctx.cast::<StepCtx>()).buf })
}

/// Writes one name and moves up, crossing mounts like `d_path`.
#[inline(always)]
fn write_name(buf: &mut EventBuf) -> i64 {
    let cursor = buf.cursor;
    let w = &mut buf.writer;
    let d = w.dentry;
    if !w.mount.is_null() && d == w.mnt_root {
        let mount = w.mount;
        let parent_mount = unsafe { Probe::ptr::<MountParent>(mount) };
        if parent_mount.is_null() || parent_mount == mount {
            return w.path_done(parent_mount.is_null(), cursor);
        }
        w.dentry = unsafe { Probe::ptr::<MountMountpoint>(mount) };
        w.mount = parent_mount;
        w.mnt_root = unsafe { Probe::ptr::<VfsmountRoot>(vfsmount_of(parent_mount)) };
        return 0;
    }
    let parent = unsafe { Probe::ptr::<DentryParent>(d) };
    // A dentry that is its own parent but not its mount's root has no
    // directory (memfd, pipes, sockets): its name is all there is.
    let pseudo = parent == d && !w.mount.is_null() && d != w.mnt_root;
    if parent.is_null() || (parent == d && !pseudo) {
        return w.path_done(parent.is_null(), cursor);
    }
    let len = cursor as usize;
    if len >= PATH_BYTES {
        return w.path_done(true, cursor);
    }
    w.dentry = parent;
    let name = unsafe { Probe::ptr::<DentryName>(d) };
    // Re-read and mask: with the check above in view the compiler would drop
    // a mask of `len`, and older verifiers cannot bound the offset without it.
    let offset = unsafe { core::ptr::read_volatile(&raw const buf.cursor) } as usize & (PATH_BYTES - 1);
    let dst = buf.path.as_mut_ptr().wrapping_add(offset);
    let n = unsafe { bpf_probe_read_kernel_str(dst.cast(), NAME_BYTES as u32, name.cast()) };
    if n <= 0 {
        return buf.writer.path_done(true, cursor);
    }
    buf.cursor = (len + (n as usize & (NAME_BYTES * 2 - 1))) as u32;
    if pseudo {
        let cursor = buf.cursor;
        return buf.writer.path_done(false, cursor);
    }
    0
}
