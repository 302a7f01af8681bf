//! Policy files: TOML, validated with errors that name the file, line and
//! column, with a hint.
//!
//! A section that is absent restricts nothing of its kind; `check` says so
//! as a warning so nobody mistakes an absent section for a locked-down one.

use std::{
    fmt,
    ops::Range,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use enforcer_common::net::{SOCKET_CLASSES, UNIX_PATH_BYTES};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    policy::destinations::{self, Destination, EntryError, Target},
    syscalls::{self, DenyAction, Syscalls},
};

/// Enforce (deny and report) or audit (allow and report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// The `[files]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Files {
    /// Trees where writing is allowed; all other writes are denied.
    pub write: Vec<PathBuf>,
    /// Trees that may be neither read nor written (wins over `write`).
    pub read_deny: Vec<PathBuf>,
    /// Trees that may be read but hold secrets: reading below one locks the
    /// agent's egress down to `network.after_sensitive_read`.
    pub sensitive: Vec<PathBuf>,
}

/// The `[network]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Destinations an agent may connect or send to, each with where the
    /// policy says so (for errors found later, e.g. too many port ranges).
    pub allow: Vec<(Destination, Location)>,
    /// Who may connect in (TCP) or send datagrams in (UDP) from outside the
    /// agent: the entry's address is a source prefix (`*`: any), its ports
    /// local ones.
    pub listen: Vec<(Destination, Location)>,
    /// Unix socket names it may connect or send to: absolute paths, or
    /// `@name` for an abstract socket.
    pub unix: Vec<String>,
    /// Socket classes allowed beyond the default (`net::SOCKET_CLASSES`).
    pub sockets: Vec<&'static str>,
    /// Shortest time an address resolved from an allowed name stays allowed
    /// (answers with a shorter TTL get this one).
    pub dns_min_ttl: std::time::Duration,
    /// Destinations an agent may still reach once one of its processes has
    /// read a `files.sensitive` file (entries as in `allow`; none: nothing).
    pub after_sensitive_read: Vec<(Destination, Location)>,
    /// Upload budgets: bytes per window, in all (`*`) and to the addresses
    /// of names.
    pub upload: Vec<super::budgets::Located>,
    /// Distinct names the resolver asks upstream for one agent per window.
    pub dns_names: Option<super::budgets::CountBudget>,
    /// Distinct destinations (address and port) one agent may reach per
    /// window.
    pub new_destinations: Option<super::budgets::CountBudget>,
}

impl Network {
    /// Whether a host entry (of `allow` or `after_sensitive_read`) has its
    /// TLS names checked.
    #[must_use]
    pub fn checks_tls_names(&self) -> bool {
        self.allow.iter().chain(&self.after_sensitive_read).any(|(d, _)| d.tls != 0)
    }
}

/// The `[devices]` section: device nodes (or directories of them, e.g.
/// `/dev/dri`) an agent may open besides `/dev/null`, `zero`, `full`,
/// `random`, `urandom`, `tty`, `ptmx` and its own terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    pub allow: Vec<PathBuf>,
}

/// The `[exec]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// Trees programs may be executed from; executing anything else is denied.
    pub allow: Vec<PathBuf>,
}

/// Default for `network.dns_min_ttl`, seconds.
pub const DNS_MIN_TTL_DEFAULT: u64 = 30;

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    pub files: Option<Files>,
    pub network: Option<Network>,
    pub syscalls: Option<Syscalls>,
    pub exec: Option<Exec>,
    /// Character devices beyond the built-in few an agent may open.
    pub devices: Option<Devices>,
    /// Selectors: globs naming the cgroups the daemon tags with this policy
    /// (see `crate::policy::selectors`).
    pub cgroups: Vec<String>,
}

