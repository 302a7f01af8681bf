//! Reading event lines for a digest: only the fields a digest groups by,
//! borrowed from the line where they need no unescaping.

use std::borrow::Cow;

use serde::Deserialize;

/// The fields of an event line a digest uses (every kind of line has a
/// subset; the daemon's own lines have no `action`).
#[derive(Deserialize)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub policy: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub cgroup: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub exe: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub comm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub path: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub daddr: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub saddr: Option<Cow<'a, str>>,
    #[serde(default)]
    pub dport: Option<u16>,
    #[serde(borrow, default)]
    pub resolved_from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub class: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub qname: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub qtype: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub syscall: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub sni: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub budget: Option<Cow<'a, str>>,
    #[serde(default)]
    pub target_pid: Option<u32>,
    /// `lost` lines: events the kernel could not deliver.
    #[serde(default)]
    pub count: Option<u64>,
}

impl Line<'_> {
    /// What was refused, in one string: the path, the destination (by the
    /// name it was resolved from, if any), the name asked, the syscall...
    pub fn target(&self, out: &mut String) {
        match &*self.kind {
            "connect" | "sendmsg" => {
                let host = self.resolved_from.as_deref().or(self.daddr.as_deref()).unwrap_or("?");
                port_of(out, host, self.dport);
            }
            "inbound" => {
                out.push_str(text(self.saddr.as_ref()));
                out.push_str(" → port ");
                if let Some(port) = self.dport {
                    out.push_str(itoa::Buffer::new().format(port));
                }
            }
            "socket" => out.push_str(self.class.as_deref().unwrap_or("?")),
            "dns" => {
                out.push_str(text(self.qname.as_ref()));
                out.push(' ');
                out.push_str(text(self.qtype.as_ref()));
            }
            "syscall" => out.push_str(self.syscall.as_deref().unwrap_or("?")),
            "budget_exceeded" => {
                out.push_str(self.budget.as_deref().unwrap_or("?"));
                if let Some(host) = self.resolved_from.as_deref().or(self.daddr.as_deref()) {
                    out.push_str(": ");
                    port_of(out, host, self.dport);
                }
            }
            "sni_mismatch" => out.push_str(text(self.sni.as_ref())),
            "floor" => {
                out.push_str(text(self.op.as_ref()));
                if let Some(path) = &self.path {
                    out.push(' ');
                    out.push_str(path);
                } else if let Some(pid) = self.target_pid {
                    out.push_str(" pid ");
                    out.push_str(itoa::Buffer::new().format(pid));
                }
            }
            _ => out.push_str(self.path.as_deref().or(self.daddr.as_deref()).unwrap_or("")),
        }
    }

    /// The program that did it: its executable, else its command name
    /// (none: a `dns` line, whose resolver sees a datagram, not a process).
    pub fn program(&self) -> Option<&str> {
        self.exe.as_deref().or(self.comm.as_deref())
    }
}

/// Seconds since the epoch of a line's `ts`: the enforcer writes UTC as
/// `YYYY-MM-DDTHH:MM:SS[.f]Z`, read here by hand (a million lines a
/// report); anything else goes to the RFC 3339 parser.
pub fn unix_seconds(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let mut n = 0i64;
        for &c in b.get(from..from + len)? {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    };
    let fixed = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    if fixed && b.last() == Some(&b'Z') && matches!(b[19], b'.' | b'Z') {
        let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
        let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
        return Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second);
    }
    let at = humantime::parse_rfc3339_weak(ts).ok()?;
    i64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A field's text, empty if absent.
fn text<'s>(value: Option<&'s Cow<'_, str>>) -> &'s str {
    value.map_or("", |v| v)
}

fn port_of(out: &mut String, host: &str, port: Option<u16>) {
    out.push_str(host);
    if let Some(port) = port {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(json: &str) -> String {
        let line: Line = serde_json::from_str(json).unwrap();
        let mut out = String::new();
        line.target(&mut out);
        out
    }

    #[test]
    fn timestamps_are_read_as_the_rfc3339_parser_reads_them() {
        for ts in
            ["2026-12-07T10:00:00Z", "2026-02-28T23:59:59.999999Z", "2024-02-29T12:00:00.5Z", "1970-01-01T00:00:00Z"]
        {
            let parsed = humantime::parse_rfc3339_weak(ts).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
            assert_eq!(unix_seconds(ts), Some(i64::try_from(parsed.as_secs()).unwrap()), "{ts}");
        }
        assert_eq!(unix_seconds("2026-12-07T10:00:00+01:00"), None, "not the enforcer's, nor RFC 3339 weak");
        assert_eq!(unix_seconds("yesterday"), None);
    }

    #[test]
    fn a_target_names_what_was_refused() {
        let base = r#""ts":"2026-12-07T10:00:00Z","action":"deny""#;
        assert_eq!(target(&format!(r#"{{{base},"kind":"file_write","path":"/etc/x\"y"}}"#)), "/etc/x\"y");
        let connect = format!(r#"{{{base},"kind":"connect","daddr":"1.2.3.4","dport":443,"resolved_from":null}}"#);
        assert_eq!(target(&connect), "1.2.3.4:443");
        let named = format!(r#"{{{base},"kind":"connect","daddr":"1.2.3.4","dport":443,"resolved_from":"a.test"}}"#);
        assert_eq!(target(&named), "a.test:443");
        assert_eq!(target(&format!(r#"{{{base},"kind":"dns","qname":"x.evil","qtype":"A"}}"#)), "x.evil A");
        assert_eq!(target(&format!(r#"{{{base},"kind":"floor","op":"ptrace","target_pid":7}}"#)), "ptrace pid 7");
    }
}
