//! The daemon's configuration file (TOML).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::policy::Location;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/enforcer/enforcer.toml";
/// Where the CLI finds the daemon when `--socket` is not given.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";
/// Where OCI runtimes hand the daemon containers' seccomp listeners.
pub const DEFAULT_SECCOMP_LISTENER: &str = "/run/enforcer/seccomp.sock";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Policy files (`*.toml`), watched for changes.
    pub policies: PathBuf,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root.
    pub socket_group: Option<String>,
    /// Where the daemon keeps what a restarted daemon adopts (tags, the
    /// policies in force); a tmpfs, like the pins, gone at reboot.
    pub state_dir: PathBuf,
    /// Where programs, links and maps are pinned (on a bpffs).
    pub bpffs: PathBuf,
    pub events: Events,
    pub metrics: Metrics,
    pub dns: Dns,
    pub seccomp: Seccomp,
    /// Public keys (PEM) of whoever may sign policies: when any is given,
    /// a policy file is loaded only with a `.sig` beside it made by one of
    /// them (`enforcer policy sign`), and so is a run's own policy.
    pub policy_keys: Vec<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seccomp {
    /// The seccomp agent's socket, where OCI runtimes hand over the
    /// listeners of filters `enforcer export seccomp --listener` wrote
    /// (`linux.seccomp.listenerPath`); `""` serves none.
    #[serde(deserialize_with = "no_file_if_empty")]
    pub listener: Option<PathBuf>,
}

