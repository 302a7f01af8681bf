//! Cgroup selectors: globs over cgroup paths in policies
//! (`cgroups = ["/agents.slice/*.scope", "/kubepods.slice/**/agent-*"]`),
//! compiled into the one DFA the kernel runs as each cgroup is created (see
//! `enforcer_common::select`). Userspace judges existing cgroups with the
//! same table and the same steps, so both always agree.
//!
//! Syntax (globset's, with `/` never matched by a wildcard): `*` is any run
//! of characters within one path component, `?` one character, `[a-z]` and
//! `[!a-z]` classes, `{a,b}` alternatives, and `**` as a whole component is
//! zero or more components.

use std::collections::{HashMap, VecDeque};

use enforcer_common::{
    policy::{MAX_TAG_LEVEL, TagFilter},
    select::{DEAD, SELECTOR_CLASSES, SELECTOR_SLOTS, SELECTOR_STATES, SLOT_UNRESOLVED, START, SelectorTable},
};
use regex_automata::{
    Anchored,
    dfa::{Automaton, StartKind, dense},
    nfa::thompson,
    util::{primitives::StateID, start, syntax},
};

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "the selectors in force need {states} DFA states; the kernel holds at most {SELECTOR_STATES}: use fewer or \
         simpler globs"
    )]
    TooManyStates { states: usize },
    #[error(
        "the selectors in force tell {classes} kinds of characters apart; the kernel holds at most \
         {SELECTOR_CLASSES}: use fewer or simpler globs"
    )]
    TooManyClasses { classes: usize },
    #[error("{count} policies have selectors; at most {} can", SELECTOR_SLOTS - 1)]
    TooManySlots { count: usize },
    #[error(
        "the selectors in force are too complex to compile (their DFA would exceed {} MiB): a `*` followed by many \
         `?` or classes multiplies the states; use fewer or simpler globs",
        DFA_BYTES_MAX >> 20
    )]
    TooComplex,
    #[error("cannot compile the selectors: {0}")]
    Build(String),
}

/// Memory the DFA compiler may use (each of the determinizer and the DFA):
/// a hostile or unlucky glob fails fast with [`SelectorError::TooComplex`]
/// instead of taking the daemon's memory and time. The kernel's table holds
/// `SELECTOR_STATES` (1 024) states, and every state of a glob's DFA can still
/// reach a match (so none is pruned), so a DFA above 1 024 states of at most 512
/// 4-byte transitions each (2 MiB) could never be loaded: 4 MiB leaves room and
/// no more.
const DFA_BYTES_MAX: usize = 4 << 20;

/// Checks one glob; the message says what is wrong and what to write.
pub fn validate(glob: &str) -> Result<(), String> {
    let components: Vec<&str> =
        glob.strip_prefix('/').ok_or("a selector starts with `/`, the cgroup2 root")?.split('/').collect();
    if glob == "/" {
        return Err("the root cgroup cannot be selected: name the cgroups below it".to_owned());
    }
    for component in &components {
        match *component {
            "" => return Err("empty path component (`//` or a trailing `/`)".to_owned()),
            "." | ".." => return Err("`.` and `..` are not allowed".to_owned()),
            "**" => {}
            c if c.contains("**") => return Err(format!("`**` must be a whole path component, not part of `{c}`")),
            c if c.contains(['\n', '\0']) => return Err("newlines and NUL bytes cannot be in a cgroup name".to_owned()),
            _ => {}
        }
    }
    if components.iter().all(|c| *c == "**") {
        return Err("a selector needs at least one component besides `**`".to_owned());
    }
    let depth = components.iter().filter(|c| **c != "**").count();
    if depth > MAX_TAG_LEVEL as usize {
        return Err(format!("cgroups deeper than level {MAX_TAG_LEVEL} cannot be tagged"));
    }
    regex_of(glob).map(drop)
}

fn regex_of(glob: &str) -> Result<String, String> {
    let glob = globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(glob.regex().to_owned())
}

fn is_literal(component: &str) -> bool {
    !component.contains(['*', '?', '[', '{', '\\'])
}

/// The cgroup every cgroup `glob` selects is below: its leading literal
/// components (`/` if the first is a pattern). The socket programs go there.
#[must_use]
pub fn root_of(glob: &str) -> String {
    let components: Vec<&str> = glob.trim_start_matches('/').split('/').collect();
    let literal = components.iter().take(components.len() - 1).take_while(|c| is_literal(c)).count();
    format!("/{}", components[..literal].join("/"))
}

/// The cgroup levels `glob` can select at: the first, and whether every
/// deeper one too (a `**`).
fn levels_of(glob: &str) -> (u32, bool) {
    let components: Vec<&str> = glob.trim_start_matches('/').split('/').collect();
    let fixed = components.iter().filter(|c| **c != "**").count();
    (u32::try_from(fixed).unwrap_or(u32::MAX), fixed != components.len())
}

