//! What a tag or untag request means, decided without the kernel: which
//! cgroup and policy it names, whether it may be done, and where the socket
//! programs go once it is. `Core` applies the decision to the maps.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Component, Path, PathBuf},
};

use super::{core::OpError, policies::Loaded, selection::SelectedCgroup, wire::Tag};
use enforcer_common::policy::{TAG_FROM_EXEC, TagInfo};

use crate::cgroups::Cgroup;

/// The directory a cgroup argument names: a path below the cgroup2 mount
/// (`/a/b`), or the same with the mount point in front.
pub fn cgroup_dir(mount: &Path, arg: &str) -> Result<PathBuf, OpError> {
    let path = Path::new(arg);
    let path = if path.starts_with(mount) { path.to_owned() } else { mount.join(arg.trim_start_matches('/')) };
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(OpError::Invalid(format!("cgroup `{arg}`: `..` is not allowed")));
    }
    Ok(path)
}

/// The cgroup's name (`/a/b`) a cgroup argument gives, whether or not the
/// cgroup still exists.
pub fn cgroup_name(mount: &Path, arg: &str) -> String {
    format!("/{}", arg.trim_start_matches(&*mount.to_string_lossy()).trim_matches('/'))
}

/// The loaded policy a tag request names; `policies_dir` is where a missing
/// one's file would go.
pub fn policy_to_tag<'a>(
    policies: &'a BTreeMap<String, Loaded>,
    name: &str,
    policies_dir: &Path,
) -> Result<&'a Loaded, OpError> {
    policies.get(name).ok_or_else(|| {
        let known: Vec<&str> = policies.keys().map(String::as_str).collect();
        OpError::NotFound(format!(
            "no policy named `{name}` is loaded (loaded: {}); add its file to {}",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") },
            policies_dir.display()
        ))
    })
}

/// What the kernel judges a tagged cgroup by: its policy's tag, waiting for
/// an exec if the tag says so and no exec `armed` it yet (an armed tag is
/// keyed by the plain id, where the tag check looks first).
pub fn tag_info(policy: TagInfo, tag: &Tag, armed: bool) -> TagInfo {
    if tag.from_exec && !armed { policy.with_flags(policy.flags | TAG_FROM_EXEC) } else { policy }
}

/// Refuses a cgroup no tag may go on.
pub fn check_taggable(cgroup: &Cgroup) -> Result<(), OpError> {
    if cgroup.level == 0 {
        return Err(OpError::Invalid("the root cgroup cannot be tagged: tag the agent's own cgroup".to_owned()));
    }
    Ok(())
}

/// The id of the tagged cgroup an untag request names: by `id` if the
/// cgroup exists, else by the `name` it had.
pub fn tagged_id<'a>(
    tags: &BTreeMap<u64, Tag>,
    mut selected: impl Iterator<Item = &'a SelectedCgroup>,
    arg: &str,
    name: &str,
    id: Option<u64>,
) -> Result<u64, OpError> {
    if let Some(tag) = tags.values().find(|t| Some(t.cgroup_id) == id || t.cgroup == name) {
        return Ok(tag.cgroup_id);
    }
    if let Some(selected) = selected.find(|c| Some(c.cgroup_id) == id || c.cgroup == name) {
        return Err(OpError::Invalid(format!(
            "cgroup `{}` was tagged by a selector of policy `{}`: change the policy's `cgroups` to release it",
            selected.cgroup, selected.policy
        )));
    }
    Err(OpError::NotFound(format!("cgroup `{arg}` is not tagged")))
}

/// What tagging one cgroup needs of the socket programs, which sit on the
/// outermost of the tagged cgroups and the selectors' roots.
#[derive(Debug, PartialEq, Eq)]
pub enum NetStep {
    /// A tagged cgroup at or above it has them: nothing to do.
    Covered,
    /// Nothing at, above or below it has them: on it, and only there.
    AttachHere,
    /// Points below it would be judged twice, or a selector's root is
    /// involved: work the whole set out again.
    Resync,
}

/// [`NetStep`] for tagging `cgroup`, given the tagged cgroups and the
/// selectors' roots (all names below the mount): the common case (a new
/// cgroup beside the others) costs no walk of the kernel's attachments.
pub fn net_step<'a>(cgroup: &str, tagged: impl IntoIterator<Item = &'a str>, selector_roots: &[String]) -> NetStep {
    let within = |outer: &str, inner: &str| {
        let outer = outer.trim_end_matches('/');
        inner == outer || outer.is_empty() || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'))
    };
    if selector_roots.iter().any(|root| within(root, cgroup) || within(cgroup, root)) {
        return NetStep::Resync;
    }
    let mut covered = false;
    for tag in tagged {
        if within(tag, cgroup) {
            covered = true;
        } else if within(cgroup, tag) {
            return NetStep::Resync;
        }
    }
    if covered { NetStep::Covered } else { NetStep::AttachHere }
}

