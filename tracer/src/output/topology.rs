//! `tracer topology` output: the mapping the original write-up did by hand with `docker ps`,
//! `ip link show type veth`, `ip link show type bridge` and `ip netns exec`, and the overlay
//! devices `ip -d link show type vxlan` and `bridge fdb show` describe.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use crate::topology::{
    Link, LinkKind, Namespace, Topology,
    overlay::{FdbPeer, Overlay, OverlayKind},
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
    overlays(out, topology)
}

/// A second table, when there are tunnel devices: what each encapsulates into, and where to.
fn overlays(out: &mut impl Write, topology: &Topology) -> io::Result<()> {
    if topology.overlays().next().is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<24} {:<16} {:<9} {:<16} {:<5} {:<24} {:<24} {:<24} PEERS",
        "NAMESPACE", "OVERLAY", "KIND", "VNI/KEY", "PORT", "LOCAL", "REMOTE", "UNDERLAY"
    )?;
    for (ns, link, overlay) in topology.overlays() {
        let underlay = topology.underlay(ns, link).map_or_else(
            || {
                overlay
                    .underlay
                    .map_or_else(|| "-".to_owned(), |i| format!("if{i}"))
            },
            |(underlay_ns, underlay)| {
                if underlay_ns.inode == ns.inode {
                    underlay.name.clone()
                } else {
                    format!("{} in {}", underlay.name, underlay_ns.display_name())
                }
            },
        );
        let address = |addr: Option<IpAddr>| addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let peers: Vec<String> = overlay.peers.iter().map(peer_text).collect();
        let line = format!(
            "{:<24} {:<16} {:<9} {:<16} {:<5} {:<24} {:<24} {:<24} {}",
            ns.display_name(),
            link.name,
            overlay.kind.name(),
            identifier(overlay),
            overlay
                .port
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            address(overlay.local),
            address(overlay.remote),
            underlay,
            if peers.is_empty() {
                "-".to_owned()
            } else {
                peers.join(", ")
            },
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// VNI (or `external`) for VXLAN and Geneve, keys for GRE.
fn identifier(overlay: &Overlay) -> String {
    if overlay.external {
        return "external".to_owned();
    }
    if let Some(vni) = overlay.vni {
        return vni.to_string();
    }
    match (overlay.input_key, overlay.output_key) {
        (Some(input), Some(output)) if input == output => format!("key {input}"),
        (None, None) => "-".to_owned(),
        (input, output) => {
            let key = |k: Option<u32>| k.map_or_else(|| "-".to_owned(), |k| k.to_string());
            format!("ikey {} okey {}", key(input), key(output))
        }
    }
}

/// A forwarding entry as `bridge fdb show` writes it: `MAC dst IP [port P] [vni N]`.
fn peer_text(peer: &FdbPeer) -> String {
    let mut text = format!("{} dst {}", peer.mac_text(), peer.dst);
    if let Some(port) = peer.port {
        text.push_str(&format!(" port {port}"));
    }
    if let Some(vni) = peer.vni {
        text.push_str(&format!(" vni {vni}"));
    }
    text
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
    overlay: Option<OverlayJson>,
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
            overlay: link.overlay.as_ref().map(|overlay| OverlayJson {
                kind: overlay.kind,
                vni: overlay.vni,
                external: overlay.external,
                port: overlay.port,
                local: overlay.local,
                remote: overlay.remote,
                input_key: overlay.input_key,
                output_key: overlay.output_key,
                underlay: topology
                    .underlay(ns, link)
                    .map(|(underlay_ns, underlay)| PeerJson {
                        netns_inode: underlay_ns.inode,
                        netns: underlay_ns.display_name(),
                        ifindex: underlay.ifindex,
                        name: underlay.name.clone(),
                    }),
                peers: overlay
                    .peers
                    .iter()
                    .map(|peer| FdbPeerJson {
                        mac: peer.mac_text(),
                        dst: peer.dst,
                        port: peer.port,
                        vni: peer.vni,
                    })
                    .collect(),
            }),
        }
    }
}

