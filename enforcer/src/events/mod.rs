//! Every JSON line the enforcer writes, one type each, and their schema.
//!
//! - [`kernel`]: a denial (or audited operation) the programs reported
//!   ([`Event`]: files, exec, network, the floor), and [`Lost`];
//! - [`DnsLine`]: a name the resolver refused; [`SyscallLine`]: a syscall
//!   the seccomp filter refused;
//! - [`daemon`]: the daemon's own lines ([`DaemonLine`]).
//!
//! The daemon puts `"seq":N` (its line number) and `"prev_hash"` (the
//! SHA-256 of the line before, see `evidence::chain`) first in each line it
//! writes.
//! Field names are a contract other tools parse: add fields, never rename.
//! `schemas/events.schema.json` (in this crate) is the JSON Schema of a line,
//! published for consumers; a unit test keeps it current and the test tiers
//! validate every line they read against it.

pub mod daemon;
mod json;
mod kernel;

pub use daemon::{DaemonEvent, DaemonLine, PolicyVersion};
pub use json::write_event;
pub use kernel::{Clock, Context, Event, Lost, decode};
use schemars::JsonSchema;
use serde::Serialize;

use crate::{dns::DnsEvent, syscalls::notify::SyscallEvent};

/// A moment given as a duration ago (`24h`) or an RFC 3339 time (`--since`).
#[must_use]
pub fn parse_since(text: &str) -> Option<std::time::SystemTime> {
    humantime::parse_duration(text)
        .ok()
        .and_then(|ago| std::time::SystemTime::now().checked_sub(ago))
        .or_else(|| humantime::parse_rfc3339_weak(text).ok())
}

/// A `dns` line: the resolver's event, plus the common fields.
#[derive(Serialize, JsonSchema)]
pub struct DnsLine<'a> {
    pub ts: String,
    pub policy: &'a str,
    pub cgroup: &'a str,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub event: &'a DnsEvent,
}

/// A `syscall` line: the supervisor's event, plus the common fields.
#[derive(Serialize, JsonSchema)]
pub struct SyscallLine<'a> {
    pub ts: String,
    pub policy: &'a str,
    /// Daemon: the version of the policy (see `Event::policy_version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
    /// Daemon: the SHA-256 of that version's file (first 16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<&'a str>,
    #[serde(flatten)]
    pub event: &'a SyscallEvent,
}

/// One line of the enforcer's event stream: a denial or audited operation
/// the kernel reported, a count of lost events, a name the resolver refused,
/// a syscall the seccomp filter refused, or a line of the daemon's. The
/// daemon puts `"seq":N`, its line number, and `"prev_hash"`, the SHA-256
/// (hex) of the line before it, first in each line it writes.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, clippy::large_enum_variant, reason = "never built: only its schema is used")]
enum Line<'a> {
    Denial(Event<'a>),
    Lost(Lost),
    Dns(DnsLine<'a>),
    Syscall(SyscallLine<'a>),
    Daemon(DaemonLine),
}

/// The JSON Schema of a line, as published in `schemas/events.schema.json`
/// (a unit test compares the two).
#[cfg(test)]
fn schema() -> String {
    // The lines as written (a field serde may skip is not required).
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_serialize().into_generator();
    let mut schema = generator.into_root_schema_for::<Line<'static>>();
    schema.insert("title".into(), "enforcer event line".into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Fails unless `published` (a path in this crate) holds `current`; with
/// `ENFORCER_WRITE_SCHEMAS=1` writes it first.
#[cfg(test)]
pub(crate) fn check_published(published: &str, current: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(published);
    if std::env::var_os("ENFORCER_WRITE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, current).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text == current,
        "{} is not the schema of its types: run `ENFORCER_WRITE_SCHEMAS=1 cargo test -p enforcer --lib schema` and \
         commit it",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    /// The published schema is the one the types give; with
    /// `ENFORCER_WRITE_SCHEMAS=1` the test writes it instead.
    #[test]
    fn the_published_schema_is_current() {
        super::check_published("schemas/events.schema.json", &super::schema());
    }
}
