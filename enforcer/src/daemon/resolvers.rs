//! The daemon's resolvers: one per policy version with a network section,
//! each on a loopback port of its own, where the programs send the DNS of
//! every cgroup tagged or selected with that version (`RESOLVERS`, keyed by
//! policy). Ports grow with policy versions, not with cgroups: a thousand
//! cgroups tagged with one policy share its resolver, which learns which
//! cgroup asked from the kernel only when it refuses (`dns::asker`).
//!
//! All of them share the programs' one grant table. A new version of a
//! policy takes over the grants of the version it replaces for the names it
//! still allows, so agents keep the answers they hold across a reload. A
//! restarted daemon takes over the grants its predecessor left (they keep
//! their TTL) and serves on new ports; in between, the old ports are closed
//! and lookups fail.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use super::policies::Loaded;
use crate::{
    bpf::{GrantMaps, LoadError, NetRuleMaps},
    dns::{self, Refusals, grants::Grants},
    policy::Mode,
};
use enforcer_common::policy::PolicyId;

pub struct Resolvers {
    grants: Arc<Mutex<Grants>>,
    /// `[dns] upstream`; `None`: the system's resolver.
    upstream: Option<SocketAddr>,
    running: HashMap<PolicyId, Running>,
    events: Refusals,
}

/// A resolver's task, stopped when dropped.
struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Resolvers {
    /// Resolvers writing to `grants` (the programs' map, with what an
    /// earlier daemon left in it), their refusals sent to `events`.
    #[must_use]
    pub fn new(grants: GrantMaps, upstream: Option<SocketAddr>, events: Refusals) -> Self {
        let grants = Arc::new(Mutex::new(Grants::adopting(grants)));
        Self { grants, upstream, running: HashMap::new(), events }
    }

    /// The grants, for the stream (the name a denied address came from)
    /// and the sweep.
    #[must_use]
    pub fn grants(&self) -> Arc<Mutex<Grants>> {
        self.grants.clone()
    }

    /// Before a switch: starts the resolver of each version in force that
    /// has a network section and none running, points the programs at it,
    /// and gives each new version the grants of the one it replaces
    /// (`replaced`: old id, new version) for the names it still allows.
    /// From a version's first verdict, its DNS has a resolver and its
    /// agents' earlier answers still connect.
    pub fn prepare<'a>(
        &mut self,
        in_force: impl IntoIterator<Item = &'a Loaded>,
        replaced: &[(PolicyId, &Loaded)],
        net: &mut NetRuleMaps,
    ) -> Result<(), LoadError> {
        for loaded in in_force {
            let (Some(hosts), Some(network)) = (&loaded.hosts, &loaded.policy.network) else { continue };
            if self.running.contains_key(&loaded.id) {
                continue;
            }
            // Read when a resolver starts, not on every reload.
            let upstream = self.upstream.unwrap_or_else(dns::system_upstream);
            let sockets = dns::Sockets::bind(loaded.policy.has_sensitive_trees())?;
            let resolver = dns::Resolver {
                policy_id: loaded.id,
                audit: loaded.policy.mode == Mode::Audit,
                rules: hosts.clone(),
                locked_port: sockets.locked_port(),
                upstream,
                min_ttl: network.dns_min_ttl,
                grants: self.grants.clone(),
                events: self.events.clone(),
                names_asked: dns::names_asked::NamesAsked::default(),
            };
            net.set_resolver(loaded.id, sockets.entry())?;
            self.running.insert(loaded.id, Running(tokio::spawn(dns::serve(resolver, sockets))));
        }
        let Ok(mut grants) = self.grants.lock() else { return Ok(()) };
        for (old, new) in replaced {
            let Some(hosts) = &new.hosts else { continue };
            let ports_for = |name: &str, locked: bool| {
                let ports = if locked { hosts.locked_ports_for(name) } else { hosts.ports_for(name) };
                ports.map(|ports| (ports, hosts.tls_for(name, locked)))
            };
            if let Err(e) = grants.carry_over(*old, new.id, ports_for, |name| hosts.budget_for(name)) {
                tracing::warn!(
                    "policy `{}` version {}: cannot keep the addresses its agents resolved before (they resolve \
                     again): {e}",
                    new.name,
                    new.version
                );
            }
        }
        Ok(())
    }

    /// Stops the resolvers of versions not `live` and drops their grants.
    pub fn retire(&mut self, live: &HashSet<PolicyId>) {
        self.running.retain(|id, _| live.contains(id));
        let Ok(mut grants) = self.grants.lock() else { return };
        for id in grants.policies() {
            if !live.contains(&id) {
                grants.forget(id);
            }
        }
    }

    /// Refusals the stream had no room for (metrics).
    #[must_use]
    pub fn refusals_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// Removes the grants whose TTL ran out (the programs already ignore
    /// them: this frees their entries).
    pub fn sweep(&self) {
        if let Ok(mut grants) = self.grants.lock() {
            grants.sweep();
        }
    }
}