impl Default for Seccomp {
    fn default() -> Self {
        Self { listener: Some(DEFAULT_SECCOMP_LISTENER.into()) }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// The resolver asked for the names policies allow (default: the first
    /// `nameserver` of `/etc/resolv.conf`, read when a policy's resolver
    /// starts).
    pub upstream: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Every event on stdout as well.
    pub stdout: bool,
    /// Every event in the journal as well when stdout is the journal
    /// (systemd's `JOURNAL_STREAM`). Neither blocks the stream: lines the
    /// journal is too slow for are dropped and counted.
    pub journal: bool,
    /// A JSON-lines file, rotated by size: by default
    /// [`DEFAULT_EVENTS_FILE`], so denials outlive the daemon and whoever
    /// followed them; `file = ""` writes none.
    #[serde(deserialize_with = "no_file_if_empty")]
    pub file: Option<PathBuf>,
    /// Rotate the file when it reaches this size.
    pub file_max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` is the newest).
    pub file_keep: u32,
    /// Lines a follower may fall behind before it is cut off (held in
    /// memory: about half a KiB each).
    pub follower_buffer: usize,
    /// Recent lines kept for `enforcer tail --since`.
    pub history: usize,
    /// The host key (Ed25519, PKCS#8 PEM) that signs the event chain's
    /// head, made with its `.pub` if it does not exist; `""` signs nothing
    /// (lines are still chained).
    #[serde(deserialize_with = "no_file_if_empty")]
    pub signing_key: Option<PathBuf>,
    /// How often the head is signed while lines come (also at every
    /// rotation and at stop): a duration such as `"30s"`.
    #[serde(deserialize_with = "duration")]
    pub sign_every: std::time::Duration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve Prometheus metrics over TCP here too (they are always on the
    /// socket at `/metrics`).
    pub address: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policies: "/etc/enforcer/policies".into(),
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            state_dir: "/run/enforcer".into(),
            bpffs: "/sys/fs/bpf/enforcer".into(),
            events: Events::default(),
            metrics: Metrics::default(),
            dns: Dns::default(),
            seccomp: Seccomp::default(),
            policy_keys: Vec::new(),
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self {
            stdout: false,
            journal: true,
            file: Some(DEFAULT_EVENTS_FILE.into()),
            file_max_bytes: 100 << 20,
            file_keep: 5,
            follower_buffer: 4096,
            history: 10_000,
            signing_key: Some(DEFAULT_SIGNING_KEY.into()),
            sign_every: std::time::Duration::from_mins(1),
        }
    }
}

/// Where the daemon writes its event lines unless configured otherwise.
pub const DEFAULT_EVENTS_FILE: &str = "/var/log/enforcer/events.jsonl";

/// The host key unless configured otherwise.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/enforcer/host.key";

/// A duration written as humans do (`"30s"`, `"5m"`).
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("`{text}` is no duration ({e})")))
}

/// `events.file`: a path, or `""` for none.
fn no_file_if_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the daemon's configuration: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: error: {message}\n  hint: {hint}")]
    Invalid { at: Location, message: String, hint: String },
}

const HINT: &str = "the configuration has `policies`, `socket`, `socket_group`, `state_dir`, `bpffs`, \
`policy_keys`, an [events] table with `stdout`, `journal`, `file`, `file_max_bytes`, `file_keep`, `follower_buffer`, \
`history`, `signing_key` and `sign_every`, and a \
[metrics] table with `address`, a [dns] table with `upstream`, and a [seccomp] table with `listener`; see \
packaging/enforcer.toml";

impl Config {
    /// Reads `path`, or the default file if `path` is `None` (defaults if
    /// that does not exist; a file named explicitly must exist).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |offset: usize, message: String, hint: &str| ConfigError::Invalid {
            at: Location::at(text, path, offset),
            message,
            hint: hint.to_owned(),
        };
        let config: Self = toml::from_str(text)
            .map_err(|e| invalid(e.span().map_or(0, |s| s.start), e.message().trim().to_owned(), HINT))?;
        // Values are checked where they are written (by key, for the line).
        let at = |key: &str| text.find(&format!("{key} ")).or_else(|| text.find(key)).unwrap_or(0);
        for (key, path) in [
            ("policies", &config.policies),
            ("socket", &config.socket),
            ("state_dir", &config.state_dir),
            ("bpffs", &config.bpffs),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    at(key),
                    format!("`{key}` must be an absolute path, not `{}`", path.display()),
                    HINT,
                ));
            }
        }
        if let Some(file) = &config.events.file
            && !file.is_absolute()
        {
            return Err(invalid(
                at("file"),
                format!("events.file must be an absolute path, not `{}`", file.display()),
                HINT,
            ));
        }
        if config.events.file_max_bytes < 4096 {
            return Err(invalid(
                at("file_max_bytes"),
                "events.file_max_bytes is below 4096".to_owned(),
                "rotate at 4096 bytes or more",
            ));
        }
        if let Some(key) = &config.events.signing_key
            && !key.is_absolute()
        {
            return Err(invalid(
                at("signing_key"),
                format!("events.signing_key must be an absolute path, not `{}`", key.display()),
                HINT,
            ));
        }
        if config.events.sign_every < std::time::Duration::from_secs(1) {
            return Err(invalid(
                at("sign_every"),
                "events.sign_every is below a second".to_owned(),
                "sign every second or less often",
            ));
        }
        if config.events.file_keep == 0 {
            return Err(invalid(at("file_keep"), "events.file_keep is 0".to_owned(), "keep at least one rotated file"));
        }
        if config.events.follower_buffer < 16 {
            return Err(invalid(
                at("follower_buffer"),
                "events.follower_buffer is below 16".to_owned(),
                "use 16 lines or more",
            ));
        }
        if let Some(group) = &config.socket_group
            && group_id(group).is_none()
        {
            return Err(invalid(
                at("socket_group"),
                format!("socket_group `{group}` is not a group on this host"),
                "create the group (groupadd) or remove socket_group (root only)",
            ));
        }
        Ok(config)
    }

    /// The socket group's id, if one is configured.
    #[must_use]
    pub fn socket_gid(&self) -> Option<u32> {
        self.socket_group.as_deref().and_then(group_id)
    }
}

/// The id of group `name`, from the group database.
fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result points into
    // static storage, read at once (the daemon looks groups up from one thread).
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null results point at a valid `struct group`.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_defaults() {
        let config = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.events.file_keep, 5);
    }

    #[test]
    fn denials_go_to_a_file_unless_told_otherwise() {
        let config = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(config.events.file.as_deref(), Some(Path::new(DEFAULT_EVENTS_FILE)));
        let none = Config::parse("[events]\nfile = \"\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(none.events.file, None);
        let other = Config::parse("[events]\nfile = \"/srv/audit/enforcer.jsonl\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(other.events.file.as_deref(), Some(Path::new("/srv/audit/enforcer.jsonl")));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let err = Config::parse("socket = \"/run/x.sock\"\n[events]\nstdot = true\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:3:"), "{err}");
        assert!(err.to_string().contains("stdot"), "{err}");
        let err = Config::parse("policies = \"relative/dir\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:1:") && err.to_string().contains("absolute"), "{err}");
        let err = Config::parse("[events]\nfile_keep = 0\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
        let err = Config::parse("socket_group = \"no-such-group-here\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("not a group"), "{err}");
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/enforcer.toml"));
        let config = Config::parse(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/enforcer.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/enforcer.toml"), "{err}");
    }
}
