//! Overlay and tunnel devices: what a VXLAN, Geneve, IP-in-IP, GRE or WireGuard link
//! encapsulates into, and where to.
//!
//! Plain data, read from route netlink by [`decode`] (a link's `IFLA_INFO_DATA`, and for VXLAN
//! the forwarding entries of `bridge fdb`, an `AF_BRIDGE` neighbour dump), and the UDP ports
//! the kernel programs must treat as VXLAN or Geneve ([`udp_ports`]). No I/O here, except in
//! [`support`], which reads which kinds the running kernel has.

pub mod decode;
pub mod support;

use std::net::IpAddr;

use tracer_common::wire::tunnel;

/// Which encapsulation a tunnel device does. Names are the kernel's link kinds (`ip -d link`,
/// `IFLA_INFO_KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayKind {
    /// Ethernet in UDP (RFC 7348): flannel, Calico's VXLAN mode, Docker overlay networks.
    Vxlan,
    /// Ethernet in UDP with options (RFC 8926): OVN, Cilium's Geneve mode.
    Geneve,
    /// IPv4 in IPv4 (Calico's IPIP mode).
    Ipip,
    /// IPv6 in IPv4.
    Sit,
    /// IPv4 or IPv6 in IPv6.
    Ip6tnl,
    /// IP in GRE over IPv4.
    Gre,
    /// Ethernet in GRE over IPv4.
    Gretap,
    /// IP in GRE over IPv6.
    Ip6gre,
    /// Ethernet in GRE over IPv6.
    Ip6gretap,
    /// WireGuard (Calico's and Cilium's node-to-node encryption).
    Wireguard,
}

impl OverlayKind {
    /// Every kind, in the order `tracer doctor` lists them.
    pub const ALL: [OverlayKind; 10] = [
        OverlayKind::Vxlan,
        OverlayKind::Geneve,
        OverlayKind::Ipip,
        OverlayKind::Sit,
        OverlayKind::Ip6tnl,
        OverlayKind::Gre,
        OverlayKind::Gretap,
        OverlayKind::Ip6gre,
        OverlayKind::Ip6gretap,
        OverlayKind::Wireguard,
    ];

    /// The kernel's name for the link kind.
    pub fn name(self) -> &'static str {
        match self {
            OverlayKind::Vxlan => "vxlan",
            OverlayKind::Geneve => "geneve",
            OverlayKind::Ipip => "ipip",
            OverlayKind::Sit => "sit",
            OverlayKind::Ip6tnl => "ip6tnl",
            OverlayKind::Gre => "gre",
            OverlayKind::Gretap => "gretap",
            OverlayKind::Ip6gre => "ip6gre",
            OverlayKind::Ip6gretap => "ip6gretap",
            OverlayKind::Wireguard => "wireguard",
        }
    }

    /// The kernel module that provides the kind, as `/sys/module` and `modules.builtin` name
    /// it (drivers/net/vxlan, drivers/net/geneve.c, net/ipv4/ipip.c, net/ipv6/sit.c,
    /// net/ipv6/ip6_tunnel.c, net/ipv4/ip_gre.c, net/ipv6/ip6_gre.c, drivers/net/wireguard).
    pub fn module(self) -> &'static str {
        match self {
            OverlayKind::Vxlan => "vxlan",
            OverlayKind::Geneve => "geneve",
            OverlayKind::Ipip => "ipip",
            OverlayKind::Sit => "sit",
            OverlayKind::Ip6tnl => "ip6_tunnel",
            OverlayKind::Gre | OverlayKind::Gretap => "ip_gre",
            OverlayKind::Ip6gre | OverlayKind::Ip6gretap => "ip6_gre",
            OverlayKind::Wireguard => "wireguard",
        }
    }
}

