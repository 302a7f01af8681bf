//! The denial line, written by hand. A storm writes hundreds of thousands
//! of lines a second, and `serde_json` escaped every key and value byte by
//! byte (a sixth of the daemon's time in a storm). Here keys are literals
//! and a value goes through `serde_json`'s escaping only if it holds a byte
//! that needs it. A unit test holds the output to the derived `Serialize`,
//! byte for byte, so the two cannot drift.

use std::{io::Write as _, net::IpAddr};

use super::kernel::{BudgetFields, Event, FloorFields, NetFields, TlsFields};

/// `event` as a JSON object, exactly as `serde_json` writes its `Serialize`.
pub fn write_event(out: &mut Vec<u8>, event: &Event<'_>) {
    let Event {
        ts,
        kind,
        action,
        pid,
        tgid,
        comm,
        exe,
        cgroup_id,
        cgroup,
        policy,
        policy_version,
        policy_hash,
        op,
        path,
        net,
        floor,
        budget,
        tls,
        errno,
        reason,
        path_truncated,
        path_from_fs_root,
    } = event;
    out.extend_from_slice(b"{\"ts\":");
    string(out, ts.as_str());
    member(out, "kind", |out| string(out, kind));
    member(out, "action", |out| string(out, action));
    member(out, "pid", |out| number(out, *pid));
    member(out, "tgid", |out| number(out, *tgid));
    member(out, "comm", |out| string(out, comm));
    member(out, "exe", |out| nullable(out, exe.as_deref()));
    member(out, "cgroup_id", |out| number(out, *cgroup_id));
    member(out, "cgroup", |out| nullable(out, *cgroup));
    member(out, "policy", |out| string(out, policy));
    optional(out, "policy_version", policy_version.as_ref(), |out, v| number(out, *v));
    optional(out, "policy_hash", policy_hash.as_ref(), |out, h| string(out, h));
    optional(out, "op", op.as_ref(), |out, op| string(out, op));
    optional(out, "path", path.as_ref(), |out, path| string(out, path));
    if let Some(net) = net {
        net_members(out, net);
    }
    if let Some(floor) = floor {
        floor_members(out, floor);
    }
    if let Some(budget) = budget {
        budget_members(out, budget);
    }
    if let Some(TlsFields { sni }) = tls {
        member(out, "sni", |out| nullable(out, sni.as_deref()));
    }
    member(out, "errno", |out| number(out, *errno));
    member(out, "reason", |out| string(out, reason));
    if *path_truncated {
        member(out, "path_truncated", |out| out.extend_from_slice(b"true"));
    }
    if *path_from_fs_root {
        member(out, "path_from_fs_root", |out| out.extend_from_slice(b"true"));
    }
    out.push(b'}');
}

fn net_members(out: &mut Vec<u8>, net: &NetFields) {
    let NetFields { family, proto, daddr, saddr, dport, sock_type, class, resolved_from } = net;
    member(out, "family", |out| string(out, family));
    optional(out, "proto", proto.as_ref(), |out, proto| string(out, proto));
    optional(out, "daddr", daddr.as_ref(), address);
    optional(out, "saddr", saddr.as_ref(), address);
    optional(out, "dport", dport.as_ref(), |out, port| number(out, *port));
    optional(out, "sock_type", sock_type.as_ref(), |out, t| string(out, t));
    optional(out, "class", class.as_ref(), |out, class| string(out, class));
    optional(out, "resolved_from", resolved_from.as_ref(), |out, name| nullable(out, name.as_deref()));
}

fn budget_members(out: &mut Vec<u8>, budget: &BudgetFields) {
    let BudgetFields { budget, bytes_used, bytes_limit, destinations_used, destinations_limit, window_s, send_bytes } =
        budget;
    member(out, "budget", |out| nullable(out, budget.as_deref()));
    for (name, value) in [
        ("bytes_used", bytes_used),
        ("bytes_limit", bytes_limit),
        ("destinations_used", destinations_used),
        ("destinations_limit", destinations_limit),
    ] {
        optional(out, name, value.as_ref(), |out, v| number(out, *v));
    }
    member(out, "window_s", |out| number(out, *window_s));
    optional(out, "send_bytes", send_bytes.as_ref(), |out, v| number(out, *v));
}

fn floor_members(out: &mut Vec<u8>, floor: &FloorFields) {
    let FloorFields { target_pid, signal, bpf_cmd, resource, ioctl, option } = floor;
    let fields = [
        ("target_pid", target_pid),
        ("signal", signal),
        ("bpf_cmd", bpf_cmd),
        ("resource", resource),
        ("ioctl", ioctl),
        ("option", option),
    ];
    for (name, value) in fields {
        optional(out, name, value.as_ref(), |out, v| number(out, *v));
    }
}

/// `,"name":` and the value.
fn member(out: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    value(out);
}

/// A member serde skips when it is `None`.
fn optional<T>(out: &mut Vec<u8>, name: &str, value: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    if let Some(value) = value {
        member(out, name, |out| write(out, value));
    }
}

