//! Agent cgroups on the cgroup v2 hierarchy.
//!
//! A tagged cgroup is identified in the kernel by its id (the inode number of
//! its directory) and its level (depth below the hierarchy's root), which is
//! what `bpf_get_current_ancestor_cgroup_id` needs to find it from any
//! descendant.

use std::{
    io::Write as _,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::mounts::{MountError, mount_table};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Mounts(#[from] MountError),
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup` (or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: processes still running 5 s after cgroup.kill", path.display())]
    StillPopulated { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

/// The cgroup v2 mount.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// Depth of the mount's root within the whole hierarchy (non-zero inside
    /// a cgroup namespace whose root is not the hierarchy's).
    root_level: u32,
}

impl Hierarchy {
    pub fn find() -> Result<Self, CgroupError> {
        let mount = mount_table()?.into_iter().find(|m| m.fs_type == "cgroup2").ok_or(CgroupError::NoCgroup2)?;
        let root_level = u32::try_from(Path::new(&mount.root).components().count().saturating_sub(1)).unwrap_or(0);
        Ok(Self { mount_point: mount.mount_point, root_level })
    }

    /// Whether the cgroup with id `id` may still exist: false only when the
    /// kernel says its handle is stale (the id of a removed cgroup is never
    /// given to another). Any other failure answers true.
    #[must_use]
    pub fn may_have(&self, id: u64) -> bool {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        /// `struct file_handle` with a cgroup's handle: its 64-bit id
        /// (`FILEID_KERNFS`).
        #[repr(C)]
        struct CgroupHandle {
            bytes: u32,
            kind: i32,
            id: u64,
        }
        const FILEID_KERNFS: i32 = 0xfe;
        let Ok(mount) = std::fs::File::open(&self.mount_point) else { return true };
        let mut handle = CgroupHandle { bytes: 8, kind: FILEID_KERNFS, id };
        // SAFETY: `handle` is a `file_handle` header followed by its 8 bytes.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                (&raw mut handle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            return true;
        }
        !matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ESTALE | libc::ENOENT))
    }

    /// A cgroup directory's path relative to the mount, as shown in events.
    #[must_use]
    pub fn name_of(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.mount_point).unwrap_or(dir);
        format!("/{}", rel.display())
    }

    /// A cgroup directory's level in the whole hierarchy (the root's is 0).
    #[must_use]
    pub fn level_of(&self, dir: &Path) -> u32 {
        let rel = dir.strip_prefix(&self.mount_point).unwrap_or(dir);
        self.root_level + u32::try_from(rel.components().count()).unwrap_or(u32::MAX)
    }

    /// Calls `visit(path, id)` for every cgroup below `dir` (not `dir`
    /// itself), parents first, down to the deepest level a tag can have.
    pub fn for_each_below(&self, dir: &Path, visit: &mut impl FnMut(&Path, u64)) {
        fn walk(dir: &Path, depth: u32, visit: &mut impl FnMut(&Path, u64)) {
            if depth > enforcer_common::policy::MAX_TAG_LEVEL {
                return;
            }
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(meta) = entry.metadata()
                    && meta.is_dir()
                {
                    visit(&path, meta.ino());
                    walk(&path, depth + 1, visit);
                }
            }
        }
        walk(dir, 0, visit);
    }
}

/// A cgroup directory with what the kernel programs key on.
#[derive(Clone, Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    pub name: String,
    pub id: u64,
    pub level: u32,
}

impl Cgroup {
    pub fn open(hierarchy: &Hierarchy, path: &Path) -> Result<Self, CgroupError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        Ok(Self {
            path: path.to_owned(),
            name: hierarchy.name_of(path),
            id: meta.ino(),
            level: hierarchy.level_of(path),
        })
    }

    /// An open `cgroup.procs`, for a child to move itself in (see `join`).
    pub fn procs_file(&self) -> Result<OwnedFd, CgroupError> {
        let path = self.path.join("cgroup.procs");
        let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
        Ok(file.into())
    }

    /// Kills every process in it, then removes it and the cgroups below it.
    pub fn kill_and_remove(&self) -> Result<(), CgroupError> {
        self.kill_all().and_then(|()| remove_tree(&self.path))
    }

    /// Kills every process in the cgroup (and its descendants) and waits for
    /// it to empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            std::fs::write(&kill, b"1").map_err(io_err(&kill))?;
        } else {
            self.signal_each(libc::SIGKILL)?; // before Linux 5.14
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.populated()? {
            if Instant::now() > deadline {
                return Err(CgroupError::StillPopulated { path: self.path.clone() });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn signal_each(&self, signal: i32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let list = std::fs::read_to_string(&procs).map_err(io_err(&procs))?;
        for pid in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) has no memory effects; a vanished pid is fine.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    fn populated(&self) -> Result<bool, CgroupError> {
        let events = self.path.join("cgroup.events");
        let text = std::fs::read_to_string(&events).map_err(io_err(&events))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }
}

/// A fresh cgroup for one `enforcer run`, removed (with any descendants) on
/// drop.
pub struct RunCgroup {
    pub cgroup: Cgroup,
}

impl RunCgroup {
    /// Creates `<cgroup2>/enforcer/run-<pid>`.
    pub fn create(hierarchy: &Hierarchy) -> Result<Self, CgroupError> {
        let parent = hierarchy.mount_point.join("enforcer");
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&parent)(e)),
        }
        let path = parent.join(format!("run-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Self { cgroup: Cgroup::open(hierarchy, &path)? })
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let result = self.cgroup.kill_and_remove();
        if let Err(e) = result {
            let _ = writeln!(std::io::stderr(), "enforcer: warning: could not remove cgroup: {e}");
        }
    }
}

/// Removes a cgroup and its child cgroups, deepest first.
fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    for entry in std::fs::read_dir(path).map_err(io_err(path))? {
        let entry = entry.map_err(io_err(path))?;
        if entry.file_type().map_err(io_err(path))?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(path).map_err(io_err(path))
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as
/// `procs`. Only async-signal-safe calls: this runs between fork and exec.
pub fn join(procs: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // Writing "0" moves the writing process itself.
    // SAFETY: a write(2) of a static buffer to an open fd.
    let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
    if n == 1 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Finds cgroup names from ids for events (descendants of a tagged cgroup
/// may be created after tagging, so a miss rescans the tagged subtree).
pub struct Names {
    hierarchy: Hierarchy,
    roots: Vec<PathBuf>,
    known: std::collections::HashMap<u64, String>,
}

impl Names {
    #[must_use]
    pub fn new(hierarchy: Hierarchy) -> Self {
        Self { hierarchy, roots: Vec::new(), known: std::collections::HashMap::new() }
    }

    pub fn add_root(&mut self, cgroup: &Cgroup) {
        self.known.insert(cgroup.id, cgroup.name.clone());
        if !self.roots.contains(&cgroup.path) {
            self.roots.push(cgroup.path.clone());
        }
    }

    pub fn name(&mut self, id: u64) -> Option<&str> {
        if !self.known.contains_key(&id) {
            let Self { hierarchy, roots, known } = self;
            for root in roots.iter() {
                hierarchy.for_each_below(root, &mut |path, id| _ = known.insert(id, hierarchy.name_of(path)));
            }
        }
        self.known.get(&id).map(String::as_str)
    }
}
