//! Roles, underlays and overlay ports on a topology built by hand: a flannel-style node.

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use super::{
    overlay::{FdbPeer, Overlay, OverlayKind},
    *,
};

/// Inode of the node's own namespace in [`flannel_node`].
pub const NODE: u64 = 4_026_531_840;
/// Inode of the pod's namespace.
pub const POD: u64 = 4_026_532_300;
/// Inode of a namespace holding Geneve and a second VXLAN device, on custom ports.
pub const LAB: u64 = 4_026_532_400;

fn link(ifindex: u32, name: &str, kind: LinkKind) -> Link {
    Link {
        ifindex,
        name: name.to_owned(),
        kind,
        master: None,
        peer_ifindex: None,
        peer_netnsid: None,
        up: true,
        addresses: Vec::new(),
        default_route: false,
        overlay: None,
    }
}

fn namespace(inode: u64, name: &str, links: Vec<Link>) -> Namespace {
    Namespace {
        inode,
        path: PathBuf::from(format!("/var/run/netns/{name}")),
        names: vec![name.to_owned()],
        workload: None,
        process: None,
        own: inode == NODE,
        links,
        nsids: HashMap::new(),
    }
}

fn addr(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// A node as flannel's VXLAN backend makes it: `eth0` (the uplink, 198.18.77.1), `cni0`
/// with a pod's veth, and `flannel.1` (VNI 1, port 8472, over `eth0`) with one peer node;
/// beside it a namespace with a Geneve device and a VXLAN device on a bridge, on ports of
/// their own, the VXLAN device's underlay in the node's namespace.
pub fn flannel_node() -> Topology {
    let mut eth0 = link(2, "eth0", LinkKind::Other(String::new()));
    eth0.default_route = true;
    eth0.addresses = vec![(addr("198.18.77.1"), 24)];
    let cni0 = link(3, "cni0", LinkKind::Bridge);
    let mut flannel = link(4, "flannel.1", LinkKind::Other("vxlan".to_owned()));
    flannel.overlay = Some(Overlay {
        vni: Some(1),
        port: Some(8472),
        local: Some(addr("198.18.77.1")),
        underlay: Some(2),
        peers: vec![FdbPeer {
            mac: [2, 0, 0, 0, 0, 2],
            dst: addr("198.18.77.2"),
            port: None,
            vni: None,
        }],
        ..Overlay::new(OverlayKind::Vxlan)
    });
    let mut host_veth = link(5, "veth1", LinkKind::Veth);
    host_veth.master = Some(3);
    host_veth.peer_ifindex = Some(2);
    host_veth.peer_netnsid = Some(0);
    let mut node = namespace(NODE, "node", vec![eth0, cni0, flannel, host_veth]);
    node.nsids.insert(0, POD);

    let mut pod_eth0 = link(2, "eth0", LinkKind::Veth);
    pod_eth0.peer_ifindex = Some(5);
    pod_eth0.peer_netnsid = Some(0);
    pod_eth0.default_route = true;
    let mut pod = namespace(POD, "pod", vec![pod_eth0]);
    pod.nsids.insert(0, NODE);

    let br0 = link(2, "br0", LinkKind::Bridge);
    let mut vxlan = link(3, "vx0", LinkKind::Other("vxlan".to_owned()));
    vxlan.master = Some(2);
    vxlan.overlay = Some(Overlay {
        vni: Some(42),
        port: Some(48879),
        underlay: Some(2),
        underlay_netnsid: Some(5),
        peers: vec![FdbPeer {
            mac: [0; 6],
            dst: addr("198.18.77.3"),
            port: Some(4790),
            vni: None,
        }],
        ..Overlay::new(OverlayKind::Vxlan)
    });
    let mut geneve = link(4, "gnv0", LinkKind::Other("geneve".to_owned()));
    geneve.overlay = Some(Overlay {
        vni: Some(7),
        port: Some(6082),
        remote: Some(addr("198.18.77.4")),
        ..Overlay::new(OverlayKind::Geneve)
    });
    let mut lab = namespace(LAB, "lab", vec![br0, vxlan, geneve]);
    lab.nsids.insert(5, NODE);

    Topology {
        namespaces: vec![node, pod, lab],
    }
}

fn role(topology: &Topology, inode: u64, name: &str) -> Role {
    let ns = topology.namespace(inode).expect("namespace");
    topology.role(ns, ns.link_named(name).expect("link"))
}

#[test]
fn tunnel_devices_have_the_overlay_role() {
    let topology = flannel_node();
    assert_eq!(role(&topology, NODE, "flannel.1"), Role::Overlay);
    assert_eq!(role(&topology, NODE, "eth0"), Role::Uplink);
    assert_eq!(role(&topology, NODE, "cni0"), Role::Bridge);
    assert_eq!(role(&topology, NODE, "veth1"), Role::HostVeth);
    assert_eq!(role(&topology, POD, "eth0"), Role::Container);
    // On a bridge, a VXLAN device is still the overlay, not a container's veth.
    assert_eq!(role(&topology, LAB, "vx0"), Role::Overlay);
    assert_eq!(role(&topology, LAB, "gnv0"), Role::Overlay);
    let names = topology.names();
    assert_eq!(names.role(NODE, 4).name(), "overlay");
    assert_eq!(names.role(NODE, 2).name(), "uplink");
}

#[test]
fn a_tunnels_underlay_is_found_in_its_namespace() {
    let topology = flannel_node();
    let node = topology.namespace(NODE).expect("node");
    let flannel = node.link_named("flannel.1").expect("flannel.1");
    let (ns, underlay) = topology.underlay(node, flannel).expect("underlay");
    assert_eq!((ns.inode, underlay.name.as_str()), (NODE, "eth0"));
    let lab = topology.namespace(LAB).expect("lab");
    let vx0 = lab.link_named("vx0").expect("vx0");
    let (ns, underlay) = topology.underlay(lab, vx0).expect("underlay");
    assert_eq!((ns.inode, underlay.name.as_str()), (NODE, "eth0"));
    // No overlay, no underlay.
    let eth0 = node.link_named("eth0").expect("eth0");
    assert!(topology.underlay(node, eth0).is_none());
}

#[test]
fn vxlan_ports_are_the_defaults_and_every_devices_and_peers_port() {
    let topology = flannel_node();
    assert_eq!(topology.vxlan_ports(), [4789, 4790, 8472, 48879]);
    assert_eq!(topology.geneve_ports(), [6081, 6082]);
    assert_eq!(Topology::default().vxlan_ports(), [4789, 8472]);
    assert_eq!(Topology::default().geneve_ports(), [6081]);
}

#[test]
fn devices_ports_come_before_their_peers_when_there_are_too_many() {
    let mut topology = flannel_node();
    let lab = &mut topology.namespaces[2];
    for (n, port) in [9001, 9002, 9003, 9004, 9005].into_iter().enumerate() {
        let mut device = link(
            10 + n as u32,
            &format!("vx{port}"),
            LinkKind::Other("vxlan".into()),
        );
        device.overlay = Some(Overlay {
            port: Some(port),
            ..Overlay::new(OverlayKind::Vxlan)
        });
        lab.links.push(device);
    }
    // 4789, 8472 by default; devices 8472, 9001..9005, 48879; the peer's 4790 left out.
    assert_eq!(
        topology.vxlan_ports(),
        [4789, 8472, 9001, 9002, 9003, 9004, 9005, 48879]
    );
}
