//! `network.upload`: byte budgets over a window, for everything an agent
//! sends (`*`) and for the addresses of a name:
//!
//! ```toml
//! upload = ["api.github.com: 1MiB/10m", "*.pypi.org: 50MiB/1h", "*: 200MiB/1h"]
//! ```

use std::{str::FromStr, time::Duration};

use enforcer_common::{
    budget::{BUDGET_ALL, BUDGET_NEW_DESTINATIONS, BUDGETS_PER_POLICY, Budget, budget_key},
    policy::PolicyId,
};

use crate::policy::{
    Location,
    destinations::{EntryError, Target, host_matches, parse_host},
};

/// What a budget counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetTo {
    /// Every byte the agent sends over IPv4 and IPv6.
    All,
    /// What it sends to the addresses a matching name resolved to
    /// (`wildcard`: any one label in front of `name`).
    Host { name: String, wildcard: bool },
}

/// One `network.upload` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadBudget {
    pub to: BudgetTo,
    pub bytes: u64,
    pub window: Duration,
}

/// One entry with where the policy says it.
pub type Located = (UploadBudget, Location);

const FORM: &str = "write `DESTINATION: SIZE/WINDOW`, e.g. \"api.github.com: 1MiB/10m\", \"*.pypi.org: 50MiB/1h\", \
\"*: 200MiB/1h\" (`*`: everything the agent sends)";

fn fail<T>(message: impl Into<String>, hint: impl Into<String>) -> Result<T, EntryError> {
    Err(EntryError { message: message.into(), hint: hint.into() })
}

impl FromStr for UploadBudget {
    type Err = EntryError;

    fn from_str(entry: &str) -> Result<Self, EntryError> {
        let Some((to, rest)) = entry.rsplit_once(':') else {
            return fail(format!("`{entry}` has no `:` before its size"), FORM);
        };
        let to = match to.trim() {
            "*" => BudgetTo::All,
            host if host.parse::<std::net::IpAddr>().is_ok() || host.contains('/') || host.contains(':') => {
                return fail(
                    format!("`{host}`: budgets are by host name or `*`, not by address"),
                    "name the host the agent resolves (its addresses count together), or use `*`",
                );
            }
            host => match parse_host(host)? {
                Target::Host { name, wildcard } => BudgetTo::Host { name, wildcard },
                Target::Net { .. } => return fail(format!("`{host}` is not a host name"), FORM),
            },
        };
        let Some((size, window)) = rest.trim().split_once('/') else {
            return fail(format!("`{entry}`: no window after the size"), FORM);
        };
        Ok(Self { to, bytes: parse_size(size.trim())?, window: parse_window(window.trim())? })
    }
}

/// A budget of distinct things per window for one agent (`"300/1h"`):
/// `network.dns_names` counts the names the resolver asks upstream,
/// `network.new_destinations` the destinations (address and port) reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountBudget {
    pub count: usize,
    pub window: Duration,
}

/// Most a count budget may allow per window (each name or destination is
/// kept until its window ends).
pub const COUNT_MAX: usize = 100_000;

impl FromStr for CountBudget {
    type Err = EntryError;

    fn from_str(entry: &str) -> Result<Self, EntryError> {
        let hint = "write `COUNT/WINDOW`, e.g. \"300/1h\": at most COUNT distinct ones per window for one agent";
        let Some((count, window)) = entry.split_once('/') else {
            return fail(format!("`{entry}` has no `/` before its window"), hint);
        };
        let count = count.trim().parse::<usize>().ok().filter(|n| (1..=COUNT_MAX).contains(n));
        let Some(count) = count else {
            return fail(format!("`{entry}`: the count is not 1 to {COUNT_MAX}"), hint);
        };
        Ok(Self { count, window: parse_window(window.trim())? })
    }
}

impl CountBudget {
    /// The budget as the programs hold it.
    #[must_use]
    pub fn kernel(&self) -> Budget {
        Budget { limit: self.count as u64, window_ns: u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX) }
    }
}

/// A window of whole seconds, `1s` to `31d`.
fn parse_window(window: &str) -> Result<Duration, EntryError> {
    humantime::parse_duration(window)
        .ok()
        .filter(|w| w.subsec_nanos() == 0 && *w >= Duration::from_secs(1) && *w <= Duration::from_hours(24 * 31))
        .map_or_else(
            || {
                fail(
                    format!("`{window}` is not a window of whole seconds, 1s to 31d"),
                    "write a duration such as 30s, 10m, 1h or 1d",
                )
            },
            Ok,
        )
}

/// `512`, `64KiB`, `1MiB`, `2GiB` (powers of 1024), `1kB`, `5MB`, `1GB`
/// (powers of 1000); `B` may follow a plain number.
fn parse_size(size: &str) -> Result<u64, EntryError> {
    let digits = size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len());
    let (number, unit) = size.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return fail(format!("`{size}` is not a size"), "write bytes with a unit, e.g. 512KiB, 1MiB, 2GiB or 5MB");
        }
    };
    number.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).map_or_else(
        || fail(format!("`{size}` is not a size"), "write a whole number of bytes with a unit, e.g. 512KiB or 1MiB"),
        Ok,
    )
}

