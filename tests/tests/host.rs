//! What the host kernel supports: it runs cgroup v2 but refuses BPF LSM
//! programs, so `enforcer run` must refuse plainly and never run the command
//! unenforced. Runs as root on the host (the host tier).

use std::process::Command;

use enforcer::cgroups::{Cgroup, Hierarchy, RunCgroup};
use enforcer_tests::enforcer_bin;

/// The host kernel runs the cgroup programs but not BPF LSM ones.
const DEGRADED: bool = true;
mod containers;
mod daemon;
mod evidence;
mod fleet;
mod network;
mod syscalls;
mod terminal;

#[test]
fn run_refuses_to_start_the_command_when_bpf_lsm_cannot_load() {
    let marker = std::env::temp_dir().join(format!("enforcer-host-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/coding-agent.toml");
    let out = Command::new(enforcer_bin())
        .args(["run", "--policy", policy, "--", "touch"])
        .arg(&marker)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("the command was not run"), "{stderr}");
    assert!(
        stderr.contains("cannot attach BPF trampolines") || stderr.contains("BPF LSM is not active"),
        "says what the kernel lacks: {stderr}"
    );
    assert!(!marker.exists(), "the command must not have run");
    assert!(
        stderr.contains("not enforceable on this kernel:") && stderr.contains("[files]"),
        "lists the parts: {stderr}"
    );
    assert!(stderr.contains("pass --degraded"), "says what to do: {stderr}");
}

#[test]
fn run_cgroups_are_created_joined_and_removed() {
    let hierarchy = Hierarchy::find().expect("cgroup2 mounted");
    let run = RunCgroup::create(&hierarchy).expect("create run cgroup");
    let cgroup = run.cgroup.clone();
    assert!(cgroup.name.starts_with("/enforcer/run-"), "{}", cgroup.name);
    assert!(cgroup.level >= 2, "level {}", cgroup.level);
    let reopened = Cgroup::open(&hierarchy, &cgroup.path).unwrap();
    assert_eq!(reopened.id, cgroup.id);

    // A process started in it, and one in a child cgroup, are killed and the
    // tree removed when the run ends.
    let procs = cgroup.procs_file().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    // SAFETY: join only calls write(2).
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || enforcer::cgroups::join(&procs)) };
    let mut child = cmd.spawn().unwrap();
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    assert!(own.contains(&format!("0::{}", cgroup.name)), "{own}");
    std::fs::create_dir(cgroup.path.join("nested")).unwrap();
    drop(run);
    assert!(!cgroup.path.exists(), "run cgroup removed");
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed with the cgroup");
}

/// What a coding agent runs (git, a C compiler, Python, Node, rustc) under
/// `@default-agent`: it all works, and nothing is refused. Host tier only:
/// the VMs have none of these programs.
#[test]
fn an_agent_workload_runs_under_default_agent_without_a_refusal() {
    let mut sb = enforcer_tests::Sandbox::new("workload");
    sb.degraded = true;
    sb.write_policy_with("enforce", "[syscalls]\nallow = [\"@default-agent\"]\n");
    let script = format!(
        r#"set -e
cd {dir}
git init -q repo && cd repo
printf 'int main(void) {{ return 0; }}\n' > main.c
git add main.c && git -c user.email=agent@example.com -c user.name=agent commit -q -m init
cc -O2 -o main main.c && ./main
python3 -c 'import json, subprocess, threading, sqlite3, ssl; t = threading.Thread(target=print, args=("py-thread",)); t.start(); t.join(); print(json.dumps(subprocess.run(["true"]).returncode))'
node -e 'const {{ Worker }} = require("worker_threads"); new Worker("1", {{ eval: true }}); require("fs").writeFileSync("n.txt", "x"); require("child_process").execSync("true"); console.log("node-ok")'
printf 'fn main() {{ std::thread::spawn(|| ()).join().unwrap(); }}\n' > r.rs && rustc -o r r.rs && ./r
echo workload-done
"#,
        dir = sb.allowed.display()
    );
    let child = sb.spawn_command(&["sh".into(), "-c".into(), script.into()]);
    let out = sb.finish(child);
    for marker in ["py-thread", "node-ok", "workload-done"] {
        assert!(out.stdout.contains(marker), "the workload did not get to {marker}:\n{out:#?}");
    }
    assert_eq!(out.code, Some(0), "{out:#?}");
    let refused: Vec<_> = out.events.iter().filter(|e| e["kind"] == "syscall").collect();
    assert!(refused.is_empty(), "@default-agent refused part of the workload: {refused:#?}");
}

