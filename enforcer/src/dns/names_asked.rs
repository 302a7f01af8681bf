//! `network.dns_names`: the distinct names the resolver asked upstream for
//! each agent in its current window. Data hidden in names under an allowed
//! wildcard (`c2VjcmV0.uploads.example.com`) leaves one query at a time;
//! a budget of distinct names cuts such a tunnel after a few hundred,
//! while an agent asking the same names again is never refused.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use crate::policy::budgets::CountBudget;

/// Askers kept before windows that ended are dropped.
const ASKERS_KEPT: usize = 4096;

/// One asker's window: when it started, and the names asked in it.
struct Window {
    started: Instant,
    names: HashSet<String>,
}

/// The names asked per asker (the cgroup the asking socket was made in;
/// `None` when the kernel could not say: those askers share one count).
#[derive(Default)]
pub struct NamesAsked(Mutex<HashMap<Option<u64>, Window>>);

/// A name past the budget: how many distinct names the window holds.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget(pub usize);

impl NamesAsked {
    /// Whether `qname` may be asked for `asker` under `budget`: a name
    /// asked in the current window may, a new one while fewer than
    /// `budget.count` were (it is then counted).
    pub fn admit(&self, asker: Option<u64>, qname: &str, budget: CountBudget) -> Result<(), OverBudget> {
        let Ok(mut askers) = self.0.lock() else { return Err(OverBudget(0)) };
        let now = Instant::now();
        if askers.len() >= ASKERS_KEPT {
            askers.retain(|_, window| now.duration_since(window.started) < budget.window);
        }
        let window = askers.entry(asker).or_insert_with(|| Window { started: now, names: HashSet::new() });
        if now.duration_since(window.started) >= budget.window {
            *window = Window { started: now, names: HashSet::new() };
        }
        if window.names.contains(qname) {
            return Ok(());
        }
        if window.names.len() >= budget.count {
            return Err(OverBudget(window.names.len()));
        }
        window.names.insert(qname.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn new_names_past_the_budget_are_refused_names_asked_already_are_not() {
        let asked = NamesAsked::default();
        let budget = CountBudget { count: 2, window: Duration::from_hours(1) };
        assert_eq!(asked.admit(Some(7), "a.example.com", budget), Ok(()));
        assert_eq!(asked.admit(Some(7), "b.example.com", budget), Ok(()));
        assert_eq!(asked.admit(Some(7), "c.example.com", budget), Err(OverBudget(2)));
        assert_eq!(asked.admit(Some(7), "a.example.com", budget), Ok(()), "asked already");
        assert_eq!(asked.admit(Some(8), "c.example.com", budget), Ok(()), "another agent counts apart");
        let short = CountBudget { count: 2, window: Duration::ZERO };
        assert_eq!(asked.admit(Some(7), "c.example.com", short), Ok(()), "a window that ended starts again");
    }
}