/// A tunnel device's parameters (README, "Overlays and tunnels").
#[derive(Serialize)]
struct OverlayJson {
    kind: OverlayKind,
    vni: Option<u32>,
    external: bool,
    port: Option<u16>,
    local: Option<IpAddr>,
    remote: Option<IpAddr>,
    input_key: Option<u32>,
    output_key: Option<u32>,
    /// The device the encapsulated packets leave through, in its namespace.
    underlay: Option<PeerJson>,
    peers: Vec<FdbPeerJson>,
}

#[derive(Serialize)]
struct FdbPeerJson {
    mac: String,
    dst: IpAddr,
    port: Option<u16>,
    vni: Option<u32>,
}

#[derive(Serialize)]
struct PeerJson {
    netns_inode: u64,
    netns: String,
    ifindex: u32,
    name: String,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::topology::tests::flannel_node;

    #[test]
    fn text_lists_overlays_in_a_table_of_their_own() {
        let mut out = Vec::new();
        text(&mut out, &flannel_node()).expect("written");
        let out = String::from_utf8(out).expect("UTF-8");
        let overlays: Vec<&str> = out.lines().skip_while(|l| !l.is_empty()).skip(1).collect();
        assert_eq!(
            overlays,
            [
                "NAMESPACE                OVERLAY          KIND      VNI/KEY          PORT  \
                 LOCAL                    REMOTE                   UNDERLAY                 PEERS",
                "node                     flannel.1        vxlan     1                8472  \
                 198.18.77.1              -                        eth0                     \
                 02:00:00:00:00:02 dst 198.18.77.2",
                "lab                      vx0              vxlan     42               48879 \
                 -                        -                        eth0 in node             \
                 00:00:00:00:00:00 dst 198.18.77.3 port 4790",
                "lab                      gnv0             geneve    7                6082  \
                 -                        198.18.77.4              -                        -",
            ]
        );
    }

    #[test]
    fn text_has_no_overlay_table_without_tunnels() {
        let mut topology = flannel_node();
        for ns in &mut topology.namespaces {
            ns.links.retain(|l| l.overlay.is_none());
        }
        let mut out = Vec::new();
        text(&mut out, &topology).expect("written");
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(!out.contains("OVERLAY"), "{out}");
        assert_eq!(out.lines().count(), 1 + 5, "{out}");
    }

    #[test]
    fn identifiers_of_external_devices_and_gre_keys() {
        let mut overlay = Overlay::new(OverlayKind::Gre);
        assert_eq!(identifier(&overlay), "-");
        overlay.input_key = Some(5);
        overlay.output_key = Some(5);
        assert_eq!(identifier(&overlay), "key 5");
        overlay.input_key = None;
        assert_eq!(identifier(&overlay), "ikey - okey 5");
        let mut overlay = Overlay::new(OverlayKind::Vxlan);
        overlay.external = true;
        assert_eq!(identifier(&overlay), "external");
    }

    #[test]
    fn json_links_carry_their_overlay() {
        let mut out = Vec::new();
        json(&mut out, &flannel_node()).expect("written");
        let topology: Value = serde_json::from_slice(&out).expect("JSON");
        let links = |ns: usize| topology["namespaces"][ns]["links"].clone();
        assert_eq!(links(0)[0]["name"], "eth0");
        assert_eq!(links(0)[0]["overlay"], Value::Null);
        assert_eq!(links(0)[2]["kind"], "vxlan");
        assert_eq!(
            links(0)[2]["overlay"],
            json!({
                "kind": "vxlan",
                "vni": 1,
                "external": false,
                "port": 8472,
                "local": "198.18.77.1",
                "remote": null,
                "input_key": null,
                "output_key": null,
                "underlay": {"netns_inode": 4_026_531_840_u64, "netns": "node", "ifindex": 2, "name": "eth0"},
                "peers": [{"mac": "02:00:00:00:00:02", "dst": "198.18.77.2", "port": null, "vni": null}],
            })
        );
        assert_eq!(
            links(2)[2]["overlay"],
            json!({
                "kind": "geneve",
                "vni": 7,
                "external": false,
                "port": 6082,
                "local": null,
                "remote": "198.18.77.4",
                "input_key": null,
                "output_key": null,
                "underlay": null,
                "peers": [],
            })
        );
    }
}
