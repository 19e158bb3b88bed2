//! A two-node Kubernetes overlay as flannel's VXLAN backend builds it, from network namespaces
//! only: two nodes joined by an underlay link, a pod behind a bridge on each, and between the
//! nodes a VXLAN tunnel with static forwarding entries, as flanneld writes them.
//!
//! ```text
//!  pod a    eth0 10.244.1.2                     pod b    eth0 10.244.2.2
//!             │ veth                                       │ veth
//!  node a   cni0 10.244.1.1                     node b   cni0 10.244.2.1
//!           flannel.1 10.244.1.0 ── VNI 1 ───            flannel.1 10.244.2.0
//!           eth0 198.19.X.1 ─── underlay, UDP 8472 ───   eth0 198.19.X.2
//! ```
//!
//! A packet from pod a to pod b is routed by node a to `flannel.1` (route to 10.244.2.0/24 via
//! the peer's VTEP address, onlink), whose static neighbour entry gives it the peer VTEP's MAC,
//! whose FDB entry gives the peer's underlay address: it leaves node a's `eth0` as UDP to port
//! 8472 (VNI 1) and is decapsulated in node b.
//!
//! Faults are methods ([`fault`]: [`Overlay::drop_vxlan_on`], [`Overlay::remove_fdb`],
//! [`Overlay::set_underlay_mtu`], [`Overlay::set_vxlan_df`]), Services are kube-proxy's
//! iptables rules ([`service`]), and [`probe`] sends and counts what the tests need. Every
//! name contains a unique id; dropping the [`Overlay`] deletes its namespaces and with them
//! every link, route and rule inside.

pub mod fault;
pub mod probe;
pub mod service;

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::{
    netns::Netns,
    testbed::{PREFIX, unique_id},
};

/// UDP port of the VXLAN tunnel: flannel's default, the Linux kernel's historical one (IANA's
/// is 4789).
pub const VXLAN_PORT: u16 = 8472;
/// VXLAN network identifier of the tunnel (flannel's default).
pub const VNI: u32 = 1;
/// Bytes VXLAN adds over an IPv4 underlay: outer IPv4 (20), UDP (8), VXLAN (8) and the inner
/// Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The pods' address range, of which each node has a /24 (flannel's default network).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Name of each node's VXLAN device.
pub const VXLAN_DEV: &str = "flannel.1";
/// Name of each node's pod bridge.
pub const BRIDGE_DEV: &str = "cni0";
/// Name of each node's underlay interface, and of each pod's interface.
pub const ETH_DEV: &str = "eth0";

/// One of the two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    /// The other node.
    pub fn peer(self) -> NodeId {
        match self {
            NodeId::A => NodeId::B,
            NodeId::B => NodeId::A,
        }
    }

    /// 1 for node a, 2 for node b: the third octet of its pod subnet.
    pub fn number(self) -> u8 {
        match self {
            NodeId::A => 1,
            NodeId::B => 2,
        }
    }

    /// `a` or `b`, as in the names of its namespaces.
    pub fn letter(self) -> char {
        match self {
            NodeId::A => 'a',
            NodeId::B => 'b',
        }
    }

    fn index(self) -> usize {
        usize::from(self.number() - 1)
    }
}

/// How the overlay is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// MTU of the underlay link (both nodes' `eth0`).
    pub underlay_mtu: u32,
    /// MTU of `flannel.1`, of the bridges and of the pods' interfaces; `None` for the underlay
    /// MTU minus [`VXLAN_OVERHEAD`], as flannel computes it. A larger value builds the case
    /// where encapsulated packets no longer fit the underlay.
    pub vxlan_mtu: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            underlay_mtu: 1500,
            vxlan_mtu: None,
        }
    }
}

impl Options {
    /// The MTU of `flannel.1` these options give.
    pub fn effective_vxlan_mtu(&self) -> u32 {
        self.vxlan_mtu
            .unwrap_or(self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD))
    }
}

/// A pod: its own namespace, behind a veth whose other end is a port of its node's bridge.
#[derive(Debug)]
pub struct Pod {
    pub netns: Netns,
    /// Address of the pod's `eth0`: 10.244.N.2.
    pub addr: Ipv4Addr,
    /// MAC address of the pod's `eth0`.
    pub mac: String,
    /// The node's end of the pod's veth pair, a port of `cni0`.
    pub host_veth: String,
}