/// Where in a policy file something was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Shared: every entry of a policy carries its location.
    pub file: Arc<Path>,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` of `text`, read from `file`.
    #[must_use]
    pub fn at(text: &str, file: &Path, offset: usize) -> Self {
        Ctx::new(text, file).locate(&(offset..offset))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A policy that cannot be used: what is wrong, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read policy: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{at}: error: {message}\n  hint: {hint}")]
    Invalid { at: Location, message: String, hint: String },
}

/// Something legal that deserves a second look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.at, self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
    files: Option<Spanned<RawFiles>>,
    network: Option<Spanned<RawNetwork>>,
    syscalls: Option<Spanned<RawSyscalls>>,
    exec: Option<Spanned<RawExec>>,
    devices: Option<Spanned<RawExec>>,
    #[serde(default)]
    cgroups: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyscalls {
    allow: Spanned<Vec<Spanned<String>>>,
    deny_action: Option<Spanned<String>>,
    #[serde(default)]
    require_seccomp: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    allow: Vec<Spanned<String>>,
}

/// A `network.allow` (or `after_sensitive_read`) entry: the destination
/// alone, or a table that adds its TLS mode.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAllow {
    Entry(String),
    Rule { to: String, tls: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    unix: Vec<Spanned<String>>,
    #[serde(default)]
    sockets: Vec<Spanned<String>>,
    dns_min_ttl: Option<Spanned<i64>>,
    after_sensitive_read: Option<Spanned<Vec<Spanned<RawAllow>>>>,
    #[serde(default)]
    upload: Vec<Spanned<String>>,
    dns_names: Option<Spanned<String>>,
    new_destinations: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    #[serde(default)]
    write: Vec<Spanned<String>>,
    #[serde(default)]
    read_deny: Vec<Spanned<String>>,
    #[serde(default)]
    sensitive: Vec<Spanned<String>>,
}

const KEYS_HINT: &str = "a policy has `name`, `mode`, `cgroups` (selectors), a `[files]` table with `write`, \
                         `read_deny` and `sensitive`, a \
`[network]` table with `allow`, `listen`, `unix`, `sockets`, `dns_min_ttl`, `after_sensitive_read`, `upload`, `dns_names` and \
`new_destinations`, a `[syscalls]` table with `allow`, \
`deny_action` and `require_seccomp`, an `[exec]` table with `allow`, and a `[devices]` table with `allow`; see \
policies/coding-agent.toml";

impl Policy {
    /// Whether it names `files.sensitive` trees (reading one locks the
    /// agent's egress down).
    #[must_use]
    pub fn has_sensitive_trees(&self) -> bool {
        self.files.as_ref().is_some_and(|f| !f.sensitive.is_empty())
    }
}

/// Reads and validates the policy file at `file`.
pub fn load(file: &Path) -> Result<(Policy, Vec<Warning>), PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|source| PolicyError::Read { file: file.to_owned(), source })?;
    parse(&text, file)
}

/// Validates policy `text`; `file` is only used in messages.
pub fn parse(text: &str, file: &Path) -> Result<(Policy, Vec<Warning>), PolicyError> {
    let ctx = Ctx::new(text, file);
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        let hint = hint_for(&message);
        ctx.invalid(e.span().unwrap_or(0..0), message, hint)
    })?;
    let mut warnings = Vec::new();

    let name = validate_name(&ctx, &raw.name)?;
    let mode = match raw.mode.as_ref() {
        None => Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "audit" => Mode::Audit,
            other => {
                return Err(ctx.invalid(
                    m.span(),
                    format!("unknown mode `{other}`"),
                    "mode is \"enforce\" (deny and report) or \"audit\" (allow and report)",
                ));
            }
        },
    };
    let sensitive_at = raw.files.as_ref().and_then(|f| f.get_ref().sensitive.first()).map(Spanned::span);
    let files = match raw.files {
        None => {
            warnings.push(
                ctx.warning(0..0, "no [files] section: this policy does not restrict file access at all".to_owned()),
            );
            None
        }
        Some(files) => Some(validate_files(&ctx, files, &mut warnings)?),
    };
    let network = network_section(&ctx, raw.network, sensitive_at, &mut warnings)?;
    let syscalls =
        match raw.syscalls {
            None => {
                warnings.push(ctx.warning(
                0..0,
                "no [syscalls] section: this policy allows every syscall (consider allow = [\"@default-agent\"])"
                    .to_owned(),
            ));
                None
            }
            Some(syscalls) => Some(validate_syscalls(&ctx, syscalls.get_ref(), &mut warnings)?),
        };
    let exec = match raw.exec {
        None => None,
        Some(exec) => {
            Some(Exec { allow: validate_paths(&ctx, "exec.allow", &exec.into_inner().allow, &mut warnings)? })
        }
    };
    let devices = match raw.devices {
        None => None,
        Some(devices) => {
            Some(Devices { allow: validate_paths(&ctx, "devices.allow", &devices.into_inner().allow, &mut warnings)? })
        }
    };
    let mut cgroups = Vec::new();
    for glob in &raw.cgroups {
        crate::policy::selectors::validate(glob.get_ref()).map_err(|why| {
            ctx.invalid(
                glob.span(),
                format!("cgroups: invalid selector `{}`: {why}", glob.get_ref()),
                "a selector is a glob over cgroup paths below the cgroup2 root, e.g. \"/agents.slice/*.scope\" or \
                 \"/kubepods.slice/**/agent-*\"",
            )
        })?;
        cgroups.push(glob.get_ref().clone());
    }
    Ok((Policy { name, mode, files, network, syscalls, exec, devices, cgroups }, warnings))
}

/// The `[network]` section, if any (`sensitive_at`: where the first
/// `files.sensitive` entry is, if there is one).
fn network_section(
    ctx: &Ctx<'_>,
    raw: Option<Spanned<RawNetwork>>,
    sensitive_at: Option<Range<usize>>,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Network>, PolicyError> {
    let Some(network) = raw else {
        if let Some(at) = sensitive_at {
            return Err(ctx.invalid(
                at,
                "files.sensitive needs a [network] section: reading a sensitive file locks the agent's egress down \
                 to network.after_sensitive_read"
                    .to_owned(),
                "add a [network] section with `allow` (before a sensitive read) and `after_sensitive_read` (after \
                 it; empty: nothing)",
            ));
        }
        warnings.push(
            ctx.warning(0..0, "no [network] section: this policy does not restrict network access at all".to_owned()),
        );
        return Ok(None);
    };
    let network = network.get_ref();
    if let (Some(after), None) = (&network.after_sensitive_read, sensitive_at) {
        return Err(ctx.invalid(
            after.span(),
            "network.after_sensitive_read without files.sensitive: no read ever locks the egress down".to_owned(),
            "name the trees that hold secrets in [files] sensitive, e.g. [\"/home/agent/.netrc\"]",
        ));
    }
    Ok(Some(validate_network(ctx, network, warnings)?))
}

fn hint_for(message: &str) -> String {
    if message.contains("unknown field") || message.contains("missing field") {
        KEYS_HINT.to_owned()
    } else if message.contains("invalid type") {
        "check the value's type: `name` and `mode` are strings, `write` and `read_deny` are arrays of strings"
            .to_owned()
    } else {
        "the file is not valid TOML; see https://toml.io for the syntax".to_owned()
    }
}

struct Ctx<'a> {
    text: &'a str,
    file: Arc<Path>,
    /// Byte offset of each line's start: locating an entry is a search, not
    /// a scan (a policy can hold 100 000 entries).
    line_starts: Vec<usize>,
    /// The line [`Ctx::locate`] found last (1-based).
    last_line: std::cell::Cell<usize>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, file: &'a Path) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { text, file: Arc::from(file), line_starts, last_line: std::cell::Cell::new(1) }
    }

    fn locate(&self, span: &Range<usize>) -> Location {
        let offset = span.start.min(self.text.len());
        // Entries come in order, mostly one per line: try the line after
        // the last one found before searching.
        let last = self.last_line.get();
        let line = match self.line_starts.get(last..last + 2) {
            Some(&[start, next]) if start <= offset && offset < next => last + 1,
            _ => self.line_starts.partition_point(|&start| start <= offset),
        };
        self.last_line.set(line);
        let line_start = self.line_starts[line - 1];
        let column = self.text.get(line_start..offset).map_or(0, |s| s.chars().count()) + 1;
        Location { file: self.file.clone(), line, column }
    }

    fn invalid(&self, span: Range<usize>, message: String, hint: impl Into<String>) -> PolicyError {
        PolicyError::Invalid { at: self.locate(&span), message, hint: hint.into() }
    }

    fn warning(&self, span: Range<usize>, message: String) -> Warning {
        Warning { at: self.locate(&span), message }
    }
}

fn validate_name(ctx: &Ctx<'_>, name: &Spanned<String>) -> Result<String, PolicyError> {
    let value = name.get_ref();
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.clone())
    } else {
        Err(ctx.invalid(
            name.span(),
            format!("invalid policy name `{value}`"),
            "use 1 to 64 characters from A-Z a-z 0-9 - _ . (it appears in every event)",
        ))
    }
}

fn validate_files(ctx: &Ctx<'_>, files: Spanned<RawFiles>, warnings: &mut Vec<Warning>) -> Result<Files, PolicyError> {
    let RawFiles { write, read_deny, sensitive: sensitive_entries } = files.into_inner();
    let write = validate_paths(ctx, "files.write", &write, warnings)?;
    let read_deny = validate_paths(ctx, "files.read_deny", &read_deny, warnings)?;
    let mut sensitive = validate_paths(ctx, "files.sensitive", &sensitive_entries, warnings)?;
    for (entry, path) in sensitive_entries.iter().zip(sensitive.clone()) {
        if read_deny.contains(&path) {
            warnings.push(ctx.warning(
                entry.span(),
                format!("`{}` is in files.read_deny too: it may not be read at all", path.display()),
            ));
            sensitive.retain(|p| *p != path);
        }
    }
    Ok(Files { write, read_deny, sensitive })
}

fn validate_network(ctx: &Ctx<'_>, raw: &RawNetwork, warnings: &mut Vec<Warning>) -> Result<Network, PolicyError> {
    let dns_min_ttl = match &raw.dns_min_ttl {
        None => DNS_MIN_TTL_DEFAULT,
        Some(ttl) => u64::try_from(*ttl.get_ref()).ok().filter(|&t| (1..=86_400).contains(&t)).ok_or_else(|| {
            ctx.invalid(
                ttl.span(),
                format!("network.dns_min_ttl: {} is not 1 to 86400 seconds", ttl.get_ref()),
                "how long (seconds) a resolved address stays allowed at least, e.g. 30",
            )
        })?,
    };
    let mut network = Network {
        allow: Vec::new(),
        listen: Vec::new(),
        unix: Vec::new(),
        sockets: Vec::new(),
        dns_min_ttl: std::time::Duration::from_secs(dns_min_ttl),
        after_sensitive_read: Vec::new(),
        upload: Vec::new(),
        dns_names: None,
        new_destinations: None,
    };
    network.allow = destinations(ctx, "network.allow", &raw.allow, warnings)?;
    if let Some(after) = &raw.after_sensitive_read {
        network.after_sensitive_read = destinations(ctx, "network.after_sensitive_read", after.get_ref(), warnings)?;
    }
    network.upload = upload_budgets(ctx, &raw.upload, &network, warnings)?;
    network.dns_names = count_budget(ctx, "network.dns_names", raw.dns_names.as_ref())?;
    network.new_destinations = count_budget(ctx, "network.new_destinations", raw.new_destinations.as_ref())?;
    for entry in &raw.listen {
        network.listen.push((parse_listen(ctx, entry)?, ctx.locate(&entry.span())));
    }
    for entry in &raw.unix {
        let name = entry.get_ref();
        let hint = "write the path the socket is bound to, e.g. \"/run/user/1000/agent.sock\", or \"@name\" for an \
                    abstract socket";
        let body = name.strip_prefix('@').unwrap_or(name);
        if !(name.starts_with('/') || name.starts_with('@')) || body.is_empty() {
            return Err(ctx.invalid(
                entry.span(),
                format!("network.unix: `{name}` is neither an absolute path nor `@name`"),
                hint,
            ));
        }
        if name.len() > UNIX_PATH_BYTES - 1 || name.contains('\0') {
            return Err(ctx.invalid(
                entry.span(),
                format!("network.unix: `{name}` cannot be a unix socket name"),
                format!("a unix socket name has at most {} bytes and no NUL", UNIX_PATH_BYTES - 1),
            ));
        }
        if !network.unix.contains(name) {
            network.unix.push(name.clone());
        }
    }
    for entry in &raw.sockets {
        let Some(&(class, _, _)) = SOCKET_CLASSES.iter().find(|c| c.0 == entry.get_ref()) else {
            let names: Vec<&str> = SOCKET_CLASSES.iter().map(|c| c.0).collect();
            return Err(ctx.invalid(
                entry.span(),
                format!("network.sockets: unknown socket class `{}`", entry.get_ref()),
                format!(
                    "the classes are {}; unix, TCP, UDP and netlink route sockets are always allowed",
                    names.join(", ")
                ),
            ));
        };
        if !network.sockets.contains(&class) {
            network.sockets.push(class);
        }
        if matches!(class, "sctp" | "mptcp" | "raw" | "icmp" | "packet") {
            warnings.push(ctx.warning(
                entry.span(),
                format!(
                    "network.sockets `{class}`: the destinations of these sockets are not judged (only TCP and \
                         UDP ones are)"
                ),
            ));
        }
    }
    Ok(network)
}

/// A `COUNT/WINDOW` budget (`network.dns_names`, `network.new_destinations`).
fn count_budget(
    ctx: &Ctx<'_>,
    key: &str,
    entry: Option<&Spanned<String>>,
) -> Result<Option<super::budgets::CountBudget>, PolicyError> {
    let Some(entry) = entry else { return Ok(None) };
    let budget = entry
        .get_ref()
        .parse()
        .map_err(|e: EntryError| ctx.invalid(entry.span(), format!("{key}: {}", e.message), e.hint))?;
    Ok(Some(budget))
}

/// The `network.upload` budgets; `network`: the destinations they count.
fn upload_budgets(
    ctx: &Ctx<'_>,
    entries: &[Spanned<String>],
    network: &Network,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<super::budgets::Located>, PolicyError> {
    use super::budgets::{BudgetTo, MAX, UploadBudget};
    if entries.len() > MAX {
        return Err(ctx.invalid(
            entries[MAX].span(),
            format!("network.upload: more than {MAX} budgets"),
            "budget a wildcard (`*.example.com`) rather than each name under it",
        ));
    }
    let mut out: Vec<super::budgets::Located> = Vec::with_capacity(entries.len());
    for entry in entries {
        let budget: UploadBudget = entry
            .get_ref()
            .parse()
            .map_err(|e: EntryError| ctx.invalid(entry.span(), format!("network.upload: {}", e.message), e.hint))?;
        if out.iter().any(|(earlier, _)| earlier.to == budget.to) {
            return Err(ctx.invalid(
                entry.span(),
                format!("network.upload: a second budget for `{}`", budget.destination()),
                "keep one budget per destination",
            ));
        }
        if let BudgetTo::Host { name, wildcard } = &budget.to {
            let probe = if *wildcard { format!("x.{name}") } else { name.clone() };
            let shadowing = out.iter().find(|(earlier, _)| {
                matches!(&earlier.to, BudgetTo::Host { name, wildcard } if crate::policy::destinations::host_matches(name, *wildcard, &probe))
            });
            if let Some((earlier, _)) = shadowing.filter(|_| !*wildcard) {
                warnings.push(ctx.warning(
                    entry.span(),
                    format!(
                        "network.upload `{}`: the earlier `{}` matches it first, so this budget never counts (write \
                         narrower names first)",
                        budget.destination(),
                        earlier.destination()
                    ),
                ));
            }
            let reached = network.allow.iter().chain(&network.after_sensitive_read).any(|(d, _)| {
                matches!(&d.target, Target::Host { name, wildcard } if crate::policy::destinations::host_matches(name, *wildcard, &probe))
            });
            if !reached {
                warnings.push(ctx.warning(
                    entry.span(),
                    format!(
                        "network.upload `{}`: no host entry of network.allow or after_sensitive_read allows it, so \
                         only `*` could count its bytes",
                        budget.destination()
                    ),
                ));
            }
        }
        out.push((budget, ctx.locate(&entry.span())));
    }
    Ok(out)
}

/// The destinations of `entries` (`key`: where they are, for messages).
fn destinations(
    ctx: &Ctx<'_>,
    key: &str,
    entries: &[Spanned<RawAllow>],
    warnings: &mut Vec<Warning>,
) -> Result<Vec<(Destination, Location)>, PolicyError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let invalid = |e: EntryError| ctx.invalid(entry.span(), format!("{key}: {}", e.message), e.hint);
        let (text, tls) = match entry.get_ref() {
            RawAllow::Entry(text) => (text, None),
            RawAllow::Rule { to, tls } => (to, tls.as_deref()),
        };
        let mut destination: Destination = text.parse().map_err(invalid)?;
        if let Some(mode) = tls {
            if let Target::Net { .. } = destination.target {
                return Err(ctx.invalid(
                    entry.span(),
                    format!("{key}: `{text}` is an address prefix; tls is checked on host names"),
                    "a TLS name is checked on the addresses a name resolved to: leave `tls` out here, or allow \
                     the host name",
                ));
            }
            destination.tls = destinations::parse_tls(mode).map_err(invalid)?;
        }
        if let Target::Net { prefix: 0 | 96, .. } = destination.target {
            warnings.push(ctx.warning(entry.span(), format!("{key} `{text}` allows every address")));
        }
        out.push((destination, ctx.locate(&entry.span())));
    }
    Ok(out)
}

/// A `network.listen` entry: `SOURCE:PORTS[/PROTO]`, where `SOURCE` is an
/// address prefix or `*` (any source, IPv4 and IPv6).
fn parse_listen(ctx: &Ctx<'_>, entry: &Spanned<String>) -> Result<Destination, PolicyError> {
    let text = entry.get_ref().trim();
    let any = text.strip_prefix("*:").map(|rest| format!("[::]/0:{rest}"));
    let hint =
        "write `SOURCE:PORTS[/tcp|/udp]` with SOURCE an address prefix or `*`, e.g. \"*:8080/tcp\", \"10.0.0.0/8:22\"";
    let listen: Destination = any
        .as_deref()
        .unwrap_or(text)
        .parse()
        .map_err(|e: EntryError| ctx.invalid(entry.span(), format!("network.listen: {}", e.message), hint))?;
    if let Target::Host { name, .. } = &listen.target {
        return Err(ctx.invalid(
            entry.span(),
            format!("network.listen: `{name}` is a host name; a source must be an address prefix"),
            hint,
        ));
    }
    Ok(listen)
}

fn validate_syscalls(ctx: &Ctx<'_>, raw: &RawSyscalls, warnings: &mut Vec<Warning>) -> Result<Syscalls, PolicyError> {
    let mut allow = std::collections::BTreeSet::new();
    let mut namespaces = false;
    for entry in raw.allow.get_ref() {
        let names = syscalls::expand(entry.get_ref()).map_err(|message| {
            ctx.invalid(
                entry.span(),
                format!("syscalls.allow: {message}"),
                "write a syscall name as the kernel spells it (e.g. \"openat\") or a group (e.g. \"@default-agent\"); \
                 `enforcer syscalls groups` lists the groups",
            )
        })?;
        namespaces |= entry.get_ref() == "@namespaces";
        if let Some(floor) = syscalls::FLOOR_DENIES.iter().find(|(name, _)| names.contains(name)) {
            warnings.push(ctx.warning(
                entry.span(),
                format!(
                    "syscalls.allow `{}` allows `{}`, but the built-in floor still denies {}",
                    entry.get_ref(),
                    floor.0,
                    floor.1
                ),
            ));
        }
        allow.extend(names.into_iter().map(str::to_owned));
    }
    if allow.is_empty() {
        return Err(ctx.invalid(
            raw.allow.span(),
            "syscalls.allow is empty: no program could even start".to_owned(),
            "start from allow = [\"@default-agent\"]",
        ));
    }
    if !allow.contains("execve") {
        warnings.push(
            ctx.warning(raw.allow.span(), "syscalls.allow lacks `execve`: the command cannot be started".to_owned()),
        );
    }
    let deny_action = match raw.deny_action.as_ref() {
        None => DenyAction::Eperm,
        Some(action) => match action.get_ref().as_str() {
            "eperm" => DenyAction::Eperm,
            "kill" => DenyAction::Kill,
            other => {
                return Err(ctx.invalid(
                    action.span(),
                    format!("syscalls.deny_action: unknown action `{other}`"),
                    "deny_action is \"eperm\" (the syscall fails with EPERM) or \"kill\" (the process is killed)",
                ));
            }
        },
    };
    Ok(Syscalls { allow, namespaces, deny_action, require_seccomp: raw.require_seccomp })
}

fn validate_paths(
    ctx: &Ctx<'_>,
    key: &str,
    paths: &[Spanned<String>],
    warnings: &mut Vec<Warning>,
) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for entry in paths {
        let path = validate_path(ctx, key, entry)?;
        if out.contains(&path) {
            warnings.push(ctx.warning(entry.span(), format!("`{}` is listed twice in {key}", path.display())));
            continue;
        }
        if key == "files.write" && path == Path::new("/") {
            warnings
                .push(ctx.warning(entry.span(), "files.write contains `/`: writes are allowed everywhere".to_owned()));
        }
        out.push(path);
    }
    Ok(out)
}

fn validate_path(ctx: &Ctx<'_>, key: &str, entry: &Spanned<String>) -> Result<PathBuf, PolicyError> {
    let raw = entry.get_ref();
    let fail = |message: String, hint: &str| Err(ctx.invalid(entry.span(), message, hint));
    if raw.is_empty() {
        return fail(format!("empty path in {key}"), "write an absolute path such as \"/workspace\"");
    }
    if !raw.starts_with('/') {
        return fail(
            format!("relative path `{raw}` in {key}"),
            &format!("paths must be absolute, e.g. \"/{}\"", raw.trim_start_matches("./")),
        );
    }
    if raw.contains('\0') {
        return fail(format!("path in {key} contains a NUL byte"), "remove the NUL byte");
    }
    let path = Path::new(raw);
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) || raw.contains("/./") {
        return fail(
            format!("path `{raw}` in {key} contains `.` or `..`"),
            "write the normalized path: the enforcer judges resolved paths, so `..` in a rule is never what you mean",
        );
    }
    Ok(path.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::tls::{TLS_CHECK, TLS_REQUIRE};

    fn check(text: &str) -> Result<(Policy, Vec<Warning>), PolicyError> {
        parse(text, Path::new("p.toml"))
    }

    fn error_of(text: &str) -> String {
        check(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_contract_keys() {
        let (policy, warnings) = check(
            "name = \"coding-agent\"\nmode = \"audit\"\n[files]\nwrite = [\"/workspace/\", \"/tmp\"]\nread_deny = \
             [\"/root/.aws\"]\n",
        )
        .unwrap();
        assert_eq!(policy.name, "coding-agent");
        assert_eq!(policy.mode, Mode::Audit);
        let files = policy.files.unwrap();
        assert_eq!(files.write, vec![PathBuf::from("/workspace"), PathBuf::from("/tmp")]);
        assert_eq!(files.read_deny, vec![PathBuf::from("/root/.aws")]);
        assert_eq!(warnings.len(), 2, "only the absent [network] and [syscalls] sections: {warnings:?}");
    }

    #[test]
    fn sensitive_trees_and_the_egress_after_a_read() {
        let (policy, warnings) = check(
            "name = \"x\"\n[files]\nread_deny = [\"/root/.aws\"]\nsensitive = [\"/work/.env\", \"/root/.aws\"]\n\
             [network]\nallow = [\"github.com:443\"]\nafter_sensitive_read = [\"10.0.0.0/8:443\"]\n",
        )
        .unwrap();
        assert!(policy.has_sensitive_trees());
        assert_eq!(policy.files.unwrap().sensitive, [PathBuf::from("/work/.env")], "read_deny wins");
        assert!(warnings.iter().any(|w| w.to_string().contains("is in files.read_deny too")), "{warnings:?}");
        assert_eq!(policy.network.unwrap().after_sensitive_read.len(), 1);
        let (policy, _) =
            check("name = \"x\"\n[files]\nsensitive = [\"/work/.env\"]\n[network]\nallow = [\"github.com:443\"]\n")
                .unwrap();
        assert!(policy.network.unwrap().after_sensitive_read.is_empty(), "absent: nothing after a sensitive read");

        let error = error_of("name = \"x\"\n[files]\nsensitive = [\"/work/.env\"]\n");
        assert!(error.starts_with("p.toml:3:14: error: files.sensitive needs a [network] section"), "{error}");
        let error = error_of("name = \"x\"\n[network]\nafter_sensitive_read = [\"10.0.0.0/8:443\"]\n");
        assert!(
            error.starts_with("p.toml:3:24: error: network.after_sensitive_read without files.sensitive"),
            "{error}"
        );
        let error = error_of(
            "name = \"x\"\n[files]\nsensitive = [\"/e\"]\n[network]\nafter_sensitive_read = [\"10.0.0.0/33:443\"]\n",
        );
        assert!(error.starts_with("p.toml:5:25: error: network.after_sensitive_read: "), "{error}");
    }

    #[test]
    fn upload_budgets_name_hosts_the_policy_reaches_once_each() {
        let (policy, warnings) = check(
            "name = \"x\"\n[network]\nallow = [\"*.pypi.org:443\"]\nupload = [\"files.pypi.org: 1MiB/10m\", \
             \"*: 20MiB/1h\",\n  \"evil.example: 1KiB/1h\"]\n",
        )
        .unwrap();
        assert_eq!(policy.network.unwrap().upload.len(), 3);
        let unreached: Vec<String> =
            warnings.iter().map(ToString::to_string).filter(|w| w.contains("network.upload")).collect();
        assert!(
            unreached.len() == 1 && unreached[0].starts_with("p.toml:5:3: warning: network.upload `evil.example`"),
            "{unreached:?}"
        );
        let e = error_of("name = \"x\"\n[network]\nupload = [\"*: 1MiB/1h\", \"*: 2MiB/1h\"]\n");
        assert!(e.starts_with("p.toml:3:25: error: network.upload: a second budget for `*`"), "{e}");
        let (_, warnings) = check(
            "name = \"x\"\n[network]\nallow = [\"*.github.com:443\"]\nupload = [\"*.github.com: 9MiB/1h\", \
             \"api.github.com: 1MiB/1h\"]\n",
        )
        .unwrap();
        assert!(
            warnings.iter().any(|w| w.to_string().contains("the earlier `*.github.com` matches it first")),
            "{warnings:?}"
        );
        let (policy, _) = check("name = \"x\"\n[network]\ndns_names = \"300/1h\"\n").unwrap();
        assert_eq!(policy.network.unwrap().dns_names.map(|b| b.count), Some(300));
        let e = error_of("name = \"x\"\n[network]\ndns_names = \"300\"\n");
        assert!(e.starts_with("p.toml:3:13: error: network.dns_names: `300` has no `/`"), "{e}");
        let (policy, _) = check("name = \"x\"\n[network]\nnew_destinations = \"20/10m\"\n").unwrap();
        let budget = policy.network.unwrap().new_destinations.unwrap();
        assert_eq!((budget.count, budget.window.as_secs()), (20, 600));
        let e = error_of("name = \"x\"\n[network]\nnew_destinations = \"0/1h\"\n");
        assert!(e.starts_with("p.toml:3:20: error: network.new_destinations: `0/1h`: the count is not 1 to"), "{e}");
        let e = error_of("name = \"x\"\n[network]\nupload = [\"github.com 1MiB\"]\n");
        assert!(e.starts_with("p.toml:3:11: error: network.upload: `github.com 1MiB` has no `:`"), "{e}");
        assert!(e.contains("hint: write `DESTINATION: SIZE/WINDOW`"), "{e}");
    }

    #[test]
    fn listen_entries_name_sources_and_local_ports() {
        let (policy, warnings) =
            check("name = \"x\"\n[network]\nlisten = [\"*:8080/tcp\", \"10.0.0.0/8:22\"]\nsockets = [\"sctp\"]\n")
                .unwrap();
        let listen = policy.network.unwrap().listen;
        assert_eq!(listen[0].0.target, Target::Net { addr: std::net::Ipv6Addr::UNSPECIFIED, prefix: 0 });
        assert_eq!((*listen[0].0.ports.start(), listen[0].0.protos), (8080, enforcer_common::net::PROTO_TCP));
        assert_eq!(*listen[1].0.ports.end(), 22);
        assert!(
            warnings.iter().any(|w| w.to_string().contains("`sctp`: the destinations of these sockets are not judged")),
            "{warnings:?}"
        );
        let error = error_of("name = \"x\"\n[network]\nlisten = [\"github.com:22\"]\n");
        assert!(error.starts_with("p.toml:3:11: error: network.listen: `github.com` is a host name"), "{error}");
        assert!(error.contains("hint: write `SOURCE:PORTS"), "{error}");
    }

    #[test]
    fn mode_defaults_to_enforce_and_absent_sections_warn() {
        let (policy, warnings) = check("name = \"x\"\n").unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.files, None);
        assert_eq!(policy.network, None);
        assert_eq!(warnings.len(), 3);
        assert!(warnings[0].to_string().contains("does not restrict file access"), "{}", warnings[0]);
        assert!(warnings[1].to_string().contains("does not restrict network access"), "{}", warnings[1]);
        assert!(warnings[2].to_string().contains("allows every syscall"), "{}", warnings[2]);
    }

    #[test]
    fn parses_the_network_section() {
        let (policy, _) = check(
            "name = \"x\"\n[network]\nallow = [\"10.0.0.0/8:1-1024/tcp\", \"api.github.com:443\"]\nunix = \
             [\"/run/a.sock\", \"@bus\"]\nsockets = [\"raw\"]\n",
        )
        .unwrap();
        let network = policy.network.unwrap();
        assert_eq!(network.allow.len(), 2);
        assert_eq!(network.allow[1].1.line, 3);
        assert_eq!(network.unix, ["/run/a.sock", "@bus"]);
        assert_eq!(network.sockets, ["raw"]);
    }

    #[test]
    fn host_entries_check_tls_names_unless_a_table_says_otherwise() {
        let (policy, _) = check(
            "name = \"x\"\n[network]\nallow = [\"a.example:443\", { to = \"b.example:443\", tls = \"require\" },\n  \
             { to = \"c.example:22\", tls = \"off\" }, \"10.0.0.0/8:443\", { to = \"d.example:443\" }]\n",
        )
        .unwrap();
        let allow = policy.network.unwrap().allow;
        let modes: Vec<u8> = allow.iter().map(|(d, _)| d.tls).collect();
        assert_eq!(modes, [TLS_CHECK, TLS_REQUIRE, 0, 0, TLS_CHECK]);
        assert_eq!((allow[2].1.line, allow[2].1.column), (4, 3), "a table is located like a string");
        let e = error_of("name = \"x\"\n[network]\nallow = [{ to = \"10.0.0.0/8:443\", tls = \"require\" }]\n");
        assert!(e.starts_with("p.toml:3:10: error: network.allow: `10.0.0.0/8:443` is an address prefix"), "{e}");
        let e = error_of("name = \"x\"\n[network]\nallow = [{ to = \"a.example:443\", tls = \"strict\" }]\n");
        assert!(e.contains("tls `strict` is not a mode") && e.contains("\"require\""), "{e}");
    }

    #[test]
    fn bad_network_entries_are_located_with_hints() {
        let e = error_of("name = \"x\"\n[network]\nallow = [\"1.2.3.4:443\",\n  \"10.0.0.0/8:99999\"]\n");
        assert!(e.starts_with("p.toml:4:3: error: network.allow: port 99999 is out of range"), "{e}");
        assert!(e.contains("hint: ports are 1 to 65535"), "{e}");
        let e = error_of("name = \"x\"\n[network]\nunix = [\"run/a.sock\"]\n");
        assert!(e.starts_with("p.toml:3:9: error: network.unix: `run/a.sock` is neither"), "{e}");
        let e = error_of("name = \"x\"\n[network]\nsockets = [\"bluetooth\"]\n");
        assert!(e.contains("unknown socket class `bluetooth`") && e.contains("raw, icmp, packet"), "{e}");
    }

    #[test]
    fn parses_the_syscalls_and_exec_sections() {
        let (policy, warnings) = check(
            "name = \"x\"\n[syscalls]\nallow = [\"@default-agent\", \"keyctl\", \"bpf\"]\ndeny_action = \"kill\"\n\
             require_seccomp = true\n[exec]\nallow = [\"/usr\", \"/workspace/.venv/bin/\"]\n",
        )
        .unwrap();
        let syscalls = policy.syscalls.unwrap();
        assert!(syscalls.allow.contains("openat") && syscalls.allow.contains("keyctl"));
        assert_eq!(
            (syscalls.deny_action, syscalls.require_seccomp, syscalls.namespaces),
            (DenyAction::Kill, true, false)
        );
        assert_eq!(policy.exec.unwrap().allow, [PathBuf::from("/usr"), PathBuf::from("/workspace/.venv/bin")]);
        let floor =
            warnings.iter().find(|w| w.message.contains("the built-in floor still denies")).expect("a floor warning");
        assert_eq!(floor.at.line, 3, "{floor}");
    }

    #[test]
    fn bad_syscalls_entries_are_located_with_hints() {
        let e = error_of("name = \"x\"\n[syscalls]\nallow = [\"read\",\n \"@defualt-agent\"]\n");
        assert!(e.starts_with("p.toml:4:2: error: syscalls.allow: unknown syscall group `@defualt-agent`"), "{e}");
        assert!(e.contains("the groups are @default-agent"), "{e}");
        let e = error_of("name = \"x\"\n[syscalls]\nallow = [\"read\"]\ndeny_action = \"eprem\"\n");
        assert!(e.starts_with("p.toml:4:15: error: syscalls.deny_action: unknown action `eprem`"), "{e}");
        let e = error_of("name = \"x\"\n[syscalls]\nallow = []\n");
        assert!(e.contains("syscalls.allow is empty"), "{e}");
        let e = error_of("name = \"x\"\n[exec]\nallow = [\"usr/bin\"]\n");
        assert!(e.starts_with("p.toml:3:10: error: relative path `usr/bin` in exec.allow"), "{e}");
    }

    #[test]
    fn unknown_key_is_located_with_a_hint() {
        let e = error_of("name = \"x\"\n[files]\nwirte = [\"/a\"]\n");
        assert!(e.starts_with("p.toml:3:1: error: unknown field `wirte`"), "{e}");
        assert!(e.contains("hint: a policy has"), "{e}");
    }

    #[test]
    fn relative_path_is_located_with_a_hint() {
        let e = error_of("name = \"x\"\n[files]\nwrite = [\"/tmp\", \"workspace\"]\n");
        assert!(e.starts_with("p.toml:3:18: error: relative path `workspace` in files.write"), "{e}");
        assert!(e.contains("hint: paths must be absolute, e.g. \"/workspace\""), "{e}");
    }

    #[test]
    fn bad_mode_is_located() {
        let e = error_of("name = \"x\"\nmode = \"block\"\n");
        assert!(e.starts_with("p.toml:2:8: error: unknown mode `block`"), "{e}");
    }

    #[test]
    fn dotdot_and_bad_names_and_syntax_are_refused() {
        assert!(error_of("name = \"x\"\n[files]\nwrite = [\"/a/../etc\"]\n").contains("contains `.` or `..`"));
        assert!(error_of("name = \"a b\"\n").contains("invalid policy name"));
        assert!(error_of("name = \n").starts_with("p.toml:1:"));
        assert!(error_of("mode = \"audit\"\n").contains("missing field `name`"));
    }
}
