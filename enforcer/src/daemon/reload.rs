//! Planning a reload of the policy directory: from the files on disk and the
//! policies in force to what changes, without touching the kernel. `Core`
//! applies the plan in one table swap (`Core::apply`).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;

use super::{
    core::ReloadReport,
    policies::{self, Ids, Loaded, PolicyFile, Rejected, VersionIds},
};
use crate::evidence::policy_sig;

/// The policy directory as read.
pub struct Scan {
    pub files: Vec<PolicyFile>,
    /// Files that could not be read (or the directory itself).
    pub rejected: Vec<Rejected>,
    /// The directory could not be listed: nothing is unloaded then.
    pub unreadable: bool,
}

/// Reads the policy directory `dir`: its `*.toml` files (sorted) with their
/// text; unreadable ones are rejected, and so are those without a valid
/// signature by one of `trusted` when any is given.
#[must_use]
pub fn scan(dir: &Path, trusted: &[VerifyingKey]) -> Scan {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            let error = format!("{}: cannot read the policy directory: {e}", dir.display());
            return Scan {
                files: Vec::new(),
                rejected: vec![Rejected { file: dir.to_owned(), error }],
                unreadable: true,
            };
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    paths.sort();
    let mut scan = Scan { files: Vec::new(), rejected: Vec::new(), unreadable: false };
    for file in paths {
        match std::fs::read_to_string(&file) {
            Ok(text) => match signed(&file, &text, trusted) {
                Ok(()) => scan.files.push((file, text)),
                Err(error) => scan.rejected.push(Rejected { file, error }),
            },
            Err(e) => {
                let error = format!("{}: cannot read: {e}", file.display());
                scan.rejected.push(Rejected { file, error });
            }
        }
    }
    scan
}

