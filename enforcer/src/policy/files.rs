//! Turning a policy's `[files]` trees into the kernel's inode-keyed rules.
//!
//! A tree is keyed by the inode of its root, resolved now. Consequences
//! (documented in the README): a `write` root that does not exist yet denies
//! until the policy is loaded again; a `read_deny` root that does not exist
//! yet is keyed by its name below its nearest existing directory (see
//! [`pending_read_deny`]); a root that is renamed keeps its rule, since the
//! inode moves with it.

use std::path::{Path, PathBuf};

use enforcer_common::policy::{
    FILE_ABOVE_SHIFT, FILE_DEVICE, FILE_EXEC, FILE_NO_READ_DENY_ABOVE, FILE_PENDING, FILE_READ_DENY, FILE_SENSITIVE,
    FILE_WRITE, FileRuleKey, PENDING_ON_FILESYSTEM, PolicyId, TAG_NO_REGULAR_FILE_ROOTS, TAG_PENDING, name_key,
    name_words,
};

/// The flags of a `sensitive` root: a `read_deny` one to every rule about
/// where a walk may stop, told apart where the walk meets it.
const SENSITIVE: u16 = FILE_READ_DENY | FILE_SENSITIVE;

use crate::{
    mounts::{self, InodeId, MountError},
    policy::Policy,
};

