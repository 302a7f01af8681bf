//! `enforcer run` on a terminal: the command gets a pseudo-terminal of its
//! own in a session of its own, so it reaches nothing of the caller's
//! terminal (no input typed into the caller's shell, no signal to its
//! foreground group), and the caller's terminal is given back as it was.

use std::{
    io::Read as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

use enforcer_tests::{Sandbox, enforcer_bin, probe_bin};

use super::DEGRADED;

fn termios_of(path: &str) -> libc::termios {
    let file = std::fs::File::options().read(true).write(true).open(path).expect("open the terminal");
    // SAFETY: tcgetattr fills a local.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(file.as_raw_fd(), &raw mut termios), 0);
        termios
    }
}

#[test]
fn on_a_terminal_the_command_gets_its_own_terminal_and_session() {
    let sb = Sandbox::new("terminal");
    let (master, slave) = enforcer_tests::pty();
    let before = termios_of(&slave);
    let steps = [
        "session-leader".to_owned(),
        format!("stdin-tty-is:{slave}"),
        "open:/dev/tty".to_owned(),
        "reopen-write:/proc/self/fd/1".to_owned(),
    ];
    let mut command = Command::new(enforcer_bin());
    command
        .arg("run")
        .args(DEGRADED.then_some("--degraded"))
        .args([
            "--policy".as_ref(),
            sb.policy.as_os_str(),
            "--events".as_ref(),
            sb.events.as_os_str(),
            "--".as_ref(),
            probe_bin().as_os_str(),
        ])
        .args(&steps)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&sb.stderr).expect("stderr log"));
    // The caller is a shell on that terminal.
    enforcer_tests::on_terminal(&mut command, &slave);
    let mut child = command.spawn().expect("start enforcer run");
    // Everything the command writes comes through the caller's terminal.
    let mut output = Vec::new();
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let mut buf = [0u8; 4096];
    // EIO once the run and its command closed the terminal.
    while let Ok(n @ 1..) = reader.read(&mut buf) {
        output.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().expect("wait");
    let output = String::from_utf8_lossy(&output).replace('\r', "");
    let stderr = std::fs::read_to_string(&sb.stderr).unwrap_or_default();
    assert!(status.success(), "{status}\n{output}\n{stderr}");
    let errno = |step: &str| {
        let line = output
            .lines()
            .find(|l| l.contains(&format!("\"step\":\"{step}\"")))
            .unwrap_or_else(|| panic!("no `{step}` in:\n{output}\n{stderr}"));
        // A step that writes to the terminal leaves its byte before the line.
        let json = &line[line.find('{').unwrap_or(0)..];
        serde_json::from_str::<serde_json::Value>(json).unwrap_or_else(|e| panic!("{e}: {line:?}"))["errno"]
            .as_i64()
            .expect("errno")
    };
    assert_eq!(errno("session-leader"), 0, "the command leads a session of its own:\n{output}");
    assert_eq!(errno(&format!("stdin-tty-is:{slave}")), 1, "its stdin is a terminal, not the caller's:\n{output}");
    assert_eq!(errno("open:/dev/tty"), 0, "its own terminal is its controlling terminal:\n{output}");
    assert_eq!(errno("reopen-write:/proc/self/fd/1"), 0, "it may re-open its own terminal:\n{output}");
    let after = termios_of(&slave);
    assert_eq!(
        (after.c_lflag, after.c_iflag, after.c_oflag),
        (before.c_lflag, before.c_iflag, before.c_oflag),
        "the caller's terminal modes are back"
    );
    drop(master);
}
