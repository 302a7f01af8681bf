//! Exec control: judged on the file the kernel is about to execute, after
//! it resolved the name (symlinks, `/proc/self/fd/N`, `execveat`). A script
//! is judged, then its interpreter (the kernel asks again for each).

use aya_ebpf::{macros::lsm, programs::LsmContext};
use enforcer_common::{
    events::{Kind, Op, Reason},
    policy::{FILE_EXEC, TAG_EXEC, TAG_REQUIRE_SECCOMP},
};

use crate::{
    enforce,
    kernel::{BprmFile, Direct, InodeNlink, Read, Task, TaskSeccompMode, current_task, file_path},
    report::Denial,
    tag,
    walk::{Question, Start, judge},
};

/// `task->seccomp.mode` of a task without a filter.
const SECCOMP_MODE_DISABLED: u64 = 0;

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(tag) = tag::current_tag() else { return 0 };
    let bprm: *const u8 = ctx.arg(0);
    let file = unsafe { Direct::ptr::<BprmFile>(bprm) };
    let (dentry, vfsmount) = file_path::<Direct>(file);
    let start = Start::of_file(file, dentry);
    let flags = tag.info.flags;
    // The floor: a program with no name anywhere (memfd_create, a deleted
    // or O_TMPFILE file) is fileless execution, whatever the policy.
    let reason = if unsafe { Direct::get::<InodeNlink>(start.inode) } == 0 {
        Some(Reason::Fileless)
    } else if flags & TAG_REQUIRE_SECCOMP != 0 && seccomp_mode() == SECCOMP_MODE_DISABLED {
        Some(Reason::NoSeccomp)
    } else if flags & TAG_EXEC != 0 {
        let question = Question {
            policy_id: tag.info.policy_id(),
            needs_tree: true,
            allow_self: true,
            read_deny: false,
            pending: false,
            object_may_be_root: true,
            inline_more: false,
        };
        // Below a `sensitive` tree is no refusal (the open of the program,
        // before this hook, judged the read).
        judge::<FILE_EXEC>(&question, tag.files, start, vfsmount).err().filter(|r| *r != Reason::Sensitive)
    } else {
        None
    };
    enforce(&tag, reason.map(|reason| Denial { kind: Kind::Exec, op: Op::Exec, reason, dentry, vfsmount }))
}

#[inline(always)]
fn seccomp_mode() -> u64 {
    unsafe { Task::get::<TaskSeccompMode>(current_task()) }
}