/// The outermost of `points`: one below another needs no programs of its
/// own (those above already judge it; a second set would judge each
/// operation again, silently).
pub fn outermost(mut points: Vec<Cgroup>) -> Vec<Cgroup> {
    points.sort_by_key(|c| c.level);
    let mut kept: Vec<Cgroup> = Vec::new();
    let mut kept_names: HashSet<String> = HashSet::new();
    for point in points {
        // Covered if the point or one of its ancestors is kept already.
        let covered = std::iter::successors(Some(point.name.as_str()), |n| n.rfind('/').map(|i| &n[..i]))
            .any(|n| kept_names.contains(if n.is_empty() { "/" } else { n }));
        if !covered {
            kept_names.insert(point.name.clone());
            kept.push(point);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use enforcer_common::policy::PolicyId;

    use super::*;
    use crate::daemon::policies::{VersionIds, compile_file};

    const MOUNT: &str = "/sys/fs/cgroup";

    fn cgroup(name: &str, id: u64) -> Cgroup {
        let level = if name == "/" { 0 } else { u32::try_from(name.matches('/').count()).unwrap() };
        Cgroup { path: Path::new(MOUNT).join(name.trim_start_matches('/')), name: name.to_owned(), id, level }
    }

    fn tag(name: &str, id: u64) -> Tag {
        let c = cgroup(name, id);
        Tag {
            cgroup: c.name,
            cgroup_id: id,
            level: c.level,
            policy: "agent".to_owned(),
            labels: BTreeMap::new(),
            tagged_at: String::new(),
            from_exec: false,
        }
    }

    fn names(points: &[Cgroup]) -> Vec<&str> {
        points.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn a_cgroup_argument_is_a_path_below_the_mount_with_or_without_the_mount_and_never_climbs() {
        let mount = Path::new(MOUNT);
        assert_eq!(cgroup_dir(mount, "/agents/a").unwrap(), mount.join("agents/a"));
        assert_eq!(cgroup_dir(mount, "agents/a").unwrap(), mount.join("agents/a"));
        assert_eq!(cgroup_dir(mount, "/sys/fs/cgroup/agents/a").unwrap(), mount.join("agents/a"));
        let climbs = cgroup_dir(mount, "/agents/../../etc").unwrap_err();
        assert!(matches!(climbs, OpError::Invalid(m) if m.contains("`..` is not allowed")));
        assert_eq!(cgroup_name(mount, "/sys/fs/cgroup/agents/a/"), "/agents/a");
        assert_eq!(cgroup_name(mount, "agents/a"), "/agents/a");
    }

    #[test]
    fn a_tag_names_a_loaded_policy_and_a_cgroup_below_the_root() {
        let loaded = compile_file(
            Path::new("agent.toml"),
            "name = \"agent\"\nmode = \"enforce\"\n",
            VersionIds::first(PolicyId(1)),
        )
        .unwrap();
        let policies = BTreeMap::from([("agent".to_owned(), loaded)]);
        assert_eq!(policy_to_tag(&policies, "agent", Path::new("/etc/enforcer/policies")).unwrap().id, PolicyId(1));
        let Err(unknown) = policy_to_tag(&policies, "other", Path::new("/etc/enforcer/policies")) else { panic!() };
        assert!(matches!(&unknown, OpError::NotFound(m)
            if m.contains("(loaded: agent); add its file to /etc/enforcer/policies")));
        assert!(matches!(check_taggable(&cgroup("/", 1)), Err(OpError::Invalid(_))));
        assert!(check_taggable(&cgroup("/agents", 2)).is_ok());
    }

    #[test]
    fn an_untag_finds_the_tag_by_id_or_by_the_name_of_a_removed_cgroup() {
        let tags = BTreeMap::from([(7, tag("/agents/a", 7))]);
        let none: [SelectedCgroup; 0] = [];
        assert_eq!(tagged_id(&tags, none.iter(), "/agents/a", "/agents/a", Some(7)).unwrap(), 7);
        // Removed (no id): found by name.
        assert_eq!(tagged_id(&tags, none.iter(), "/agents/a", "/agents/a", None).unwrap(), 7);
        let not_tagged = tagged_id(&tags, none.iter(), "/agents/b", "/agents/b", Some(8)).unwrap_err();
        assert!(matches!(not_tagged, OpError::NotFound(m) if m == "cgroup `/agents/b` is not tagged"));
    }

    #[test]
    fn an_untag_of_a_cgroup_a_selector_tagged_says_how_to_release_it() {
        let selected =
            [SelectedCgroup { cgroup: "/agents/b".to_owned(), cgroup_id: 8, level: 2, policy: "agent".to_owned() }];
        let refused = tagged_id(&BTreeMap::new(), selected.iter(), "/agents/b", "/agents/b", Some(8)).unwrap_err();
        assert!(matches!(refused, OpError::Invalid(m) if m.contains("change the policy's `cgroups` to release it")));
    }

    #[test]
    fn socket_programs_go_on_the_outermost_points_only() {
        let points = vec![
            cgroup("/agents/a/b", 3),
            cgroup("/agents/a", 2),
            cgroup("/agents/ab", 4),
            cgroup("/other", 5),
            cgroup("/other", 5),
        ];
        assert_eq!(names(&outermost(points)), ["/other", "/agents/a", "/agents/ab"]);
        let under_root = vec![cgroup("/agents", 2), cgroup("/", 1)];
        assert_eq!(names(&outermost(under_root)), ["/"]);
    }

    #[test]
    fn a_tag_beside_the_others_attaches_only_there_and_a_tag_above_others_resyncs() {
        let tagged = ["/agents/a", "/agents/b/c"];
        let roots = ["/pods/*".to_owned()];
        assert_eq!(net_step("/agents/d", tagged, &roots), NetStep::AttachHere);
        assert_eq!(net_step("/agents/ab", tagged, &roots), NetStep::AttachHere, "a name prefix is not a parent");
        assert_eq!(net_step("/agents/a", tagged, &roots), NetStep::Covered, "tagged again");
        assert_eq!(net_step("/agents/a/x", tagged, &roots), NetStep::Covered);
        assert_eq!(net_step("/agents/b", tagged, &roots), NetStep::Resync, "/agents/b/c would be judged twice");
        assert_eq!(net_step("/pods", tagged, &roots), NetStep::Resync);
        assert_eq!(net_step("/pods/*/x", tagged, &roots), NetStep::Resync);
    }
}