/// The pre-filter levels of `globs`: the tag check looks for selected
/// cgroups at these.
#[must_use]
pub fn levels_filter<'a>(globs: impl IntoIterator<Item = &'a str>) -> TagFilter {
    let mut filter = TagFilter::EMPTY;
    for glob in globs {
        let (first, deeper) = levels_of(glob);
        let last = if deeper { MAX_TAG_LEVEL } else { first };
        for level in first..=last.min(MAX_TAG_LEVEL) {
            filter.shallowest = filter.shallowest.min(level);
            filter.level_bits |= 1 << level;
        }
    }
    filter
}

/// The globs as one DFA over bytes, a pattern per selector in their order.
fn build_dfa(selectors: &[(u32, String)]) -> Result<dense::DFA<Vec<u32>>, SelectorError> {
    let regexes: Vec<String> =
        selectors.iter().map(|(_, g)| regex_of(g)).collect::<Result<_, _>>().map_err(SelectorError::Build)?;
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .match_kind(regex_automata::MatchKind::All)
                .dfa_size_limit(Some(DFA_BYTES_MAX))
                .determinize_size_limit(Some(DFA_BYTES_MAX)),
        )
        .syntax(syntax::Config::new().utf8(false).unicode(false))
        .thompson(thompson::Config::new().utf8(false).nfa_size_limit(Some(DFA_BYTES_MAX)))
        .build_many(&regexes)
        .map_err(|e| {
            if e.to_string().contains("exceeded") {
                SelectorError::TooComplex
            } else {
                SelectorError::Build(e.to_string())
            }
        })
}

