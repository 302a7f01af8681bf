//! Turning a policy's `[files]` trees into the kernel's inode-keyed rules.
//!
//! A tree is keyed by the inode of its root, resolved now. Consequences
//! (documented in the README): a root that does not exist yet is not
//! enforced until the policy is loaded again (a missing `write` root denies,
//! a missing `read_deny` root protects nothing and is warned about); a root
//! that is renamed keeps its rule, since the inode moves with it.

use std::path::PathBuf;

use enforcer_common::policy::{FILE_EXEC, FILE_READ_DENY, FILE_WRITE, FileRuleKey};

use crate::{
    mounts::{self, MountError},
    policy::{Exec, Files},
};

/// One policy's rules, ready for the file table.
#[derive(Debug, Default)]
pub struct FileRules {
    pub entries: Vec<(FileRuleKey, u16)>,
    /// Trees named in the policy that do not exist now.
    pub missing: Vec<(PathBuf, &'static str)>,
}

/// The trees of `[files]` and `[exec]`.
pub fn resolve(files: Option<&Files>, exec: Option<&Exec>, policy_id: u16) -> Result<FileRules, MountError> {
    let mounts = mounts::mount_table()?;
    let mut rules = FileRules::default();
    let none: &[PathBuf] = &[];
    let lists: [(&[PathBuf], u16, &'static str); 3] = [
        (files.map_or(none, |f| &f.write), FILE_WRITE, "files.write"),
        (files.map_or(none, |f| &f.read_deny), FILE_READ_DENY, "files.read_deny"),
        (exec.map_or(none, |e| &e.allow), FILE_EXEC, "exec.allow"),
    ];
    for (paths, flag, key) in lists {
        for path in paths {
            let Some(id) = mounts::inode_id(path, &mounts)? else {
                rules.missing.push((path.clone(), key));
                continue;
            };
            let key = FileRuleKey { ino: id.ino, dev: id.dev, policy_id };
            match rules.entries.iter_mut().find(|(k, _)| *k == key) {
                Some((_, flags)) => *flags |= flag,
                None => rules.entries.push((key, flag)),
            }
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_existing_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            write: vec![dir.path().to_owned(), dir.path().join("absent")],
            read_deny: vec![dir.path().to_owned()],
        };
        let exec = Exec { allow: vec![dir.path().to_owned()] };
        let rules = resolve(Some(&files), Some(&exec), 7).unwrap();
        assert_eq!(rules.entries.len(), 1, "one inode, flags merged");
        assert_eq!(rules.entries[0].1, FILE_WRITE | FILE_READ_DENY | FILE_EXEC);
        assert_eq!(rules.entries[0].0.policy_id, 7);
        assert_eq!(rules.missing, vec![(dir.path().join("absent"), "files.write")]);
    }
}