impl UploadBudget {
    /// The index the programs know it by: 0 for `*`, else its position in
    /// `network.upload` plus one.
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "at most BUDGETS_PER_POLICY entries (parse checks)")]
    pub fn index(&self, position: usize) -> u16 {
        match self.to {
            BudgetTo::All => BUDGET_ALL,
            BudgetTo::Host { .. } => position as u16 + 1,
        }
    }

    /// The budget as the programs hold it.
    #[must_use]
    pub fn kernel(&self) -> Budget {
        Budget { limit: self.bytes, window_ns: u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX) }
    }

    /// What it counts, as the policy writes it.
    #[must_use]
    pub fn destination(&self) -> String {
        match &self.to {
            BudgetTo::All => "*".to_owned(),
            BudgetTo::Host { name, wildcard: true } => format!("*.{name}"),
            BudgetTo::Host { name, wildcard: false } => name.clone(),
        }
    }
}

/// The `BUDGETS` entries of a policy version's budgets.
#[must_use]
pub fn kernel_entries(budgets: &[Located], policy_id: PolicyId) -> Vec<(u32, Budget)> {
    budgets.iter().enumerate().map(|(i, (b, _))| (budget_key(policy_id, b.index(i)), b.kernel())).collect()
}

/// The budget the addresses of `qname` count against beyond `*`: the first
/// host entry that matches it.
#[must_use]
pub fn index_for(budgets: &[Located], qname: &str) -> Option<u16> {
    budgets.iter().enumerate().find_map(|(i, (budget, _))| match &budget.to {
        BudgetTo::Host { name, wildcard } if host_matches(name, *wildcard, qname) => Some(budget.index(i)),
        _ => None,
    })
}

/// The entry with index `index` (of an event), if any.
#[must_use]
pub fn by_index(budgets: &[Located], index: u16) -> Option<&UploadBudget> {
    budgets.iter().enumerate().find(|(i, (b, _))| b.index(*i) == index).map(|(_, (b, _))| b)
}

/// The name the budget of new destinations goes by in events and status.
pub const NEW_DESTINATIONS: &str = "new_destinations";

/// The budgets of `policy` by index, as the policy names them (for events):
/// `network.upload` entries by their destination, and `new_destinations`.
#[must_use]
pub fn names(policy: &crate::policy::Policy) -> Vec<(u16, String)> {
    let Some(network) = &policy.network else { return Vec::new() };
    let mut names: Vec<_> =
        network.upload.iter().enumerate().map(|(i, (b, _))| (b.index(i), b.destination())).collect();
    if network.new_destinations.is_some() {
        names.push((BUDGET_NEW_DESTINATIONS, NEW_DESTINATIONS.to_owned()));
    }
    names
}

/// Budgets one policy may have (checked when it is parsed).
pub const MAX: usize = BUDGETS_PER_POLICY;

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(entry: &str) -> UploadBudget {
        entry.parse().unwrap_or_else(|e: EntryError| panic!("{entry}: {}", e.message))
    }

    #[test]
    fn entries_parse_as_the_readme_writes_them() {
        let github = parsed("api.github.com: 1MiB/10m");
        assert_eq!(github.to, BudgetTo::Host { name: "api.github.com".into(), wildcard: false });
        assert_eq!((github.bytes, github.window), (1 << 20, Duration::from_mins(10)));
        let all = parsed("*: 20MB/1h");
        assert_eq!((all.to, all.bytes, all.window), (BudgetTo::All, 20_000_000, Duration::from_hours(1)));
        assert_eq!(parsed("*.PyPI.org.:512KiB/30s").destination(), "*.pypi.org");
        assert_eq!(parsed("example.com: 100/1s").bytes, 100);
    }

    #[test]
    fn what_cannot_be_a_budget_says_so() {
        for (entry, says) in [
            ("api.github.com 1MiB/10m", "no `:`"),
            ("10.0.0.0/8: 1MiB/1h", "not by address"),
            ("[2001:db8::1]: 1MiB/1h", "not by address"),
            ("example.com: 1MiB", "no window"),
            ("example.com: 1 MeB/1h", "not a size"),
            ("example.com: 99999999999GiB/1h", "not a size"),
            ("example.com: 1MiB/0s", "not a window"),
            ("example.com: 1MiB/90d", "not a window"),
            ("ex*.com: 1MiB/1h", "wildcard"),
        ] {
            let error = entry.parse::<UploadBudget>().expect_err(entry);
            assert!(error.message.contains(says), "{entry}: {}", error.message);
        }
    }

    #[test]
    fn a_count_budget_is_a_count_per_window() {
        assert_eq!("300/1h".parse(), Ok(CountBudget { count: 300, window: Duration::from_hours(1) }));
        for (entry, says) in [("300", "no `/`"), ("0/1h", "not 1 to"), ("x/1h", "not 1 to"), ("5/1ms", "not a window")]
        {
            let error = entry.parse::<CountBudget>().expect_err(entry);
            assert!(error.message.contains(says), "{entry}: {}", error.message);
        }
    }

    #[test]
    fn a_name_counts_against_the_first_host_budget_that_matches_it() {
        let at = Location { file: std::sync::Arc::from(std::path::Path::new("p.toml")), line: 1, column: 1 };
        let budgets: Vec<Located> = ["*: 1GiB/1h", "uploads.pypi.org: 1MiB/1h", "*.pypi.org: 10MiB/1h"]
            .iter()
            .map(|e| (parsed(e), at.clone()))
            .collect();
        assert_eq!(index_for(&budgets, "uploads.pypi.org"), Some(2));
        assert_eq!(index_for(&budgets, "files.pypi.org"), Some(3));
        assert_eq!(index_for(&budgets, "github.com"), None, "only `*` counts it");
        assert_eq!(by_index(&budgets, 0).map(UploadBudget::destination).as_deref(), Some("*"));
        let keys: Vec<u32> = kernel_entries(&budgets, PolicyId(7)).iter().map(|&(key, _)| key).collect();
        assert_eq!(keys, [7, 7 | 2 << 16, 7 | 3 << 16]);
    }
}
