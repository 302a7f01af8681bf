//! The trees a learned policy names: a file written or a program run,
//! collapsed to the root a person would write (the workspace, `/tmp`, a
//! tool's directory in the home), never `/` or a whole system directory.

use std::path::{Component, Path, PathBuf};

/// Where the run worked.
pub struct Places {
    /// The command's working directory (`--workspace`).
    pub workspace: PathBuf,
    pub home: PathBuf,
}

/// Scratch trees every program may use: written anywhere below, they are
/// allowed whole.
const SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];
/// Where installed programs live: a program run from below one allows it whole.
const SYSTEM_PROGRAMS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt"];

/// The write tree for a file written at `path`.
pub fn write_root(path: &Path, places: &Places) -> PathBuf {
    if path.starts_with(&places.workspace) {
        return places.workspace.clone();
    }
    if let Some(scratch) = SCRATCH.iter().map(Path::new).find(|s| path.starts_with(s)) {
        return scratch.to_path_buf();
    }
    if let Ok(rest) = path.strip_prefix(&places.home) {
        // A tool's own directory (`~/.cache`, `~/.npm`, `~/.cargo`), whole;
        // a file at the top of the home, alone (its parent is the home).
        return match rest.components().next() {
            Some(Component::Normal(first)) if rest.components().count() > 1 => places.home.join(first),
            _ => path.to_path_buf(),
        };
    }
    // Elsewhere the file's directory, unless that is `/` or a directory just
    // below it (`/etc`): then the file alone.
    match path.parent() {
        Some(parent) if parent.components().count() > 2 => parent.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// The exec tree for a program run from `path`: the system tree it is in,
/// or its own directory.
pub fn exec_root(path: &Path) -> PathBuf {
    if let Some(system) = SYSTEM_PROGRAMS.iter().map(Path::new).find(|s| path.starts_with(s)) {
        return system.to_path_buf();
    }
    path.parent().filter(|p| p.components().count() > 1).unwrap_or(path).to_path_buf()
}

/// `trees` without those inside another of them.
pub fn outermost(trees: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = trees.into_iter().collect();
    trees.sort();
    let mut kept: Vec<PathBuf> = Vec::new();
    for tree in trees {
        if !kept.iter().any(|k| tree.starts_with(k)) {
            kept.push(tree);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places {
        Places { workspace: "/workspace/project".into(), home: "/root".into() }
    }

    #[test]
    fn writes_collapse_to_the_roots_a_person_would_write_and_never_to_slash() {
        let root = |p: &str| write_root(Path::new(p), &places());
        assert_eq!(root("/workspace/project/src/deep/a.o"), Path::new("/workspace/project"));
        assert_eq!(root("/tmp/pip-1234/x/y"), Path::new("/tmp"));
        assert_eq!(root("/root/.cache/pip/http/a/b"), Path::new("/root/.cache"));
        assert_eq!(root("/root/.npm/_cacache/x"), Path::new("/root/.npm"));
        assert_eq!(root("/root/.bash_history"), Path::new("/root/.bash_history"));
        assert_eq!(root("/etc/hosts"), Path::new("/etc/hosts"));
        assert_eq!(root("/top"), Path::new("/top"));
        assert_eq!(root("/var/lib/app/state.db"), Path::new("/var/lib/app"));
    }

    #[test]
    fn programs_collapse_to_their_system_tree_or_their_own_directory() {
        assert_eq!(exec_root(Path::new("/usr/lib/git-core/git-remote-https")), Path::new("/usr"));
        assert_eq!(exec_root(Path::new("/bin/sh")), Path::new("/bin"));
        assert_eq!(exec_root(Path::new("/workspace/project/build/test")), Path::new("/workspace/project/build"));
        assert_eq!(exec_root(Path::new("/hook")), Path::new("/hook"));
    }

    #[test]
    fn nested_trees_keep_the_outer_one() {
        let kept = outermost(["/tmp/a", "/tmp", "/workspace/x", "/workspace/xy"].map(PathBuf::from));
        assert_eq!(kept, ["/tmp", "/workspace/x", "/workspace/xy"].map(PathBuf::from));
    }
}
