//! Overlay parameters from route netlink messages, as `netlink-packet-route` parses them: a
//! link's `IFLA_LINKINFO` (kind and `IFLA_INFO_DATA`) and the `AF_BRIDGE` neighbour entries of
//! a VXLAN device's forwarding database.
//!
//! What the kernel fills in is in each driver's `fill_info` (`vxlan_fill_info`,
//! `geneve_fill_info`, `ipip_fill_info`, `ipgre_fill_info`, `ip6gre_fill_info`,
//! `ip6_tnl_fill_info`) and, for the forwarding entries, `vxlan_fdb_info`. Addresses left unset
//! come as `0.0.0.0` or `::` and are read as unset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::{
    AddressFamily,
    link::{
        GreIOFlags, InfoData, InfoGeneve, InfoGre, InfoGre6, InfoIpTunnel, InfoKind, InfoVxlan,
        LinkInfo,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
};

use super::{FdbPeer, Overlay, OverlayKind};

/// The overlay kind of a link kind, if it is one.
pub fn kind_of(kind: &InfoKind) -> Option<OverlayKind> {
    Some(match kind {
        InfoKind::Vxlan => OverlayKind::Vxlan,
        InfoKind::Geneve => OverlayKind::Geneve,
        InfoKind::IpIp => OverlayKind::Ipip,
        InfoKind::SitTun => OverlayKind::Sit,
        InfoKind::Ip6Tnl => OverlayKind::Ip6tnl,
        InfoKind::GreTun => OverlayKind::Gre,
        InfoKind::GreTap => OverlayKind::Gretap,
        InfoKind::GreTun6 => OverlayKind::Ip6gre,
        InfoKind::GreTap6 => OverlayKind::Ip6gretap,
        InfoKind::Wireguard => OverlayKind::Wireguard,
        _ => return None,
    })
}

/// The overlay a link's `IFLA_LINKINFO` describes; `None` for a link that is no tunnel.
pub fn from_link_info(infos: &[LinkInfo]) -> Option<Overlay> {
    let kind = infos.iter().find_map(|info| match info {
        LinkInfo::Kind(kind) => kind_of(kind),
        _ => None,
    })?;
    let mut overlay = Overlay::new(kind);
    let data = infos.iter().find_map(|info| match info {
        LinkInfo::Data(data) => Some(data),
        _ => None,
    });
    match data {
        Some(InfoData::Vxlan(attributes)) => vxlan(&mut overlay, attributes),
        Some(InfoData::Geneve(attributes)) => geneve(&mut overlay, attributes),
        Some(InfoData::IpTunnel(attributes)) => ip_tunnel(&mut overlay, attributes),
        Some(InfoData::GreTun(attributes) | InfoData::GreTap(attributes)) => {
            gre(&mut overlay, attributes);
        }
        Some(InfoData::GreTun6(attributes) | InfoData::GreTap6(attributes)) => {
            gre6(&mut overlay, attributes);
        }
        // WireGuard has no IFLA_INFO_DATA: its keys, port and peers are in generic netlink.
        _ => {}
    }
    Some(overlay)
}

fn vxlan(overlay: &mut Overlay, attributes: &[InfoVxlan]) {
    for attribute in attributes {
        match attribute {
            InfoVxlan::Id(vni) => overlay.vni = Some(*vni),
            InfoVxlan::Group(addr) => overlay.remote = set(IpAddr::V4(*addr)),
            InfoVxlan::Group6(addr) => overlay.remote = set(IpAddr::V6(*addr)),
            InfoVxlan::Local(addr) => overlay.local = set(IpAddr::V4(*addr)),
            InfoVxlan::Local6(addr) => overlay.local = set(IpAddr::V6(*addr)),
            InfoVxlan::Link(ifindex) => overlay.underlay = nonzero(*ifindex),
            InfoVxlan::Port(port) => overlay.port = Some(*port),
            InfoVxlan::CollectMetadata(external) => overlay.external = *external,
            _ => {}
        }
    }
    if overlay.external {
        // An external device reports VNI 0: each packet's metadata carries the real one.
        overlay.vni = None;
    }
}

