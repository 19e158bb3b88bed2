//! What the user asked to look at (`-i`, `--container`, `--pod`, `--netns`), resolved against the
//! topology: the interfaces that get TC programs, and the places a packet must touch to be
//! shown.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::{
    correlate::PacketTrace,
    kernel::tc::TcTarget,
    topology::{LinkKind, Namespace, Topology, runtime::Workloads},
};

/// The user's selection, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `-i`: interfaces.
    pub interfaces: Vec<String>,
    /// `--container`: container names or id prefixes, of any runtime.
    pub containers: Vec<String>,
    /// `--pod`: pods, `namespace/name` (or a name that is unique without its namespace).
    pub pods: Vec<String>,
    /// `--netns`: named network namespaces.
    pub netns: Vec<String>,
    /// `--pid`, `--comm`.
    pub processes: ProcessFilter,
}

/// The processes whose connections are shown (`--pid`, `--comm`); all when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
}

impl ProcessFilter {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty()
    }

    /// Whether `packet` comes from one of the processes.
    pub fn matches(&self, packet: &PacketTrace) -> bool {
        packet.process.as_ref().is_some_and(|owner| {
            self.pids.contains(&owner.process.pid)
                || self.comms.iter().any(|comm| *comm == owner.process.comm)
        })
    }

    /// A command name the kernel cannot report (`comm` is at most 15 bytes).
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(long) = self.comms.iter().find(|comm| comm.len() > 15) {
            bail!(
                "--comm {long}: the kernel keeps 15 bytes of a command name; use --comm {}",
                long.chars().take(15).collect::<String>()
            );
        }
        Ok(())
    }
}

