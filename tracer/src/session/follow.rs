//! Keeps the TC attachments and the names in step with the topology while a trace runs:
//! interfaces that appear get TC programs within a refresh, interfaces and namespaces that
//! vanish are forgotten quietly.

use std::{collections::BTreeSet, collections::HashMap};

use super::select::{Place, Selection};
use crate::{
    error::UsageError,
    kernel::{Programs, hooks::HookSet, tc::AttachError},
    names::NameTable,
    topology::{Namespace, Topology, docker},
};

/// What one [`Follower::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Interfaces that got TC programs, as `ifname in namespace`.
    pub attached: Vec<String>,
    /// Attach failures, each reported once.
    pub failures: Vec<String>,
    /// Whether interfaces are left that still lack TC programs (the budget ran out).
    pub pending: bool,
}

/// The topology as last seen, and what the user selected in it.
pub struct Follower {
    pub topology: Topology,
    pub places: BTreeSet<Place>,
    containers: HashMap<u64, String>,
    tc: bool,
    /// Interfaces whose attach failed (reported once, not tried again) or that were gone.
    given_up: BTreeSet<(u64, u32)>,
}

impl Follower {
    /// Discovers the topology and resolves the selection; an unknown container, namespace or
    /// interface is an error.
    pub async fn start(selection: &Selection, hooks: HookSet) -> anyhow::Result<Follower> {
        let containers = docker_names().await;
        let topology = discover(containers.clone()).await?;
        let places = selection.places(&topology).map_err(UsageError::from)?;
        Ok(Follower {
            topology,
            places,
            containers,
            tc: hooks.has_interface_hooks(),
            given_up: BTreeSet::new(),
        })
    }

    /// Reads the topology again; asks Docker for names only when namespaces appeared.
    pub async fn refresh(&mut self) -> anyhow::Result<()> {
        let known: BTreeSet<u64> = self.topology.namespaces.iter().map(|ns| ns.inode).collect();
        let mut topology = discover(self.containers.clone()).await?;
        if topology
            .namespaces
            .iter()
            .any(|ns| !known.contains(&ns.inode))
        {
            self.containers = docker_names().await;
            for ns in &mut topology.namespaces {
                ns.container = self.containers.get(&ns.inode).cloned();
            }
        }
        self.topology = topology;
        Ok(())
    }

    /// Attaches the TC programs to at most `budget` targets that lack them and forgets
    /// attachments whose interface is gone. Returns what was newly attached, failures not
    /// reported before, and whether targets are left. (Each attach waits for the kernel, for
    /// milliseconds: a small budget keeps the trace reading events in between.)
    pub fn apply(&mut self, programs: &mut Programs, budget: usize) -> Applied {
        let mut applied = Applied::default();
        if !self.tc {
            return applied;
        }
        let targets = Selection::targets(&self.places, &self.topology);
        let wanted: BTreeSet<(u64, u32)> =
            targets.iter().map(|t| (t.netns_inode, t.ifindex)).collect();
        for (inode, ifindex) in programs.tc_keys() {
            if !wanted.contains(&(inode, ifindex)) {
                programs.detach_tc(inode, ifindex);
            }
        }
        let mut tried = 0;
        for target in &targets {
            if programs.tc_attached(target.netns_inode, target.ifindex)
                || self
                    .given_up
                    .contains(&(target.netns_inode, target.ifindex))
            {
                continue;
            }
            if tried == budget {
                applied.pending = true;
                break;
            }
            tried += 1;
            match programs.attach_tc(target) {
                Ok(()) => {
                    let place = self
                        .topology
                        .namespace(target.netns_inode)
                        .map_or_else(String::new, Namespace::display_name);
                    applied
                        .attached
                        .push(format!("{} in {place}", target.ifname));
                }
                // Not tried again: the next topology no longer has it.
                Err(AttachError::Gone(_)) => {
                    self.given_up.insert((target.netns_inode, target.ifindex));
                }
                Err(AttachError::Failed(err)) => {
                    self.given_up.insert((target.netns_inode, target.ifindex));
                    applied.failures.push(format!("{err:#}"));
                }
            }
        }
        applied
    }

    pub fn names(&self) -> NameTable {
        self.topology.names()
    }
}

async fn discover(containers: HashMap<u64, String>) -> anyhow::Result<Topology> {
    Ok(tokio::task::spawn_blocking(move || Topology::discover(&containers)).await?)
}

/// Container names, or none when Docker cannot be asked (said once, on stderr).
async fn docker_names() -> HashMap<u64, String> {
    match docker::containers().await {
        Ok(names) => names,
        Err(err) => {
            log::warn!("could not list Docker containers: {err}");
            HashMap::new()
        }
    }
}