/// Compiles `(slot, glob)` pairs into the kernel's table. A path several
/// globs match is selected by the first pair's slot.
pub fn compile(selectors: &[(u32, String)]) -> Result<Box<SelectorTable>, SelectorError> {
    let mut table = crate::policy::tables::no_selectors();
    if selectors.is_empty() {
        return Ok(table);
    }
    if selectors.iter().any(|(slot, _)| *slot >= SLOT_UNRESOLVED) {
        return Err(SelectorError::TooManySlots { count: selectors.len() });
    }
    let dfa = build_dfa(selectors)?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| SelectorError::Build(e.to_string()))?;
    // Number the states reachable from the start, breadth first.
    let mut ids: HashMap<StateID, usize> = HashMap::from([(start, 0)]);
    let mut order = vec![start];
    let mut queue = VecDeque::from([start]);
    while let Some(state) = queue.pop_front() {
        for byte in 0..=255u8 {
            let next = dfa.next_state(state, byte);
            if !dfa.is_dead_state(next) && !ids.contains_key(&next) {
                ids.insert(next, order.len());
                order.push(next);
                queue.push_back(next);
            }
        }
    }
    // Where a path ending in each state is selected, and by which slot.
    let accepting: Vec<Option<u32>> = order
        .iter()
        .map(|&state| {
            let eoi = dfa.next_eoi_state(state);
            dfa.is_match_state(eoi).then(|| {
                let first = (0..dfa.match_len(eoi)).map(|i| dfa.match_pattern(eoi, i).as_usize()).min().unwrap_or(0);
                selectors[first].0
            })
        })
        .collect();
    let next_of = |state: usize, byte: u8| -> Option<usize> {
        let next = dfa.next_state(order[state], byte);
        ids.get(&next).copied()
    };
    // States that can still reach a selection; the rest become `DEAD`.
    let mut live: Vec<bool> = accepting.iter().map(Option::is_some).collect();
    loop {
        let mut changed = false;
        for state in 0..order.len() {
            if !live[state] && (0..=255u8).any(|b| next_of(state, b).is_some_and(|n| live[n])) {
                live[state] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !live[0] {
        return Ok(table);
    }
    // Kernel numbering: DEAD 0, START 1, then the other live states.
    let mut number = vec![DEAD; order.len()];
    let mut count = 1usize;
    for state in (0..order.len()).filter(|&s| live[s]) {
        count += 1;
        number[state] = u16::try_from(count - 1).unwrap_or(u16::MAX);
    }
    if count > SELECTOR_STATES {
        return Err(SelectorError::TooManyStates { states: count });
    }
    debug_assert_eq!(number[0], START);
    // Bytes with the same column of transitions share a class.
    let mut classes: HashMap<Vec<u16>, u8> = HashMap::new();
    for byte in 0..=255u8 {
        let column: Vec<u16> =
            (0..order.len()).filter(|&s| live[s]).map(|s| next_of(s, byte).map_or(DEAD, |n| number[n])).collect();
        let fresh = u8::try_from(classes.len()).unwrap_or(u8::MAX);
        let class = *classes.entry(column).or_insert(fresh);
        table.classes[byte as usize] = class;
    }
    if classes.len() > SELECTOR_CLASSES {
        return Err(SelectorError::TooManyClasses { classes: classes.len() });
    }
    for state in (0..order.len()).filter(|&s| live[s]) {
        let row = number[state] as usize;
        if let Some(slot) = accepting[state] {
            table.accept[row] = u8::try_from(slot + 1).unwrap_or(0);
        }
        for byte in 0..=255u8 {
            let class = table.classes[byte as usize] as usize;
            table.next[row * SELECTOR_CLASSES + class] = next_of(state, byte).map_or(DEAD, |n| number[n]);
        }
    }
    table.states = u32::try_from(count).unwrap_or(u32::MAX);
    Ok(table)
}

/// The slot `table` selects cgroup path `path` (`/a/b`) with: the kernel's
/// walk, on a path read whole.
#[must_use]
pub fn selects(table: &SelectorTable, path: &str) -> Option<u32> {
    if table.states == 0 {
        return None;
    }
    let mut state = START;
    for &byte in path.as_bytes() {
        state = table.step(state, byte);
        if state == DEAD {
            return None;
        }
    }
    table.accepts(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(globs: &[&str]) -> Box<SelectorTable> {
        let selectors: Vec<(u32, String)> =
            globs.iter().enumerate().map(|(i, g)| (u32::try_from(i).unwrap(), (*g).to_owned())).collect();
        compile(&selectors).unwrap()
    }

    #[test]
    fn a_pathological_glob_is_refused_not_compiled() {
        // The size limits bound the work; how long that takes is not asserted
        // here (a loaded CI machine once took 13 s for a 16 MiB limit).
        let glob = format!("/*a{}", "?".repeat(24));
        let result = compile(&[(0, glob)]);
        assert!(matches!(result, Err(SelectorError::TooComplex)), "{:?}", result.err());
        assert!(SelectorError::TooComplex.to_string().contains("too complex"));
    }

    #[test]
    fn globs_select_what_globset_matches() {
        let globs = ["/agents.slice/*.scope", "/kubepods.slice/**/agent-*", "/ci/job-?/[a-c]*", "/x/{one,two}"];
        let paths = [
            "/agents.slice/a.scope",
            "/agents.slice/.scope",
            "/agents.slice/a/b.scope",
            "/agents.slice/a.scopes",
            "/agents.slice",
            "/kubepods.slice/agent-1",
            "/kubepods.slice/a/b/agent-",
            "/kubepods.slice/a/b/agent",
            "/kubepods.slice/a/agent-1/x",
            "/ci/job-1/abc",
            "/ci/job-12/abc",
            "/ci/job-1/d",
            "/x/one",
            "/x/three",
            "/other",
            "",
            "/",
        ];
        let table = compiled(&globs);
        for path in paths {
            let expected = globs.iter().position(|g| {
                globset::GlobBuilder::new(g).literal_separator(true).build().unwrap().compile_matcher().is_match(path)
            });
            assert_eq!(selects(&table, path), expected.map(|i| u32::try_from(i).unwrap()), "{path}");
        }
    }

    #[test]
    fn the_first_matching_selector_wins() {
        let table = compiled(&["/a/*", "/a/b"]);
        assert_eq!(selects(&table, "/a/b"), Some(0));
        let table = compiled(&["/a/b", "/a/*"]);
        assert_eq!(selects(&table, "/a/b"), Some(0));
        assert_eq!(selects(&table, "/a/c"), Some(1));
    }

    #[test]
    fn hopeless_prefixes_are_dead_at_once() {
        let table = compiled(&["/agents.slice/*.scope"]);
        let mut state = START;
        for &byte in b"/system.slice" {
            state = table.step(state, byte);
        }
        assert_eq!(state, DEAD);
    }

    #[test]
    fn roots_and_levels() {
        assert_eq!(root_of("/agents.slice/*.scope"), "/agents.slice");
        assert_eq!(root_of("/kubepods.slice/**/agent-*"), "/kubepods.slice");
        assert_eq!(root_of("/a/b/c"), "/a/b");
        assert_eq!(root_of("/*/c"), "/");
        assert_eq!(levels_of("/a/*"), (2, false));
        assert_eq!(levels_of("/a/**/b"), (2, true));
        let filter = levels_filter(["/a/*", "/b/c/d"]);
        assert_eq!((filter.shallowest, filter.level_bits), (2, 0b1100));
    }

    #[test]
    fn bad_globs_say_why() {
        for (glob, says) in [
            ("agents.slice/*", "starts with `/`"),
            ("/", "root cgroup"),
            ("/a//b", "empty path component"),
            ("/a/", "empty path component"),
            ("/a/../b", "not allowed"),
            ("/a/b**", "whole path component"),
            ("/**", "besides `**`"),
            ("/a/[b", "unclosed"),
        ] {
            let error = validate(glob).unwrap_err();
            assert!(error.contains(says), "{glob}: {error}");
        }
    }
}