/// A place a shown packet must touch: a whole namespace, or one interface in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Netns(u64),
    Interface(u64, u32),
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
            && self.containers.is_empty()
            && self.pods.is_empty()
            && self.netns.is_empty()
            && self.processes.is_empty()
    }

    /// The places selected, or an error naming what does not exist (and what does).
    pub fn places(
        &self,
        topology: &Topology,
        workloads: &Workloads,
    ) -> anyhow::Result<BTreeSet<Place>> {
        let mut places = BTreeSet::new();
        let namespaces = self.namespaces(topology, workloads)?;
        if self.interfaces.is_empty() {
            places.extend(namespaces.iter().map(|ns| Place::Netns(ns.inode)));
            return Ok(places);
        }
        let scopes: Vec<&Namespace> = if namespaces.is_empty() {
            topology.namespaces.iter().filter(|ns| ns.own).collect()
        } else {
            namespaces
        };
        for name in &self.interfaces {
            let mut found = false;
            for ns in &scopes {
                if let Some(link) = ns.link_named(name) {
                    places.insert(Place::Interface(ns.inode, link.ifindex));
                    found = true;
                }
            }
            if !found {
                bail!("no interface named {name}; `tracer topology` lists the interfaces");
            }
        }
        Ok(places)
    }

    /// Namespaces named by --container, --pod and --netns.
    fn namespaces<'a>(
        &self,
        topology: &'a Topology,
        workloads: &Workloads,
    ) -> anyhow::Result<Vec<&'a Namespace>> {
        let mut found = Vec::new();
        let mut add = |inodes: Vec<u64>| {
            found.extend(inodes.iter().filter_map(|inode| topology.namespace(*inode)));
        };
        for name in &self.containers {
            let by_name: Vec<u64> = workloads
                .containers
                .iter()
                .filter(|c| !c.sandbox && c.name == *name)
                .map(|c| c.netns_inode)
                .collect();
            let by_id = || -> Vec<u64> {
                let matching: Vec<u64> = workloads
                    .containers
                    .iter()
                    .filter(|c| name.len() >= 4 && c.id.starts_with(name.as_str()))
                    .map(|c| c.netns_inode)
                    .collect();
                if matching.len() == 1 {
                    matching
                } else {
                    Vec::new()
                }
            };
            let inodes = if by_name.is_empty() { by_id() } else { by_name };
            if inodes.is_empty() {
                bail!(
                    "no running container named {name}; {}",
                    existing("containers", &workloads.container_names())
                );
            }
            add(inodes);
        }
        for name in &self.pods {
            let pods = workloads.pods();
            let exact = pods.iter().any(|pod| pod == name);
            let matching: Vec<&str> = pods
                .iter()
                .copied()
                .filter(|pod| {
                    *pod == name.as_str()
                        || (!exact && pod.rsplit_once('/').is_some_and(|(_, short)| short == name))
                })
                .collect();
            let [pod] = matching.as_slice() else {
                if matching.is_empty() {
                    bail!("no running pod named {name}; {}", existing("pods", &pods));
                }
                bail!(
                    "pod name {name} is ambiguous, give its namespace: {}",
                    matching.join(", ")
                );
            };
            add(workloads
                .containers
                .iter()
                .filter(|c| c.pod.as_deref() == Some(*pod))
                .map(|c| c.netns_inode)
                .collect());
        }
        for name in &self.netns {
            match topology
                .namespaces
                .iter()
                .find(|ns| ns.names.contains(name))
            {
                Some(ns) => found.push(ns),
                None => bail!("no network namespace named {name}; `ip netns` lists them"),
            }
        }
        Ok(found)
    }

    /// Interfaces for the TC programs: the selected ones, or, for a namespace, its links, their
    /// veth peers, the bridges those are on, and the uplinks next to them. With no selection,
    /// every veth end, bridge and uplink.
    pub fn targets(places: &BTreeSet<Place>, topology: &Topology) -> Vec<TcTarget> {
        let mut targets = BTreeSet::new();
        let mut add = |ns: &Namespace, ifindex: u32| {
            if let Some(link) = ns.link(ifindex)
                && link.kind != LinkKind::Loopback
            {
                targets.insert(TcTarget {
                    netns_inode: ns.inode,
                    ifindex,
                    ifname: link.name.clone(),
                    netns_path: (!ns.own).then(|| ns.path.clone()),
                });
            }
        };
        if places.is_empty() {
            for ns in &topology.namespaces {
                for link in &ns.links {
                    if matches!(link.kind, LinkKind::Veth | LinkKind::Bridge) || link.default_route
                    {
                        add(ns, link.ifindex);
                    }
                }
            }
        }
        for place in places {
            match *place {
                Place::Interface(inode, ifindex) => {
                    if let Some(ns) = topology.namespace(inode) {
                        add(ns, ifindex);
                    }
                }
                Place::Netns(inode) => {
                    let Some(ns) = topology.namespace(inode) else {
                        continue;
                    };
                    for link in &ns.links {
                        add(ns, link.ifindex);
                        let Some((peer_ns, peer)) = topology.peer(ns, link) else {
                            continue;
                        };
                        add(peer_ns, peer.ifindex);
                        if let Some(bridge) = topology.bridge_of(peer_ns, peer) {
                            add(peer_ns, bridge.ifindex);
                        }
                        for uplink in peer_ns.links.iter().filter(|l| l.default_route) {
                            add(peer_ns, uplink.ifindex);
                        }
                    }
                }
            }
        }
        targets.into_iter().collect()
    }
}

/// `these are running: a, b` or `none is running`, for an error about `what` (plural).
fn existing(what: &str, names: &[&str]) -> String {
    if names.is_empty() {
        return format!("no {what} are running (`tracer topology` lists what there is)");
    }
    format!("running {what}: {}", names.join(", "))
}

/// Whether `packet` touches one of `places` (every packet does when there are none).
pub fn touches(packet: &PacketTrace, places: &BTreeSet<Place>) -> bool {
    places.is_empty()
        || packet.hops.iter().any(|hop| {
            let inode = hop.event.netns_inode;
            places.contains(&Place::Netns(inode))
                || places.contains(&Place::Interface(inode, hop.event.ifindex))
        })
}