/// One policy's rules, ready for the file table.
#[derive(Debug, Default)]
pub struct FileRules {
    pub entries: Vec<(FileRuleKey, u16)>,
    /// Trees named in the policy that do not exist now.
    pub missing: Vec<(PathBuf, &'static str)>,
    /// Some key is the inode of a regular file (a tree or node that is one).
    regular_file_keys: bool,
}

/// The trees of `[files]` and `[exec]`, and the nodes of `[devices]`.
pub fn resolve(policy: &Policy, policy_id: PolicyId) -> Result<FileRules, MountError> {
    let mounts = mounts::mount_table()?;
    let mut rules = FileRules::default();
    let none: &[PathBuf] = &[];
    let (files, exec, devices) = (policy.files.as_ref(), policy.exec.as_ref(), policy.devices.as_ref());
    let lists: [(&[PathBuf], u16, &'static str); 5] = [
        (files.map_or(none, |f| &f.write), FILE_WRITE, "files.write"),
        (files.map_or(none, |f| &f.read_deny), FILE_READ_DENY, "files.read_deny"),
        (files.map_or(none, |f| &f.sensitive), SENSITIVE, "files.sensitive"),
        (exec.map_or(none, |e| &e.allow), FILE_EXEC, "exec.allow"),
        (devices.map_or(none, |d| &d.allow), FILE_DEVICE, "devices.allow"),
    ];
    let trees = Trees::of(files, exec, &mounts)?;
    for (paths, flag, key) in lists {
        for path in paths {
            let Some(id) = mounts::inode_id(path, &mounts)? else {
                rules.missing.push((path.clone(), key));
                if flag & FILE_READ_DENY != 0 {
                    pending_read_deny(&mut rules, path, &mounts, policy_id, flag)?;
                }
                continue;
            };
            // A `read_deny` there would deny more, never less; the others
            // would allow in every subvolume (a `sensitive` one would lock
            // for reads in every subvolume, which is more: it may stay).
            if id.subvolume_root && flag & FILE_READ_DENY == 0 {
                return Err(MountError::SubvolumeRoot { path: path.clone(), key });
            }
            let flag = if flag == SENSITIVE {
                match trees.sensitive_flags(path, &id, &mounts)? {
                    Some(flags) => flags,
                    None => continue,
                }
            } else {
                flag
            };
            rules.add_inode(&id, policy_id, flag);
        }
    }
    // Both kinds hold the roots below them: a walk from there goes on up.
    let read_deny: Vec<PathBuf> =
        files.map(|f| f.read_deny.iter().chain(&f.sensitive).cloned().collect()).unwrap_or_default();
    if !read_deny.is_empty() {
        let held = read_deny_ids(&read_deny, &mounts)?;
        for path in lists
            .iter()
            .filter(|(_, flag, _)| *flag & (FILE_WRITE | FILE_EXEC) != 0)
            .flat_map(|(paths, _, _)| paths.iter())
        {
            if let Some(id) = mounts::inode_id(path, &mounts)?
                && !under_read_deny(path, &held, &mounts)?
            {
                rules.add_inode(&id, policy_id, FILE_NO_READ_DENY_ABOVE);
            }
        }
    }
    Ok(rules)
}

/// The inodes of the trees a `sensitive` root may be below.
struct Trees {
    read_deny: Vec<(u64, u32)>,
    write: Vec<(u64, u32)>,
    exec: Vec<(u64, u32)>,
}

impl Trees {
    fn of(
        files: Option<&crate::policy::Files>,
        exec: Option<&crate::policy::Exec>,
        mounts: &[procfs::process::MountInfo],
    ) -> Result<Self, MountError> {
        let none: &[PathBuf] = &[];
        Ok(Self {
            read_deny: read_deny_ids(files.map_or(none, |f| &f.read_deny), mounts)?,
            write: read_deny_ids(files.map_or(none, |f| &f.write), mounts)?,
            exec: read_deny_ids(exec.map_or(none, |e| &e.allow), mounts)?,
        })
    }

    /// The flags of the `sensitive` root at `path` (inode `id`): the walk
    /// ends there (`FILE_SENSITIVE`), so it carries the write and exec
    /// trees strictly above it (`FILE_ABOVE_SHIFT`). `None` below a
    /// `read_deny` tree, which denies it whole. A path whose directories
    /// cannot be resolved gets no tree above it: writes below it are denied.
    fn sensitive_flags(
        &self,
        path: &Path,
        id: &InodeId,
        mounts: &[procfs::process::MountInfo],
    ) -> Result<Option<u16>, MountError> {
        let mut above = Vec::new();
        if let Ok(resolved) = std::fs::canonicalize(path) {
            for dir in resolved.ancestors().skip(1) {
                if let Some(dir) = mounts::inode_id(dir, mounts)? {
                    above.push((dir.ino, dir.dev));
                }
            }
        }
        if std::iter::once(&(id.ino, id.dev)).chain(&above).any(|i| self.read_deny.contains(i)) {
            return Ok(None);
        }
        let mut flags = SENSITIVE;
        if above.iter().any(|i| self.write.contains(i)) {
            flags |= FILE_WRITE << FILE_ABOVE_SHIFT;
        }
        if above.iter().any(|i| self.exec.contains(i)) {
            flags |= FILE_EXEC << FILE_ABOVE_SHIFT;
        }
        Ok(Some(flags))
    }
}

/// The inodes of the trees at `paths` that exist.
fn read_deny_ids(paths: &[PathBuf], mounts: &[procfs::process::MountInfo]) -> Result<Vec<(u64, u32)>, MountError> {
    let mut ids = Vec::new();
    for path in paths {
        if let Some(id) = mounts::inode_id(path, mounts)? {
            ids.push((id.ino, id.dev));
        }
    }
    Ok(ids)
}

/// Whether `root` or a directory above it is one of the `read_deny` trees
/// `held` (by inode, along its path with symlinks resolved). A `read_deny`
/// tree that does not exist yet cannot hold a root that does: creating its
/// name is judged as a `read_deny` tree already, so nothing can be moved
/// under it. Where the path cannot be resolved, the answer is yes (no
/// shortcut, the walk goes to the top).
fn under_read_deny(
    root: &Path,
    held: &[(u64, u32)],
    mounts: &[procfs::process::MountInfo],
) -> Result<bool, MountError> {
    let Ok(resolved) = std::fs::canonicalize(root) else { return Ok(true) };
    for dir in resolved.ancestors() {
        match mounts::inode_id(dir, mounts)? {
            Some(id) if !held.contains(&(id.ino, id.dev)) => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}

impl FileRules {
    /// What the rules add to the policy's tag (`TAG_PENDING`,
    /// `TAG_NO_REGULAR_FILE_ROOTS`).
    #[must_use]
    pub fn tag_flags(&self) -> u32 {
        let pending = if self.entries.iter().any(|(_, flags)| flags & FILE_PENDING != 0) { TAG_PENDING } else { 0 };
        let no_files = if self.regular_file_keys { 0 } else { TAG_NO_REGULAR_FILE_ROOTS };
        pending | no_files
    }

    /// A rule keyed by an inode, whose kind `tag_flags` answers for.
    fn add_inode(&mut self, id: &InodeId, policy_id: PolicyId, flag: u16) {
        self.regular_file_keys |= id.regular_file;
        self.add(FileRuleKey { ino: id.ino, dev: id.dev, policy_id }, flag);
    }

    /// Adds `flag` to the rule of `key`. A root both `read_deny` and
    /// `sensitive` is `read_deny` alone: it may not be read at all.
    fn add(&mut self, key: FileRuleKey, flag: u16) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, flags)) => {
                let read_deny = (*flags | flag) & FILE_READ_DENY != 0;
                let only_sensitive = |f: u16| f & FILE_READ_DENY == 0 || f & FILE_SENSITIVE != 0;
                let sensitive = read_deny && only_sensitive(*flags) && only_sensitive(flag);
                *flags |= flag;
                if !sensitive {
                    *flags &= !FILE_SENSITIVE;
                }
            }
            None => self.entries.push((key, flag)),
        }
    }
}