/// A node: its namespace (the node's host network) and its pod.
#[derive(Debug)]
pub struct Node {
    pub id: NodeId,
    // Field order is drop order: the pod first.
    pub pod: Pod,
    pub netns: Netns,
    /// Address of the node's `eth0` on the underlay.
    pub underlay_addr: Ipv4Addr,
    /// The node's pod subnet: 10.244.N.0/24.
    pub pod_subnet: String,
    /// Address of `cni0`, the pod's gateway: 10.244.N.1.
    pub bridge_addr: Ipv4Addr,
    /// Address of `flannel.1` (the VTEP): 10.244.N.0.
    pub vtep_addr: Ipv4Addr,
    /// MAC address of `flannel.1`.
    pub vtep_mac: String,
}

/// The overlay: two nodes, two pods, the tunnel between them; torn down on drop.
#[derive(Debug)]
pub struct Overlay {
    /// Unique part of every name in this overlay.
    pub id: String,
    nodes: [Node; 2],
    options: Options,
}

impl Overlay {
    /// Builds the overlay.
    pub fn up(options: Options) -> anyhow::Result<Overlay> {
        let id = unique_id();
        let subnet = underlay_octet();
        let mut nodes = Vec::with_capacity(2);
        for node in [NodeId::A, NodeId::B] {
            nodes.push(Node::create(&id, node, subnet)?);
        }
        let nodes: [Node; 2] = nodes.try_into().expect("two nodes");
        let overlay = Overlay { id, nodes, options };
        overlay
            .build()
            .with_context(|| format!("failed to build overlay {}", overlay.id))?;
        Ok(overlay)
    }

    fn build(&self) -> anyhow::Result<()> {
        let (a, b) = (self.node(NodeId::A), self.node(NodeId::B));
        // The underlay: a veth pair between the two nodes, created inside node a.
        a.netns.ip(&[
            "link",
            "add",
            ETH_DEV,
            "type",
            "veth",
            "peer",
            "name",
            ETH_DEV,
            "netns",
            &b.netns.name,
        ])?;
        for node in &self.nodes {
            node.build(self.options)?;
        }
        for node in &self.nodes {
            node.reach(self.node(node.id.peer()))?;
        }
        Ok(())
    }

    /// One of the nodes.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// The pod of one of the nodes.
    pub fn pod(&self, id: NodeId) -> &Pod {
        &self.node(id).pod
    }

    /// The options the overlay was built with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Start of the name of every namespace of this overlay.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}-", self.id)
    }

    /// Every namespace of the overlay: node a, pod a, node b, pod b.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.nodes.iter().flat_map(|n| [&n.netns, &n.pod.netns])
    }
}

impl Node {
    /// Creates the node's and its pod's namespaces, and picks the node's addresses.
    fn create(id: &str, node: NodeId, underlay_octet: u8) -> anyhow::Result<Node> {
        let (n, letter) = (node.number(), node.letter());
        let netns = Netns::create(&format!("{PREFIX}{id}-node{letter}"))?;
        let pod_netns = Netns::create(&format!("{PREFIX}{id}-pod{letter}"))?;
        Ok(Node {
            id: node,
            pod: Pod {
                netns: pod_netns,
                addr: Ipv4Addr::new(10, 244, n, 2),
                mac: format!("02:fe:0a:f4:{n:02x}:02"),
                host_veth: format!("veth{id}{letter}"),
            },
            netns,
            underlay_addr: Ipv4Addr::new(198, 19, underlay_octet, n),
            pod_subnet: format!("10.244.{n}.0/24"),
            bridge_addr: Ipv4Addr::new(10, 244, n, 1),
            vtep_addr: Ipv4Addr::new(10, 244, n, 0),
            vtep_mac: format!("02:fe:0a:f4:{n:02x}:00"),
        })
    }