/// Whether `text`, read from `file`, is signed by one of `trusted` (any
/// file is, when none is given).
fn signed(file: &Path, text: &str, trusted: &[VerifyingKey]) -> Result<(), String> {
    if trusted.is_empty() {
        return Ok(());
    }
    let sig = policy_sig::read_sig(file)
        .map_err(|e| format!("{}: cannot read: {e}", policy_sig::sig_path(file).display()))?;
    policy_sig::check(file, text.as_bytes(), sig.as_deref(), trusted)
        .map(drop)
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// What a reload changes.
#[derive(Default)]
pub struct Plan {
    /// New policies and new versions, compiled, by name.
    pub fresh: BTreeMap<String, Loaded>,
    /// Policies whose file is gone and that no cgroup is tagged with.
    pub unload: Vec<String>,
    /// Policies whose file is gone while cgroups are tagged with them: they
    /// stay in force for those, their selectors do not.
    pub orphaned: HashSet<String>,
    /// Unchanged, rejected and warnings (applied and unloaded are filled in
    /// once the plan is in force).
    pub report: ReloadReport,
}

/// Plans a reload: each file whose text changed is parsed and compiled as a
/// new version with an id of its own (an unchanged one is not parsed again:
/// a policy can hold 100 000 entries); a file that fails leaves its policy
/// as it was; a policy whose file is gone is unloaded unless `users` says
/// cgroups are tagged with it.
pub fn plan(scan: Scan, in_force: &BTreeMap<String, Loaded>, users: &dyn Fn(&str) -> usize, ids: &mut Ids) -> Plan {
    let mut plan = Plan::default();
    plan.report.rejected = scan.rejected;
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (file, text) in &scan.files {
        let hash = policies::hash(text);
        if let Some(current) = in_force.values().find(|p| p.file == *file && p.hash == hash) {
            seen.insert(current.name.clone(), file.clone());
            plan.report.unchanged.push(current.name.clone());
            continue;
        }
        let (policy, warnings) = match crate::policy::parse(text, file) {
            Ok(parsed) => parsed,
            Err(e) => {
                plan.report.rejected.push(Rejected { file: file.clone(), error: e.to_string() });
                continue;
            }
        };
        let name = policy.name.clone();
        if let Some(first) = seen.get(&name) {
            let error = format!("{}: error: policy `{name}` is already defined by {}", file.display(), first.display());
            plan.report.rejected.push(Rejected { file: file.clone(), error });
            continue;
        }
        seen.insert(name.clone(), file.clone());
        let current = in_force.get(&name);
        if current.is_some_and(|c| c.hash == hash) {
            plan.report.unchanged.push(name);
            continue;
        }
        let used = policies::ids_in_use(in_force.values().chain(plan.fresh.values()));
        let Some(id) = ids.allocate(&used) else {
            plan.report.rejected.push(Rejected { file: file.clone(), error: "every policy id is in use".to_owned() });
            continue;
        };
        // A new version keys its destinations as the one it replaces.
        let ids =
            current.map_or(VersionIds::first(id), |c| VersionIds { id, net_id: c.net_id, version: c.version + 1 });
        match policies::compile_parsed(file, text, policy, &warnings, ids) {
            Ok(loaded) => {
                plan.report.warnings.extend(loaded.warnings.iter().cloned());
                plan.fresh.insert(name, loaded);
            }
            Err(error) => plan.report.rejected.push(Rejected { file: file.clone(), error }),
        }
    }
    let rejected_files: HashSet<PathBuf> = plan.report.rejected.iter().map(|r| r.file.clone()).collect();
    for (name, current) in in_force {
        if current.run || seen.contains_key(name) || rejected_files.contains(&current.file) || scan.unreadable {
            continue;
        }
        match users(name) {
            0 => plan.unload.push(name.clone()),
            users => {
                plan.orphaned.insert(name.clone());
                plan.report.rejected.push(Rejected {
                    file: current.file.clone(),
                    error: format!(
                        "{}: policy `{name}` was removed, but {users} cgroup(s) are tagged with it: version {} \
                         stays in \
                         force until they are untagged (its selectors are not)",
                        current.file.display(),
                        current.version
                    ),
                });
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, policy: &str, extra: &str) -> PolicyFile {
        (dir.join(name), format!("name = \"{policy}\"\nmode = \"enforce\"\n{extra}"))
    }

    fn scan_of(files: Vec<PolicyFile>) -> Scan {
        Scan { files, rejected: Vec::new(), unreadable: false }
    }

    /// Puts a plan's fresh policies in force, as `Core` does once applied.
    fn apply(in_force: &mut BTreeMap<String, Loaded>, plan: Plan) {
        for name in &plan.unload {
            in_force.remove(name);
        }
        in_force.extend(plan.fresh);
    }

    /// The policies in force after a first reload of `files`.
    fn loaded(files: Vec<PolicyFile>, ids: &mut Ids) -> BTreeMap<String, Loaded> {
        plan(scan_of(files), &BTreeMap::new(), NO_USERS, ids).fresh
    }

    const NO_USERS: &dyn Fn(&str) -> usize = &|_| 0;

    #[test]
    fn new_files_become_first_versions_with_ids_of_their_own_then_stay_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![file(dir.path(), "a.toml", "a", ""), file(dir.path(), "b.toml", "b", "")];
        let (mut in_force, mut ids) = (BTreeMap::new(), Ids::new());
        let first = plan(scan_of(files.clone()), &in_force, NO_USERS, &mut ids);
        assert!(first.report.rejected.is_empty(), "{:?}", first.report.rejected);
        assert_eq!(first.fresh.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(first.fresh.values().all(|p| p.version == 1));
        assert_ne!(first.fresh["a"].id, first.fresh["b"].id);
        apply(&mut in_force, first);
        let again = plan(scan_of(files), &in_force, NO_USERS, &mut ids);
        assert!(again.fresh.is_empty() && again.unload.is_empty());
        assert_eq!(again.report.unchanged, ["a", "b"]);
    }

    #[test]
    fn a_changed_file_is_a_new_version_under_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::new();
        let in_force = loaded(vec![file(dir.path(), "a.toml", "a", "")], &mut ids);
        let old_id = in_force["a"].id;
        let changed = vec![file(dir.path(), "a.toml", "a", "[network]\nallow = [\"10.0.0.1:443\"]\n")];
        let next = plan(scan_of(changed), &in_force, NO_USERS, &mut ids);
        assert_eq!(next.fresh["a"].version, 2);
        assert_ne!(next.fresh["a"].id, old_id, "both versions are in the kernel during the swap");
        assert!(next.fresh["a"].net.is_some());
    }

    #[test]
    fn a_file_that_fails_or_repeats_a_name_is_rejected_and_what_was_in_force_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::new();
        let in_force = loaded(vec![file(dir.path(), "a.toml", "a", "")], &mut ids);
        let files = vec![
            (dir.path().join("a.toml"), "name = \"a\"\nmode = \"sometimes\"\n".to_owned()),
            file(dir.path(), "b.toml", "b", ""),
            file(dir.path(), "c.toml", "b", ""),
        ];
        let next = plan(scan_of(files), &in_force, NO_USERS, &mut ids);
        assert!(next.unload.is_empty(), "a's file failed: a stays");
        assert_eq!(next.fresh.keys().collect::<Vec<_>>(), ["b"]);
        let errors: Vec<&str> = next.report.rejected.iter().map(|r| r.error.as_str()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("a.toml:2:"), "located: {}", errors[0]);
        assert!(errors[1].contains("policy `b` is already defined by"), "{}", errors[1]);
    }

    #[test]
    fn a_removed_file_unloads_its_policy_unless_cgroups_are_tagged_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::new();
        let in_force = loaded(vec![file(dir.path(), "a.toml", "a", ""), file(dir.path(), "b.toml", "b", "")], &mut ids);
        let users = |name: &str| usize::from(name == "b") * 3;
        let next = plan(scan_of(Vec::new()), &in_force, &users, &mut ids);
        assert_eq!(next.unload, ["a"]);
        assert_eq!(next.orphaned, HashSet::from(["b".to_owned()]));
        assert!(next.report.rejected[0].error.contains("policy `b` was removed, but 3 cgroup(s) are tagged with it"));
    }

    #[test]
    fn an_unreadable_directory_unloads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Ids::new();
        let in_force = loaded(vec![file(dir.path(), "a.toml", "a", "")], &mut ids);
        let gone = scan(&dir.path().join("absent"), &[]);
        assert!(gone.unreadable);
        let next = plan(gone, &in_force, NO_USERS, &mut ids);
        assert!(next.unload.is_empty() && next.fresh.is_empty());
        assert!(next.report.rejected[0].error.contains("cannot read the policy directory"));
    }

    #[test]
    fn with_trusted_keys_only_files_they_signed_are_read() {
        use crate::evidence::{keys, policy_sig};
        let dir = tempfile::tempdir().unwrap();
        let key = keys::generate().unwrap();
        let text = "name = \"a\"\n";
        for name in ["signed.toml", "unsigned.toml", "changed.toml"] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(policy_sig::sig_path(&dir.path().join("signed.toml")), policy_sig::sign(&key, text.as_bytes()))
            .unwrap();
        let changed = dir.path().join("changed.toml");
        std::fs::write(policy_sig::sig_path(&changed), policy_sig::sign(&key, b"name = \"b\"\n")).unwrap();

        let read = scan(dir.path(), &[key.verifying_key()]);
        let files: Vec<_> = read.files.iter().map(|(f, _)| f.file_name().unwrap().to_owned()).collect();
        assert_eq!(files, ["signed.toml"]);
        let errors: Vec<&str> = read.rejected.iter().map(|r| r.error.as_str()).collect();
        assert!(errors[0].contains("changed.toml: its signature by key") && errors[0].contains("does not match"));
        assert!(errors[1].contains("unsigned.toml: is not signed"), "{}", errors[1]);
        assert_eq!(scan(dir.path(), &[]).files.len(), 3, "no keys: every file");
    }
}