fn nullable(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn string(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, value);
        return;
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// Whether `bytes` hold one that `serde_json` escapes: a control character,
/// `"` or `\\`. Eight bytes at a time (the classic "has a byte less than
/// n" word tests, exact for n up to 128).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        let found =
            below(word, 0x20) | below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1);
        if found {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn address(out: &mut Vec<u8>, addr: &IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            out.push(b'"');
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, octet);
            }
            out.push(b'"');
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use enforcer_common::{budget::BUDGET_NEW_DESTINATIONS, events::BudgetDetail};

    use super::*;
    use crate::events::kernel::Clock;

    fn file_event<'a>(clock: &Clock, path: &'a str, cgroup: Option<&'a str>) -> Event<'a> {
        Event {
            ts: clock.stamp(123_456_789),
            kind: "file_write",
            action: "deny",
            pid: 7,
            tgid: 4_000_000,
            comm: "ba\"sh\\\u{1}".into(),
            exe: None,
            cgroup_id: u64::MAX,
            cgroup,
            policy: "agent \u{e9}",
            policy_version: None,
            policy_hash: None,
            op: Some("open"),
            path: Some(path.into()),
            net: None,
            floor: None,
            budget: None,
            tls: None,
            errno: 1,
            reason: "outside_write_trees",
            path_truncated: false,
            path_from_fs_root: false,
        }
    }

    #[expect(clippy::option_option, reason = "as `NetFields::resolved_from`")]
    fn net(daddr: Option<IpAddr>, saddr: Option<IpAddr>, resolved_from: Option<Option<String>>) -> NetFields {
        NetFields {
            family: Cow::Borrowed("inet"),
            proto: Some("tcp".into()),
            daddr,
            saddr,
            dport: Some(443),
            sock_type: None,
            class: None,
            resolved_from,
        }
    }

    fn serde_line(event: &Event<'_>) -> String {
        serde_json::to_string(event).unwrap()
    }

    fn our_line(event: &Event<'_>) -> String {
        let mut out = Vec::new();
        write_event(&mut out, event);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_serde_writes() {
        let clock = Clock::new();
        let mut events = vec![
            file_event(&clock, "/root/.aws/credentials", Some("/agents/a")),
            file_event(&clock, "/tmp/new\nline\t\u{7f}", None),
        ];
        let mut truncated = file_event(&clock, "…/b/c", Some("x"));
        (truncated.path_truncated, truncated.path_from_fs_root) = (true, true);
        (truncated.policy_version, truncated.policy_hash) = (Some(3), Some("0a86a14ef85b855d"));
        truncated.exe = Some("/usr/bin/bash");
        events.push(truncated);
        for (daddr, saddr, resolved) in [
            (Some("127.0.0.1".parse().unwrap()), None, Some(None)),
            (Some("2001:db8::1".parse().unwrap()), None, Some(Some("api.example.com".to_owned()))),
            (None, Some("10.255.0.9".parse().unwrap()), None),
            (None, None, None),
        ] {
            let mut event = file_event(&clock, "", Some("c"));
            (event.op, event.path) = (None, None);
            event.net = Some(net(daddr, saddr, resolved));
            events.push(event);
        }
        let mut socket = file_event(&clock, "@abstract\u{0}name", None);
        let mut fields = net(None, None, None);
        (fields.family, fields.proto, fields.dport) = (Cow::Owned("44".into()), None, None);
        (fields.sock_type, fields.class) = (Some("raw"), Some("raw"));
        socket.net = Some(fields);
        events.push(socket);
        let mut floor = file_event(&clock, "", None);
        floor.path = None;
        floor.floor = Some(FloorFields {
            target_pid: Some(1),
            signal: Some(9),
            bpf_cmd: None,
            resource: None,
            ioctl: Some(21522),
            option: Some(0),
        });
        events.push(floor);
        let upload = BudgetDetail {
            used: 1 << 20,
            limit: u64::MAX,
            window_ns: 600_000_000_000,
            size: 65536,
            ..Default::default()
        };
        let destinations = BudgetDetail {
            used: 20,
            limit: 20,
            window_ns: 3_600_000_000_000,
            size: 1,
            index: BUDGET_NEW_DESTINATIONS,
            ..Default::default()
        };
        for (detail, name) in [
            (upload, Some("*.pypi.org".to_owned())),
            (upload, None),
            (destinations, Some("new_destinations".to_owned())),
        ] {
            let mut budget = file_event(&clock, "", None);
            (budget.op, budget.path, budget.kind) = (None, None, "budget_exceeded");
            budget.net = Some(net(Some("10.0.0.1".parse().unwrap()), None, Some(None)));
            budget.budget = Some(BudgetFields::of(&detail, name));
            events.push(budget);
        }
        for event in &events {
            assert_eq!(our_line(event), serde_line(event));
        }
    }

    #[test]
    fn finds_every_byte_that_needs_escaping_wherever_it_is() {
        for len in 0..24 {
            let clean = "a".repeat(len);
            assert!(!needs_escape(clean.as_bytes()));
            for at in 0..len {
                for byte in 0..=0xff_u8 {
                    let mut text = clean.clone().into_bytes();
                    text[at] = byte;
                    let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                    assert_eq!(needs_escape(&text), expected, "byte {byte:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape("café ☕ 日本".as_bytes()), "bytes past ASCII need no escape");
    }

    #[test]
    fn stamps_as_rfc3339_micros() {
        let clock = Clock::new();
        for boot_ns in [0, 999, 1_000, 999_999_999, 1_000_000_000, 86_400_123_456_789] {
            let stamp = clock.stamp(boot_ns);
            let wall = clock.wall(boot_ns);
            assert_eq!(stamp.as_str(), humantime::format_rfc3339_micros(wall).to_string());
        }
    }
}