    /// Everything of the node but the route to its peer: underlay address, bridge, pod,
    /// forwarding, VXLAN device.
    fn build(&self, options: Options) -> anyhow::Result<()> {
        let (ns, pod) = (&self.netns, &self.pod);
        let vxlan_mtu = options.effective_vxlan_mtu().to_string();
        // The overlay is IPv4 only, as flannel's default network; without IPv6 the devices
        // send no router solicitations or MLD reports, so every packet in a test is the test's.
        for netns in [ns, &pod.netns] {
            netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")?;

        let underlay = format!("{}/24", self.underlay_addr);
        ns.ip(&["addr", "add", &underlay, "dev", ETH_DEV])?;
        let underlay_mtu = options.underlay_mtu.to_string();
        ns.ip(&["link", "set", ETH_DEV, "mtu", &underlay_mtu, "up"])?;

        // The bridge has a fixed MAC, as the CNI bridge plugin gives it, so it never follows
        // its ports; flannel's CNI configuration gives bridge and pods the VXLAN MTU.
        let n = self.id.number();
        let bridge_mac = format!("02:fe:0a:f4:{n:02x}:01");
        ns.ip(&[
            "link",
            "add",
            BRIDGE_DEV,
            "address",
            &bridge_mac,
            "mtu",
            &vxlan_mtu,
            "type",
            "bridge",
        ])?;
        let bridge = format!("{}/24", self.bridge_addr);
        ns.ip(&["addr", "add", &bridge, "dev", BRIDGE_DEV])?;
        ns.ip(&["link", "set", BRIDGE_DEV, "up"])?;

        let veth = &pod.host_veth;
        ns.ip(&[
            "link",
            "add",
            veth,
            "mtu",
            &vxlan_mtu,
            "type",
            "veth",
            "peer",
            "name",
            ETH_DEV,
            "netns",
            &pod.netns.name,
        ])?;
        ns.ip(&["link", "set", veth, "master", BRIDGE_DEV, "up"])?;
        // flannel's CNI configuration asks the bridge plugin for hairpin mode.
        ns.ip(&["link", "set", veth, "type", "bridge_slave", "hairpin", "on"])?;
        pod.netns.ip(&[
            "link", "set", ETH_DEV, "address", &pod.mac, "mtu", &vxlan_mtu,
        ])?;
        let pod_addr = format!("{}/24", pod.addr);
        pod.netns.ip(&["addr", "add", &pod_addr, "dev", ETH_DEV])?;
        pod.netns.ip(&["link", "set", ETH_DEV, "up"])?;
        let gateway = self.bridge_addr.to_string();
        pod.netns
            .ip(&["route", "add", "default", "via", &gateway])?;

        // flanneld's VXLAN device: no learning, every peer entry written statically.
        let vni = VNI.to_string();
        let local = self.underlay_addr.to_string();
        let port = VXLAN_PORT.to_string();
        ns.ip(&[
            "link",
            "add",
            VXLAN_DEV,
            "address",
            &self.vtep_mac,
            "mtu",
            &vxlan_mtu,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dev",
            ETH_DEV,
            "dstport",
            &port,
            "nolearning",
        ])?;
        let vtep = format!("{}/32", self.vtep_addr);
        ns.ip(&["addr", "add", &vtep, "dev", VXLAN_DEV])?;
        ns.ip(&["link", "set", VXLAN_DEV, "up"])?;
        Ok(())
    }

    /// What flanneld writes for a peer node: route to its pod subnet through its VTEP, the
    /// VTEP's MAC as a permanent neighbour, and the underlay address behind that MAC.
    fn reach(&self, peer: &Node) -> anyhow::Result<()> {
        let ns = &self.netns;
        let vtep = peer.vtep_addr.to_string();
        ns.ip(&[
            "route",
            "add",
            &peer.pod_subnet,
            "via",
            &vtep,
            "dev",
            VXLAN_DEV,
            "onlink",
        ])?;
        ns.ip(&[
            "neigh",
            "replace",
            &vtep,
            "lladdr",
            &peer.vtep_mac,
            "dev",
            VXLAN_DEV,
            "nud",
            "permanent",
        ])?;
        let dst = peer.underlay_addr.to_string();
        ns.exec(
            "bridge",
            &[
                "fdb",
                "append",
                &peer.vtep_mac,
                "dev",
                VXLAN_DEV,
                "dst",
                &dst,
            ],
        )?;
        Ok(())
    }
}

/// Third octet of an underlay subnet in 198.19.1.0-198.19.255.0: from the process id and a
/// counter, so that overlays of one process never share one and those of concurrent processes
/// rarely do (the subnets live in the overlays' own namespaces, so a shared one only makes two
/// traces harder to tell apart). 198.19.0.0/24 is left to the testbed.
fn underlay_octet() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    let mixed = std::process::id().wrapping_mul(31).wrapping_add(serial);
    u8::try_from(1 + mixed % 255).expect("at most 255")
}