/// A `read_deny` (or `sensitive`: `flag`) tree that does not exist yet
/// (`aws configure` and `gcloud auth` make theirs later): its nearest
/// existing directory gets `FILE_PENDING`, and the first missing name below
/// it a rule with `flag` keyed by that name. The walk judges the name wherever the entry is
/// created or opened, so the tree is protected from the moment it exists.
/// Everything below that first missing name is protected, even beside the
/// named path (`/a/b/c` missing from `/a` protects all of `/a/b`).
fn pending_read_deny(
    rules: &mut FileRules,
    path: &Path,
    mounts: &[procfs::process::MountInfo],
    policy_id: PolicyId,
    flag: u16,
) -> Result<(), MountError> {
    let mut name = path.file_name();
    let mut dir = path.parent();
    while let Some(parent) = dir {
        if let Some(id) = mounts::inode_id(parent, mounts)? {
            let Some(name) = name else { return Ok(()) };
            let bytes = name.as_encoded_bytes();
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            rules.add_inode(&id, policy_id, FILE_PENDING);
            rules.add(FileRuleKey { ino: PENDING_ON_FILESYSTEM, dev: id.dev, policy_id }, FILE_PENDING);
            rules.add(FileRuleKey { ino: name_key(id.ino, name_words(bytes), len), dev: id.dev, policy_id }, flag);
            return Ok(());
        }
        name = parent.file_name();
        dir = parent.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_existing_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "name = \"p\"\n[files]\nwrite = [\"{d}\", \"{d}/absent\"]\nread_deny = [\"{d}\"]\n[exec]\nallow = \
             [\"{d}\"]\n\
             [devices]\nallow = [\"{d}\"]\n"
        );
        let (policy, _) = crate::policy::parse(&text, std::path::Path::new("p.toml")).unwrap();
        let rules = resolve(&policy, PolicyId(7)).unwrap();
        assert_eq!(rules.entries.len(), 1, "one inode, flags merged");
        assert_eq!(rules.entries[0].1, FILE_WRITE | FILE_READ_DENY | FILE_EXEC | FILE_DEVICE);
        assert_eq!(rules.entries[0].0.policy_id, PolicyId(7));
        assert_eq!(rules.missing, vec![(dir.path().join("absent"), "files.write")]);
    }

    #[test]
    fn only_roots_no_read_deny_tree_holds_end_walks_early() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["work", "work/.aws", "secret", "secret/inner", "bin"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(d.join("secret"), d.join("link")).unwrap();
        let text = format!(
            "name = \"p\"\n[files]\nwrite = [\"{0}/work\", \"{0}/secret/inner\"]\nread_deny = [\"{0}/work/.aws\", \
             \"{0}/link\"]\n\
             [exec]\nallow = [\"{0}/bin\"]\n",
            d.display()
        );
        let (policy, _) = crate::policy::parse(&text, Path::new("p.toml")).unwrap();
        let rules = resolve(&policy, PolicyId(1)).unwrap();
        let flags_of = |sub: &str| {
            let ino = std::fs::metadata(d.join(sub)).unwrap().ino();
            rules.entries.iter().find(|(k, _)| k.ino == ino).map(|(_, f)| *f).unwrap()
        };
        assert_eq!(
            flags_of("work"),
            FILE_WRITE | FILE_NO_READ_DENY_ABOVE,
            "a read_deny tree below it is met on the way up"
        );
        assert_eq!(flags_of("bin"), FILE_EXEC | FILE_NO_READ_DENY_ABOVE);
        assert_eq!(flags_of("secret/inner"), FILE_WRITE, "held by a read_deny tree (named through a symlink)");
        assert_eq!(flags_of("work/.aws"), FILE_READ_DENY);
    }

    #[test]
    fn a_missing_read_deny_tree_is_keyed_by_name_and_marks_its_filesystem() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let text = format!("name = \"p\"\n[files]\nread_deny = [\"{}/.aws\"]\n", dir.path().display());
        let (policy, _) = crate::policy::parse(&text, std::path::Path::new("p.toml")).unwrap();
        let rules = resolve(&policy, PolicyId(3)).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let flags_of = |ino: u64| {
            rules
                .entries
                .iter()
                .filter(|(k, _)| k.ino == ino && k.policy_id == PolicyId(3))
                .map(|(_, f)| *f)
                .collect::<Vec<_>>()
        };
        assert_eq!(flags_of(meta.ino()), vec![FILE_PENDING], "the nearest existing directory");
        assert_eq!(flags_of(name_key(meta.ino(), name_words(b".aws"), 4)), vec![FILE_READ_DENY], "the missing name");
        assert_eq!(flags_of(PENDING_ON_FILESYSTEM), vec![FILE_PENDING], "its filesystem");
        assert_eq!(rules.entries.len(), 3);
        assert_eq!(rules.tag_flags(), TAG_PENDING | TAG_NO_REGULAR_FILE_ROOTS);
    }

    #[test]
    fn sensitive_trees_are_read_deny_trees_that_may_be_read() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["home", "home/.aws", "home/.aws/sso", "home/work"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("home/work/.netrc"), b"").unwrap();
        let text = format!(
            "name = \"p\"\n[files]\nwrite = [\"{0}/home/work\"]\nread_deny = [\"{0}/home/.aws\"]\nsensitive = \
             [\"{0}/home\", \"{0}/home/work/.netrc\", \"{0}/home/work/.env\", \"{0}/home/.aws/sso\"]\n\
             [exec]\nallow = [\"{0}\"]\n[network]\n",
            d.display()
        );
        let (policy, _) = crate::policy::parse(&text, Path::new("p.toml")).unwrap();
        let rules = resolve(&policy, PolicyId(1)).unwrap();
        let flags_of = |ino: u64| rules.entries.iter().find(|(k, _)| k.ino == ino).map(|(_, f)| *f).unwrap();
        let ino = |sub: &str| std::fs::metadata(d.join(sub)).unwrap().ino();
        let exec_above = FILE_EXEC << FILE_ABOVE_SHIFT;
        assert_eq!(flags_of(ino("home")), SENSITIVE | exec_above, "the walk ends there: it carries the trees above");
        assert_eq!(flags_of(ino("home/.aws")), FILE_READ_DENY);
        let sso = ino("home/.aws/sso");
        assert!(rules.entries.iter().all(|(k, _)| k.ino != sso), "below a read_deny tree: denied whole");
        let work = flags_of(ino("home/work"));
        assert_eq!(work, FILE_WRITE | FILE_PENDING, "below a sensitive tree: no early end of the walk");
        let netrc = SENSITIVE | FILE_WRITE << FILE_ABOVE_SHIFT | exec_above;
        assert_eq!(flags_of(ino("home/work/.netrc")), netrc, "in a write tree");
        let env = name_key(ino("home/work"), name_words(b".env"), 4);
        assert_eq!(flags_of(env), SENSITIVE, "a missing sensitive file is keyed by its name");
        assert_eq!(rules.tag_flags() & TAG_PENDING, TAG_PENDING);
        assert_eq!(rules.tag_flags() & TAG_NO_REGULAR_FILE_ROOTS, 0, ".netrc is a file root");
    }

    #[test]
    fn a_root_both_read_deny_and_sensitive_is_read_deny() {
        let key = FileRuleKey { ino: 5, dev: 1, policy_id: PolicyId(1) };
        for order in [[FILE_READ_DENY, SENSITIVE], [SENSITIVE, FILE_READ_DENY]] {
            let mut rules = FileRules::default();
            for flag in order {
                rules.add(key, flag);
            }
            assert_eq!(rules.entries, [(key, FILE_READ_DENY)], "{order:?}");
        }
        let mut rules = FileRules::default();
        rules.add(key, FILE_WRITE);
        rules.add(key, SENSITIVE);
        rules.add(key, FILE_NO_READ_DENY_ABOVE);
        assert_eq!(rules.entries, [(key, FILE_WRITE | SENSITIVE | FILE_NO_READ_DENY_ABOVE)]);
    }

    #[test]
    fn a_regular_file_named_as_a_tree_keeps_the_object_lookup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let flags = |write: &str| {
            let text = format!("name = \"p\"\n[files]\nwrite = [\"{}/{write}\"]\n", dir.path().display());
            let (policy, _) = crate::policy::parse(&text, std::path::Path::new("p.toml")).unwrap();
            resolve(&policy, PolicyId(1)).unwrap().tag_flags()
        };
        assert_eq!(
            flags("."),
            TAG_NO_REGULAR_FILE_ROOTS,
            "directories only: an open's walk starts at the file's directory"
        );
        assert_eq!(flags("file"), 0, "the file is a root: the walk must look it up");
    }
}
