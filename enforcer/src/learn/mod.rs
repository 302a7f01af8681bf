//! `enforcer learn`: a policy from what a workload did.
//!
//! The command runs under `enforcer run` with the *learning policy*: audit
//! mode, no write tree, no destination, no exec tree, `@default-agent`'s
//! syscalls and the usual secret trees as `read_deny`. Audit mode refuses
//! nothing and reports everything enforce mode would refuse, so its events
//! are the list of what the run needs (`observe`), written as a policy with
//! each entry explained (`emit`): write trees collapsed to the workspace,
//! `/tmp` and tools' directories (`roots`), destinations by the names they
//! were resolved from, secrets read moved to `sensitive`. The same from a
//! daemon's events (`--from`), for a cgroup tagged with the learning policy.

mod emit;
mod observe;
mod roots;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use observe::Observed;
use roots::Places;

pub struct Options {
    pub command: Vec<OsString>,
    pub from: Vec<PathBuf>,
    pub cgroup: Option<String>,
    pub existing: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub name: String,
    pub workspace: Option<PathBuf>,
    pub dns_upstream: Option<String>,
    pub print_learning_policy: bool,
}

/// Secret trees below the home (and the workspace's `.env`): the learning
/// policy reports a read of one, and the learned policy makes it
/// `sensitive` if the run read it and keeps it denied if not.
const HOME_SECRETS: &[&str] = &[
    ".aws",
    ".ssh",
    ".gnupg",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/gh",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials.toml",
];

/// `enforcer learn`: 0 when the policy was written, 1 when the command
/// failed (the policy covers what it did until then), 2 on an error.
#[must_use]
pub fn main(opts: &Options) -> i32 {
    match learn(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enforcer learn: {e:#}");
            2
        }
    }
}

fn learn(opts: &Options) -> Result<i32> {
    let workspace = match &opts.workspace {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("cannot tell the current directory; give --workspace")?,
    };
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let places = Places { workspace, home };
    let secrets = secret_trees(&places);
    if opts.print_learning_policy {
        print!("{}", learning_policy(&opts.name, &secrets));
        return Ok(0);
    }
    let (events, source, status) = if opts.from.is_empty() {
        run_learning(opts, &secrets)?
    } else {
        if !opts.command.is_empty() {
            bail!("give either a command or --from event files, not both");
        }
        let mut text = String::new();
        for file in &opts.from {
            text += &std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
        }
        let cgroup = opts.cgroup.as_deref().map(|c| format!(", cgroup {c}")).unwrap_or_default();
        let files: Vec<String> = opts.from.iter().map(|f| f.display().to_string()).collect();
        (text, format!("the events in {}{cgroup}", files.join(", ")), 0)
    };
    let observed = Observed::from_lines(events.lines(), opts.cgroup.as_deref(), &places, &secrets);
    warn_about(&observed);
    let text = emit::policy(&opts.name, &observed, &secrets, &source);
    // What this writes must load: a learned policy that does not parse is a bug here.
    crate::policy::parse::parse(&text, Path::new("(learned policy)"))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the learned policy does not parse (a bug in enforcer learn; please report it)")?;
    match &opts.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("{}: cannot write the policy", path.display()))?;
            eprintln!("enforcer learn: wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    if let Some(existing) = &opts.existing {
        let (policy, _) = crate::policy::parse::load(existing).map_err(|e| anyhow::anyhow!("{e}"))?;
        let additions = emit::additions(&policy, &observed);
        if additions.is_empty() {
            eprintln!("enforcer learn: {} already allows everything the run did", existing.display());
        } else {
            eprintln!("enforcer learn: what the run needs beyond {}:", existing.display());
            for line in additions {
                eprintln!("  {line}");
            }
        }
    }
    if status != 0 {
        eprintln!("enforcer learn: the command exited {status}: the policy holds what it did until then");
        return Ok(1);
    }
    Ok(0)
}

/// The secret trees for `places`.
fn secret_trees(places: &Places) -> Vec<PathBuf> {
    let mut trees: Vec<PathBuf> = HOME_SECRETS.iter().map(|s| places.home.join(s)).collect();
    trees.push(places.workspace.join(".env"));
    trees
}

/// The policy a learning run is judged by (audit mode: nothing is refused).
fn learning_policy(name: &str, secrets: &[PathBuf]) -> String {
    // Only existing secret trees: the rest would each print a warning.
    let secrets: Vec<String> = secrets
        .iter()
        .filter(|t| t.exists())
        .map(|t| toml::Value::from(t.to_string_lossy().as_ref()).to_string())
        .collect();
    format!(
        "# The learning policy of `enforcer learn`: audit mode (nothing is refused),\n\
         # nothing allowed, so every write, exec, connection, unix socket, socket\n\
         # class, syscall beyond @default-agent and secret read is reported.\n\
         name = {}\nmode = \"audit\"\n\n[files]\nwrite = []\nread_deny = [{}]\n\n\
         [network]\nallow = []\nunix = []\n\n[syscalls]\nallow = [\"@default-agent\"]\n\n[exec]\nallow = []\n",
        toml::Value::from(format!("{name}-learning")),
        secrets.join(", ")
    )
}

/// Runs the command under `enforcer run` with the learning policy; its
/// events, a description of the source, and its exit status.
fn run_learning(opts: &Options, secrets: &[PathBuf]) -> Result<(String, String, i32)> {
    if opts.command.is_empty() {
        bail!("nothing to learn from: give a command (`enforcer learn -- make test`) or --from FILE");
    }
    let dir =
        tempfile::Builder::new().prefix("enforcer-learn-").tempdir().context("cannot make a scratch directory")?;
    let policy = dir.path().join("learning.toml");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&policy, learning_policy(&opts.name, secrets)).context("cannot write the learning policy")?;
    let me = std::env::current_exe().context("cannot find the enforcer's own executable")?;
    let mut run = Command::new(me);
    run.arg("run").arg("--policy").arg(&policy).arg("--events").arg(&events);
    if let Some(upstream) = &opts.dns_upstream {
        run.args(["--dns-upstream", upstream]);
    }
    run.arg("--").args(&opts.command);
    let status = run.status().context("cannot start `enforcer run`")?;
    let code = status.code().unwrap_or(128);
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    if text.is_empty() && code != 0 {
        bail!("`enforcer run` failed (exit {code}) and reported nothing; see its message above");
    }
    let shown: Vec<String> = opts.command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    Ok((text, format!("a run of `{}`", shown.join(" ")), code))
}

/// What the learned policy cannot express, on standard error.
fn warn_about(observed: &Observed) {
    if observed.lost > 0 {
        eprintln!(
            "enforcer learn: warning: {} events were lost (the stream could not keep up): the policy may miss what they were; run again",
            observed.lost
        );
    }
    for (what, seen) in &observed.floor {
        eprintln!(
            "enforcer learn: warning: refused by the built-in floor, which no policy lifts: {what} ({} times, by {})",
            seen.count, seen.example
        );
    }
}
