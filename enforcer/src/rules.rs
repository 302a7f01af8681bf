//! Turning a policy's `[files]` trees into the kernel's inode-keyed rules.
//!
//! A tree is keyed by the inode of its root, resolved now. Consequences
//! (documented in the README): a root that does not exist yet is not
//! enforced until the policy is loaded again (a missing `write` root denies,
//! a missing `read_deny` root protects nothing and is warned about); a root
//! that is renamed keeps its rule, since the inode moves with it.

use std::path::PathBuf;

use enforcer_common::policy::{FILE_DEVICE, FILE_EXEC, FILE_READ_DENY, FILE_WRITE, FileRuleKey};

use crate::{
    mounts::{self, MountError},
    policy::Policy,
};

/// One policy's rules, ready for the file table.
#[derive(Debug, Default)]
pub struct FileRules {
    pub entries: Vec<(FileRuleKey, u16)>,
    /// Trees named in the policy that do not exist now.
    pub missing: Vec<(PathBuf, &'static str)>,
}

/// The trees of `[files]` and `[exec]`, and the nodes of `[devices]`.
pub fn resolve(policy: &Policy, policy_id: u16) -> Result<FileRules, MountError> {
    let mounts = mounts::mount_table()?;
    let mut rules = FileRules::default();
    let none: &[PathBuf] = &[];
    let (files, exec, devices) = (policy.files.as_ref(), policy.exec.as_ref(), policy.devices.as_ref());
    let lists: [(&[PathBuf], u16, &'static str); 4] = [
        (files.map_or(none, |f| &f.write), FILE_WRITE, "files.write"),
        (files.map_or(none, |f| &f.read_deny), FILE_READ_DENY, "files.read_deny"),
        (exec.map_or(none, |e| &e.allow), FILE_EXEC, "exec.allow"),
        (devices.map_or(none, |d| &d.allow), FILE_DEVICE, "devices.allow"),
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
        let d = dir.path().display();
        let text = format!(
            "name = \"p\"\n[files]\nwrite = [\"{d}\", \"{d}/absent\"]\nread_deny = [\"{d}\"]\n[exec]\nallow = [\"{d}\"]\n\
             [devices]\nallow = [\"{d}\"]\n"
        );
        let (policy, _) = crate::policy::parse(&text, std::path::Path::new("p.toml")).unwrap();
        let rules = resolve(&policy, 7).unwrap();
        assert_eq!(rules.entries.len(), 1, "one inode, flags merged");
        assert_eq!(rules.entries[0].1, FILE_WRITE | FILE_READ_DENY | FILE_EXEC | FILE_DEVICE);
        assert_eq!(rules.entries[0].0.policy_id, 7);
        assert_eq!(rules.missing, vec![(dir.path().join("absent"), "files.write")]);
    }
}