fn export(policy: &std::path::Path, format: &str) -> String {
    let out = Command::new(enforcer_bin())
        .args(["export", "seccomp", "--format", format, "--policy"])
        .arg(policy)
        .output()
        .expect("run enforcer export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_exported_oci_profile_validates_against_the_runtime_spec_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../data/oci-seccomp.schema.json")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let sb = enforcer_tests::Sandbox::new("export-oci");
    for deny_action in ["eperm", "kill"] {
        sb.write_policy_with(
            "enforce",
            &format!("[syscalls]\nallow = [\"@default-agent\"]\ndeny_action = \"{deny_action}\"\n"),
        );
        let profile: serde_json::Value = serde_json::from_str(&export(&sb.policy, "oci")).expect("the profile is JSON");
        let errors: Vec<String> =
            validator.iter_errors(&profile).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{deny_action}: {errors:#?}");
        let default = if deny_action == "eperm" { "SCMP_ACT_ERRNO" } else { "SCMP_ACT_KILL_PROCESS" };
        assert_eq!(profile["defaultAction"], default, "{profile:#}");
        let rules = profile["syscalls"].as_array().expect("syscalls");
        let rule_for =
            |name: &str| rules.iter().find(|r| r["names"].as_array().is_some_and(|n| n.iter().any(|n| n == name)));
        assert_eq!(rule_for("openat").map(|r| &r["action"]), Some(&"SCMP_ACT_ALLOW".into()));
        assert!(rule_for("keyctl").is_none(), "keyctl is not allowed: {profile:#}");
        let clone = rule_for("clone").expect("clone is allowed with conditions");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ", "{clone}");
        let clone3 = rule_for("clone3").expect("clone3 fails with ENOSYS");
        assert_eq!((&clone3["action"], &clone3["errnoRet"]), (&"SCMP_ACT_ERRNO".into(), &38.into()), "{clone3}");
    }
    // The example policy exports too.
    let example = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/coding-agent.toml"));
    let profile: serde_json::Value = serde_json::from_str(&export(example, "oci")).expect("JSON");
    assert!(validator.is_valid(&profile));
}

#[test]
fn the_exported_systemd_settings_pass_systemd_analyze_verify() {
    let sb = enforcer_tests::Sandbox::new("export-systemd");
    sb.write_policy_with("enforce", "[syscalls]\nallow = [\"@default-agent\"]\n");
    let settings = export(&sb.policy, "systemd");
    assert!(
        settings.contains("SystemCallErrorNumber=EPERM\n") && settings.contains("RestrictNamespaces=yes\n"),
        "{settings}"
    );
    let unit = sb.base.join("enforcer-agent.service");
    std::fs::write(&unit, format!("[Unit]\nDescription=agent\n[Service]\nExecStart=/bin/true\n{settings}"))
        .expect("write unit");
    let Ok(out) = Command::new("systemd-analyze").arg("verify").arg(&unit).output() else {
        // No systemd here: check the documented syntax instead.
        for line in settings.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not Key=Value: {line}"));
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric()) && !value.is_empty(), "{line}");
        }
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}\n{settings}");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("enforcer-agent.service")).collect();
    assert!(complaints.is_empty(), "systemd complains about the settings:\n{}", complaints.join("\n"));
}

#[test]
fn the_shipped_systemd_unit_passes_systemd_analyze_verify() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/enforcer.service")).expect("unit");
    // The unit names the installed binary; verify it against the built one.
    let unit_text = shipped.replace("/usr/bin/enforcer", &enforcer_bin().display().to_string());
    let dir = std::path::Path::new("/tmp/enforcer-tests/unit");
    std::fs::create_dir_all(dir).expect("dir");
    let unit = dir.join("enforcer.service");
    std::fs::write(&unit, unit_text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("enforcer.service")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
    assert!(shipped.contains("ExecStart=/usr/bin/enforcer daemon") && shipped.contains("Restart=always"));
    assert!(shipped.contains("StartLimitIntervalSec=0"), "a daemon killed repeatedly keeps being restarted");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_kubernetes_manifests_parse_and_mount_what_the_daemon_needs() {
    use yaml_rust2::YamlLoader;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/enforcer.yaml"))
        .expect("manifests");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let kind = |doc: &yaml_rust2::Yaml| doc["kind"].as_str().unwrap_or_default().to_owned();
    let daemonset = docs.iter().find(|d| kind(d) == "DaemonSet").expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "peers are checked through the host's /proc");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"].as_bool(), Some(true));
    let command: Vec<&str> =
        container["command"].as_vec().expect("command").iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(command[..2], ["/usr/bin/enforcer", "daemon"]);
    let mounts = container["volumeMounts"].as_vec().expect("volumeMounts");
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let host_path = |mount_path: &str| {
        let mount = mounts.iter().find(|m| m["mountPath"].as_str() == Some(mount_path))?;
        let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
        volume["hostPath"]["path"].as_str().map(str::to_owned)
    };
    // The events file's directory too: denials outlive the pod.
    let events_dir = std::path::Path::new(enforcer::daemon::config::DEFAULT_EVENTS_FILE).parent().unwrap();
    let events_dir = events_dir.to_str().unwrap();
    for path in
        ["/sys/fs/bpf", "/sys/fs/cgroup", "/sys/kernel/security", "/sys/kernel/btf", "/run/enforcer", events_dir]
    {
        assert_eq!(host_path(path).as_deref(), Some(path), "the host's {path} is mounted at {path}");
    }
    let bpffs = mounts.iter().find(|m| m["mountPath"].as_str() == Some("/sys/fs/bpf")).unwrap();
    assert_eq!(bpffs["mountPropagation"].as_str(), Some("Bidirectional"), "pins must reach the host's bpffs");
    // The configuration and the policies in the ConfigMaps are valid.
    let config_map = |name: &str| {
        docs.iter().find(|d| kind(d) == "ConfigMap" && d["metadata"]["name"].as_str() == Some(name)).expect(name)
    };
    let config = config_map("enforcer-config")["data"]["enforcer.toml"].as_str().expect("enforcer.toml").to_owned();
    let config =
        enforcer::daemon::config::Config::parse(&config, std::path::Path::new("enforcer.toml")).expect("config parses");
    assert_eq!(config.bpffs, std::path::Path::new("/sys/fs/bpf/enforcer"));
    for (file, policy) in config_map("enforcer-policies")["data"].as_hash().expect("policies") {
        let file = file.as_str().expect("file name");
        enforcer::policy::parse(policy.as_str().expect("text"), std::path::Path::new(file))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
