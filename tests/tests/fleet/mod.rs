//! A fleet's load on one daemon (host tier: a thousand processes at once is
//! more than the TCG guests run in reasonable time): 1 000 tagged cgroups,
//! each denied 100 connects a second, two followers. Every denial is
//! delivered or counted lost; a follower that falls behind is cut off with a
//! count, never silently short.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    EPERM,
    daemon::{Daemon, errno_of},
    enforcer_bin,
};
use serde_json::Value;

const CGROUPS: usize = 1000;
const PER_CGROUP: u64 = 300;
const PER_SECOND: u64 = 100;

/// A follower's count of the fleet's connect denials, and whether (and with
/// how many lines missed) it was cut off.
fn follow(d: &Daemon) -> (Child, std::thread::JoinHandle<(u64, Option<u64>)>) {
    let mut tail = Command::new(enforcer_bin())
        .args(["tail", "--kind", "connect", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let lines = tail.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let mut count = 0;
        for line in BufReader::new(lines).lines().map_while(Result::ok) {
            if line.contains("\"follower_cut\"") {
                let v: Value = serde_json::from_str(&line).expect("JSON");
                return (count, v["missed"].as_u64());
            }
            if line.contains("/enforcer-tests/fleet/") {
                count += 1;
            }
        }
        (count, None)
    });
    (tail, counter)
}

#[test]
fn a_thousand_tagged_cgroups_at_100_denials_a_second_lose_nothing_uncounted() {
    let policy =
        "name = \"fleet\"\ncgroups = [\"/enforcer-tests/fleet/agent-*\"]\n[network]\nallow = [\"127.0.0.1/32:81\"]\n";
    let mut d = Daemon::start("daemon-fleet", super::DEGRADED, &[("fleet.toml", policy)], "");
    d.cgroup("fleet");
    let cgroups: Vec<String> = (0..CGROUPS).map(|i| d.cgroup(&format!("fleet/agent-{i}"))).collect();
    let lost_before = d.api("GET", "/v1/status", None).1["counters"]["lost_events"].as_u64().unwrap_or(0);
    let followers = [follow(&d), follow(&d)];
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.api("GET", "/v1/status", None).1["counters"]["followers"] != 2 {
        assert!(Instant::now() < deadline, "the followers did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }

    let step = format!("tcp-rate:{PER_CGROUP}:{PER_SECOND}:127.0.0.1:82");
    let probes: Vec<Child> = cgroups.iter().map(|c| d.spawn_probe(c, std::slice::from_ref(&step))).collect();
    for probe in probes {
        let output = probe.wait_with_output().expect("wait for probe");
        let results: Vec<Value> =
            String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(errno_of(&results, &step), EPERM, "every agent is judged");
    }

    // Wait for the stream to drain: the file stops growing.
    let total = CGROUPS as u64 * PER_CGROUP;
    let fleet_denials = |d: &Daemon| {
        d.events()
            .iter()
            .filter(|e| {
                e["kind"] == "connect" && e["cgroup"].as_str().is_some_and(|c| c.starts_with("/enforcer-tests/fleet/"))
            })
            .count() as u64
    };
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = fleet_denials(&d);
        if now == delivered || Instant::now() > deadline {
            break;
        }
        delivered = now;
    }
    let lost = d.api("GET", "/v1/status", None).1["counters"]["lost_events"].as_u64().unwrap_or(0) - lost_before;
    if delivered + lost != total {
        // Which cgroups are off, to tell duplicates from losses.
        let mut per: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for e in d.events().iter().filter(|e| e["kind"] == "connect") {
            *per.entry(e["cgroup"].as_str().unwrap_or("-").to_owned()).or_default() += 1;
        }
        let off: Vec<_> = per.iter().filter(|(_, n)| **n != PER_CGROUP).take(20).collect();
        panic!("every denial delivered ({delivered}) or counted lost ({lost}) of {total}; cgroups off: {off:?}");
    }

    for (mut tail, counter) in followers {
        let _ = tail.kill();
        let _ = tail.wait();
        let (received, cut) = counter.join().unwrap();
        match cut {
            None => assert_eq!(received, delivered, "a follower that was not cut off got every line"),
            Some(missed) => assert!(missed > 0, "a follower cut off says how many lines it missed"),
        }
    }
    eprintln!("fleet: {total} denials, {delivered} delivered, {lost} lost (counted)");
}
