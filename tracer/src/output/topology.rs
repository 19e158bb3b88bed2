//! `tracer topology` output: the mapping the original write-up did by hand with `docker ps`,
//! `ip link show type veth`, `ip link show type bridge` and `ip netns exec`.

use std::io::{self, Write};

use serde::Serialize;

use crate::topology::{
    Link, LinkKind, Namespace, Topology,
    runtime::{Runtime, Workload},
};

/// One row per interface: namespace (as traces name it), the runtime, pod and container that
/// own it, `name@ifPEER`, kind, the veth's other end, the bridge on the way out, addresses.
pub fn text(out: &mut impl Write, topology: &Topology) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<10} {:<20} {:<16} {:<20} {:<7} {:<36} {:<12} ADDRESSES",
        "NAMESPACE", "RUNTIME", "POD", "CONTAINER", "INTERFACE", "KIND", "PEER", "BRIDGE"
    )?;
    for ns in &topology.namespaces {
        let workload = ns.workload.as_ref();
        let runtime = workload.map_or("-", |w| w.runtime.name());
        let pod = workload.and_then(|w| w.pod.as_deref()).unwrap_or("-");
        let containers = workload
            .filter(|w| !w.containers.is_empty())
            .map_or_else(|| "-".to_owned(), |w| w.containers.join(","));
        for link in ns.links.iter().filter(|l| l.kind != LinkKind::Loopback) {
            let row = Row::new(topology, ns, link);
            let interface = match link.peer_ifindex {
                Some(peer) => format!("{}@if{peer}", link.name),
                None => link.name.clone(),
            };
            let peer = row
                .peer
                .as_ref()
                .map_or_else(|| "-".to_owned(), |p| format!("{} in {}", p.name, p.netns));
            let mut addresses: Vec<String> = row.addresses.clone();
            if link.default_route {
                addresses.push("(default route)".to_owned());
            }
            let line = format!(
                "{:<24} {:<10} {:<20} {:<16} {:<20} {:<7} {:<36} {:<12} {}",
                ns.display_name(),
                runtime,
                pod,
                containers,
                interface,
                kind(&link.kind),
                peer,
                row.bridge.as_deref().unwrap_or("-"),
                addresses.join(" "),
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    Ok(())
}

/// The whole topology as one JSON object.
pub fn json(out: &mut impl Write, topology: &Topology) -> io::Result<()> {
    let namespaces: Vec<NamespaceJson> = topology
        .namespaces
        .iter()
        .map(|ns| NamespaceJson {
            inode: ns.inode,
            name: ns.display_name(),
            names: &ns.names,
            container: ns.workload.as_ref().and_then(Workload::container),
            containers: ns
                .workload
                .as_ref()
                .map_or(&[], |w| w.containers.as_slice()),
            pod: ns.workload.as_ref().and_then(|w| w.pod.as_deref()),
            runtime: ns.workload.as_ref().map(|w| w.runtime),
            pid: ns.process.as_ref().map(|(pid, _)| *pid),
            own: ns.own,
            links: ns
                .links
                .iter()
                .map(|link| LinkJson::new(topology, ns, link))
                .collect(),
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &TopologyJson { namespaces })?;
    writeln!(out)
}

fn kind(kind: &LinkKind) -> &str {
    match kind {
        LinkKind::Veth => "veth",
        LinkKind::Bridge => "bridge",
        LinkKind::Loopback => "lo",
        LinkKind::Other(other) if other.is_empty() => "device",
        LinkKind::Other(other) => other,
    }
}

/// What a row says about a link besides its own fields.
struct Row {
    peer: Option<PeerJson>,
    bridge: Option<String>,
    addresses: Vec<String>,
}

impl Row {
    fn new(topology: &Topology, ns: &Namespace, link: &Link) -> Row {
        let peer = topology.peer(ns, link);
        // The bridge the link is on, or for a container's end, the one its peer is on.
        let bridge = topology
            .bridge_of(ns, link)
            .or_else(|| peer.and_then(|(peer_ns, peer)| topology.bridge_of(peer_ns, peer)))
            .map(|b| b.name.clone());
        Row {
            peer: peer.map(|(peer_ns, peer)| PeerJson {
                netns_inode: peer_ns.inode,
                netns: peer_ns.display_name(),
                ifindex: peer.ifindex,
                name: peer.name.clone(),
            }),
            bridge,
            addresses: link
                .addresses
                .iter()
                .map(|(addr, prefix)| format!("{addr}/{prefix}"))
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct TopologyJson<'a> {
    namespaces: Vec<NamespaceJson<'a>>,
}

#[derive(Serialize)]
struct NamespaceJson<'a> {
    inode: u64,
    /// The name shown in traces.
    name: String,
    /// `ip netns` names.
    names: &'a [String],
    /// The container, where the namespace is one container's.
    container: Option<&'a str>,
    /// Every container in it (a pod's, sandboxes left out).
    containers: &'a [String],
    pod: Option<&'a str>,
    runtime: Option<Runtime>,
    pid: Option<u32>,
    /// Whether tracer runs in it.
    own: bool,
    links: Vec<LinkJson<'a>>,
}

#[derive(Serialize)]
struct LinkJson<'a> {
    ifindex: u32,
    name: &'a str,
    kind: &'a str,
    up: bool,
    master: Option<&'a str>,
    peer: Option<PeerJson>,
    bridge: Option<String>,
    addresses: Vec<String>,
    default_route: bool,
}

impl<'a> LinkJson<'a> {
    fn new(topology: &Topology, ns: &'a Namespace, link: &'a Link) -> Self {
        let row = Row::new(topology, ns, link);
        LinkJson {
            ifindex: link.ifindex,
            name: &link.name,
            kind: kind(&link.kind),
            up: link.up,
            master: link
                .master
                .and_then(|m| ns.link(m))
                .map(|m| m.name.as_str()),
            peer: row.peer,
            bridge: row.bridge,
            addresses: row.addresses,
            default_route: link.default_route,
        }
    }
}

#[derive(Serialize)]
struct PeerJson {
    netns_inode: u64,
    netns: String,
    ifindex: u32,
    name: String,
}