/// What a tunnel device encapsulates into. Fields a kind does not have stay `None` (or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub kind: OverlayKind,
    /// VXLAN and Geneve: the network identifier (VNI). `None` for a device in external mode,
    /// which takes it from each packet's tunnel metadata.
    pub vni: Option<u32>,
    /// GRE: the key expected on received packets, where one is set.
    pub input_key: Option<u32>,
    /// GRE: the key put on sent packets, where one is set.
    pub output_key: Option<u32>,
    /// VXLAN and Geneve: the UDP destination port of the encapsulated packets.
    pub port: Option<u16>,
    /// The underlay source address, where one is fixed.
    pub local: Option<IpAddr>,
    /// The underlay destination, where one is fixed: the tunnel's remote end, or VXLAN's
    /// default destination (`remote`, or a multicast `group`).
    pub remote: Option<IpAddr>,
    /// Whether the device takes the VNI and remote of each packet from its tunnel metadata
    /// (`external`, `collect_metadata`: Cilium's `cilium_vxlan` and `cilium_geneve`).
    pub external: bool,
    /// The underlay device the encapsulated packets leave through, by ifindex, where one is
    /// set (`dev` of `ip link add`).
    pub underlay: Option<u32>,
    /// The namespace of the underlay device, by the id this namespace gives it, when the
    /// device was moved out of the namespace it was created in (`IFLA_LINK_NETNSID`).
    pub underlay_netnsid: Option<i32>,
    /// VXLAN: the forwarding entries that send to remote tunnel endpoints (`bridge fdb append
    /// MAC dev DEV dst IP`), in the kernel's order.
    pub peers: Vec<FdbPeer>,
}

impl Overlay {
    /// A device of `kind` with nothing known about it yet.
    pub fn new(kind: OverlayKind) -> Overlay {
        Overlay {
            kind,
            vni: None,
            input_key: None,
            output_key: None,
            port: None,
            local: None,
            remote: None,
            external: false,
            underlay: None,
            underlay_netnsid: None,
            peers: Vec::new(),
        }
    }
}

/// One forwarding entry of a VXLAN device: frames for `mac` go to the tunnel endpoint `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbPeer {
    /// The inner destination MAC; all zeros for the default entry (broadcast and unknown
    /// destinations, as flannel and `remote` set it).
    pub mac: [u8; 6],
    /// The underlay address of the remote endpoint.
    pub dst: IpAddr,
    /// The UDP port, where it differs from the device's.
    pub port: Option<u16>,
    /// The VNI, where it differs from the device's.
    pub vni: Option<u32>,
}

impl FdbPeer {
    /// The MAC as `02:00:00:00:00:02`.
    pub fn mac_text(&self) -> String {
        let [a, b, c, d, e, f] = self.mac;
        format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
    }
}

/// Most UDP ports of one encapsulation the kernel programs recognize: their fixed array.
pub const MAX_OVERLAY_PORTS: usize = tracer_common::config::MAX_VXLAN_PORTS;

/// VXLAN's ports without any device: the IANA port (RFC 7348) and Linux's default, which
/// flannel uses (`vxlan_port` in drivers/net/vxlan/vxlan_core.c).
pub const VXLAN_DEFAULT_PORTS: [u16; 2] = [tunnel::VXLAN_PORT, tunnel::VXLAN_LINUX_PORT];

/// Geneve's IANA port (RFC 8926, `GENEVE_UDP_PORT` in include/net/geneve.h).
pub const GENEVE_DEFAULT_PORTS: [u16; 1] = [tunnel::GENEVE_PORT];

/// The ports to recognize, sorted: `defaults` first, then the `used` ones in the order given,
/// deduplicated, at most [`MAX_OVERLAY_PORTS`]. When there are more, the last ones given are
/// left out, so callers give the ports they care about most first.
pub fn udp_ports(defaults: &[u16], used: impl IntoIterator<Item = u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(MAX_OVERLAY_PORTS);
    for port in defaults.iter().copied().chain(used) {
        if ports.len() == MAX_OVERLAY_PORTS {
            break;
        }
        if port != 0 && !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.sort_unstable();
    ports
}

#[cfg(test)]
mod tests;
