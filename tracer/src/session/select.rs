//! What the user asked to look at (`-i`, `--container`, `--netns`), resolved against the
//! topology: the interfaces that get TC programs, and the places a packet must touch to be
//! shown.

use std::collections::BTreeSet;

use anyhow::bail;

use crate::{
    correlate::PacketTrace,
    kernel::tc::TcTarget,
    topology::{LinkKind, Namespace, Topology},
};

/// The user's selection, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `-i`: interfaces.
    pub interfaces: Vec<String>,
    /// `--container`: container names.
    pub containers: Vec<String>,
    /// `--netns`: named network namespaces.
    pub netns: Vec<String>,
}

/// A place a shown packet must touch: a whole namespace, or one interface in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Netns(u64),
    Interface(u64, u32),
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.containers.is_empty() && self.netns.is_empty()
    }

    /// The places selected, or an error naming what does not exist.
    pub fn places(&self, topology: &Topology) -> anyhow::Result<BTreeSet<Place>> {
        let mut places = BTreeSet::new();
        let namespaces = self.namespaces(topology)?;
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

    /// Namespaces named by --container and --netns.
    fn namespaces<'a>(&self, topology: &'a Topology) -> anyhow::Result<Vec<&'a Namespace>> {
        let mut found = Vec::new();
        for name in &self.containers {
            let ns = topology
                .namespaces
                .iter()
                .find(|ns| ns.container.as_deref() == Some(name.as_str()));
            match ns {
                Some(ns) => found.push(ns),
                None => bail!("no running container named {name}; `tracer topology` lists them"),
            }
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

/// Whether `packet` touches one of `places` (every packet does when there are none).
pub fn touches(packet: &PacketTrace, places: &BTreeSet<Place>) -> bool {
    places.is_empty()
        || packet.hops.iter().any(|hop| {
            let inode = hop.event.netns_inode;
            places.contains(&Place::Netns(inode))
                || places.contains(&Place::Interface(inode, hop.event.ifindex))
        })
}
