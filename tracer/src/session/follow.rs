//! Keeps the TC attachments and the names in step with the topology while a trace runs:
//! interfaces that appear get TC programs within a refresh, interfaces and namespaces that
//! vanish are forgotten quietly.

use std::collections::{BTreeSet, HashMap};

use super::select::{Place, Selection};
use crate::{
    error::UsageError,
    kernel::{Programs, hooks::HookSet, tc::AttachError},
    names::NameTable,
    topology::{
        Namespace, Topology,
        runtime::{Workload, Workloads},
    },
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
    workloads: Workloads,
    /// The containers' cgroups by id, for naming processes.
    cgroups: HashMap<u64, Workload>,
    tc: bool,
    /// Interfaces whose attach failed (reported once, not tried again) or that were gone.
    given_up: BTreeSet<(u64, u32)>,
}

impl Follower {
    /// Discovers the topology and resolves the selection; an unknown container, namespace or
    /// interface is an error.
    pub async fn start(selection: &Selection, hooks: HookSet) -> anyhow::Result<Follower> {
        let workloads = workloads().await;
        let cgroups = cgroups(workloads.clone()).await?;
        let topology = discover(workloads.clone()).await?;
        let places = selection
            .places(&topology, &workloads)
            .map_err(UsageError::from)?;
        Ok(Follower {
            topology,
            places,
            workloads,
            cgroups,
            tc: hooks.has_interface_hooks(),
            given_up: BTreeSet::new(),
        })
    }

    /// Reads the topology again; asks the runtimes for names only when namespaces appeared.
    pub async fn refresh(&mut self) -> anyhow::Result<()> {
        let known: BTreeSet<u64> = self.topology.namespaces.iter().map(|ns| ns.inode).collect();
        let mut topology = discover(self.workloads.clone()).await?;
        if topology
            .namespaces
            .iter()
            .any(|ns| !known.contains(&ns.inode))
        {
            self.workloads = workloads().await;
            self.cgroups = cgroups(self.workloads.clone()).await?;
            for ns in &mut topology.namespaces {
                ns.workload = self.workloads.of_netns(ns.inode).cloned();
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
        let mut names = self.topology.names();
        for (id, workload) in &self.cgroups {
            names.set_cgroup(*id, workload.clone());
        }
        names
    }

    /// What the runtimes reported at the last refresh that found new namespaces.
    pub fn workloads(&self) -> &Workloads {
        &self.workloads
    }
}

async fn discover(workloads: Workloads) -> anyhow::Result<Topology> {
    Ok(tokio::task::spawn_blocking(move || Topology::discover(&workloads)).await?)
}

/// The containers' cgroups by id (none without a cgroup v2 hierarchy).
async fn cgroups(workloads: Workloads) -> anyhow::Result<HashMap<u64, Workload>> {
    Ok(tokio::task::spawn_blocking(move || {
        crate::cgroup::mount().map_or_else(HashMap::new, |root| workloads.by_cgroup(&root))
    })
    .await?)
}

/// The containers and pods of every runtime that answers; one that does not is said on stderr.
async fn workloads() -> Workloads {
    Workloads::discover(|warning| log::warn!("{warning}")).await
}
