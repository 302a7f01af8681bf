//! The digest as Markdown (for a terminal, a ticket or a wiki).

use std::fmt::Write as _;

use super::digest::{Digest, Talker};

#[must_use]
pub fn render(d: &Digest) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Enforcer report\n");
    let _ = writeln!(out, "{}\n", summary(d));
    if d.lost > 0 {
        let _ =
            writeln!(out, "**{} events were lost** (the kernel counted them; they are not in this report).\n", d.lost);
    }
    talkers(&mut out, "Top agents", &d.top_agents);
    talkers(&mut out, "Top programs", &d.top_programs);
    for policy in &d.policies {
        let _ = writeln!(out, "## Policy `{}`: {} refusals\n", policy.name, policy.refusals);
        for agent in &policy.agents {
            let _ = writeln!(out, "### `{}`: {} refusals\n", agent.cgroup, agent.refusals);
            let _ = writeln!(out, "| count | kind | action | reason | target | programs | first | last | |");
            let _ = writeln!(out, "|---:|---|---|---|---|---|---|---|---|");
            for g in &agent.groups {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | `{}`{} | {} | {} | {} | {} |",
                    g.count,
                    g.kind,
                    g.action,
                    g.reason,
                    cell(&g.target),
                    many(g),
                    g.programs.iter().map(|p| format!("`{}`", cell(p))).collect::<Vec<_>>().join(" "),
                    g.first,
                    g.last,
                    if g.new { "**new**" } else { "" }
                );
            }
            if agent.more_groups > 0 {
                let _ = writeln!(out, "\n…and {} more rows ({} refusals).", agent.more_groups, agent.more_refusals);
            }
            out.push('\n');
        }
    }
    out
}

/// The opening lines: what was read, the window, the totals.
pub fn summary(d: &Digest) -> String {
    let window = match (&d.since, &d.first, &d.last) {
        (Some(since), _, _) => format!("since {since}"),
        (None, Some(first), Some(last)) => format!("from {first} to {last}"),
        _ => "all lines".to_owned(),
    };
    let policy = d.policy.as_ref().map_or_else(String::new, |p| format!(", policy `{p}` only"));
    format!(
        "{} refusals{policy}, {window} ({} new rows); {} lines read from {}{}; generated {}.",
        d.refusals,
        d.new_groups,
        d.lines,
        d.files.join(", "),
        if d.unreadable > 0 { format!(" ({} not events: cut short or not JSON)", d.unreadable) } else { String::new() },
        d.generated
    )
}

fn talkers(out: &mut String, title: &str, talkers: &[Talker]) {
    if talkers.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "**{title}:** {}\n",
        talkers.iter().map(|t| format!("`{}` ({})", cell(&t.name), t.refusals)).collect::<Vec<_>>().join(", ")
    );
}

/// A collapsed row's count of targets and examples.
fn many(g: &super::digest::Group) -> String {
    g.targets.map_or_else(String::new, |n| {
        let examples: Vec<String> = g.examples.iter().map(|e| format!("`{}`", cell(e))).collect();
        format!(" ({n} targets, e.g. {})", examples.join(", "))
    })
}

/// Text fit for a table cell in code: no pipes or backticks to break it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}
