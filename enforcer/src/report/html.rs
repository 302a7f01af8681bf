//! The digest as one self-contained HTML page: inline style, the timeline
//! as inline SVG, no script and nothing fetched, so it opens anywhere,
//! offline, and shows what the events said (every string escaped).

use std::fmt::Write as _;

use super::digest::{Digest, Talker, Timeline};

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#1d2430;\
padding:0 16px}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5dae1;\
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}.muted{color:#5b6675}.lost{background:#fff1f0;border:1px solid \
#f5b5ae;padding:6px 10px;border-radius:4px}table{border-collapse:collapse;width:100%;margin:4px 0 8px}th,td{text-align:left;\
padding:4px 8px;border-bottom:1px solid #e6e9ee;vertical-align:top}th{background:#f4f6f8;font-weight:600}td.n{text-align:\
right;font-variant-numeric:tabular-nums}code{font:12.5px ui-monospace,monospace;overflow-wrap:anywhere}td.t{white-space:nowrap}.new{background:\
#1f6feb;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}.deny{color:#b42318;font-weight:600}.audit{color:#9a6700}.key{display:inline-block;width:10px;height:10px;\
margin:0 4px 0 0}\
.talkers{display:flex;gap:24px}.talkers>div{flex:1}svg text{font:11px system-ui,sans-serif;fill:#5b6675}";

#[must_use]
pub fn render(d: &Digest) -> String {
    let mut out = String::with_capacity(16 << 10);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Enforcer report</title>");
    let _ = write!(out, "<style>{STYLE}</style></head><body>");
    let _ = write!(out, "<h1>Enforcer report</h1><p class=\"muted\">{}</p>", esc(&super::markdown::summary(d)));
    if d.lost > 0 {
        let _ = write!(
            out,
            "<p class=\"lost\"><b>{} events were lost</b>: the kernel counted them; they are not in this report.</p>",
            d.lost
        );
    }
    out.push_str("<h2>Timeline</h2>");
    timeline(&mut out, &d.timeline);
    out.push_str("<div class=\"talkers\">");
    talkers(&mut out, "Top agents", &d.top_agents);
    talkers(&mut out, "Top programs", &d.top_programs);
    out.push_str("</div>");
    for policy in &d.policies {
        let _ = write!(out, "<h2>Policy <code>{}</code>: {} refusals</h2>", esc(&policy.name), policy.refusals);
        for agent in &policy.agents {
            let _ = write!(out, "<h3><code>{}</code>: {} refusals</h3>", esc(&agent.cgroup), agent.refusals);
            out.push_str(
                "<table><tr><th>count</th><th>kind</th><th>action</th><th>reason</th><th>target</th><th>programs</th>\
                 <th>first</th><th>last</th></tr>",
            );
            for g in &agent.groups {
                let programs: Vec<String> = g.programs.iter().map(|p| format!("<code>{}</code>", esc(p))).collect();
                let many = g.targets.map_or_else(String::new, |n| {
                    let examples: Vec<String> = g.examples.iter().map(|e| format!("<code>{}</code>", esc(e))).collect();
                    format!("<br><span class=\"muted\">{n} targets, e.g. {}</span>", examples.join(", "))
                });
                let _ = write!(
                    out,
                    "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td><code>{}</code>{}{}</td>\
                     <td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td></tr>",
                    g.count,
                    esc(&g.kind),
                    esc(&g.action),
                    esc(&g.action),
                    esc(&g.reason),
                    esc(&g.target),
                    many,
                    if g.new { " <span class=\"new\">new</span>" } else { "" },
                    programs.join("<br>"),
                    esc(&short_time(&g.first)),
                    esc(&short_time(&g.last))
                );
            }
            out.push_str("</table>");
            if agent.more_groups > 0 {
                let _ = write!(
                    out,
                    "<p class=\"muted\">…and {} more rows ({} refusals).</p>",
                    agent.more_groups, agent.more_refusals
                );
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn talkers(out: &mut String, title: &str, talkers: &[Talker]) {
    let _ = write!(out, "<div><h2>{title}</h2><table><tr><th>name</th><th>refusals</th></tr>");
    for t in talkers {
        let _ = write!(out, "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>", esc(&t.name), t.refusals);
    }
    out.push_str("</table></div>");
}

#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap,
    reason = "drawing: counts, bucket numbers and lengths are far below 2^52"
)]
/// Stacked bars: denials (red) under the rest (audit, kill, allowed
/// sensitive reads; amber), a bar per bucket, its counts in its tooltip.
fn timeline(out: &mut String, t: &Timeline) {
    const WIDTH: f64 = 1100.0;
    const HEIGHT: f64 = 150.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 22.0;
    let max = t.denied.iter().zip(&t.other).map(|(d, o)| d + o).max().unwrap_or(0);
    if max == 0 {
        out.push_str("<p class=\"muted\">No refusals in the window.</p>");
        return;
    }
    let plot = HEIGHT - BOTTOM;
    let bar = (WIDTH - LEFT) / t.denied.len() as f64;
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" aria-label=\"refusals over time\">"
    );
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{plot}\" x2=\"{WIDTH}\" y2=\"{plot}\" stroke=\"#9aa4b2\"/><text x=\"{}\" y=\"12\" \
         text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{plot}\" text-anchor=\"end\">0</text>",
        LEFT - 6.0,
        LEFT - 6.0
    );
    for (i, (denied, other)) in t.denied.iter().zip(&t.other).enumerate() {
        let x = LEFT + i as f64 * bar;
        let h_denied = plot * *denied as f64 / max as f64;
        let h_other = plot * *other as f64 / max as f64;
        let from = time(t.start + i as i64 * t.bucket_s as i64);
        let _ = write!(out, "<g><title>{from}: {denied} denied, {other} audited or other</title>");
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h_denied:.1}\" fill=\"#d92d20\"/>",
            plot - h_denied,
            (bar - 1.0).max(1.0)
        );
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h_other:.1}\" fill=\"#f79009\"/></g>",
            plot - h_denied - h_other,
            (bar - 1.0).max(1.0)
        );
    }
    let end = t.start + (t.denied.len() as i64) * t.bucket_s as i64;
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\">{}</text><text x=\"{WIDTH}\" y=\"{}\" text-anchor=\"end\">{} ({} s a bar)</text></svg>",
        HEIGHT - 4.0,
        time(t.start),
        HEIGHT - 4.0,
        time(end),
        t.bucket_s
    );
    out.push_str(
        "<p class=\"muted\"><span class=\"key\" style=\"background:#d92d20\"></span>denied &nbsp; <span \
         class=\"key\" style=\"background:#f79009\"></span>audited, or allowed and reported</p>",
    );
}

fn time(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A line's time to the second, as people read it.
fn short_time(ts: &str) -> String {
    ts.get(..19).map_or_else(|| ts.to_owned(), |t| t.replacen('T', " ", 1))
}

/// Text as HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