fn geneve(overlay: &mut Overlay, attributes: &[InfoGeneve]) {
    for attribute in attributes {
        match attribute {
            InfoGeneve::Id(vni) => overlay.vni = Some(*vni),
            InfoGeneve::Remote(addr) => overlay.remote = set(IpAddr::V4(*addr)),
            InfoGeneve::Remote6(addr) => overlay.remote = set(IpAddr::V6(*addr)),
            InfoGeneve::Local(addr) => overlay.local = set(IpAddr::V4(*addr)),
            InfoGeneve::Local6(addr) => overlay.local = set(IpAddr::V6(*addr)),
            InfoGeneve::Port(port) => overlay.port = Some(*port),
            InfoGeneve::CollectMetadata => overlay.external = true,
            _ => {}
        }
    }
    if overlay.external {
        overlay.vni = None;
    }
}

fn ip_tunnel(overlay: &mut Overlay, attributes: &[InfoIpTunnel]) {
    for attribute in attributes {
        match attribute {
            InfoIpTunnel::Local(addr) => overlay.local = set(*addr),
            InfoIpTunnel::Remote(addr) => overlay.remote = set(*addr),
            InfoIpTunnel::Link(ifindex) => overlay.underlay = nonzero(*ifindex),
            _ => {}
        }
    }
}

/// GRE over IPv4. A key counts only where its flag says it is set: the kernel reports key 0
/// for a tunnel without one.
fn gre(overlay: &mut Overlay, attributes: &[InfoGre]) {
    let (mut input, mut output) = (GreIOFlags::empty(), GreIOFlags::empty());
    let (mut input_key, mut output_key) = (None, None);
    for attribute in attributes {
        match attribute {
            InfoGre::Local(addr) => overlay.local = set(IpAddr::V4(*addr)),
            InfoGre::Remote(addr) => overlay.remote = set(IpAddr::V4(*addr)),
            InfoGre::Link(ifindex) => overlay.underlay = nonzero(*ifindex),
            InfoGre::IFlags(flags) => input = *flags,
            InfoGre::OFlags(flags) => output = *flags,
            InfoGre::IKey(key) => input_key = Some(*key),
            InfoGre::OKey(key) => output_key = Some(*key),
            _ => {}
        }
    }
    overlay.input_key = input_key.filter(|_| input.contains(GreIOFlags::Key));
    overlay.output_key = output_key.filter(|_| output.contains(GreIOFlags::Key));
}

/// GRE over IPv6, as [`gre`].
fn gre6(overlay: &mut Overlay, attributes: &[InfoGre6]) {
    let (mut input, mut output) = (GreIOFlags::empty(), GreIOFlags::empty());
    let (mut input_key, mut output_key) = (None, None);
    for attribute in attributes {
        match attribute {
            InfoGre6::Local(addr) => overlay.local = set(IpAddr::V6(*addr)),
            InfoGre6::Remote(addr) => overlay.remote = set(IpAddr::V6(*addr)),
            InfoGre6::Link(ifindex) => overlay.underlay = nonzero(*ifindex),
            InfoGre6::IFlags(flags) => input = *flags,
            InfoGre6::OFlags(flags) => output = *flags,
            InfoGre6::IKey(key) => input_key = Some(*key),
            InfoGre6::OKey(key) => output_key = Some(*key),
            _ => {}
        }
    }
    overlay.input_key = input_key.filter(|_| input.contains(GreIOFlags::Key));
    overlay.output_key = output_key.filter(|_| output.contains(GreIOFlags::Key));
}

/// One forwarding entry of a bridge-family neighbour dump that sends to a tunnel endpoint,
/// with the ifindex of its device; `None` for entries without a destination address (the
/// bridge's own entries and the devices' multicast addresses).
pub fn fdb_peer(message: &NeighbourMessage) -> Option<(u32, FdbPeer)> {
    if message.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    let (mut port, mut vni) = (None, None);
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok();
            }
            NeighbourAttribute::Destination(addr) => dst = address(addr),
            NeighbourAttribute::Port(p) => port = Some(*p),
            NeighbourAttribute::Vni(v) => vni = Some(*v),
            _ => {}
        }
    }
    Some((
        message.header.ifindex,
        FdbPeer {
            mac: mac?,
            dst: dst?,
            port,
            vni,
        },
    ))
}

/// `NDA_DST` of a bridge-family entry: the library leaves it as bytes (the message's family
/// is `AF_BRIDGE`, not the address's); its length says which family it is.
fn address(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&bytes[..]).ok()?,
            ))),
            16 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&bytes[..]).ok()?,
            ))),
            _ => None,
        },
        _ => None,
    }
}

fn set(addr: IpAddr) -> Option<IpAddr> {
    (!addr.is_unspecified()).then_some(addr)
}

fn nonzero(ifindex: u32) -> Option<u32> {
    (ifindex != 0).then_some(ifindex)
}
