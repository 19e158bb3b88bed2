//! Overlay decoding on route netlink bytes, and the ports the kernel programs recognize.
//!
//! The VXLAN link and forwarding entries are bytes Linux 6.18 sent (`ip link add vx1 type vxlan
//! id 42 local 198.18.77.1 dev va dstport 8472 nolearning`, `... vx2 type vxlan dstport 4789
//! external`, `bridge fdb append`). The other kinds cannot be created on the machine these were
//! taken on (no Geneve, IP-in-IP or GRE in its kernel), so their attributes are written here as
//! each driver's `fill_info` writes them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::Parseable;
use netlink_packet_route::{link::LinkMessage, neighbour::NeighbourMessage};

use super::{decode, *};
use crate::topology::{LinkKind, netlink::link_from};

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A netlink attribute: length, type, payload, padded to 4 bytes.
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let length = 4 + payload.len();
    let mut bytes = Vec::with_capacity(length.next_multiple_of(4));
    bytes.extend_from_slice(&(length as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(length.next_multiple_of(4), 0);
    bytes
}

/// `IFLA_LINKINFO` with `IFLA_INFO_KIND` and, when there are any, `IFLA_INFO_DATA`.
fn link_info(kind: &str, data: &[Vec<u8>]) -> Vec<u8> {
    let mut inner = nla(1, format!("{kind}\0").as_bytes());
    if !data.is_empty() {
        inner.extend(nla(2, &data.concat()));
    }
    nla(18, &inner)
}

/// An `RTM_NEWLINK` body (`ifinfomsg`, `IFLA_IFNAME`, the given attributes), parsed.
fn link(ifindex: i32, name: &str, attributes: &[Vec<u8>]) -> LinkMessage {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0, 0]); // family, pad
    bytes.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
    bytes.extend_from_slice(&ifindex.to_ne_bytes());
    bytes.extend_from_slice(&0x1002u32.to_ne_bytes()); // IFF_BROADCAST | IFF_MULTICAST
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend(nla(3, format!("{name}\0").as_bytes()));
    bytes.extend(attributes.concat());
    LinkMessage::parse(&bytes).expect("a link message")
}

fn overlay_of(message: &LinkMessage) -> Overlay {
    link_from(message).overlay.expect("an overlay")
}

const VX1_LINKINFO: &str = "e80012000a00010076786c616e000000d8000200080001002a000000080003000300\
    000008000400c6124d01050005000000000005001c0000000000050006000000000005001d000000000008001a00\
    000000000800200000000000050007000000000005000b000000000005000c000000000005000d00000000000500\
    0e00000000000500190000000000080008002c010000080009000000000006000f00211800000500120001000000\
    050013000000000005001400000000000500150000000000050016000000000005001f000100000008000a000000\
    00000c002100f7ffffff000000ff";

const VX2_LINKINFO: &str = "d80012000a00010076786c616e000000c80002000800010000000000050005000000\
    000005001c0000000000050006000000000005001d000000000008001a0000000000080020000000000005000700\
    0000000005000b000000000005000c000000000005000d000000000005000e000000000005001900010000000800\
    08002c010000080009000000000006000f0012b50000050012000100000005001300000000000500140000000000\
    0500150000000000050016000000000005001f000100000008000a00000000000c002100f7ffffff000000ff";

#[test]
fn vxlan_as_the_kernel_reports_it() {
    let message = link(4, "vx1", &[hex(VX1_LINKINFO)]);
    let link = link_from(&message);
    assert_eq!(link.kind, LinkKind::Other("vxlan".to_owned()));
    let mut expected = Overlay::new(OverlayKind::Vxlan);
    expected.vni = Some(42);
    expected.port = Some(8472);
    expected.local = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 77, 1)));
    expected.underlay = Some(3);
    assert_eq!(link.overlay, Some(expected));
}

#[test]
fn external_vxlan_has_no_vni_of_its_own() {
    let mut expected = Overlay::new(OverlayKind::Vxlan);
    expected.port = Some(4789);
    expected.external = true;
    assert_eq!(overlay_of(&link(5, "vx2", &[hex(VX2_LINKINFO)])), expected);
}

#[test]
fn a_tunnel_moved_to_another_namespace_names_its_underlays_namespace() {
    // IFLA_LINK_NETNSID (37): the underlay device is in the namespace with id 3 here.
    let message = link(4, "vx1", &[hex(VX1_LINKINFO), nla(37, &3i32.to_ne_bytes())]);
    let link = link_from(&message);
    assert_eq!(link.peer_netnsid, None, "only a veth has a peer");
    let overlay = link.overlay.expect("an overlay");
    assert_eq!(
        (overlay.underlay, overlay.underlay_netnsid),
        (Some(3), Some(3))
    );
}

#[test]
fn links_that_are_no_tunnels_have_no_overlay() {
    for kind in ["veth", "bridge", "dummy", "macvlan"] {
        assert_eq!(
            link_from(&link(7, "x", &[link_info(kind, &[])])).overlay,
            None
        );
    }
    assert_eq!(link_from(&link(7, "eth0", &[])).overlay, None);
}

#[test]
fn geneve_with_its_remote() {
    // geneve_fill_info: ID (host order), REMOTE, TTL, TOS, PORT (network order), UDP_CSUM.
    let data = [
        nla(1, &4242u32.to_ne_bytes()),
        nla(2, &[198, 18, 78, 2]),
        nla(3, &[0]),
        nla(4, &[0]),
        nla(5, &6081u16.to_be_bytes()),
        nla(8, &[1]),
    ];
    let mut expected = Overlay::new(OverlayKind::Geneve);
    expected.vni = Some(4242);
    expected.remote = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 78, 2)));
    expected.port = Some(6081);
    let message = link(9, "gnv0", &[link_info("geneve", &data)]);
    assert_eq!(overlay_of(&message), expected);

    // Cilium's `cilium_geneve`: external, on IPv6, port 6081.
    let data = [
        nla(1, &0u32.to_ne_bytes()),
        nla(5, &6081u16.to_be_bytes()),
        nla(6, &[]),
        nla(7, &Ipv6Addr::UNSPECIFIED.octets()),
    ];
    let mut expected = Overlay::new(OverlayKind::Geneve);
    expected.port = Some(6081);
    expected.external = true;
    let message = link(9, "cilium_geneve", &[link_info("geneve", &data)]);
    assert_eq!(overlay_of(&message), expected);
}

#[test]
fn ip_in_ip_tunnels_with_local_remote_and_underlay() {
    // ipip_fill_info and sit's: LINK, LOCAL, REMOTE, TTL, TOS, PROTO, PMTUDISC, FWMARK.
    let v4 = |kind: &str, remote: [u8; 4]| {
        let data = [
            nla(1, &2u32.to_ne_bytes()),
            nla(2, &[198, 18, 0, 2]),
            nla(3, &remote),
            nla(4, &[0]),
            nla(5, &[0]),
            nla(9, &[4]),
            nla(10, &[1]),
            nla(20, &0u32.to_ne_bytes()),
        ];
        overlay_of(&link(10, "tunl0", &[link_info(kind, &data)]))
    };
    let mut expected = Overlay::new(OverlayKind::Ipip);
    expected.local = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
    expected.remote = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    expected.underlay = Some(2);
    assert_eq!(v4("ipip", [198, 18, 0, 1]), expected);
    // Calico's `tunl0` has neither end fixed: 0.0.0.0 is no address.
    let calico = v4("ipip", [0; 4]);
    assert_eq!(calico.remote, None);
    assert_eq!(v4("sit", [198, 18, 0, 1]).kind, OverlayKind::Sit);

    // ip6_tnl_fill_info: LINK, LOCAL, REMOTE (in6), TTL, ENCAP_LIMIT, FLOWINFO, FLAGS, PROTO.
    let local: Ipv6Addr = "2001:2:0:18::2".parse().expect("address");
    let remote: Ipv6Addr = "2001:2:0:18::1".parse().expect("address");
    let data = [
        nla(1, &0u32.to_ne_bytes()),
        nla(2, &local.octets()),
        nla(3, &remote.octets()),
        nla(4, &[64]),
        nla(6, &[4]),
        nla(7, &0u32.to_be_bytes()),
        nla(8, &0u32.to_ne_bytes()),
        nla(9, &[41]),
    ];
    let mut expected = Overlay::new(OverlayKind::Ip6tnl);
    expected.local = Some(IpAddr::V6(local));
    expected.remote = Some(IpAddr::V6(remote));
    assert_eq!(
        overlay_of(&link(11, "ip6tnl1", &[link_info("ip6tnl", &data)])),
        expected
    );
}

/// `ipgre_fill_info`: LINK, IFLAGS, OFLAGS (network order, `GRE_KEY` is 0x2000), IKEY, OKEY
/// (network order), LOCAL, REMOTE, TTL, TOS, PMTUDISC.
fn gre_data(iflags: u16, oflags: u16, ikey: u32, okey: u32) -> Vec<Vec<u8>> {
    vec![
        nla(1, &0u32.to_ne_bytes()),
        nla(2, &iflags.to_be_bytes()),
        nla(3, &oflags.to_be_bytes()),
        nla(4, &ikey.to_be_bytes()),
        nla(5, &okey.to_be_bytes()),
        nla(6, &[198, 18, 0, 2]),
        nla(7, &[198, 18, 0, 1]),
        nla(8, &[0]),
        nla(9, &[0]),
        nla(10, &[1]),
    ]
}

#[test]
fn gre_keys_count_only_where_the_key_flag_is_set() {
    let keyed = overlay_of(&link(
        12,
        "gre1",
        &[link_info("gre", &gre_data(0x2000, 0x2000, 5, 5))],
    ));
    let mut expected = Overlay::new(OverlayKind::Gre);
    expected.local = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));
    expected.remote = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    expected.input_key = Some(5);
    expected.output_key = Some(5);
    assert_eq!(keyed, expected);

    // Without a key the kernel still sends IKEY and OKEY, as 0, and no GRE_KEY flag; a
    // checksum flag (0x8000) is no key either.
    let unkeyed = overlay_of(&link(
        13,
        "gretap1",
        &[link_info("gretap", &gre_data(0x8000, 0, 0, 0))],
    ));
    assert_eq!(unkeyed.kind, OverlayKind::Gretap);
    assert_eq!((unkeyed.input_key, unkeyed.output_key), (None, None));

    let one_way = overlay_of(&link(
        14,
        "gre2",
        &[link_info("gre", &gre_data(0, 0x2000, 0, 7))],
    ));
    assert_eq!((one_way.input_key, one_way.output_key), (None, Some(7)));
}

#[test]
fn ip6gre_with_keys_and_ipv6_ends() {
    let local: Ipv6Addr = "2001:2:0:18::2".parse().expect("address");
    let remote: Ipv6Addr = "2001:2:0:18::1".parse().expect("address");
    let data = [
        nla(1, &0u32.to_ne_bytes()),
        nla(2, &0x2000u16.to_be_bytes()),
        nla(3, &0x2000u16.to_be_bytes()),
        nla(4, &9u32.to_be_bytes()),
        nla(5, &10u32.to_be_bytes()),
        nla(6, &local.octets()),
        nla(7, &remote.octets()),
        nla(8, &[64]),
    ];
    for (kind, expected_kind) in [
        ("ip6gre", OverlayKind::Ip6gre),
        ("ip6gretap", OverlayKind::Ip6gretap),
    ] {
        let mut expected = Overlay::new(expected_kind);
        expected.local = Some(IpAddr::V6(local));
        expected.remote = Some(IpAddr::V6(remote));
        expected.input_key = Some(9);
        expected.output_key = Some(10);
        assert_eq!(
            overlay_of(&link(15, "g6", &[link_info(kind, &data)])),
            expected
        );
    }
}

#[test]
fn wireguard_is_known_by_its_kind_alone() {
    // WireGuard sends no IFLA_INFO_DATA: its port and peers are in generic netlink.
    let message = link(16, "wg0", &[link_info("wireguard", &[])]);
    assert_eq!(overlay_of(&message), Overlay::new(OverlayKind::Wireguard));
}

/// Bridge-family neighbour entries Linux 6.18 sent for a namespace with `va`/`vb` (a veth pair)
/// and `vx1` (ifindex 4) after `bridge fdb append 02:00:00:00:00:02 dev vx1 dst 198.18.77.2`
/// and `bridge fdb append 02:00:00:00:00:03 dev vx1 dst 198.18.77.3 port 9999 vni 7`.
const FDB: [&str; 5] = [
    "0700000002000000800002000a0002003333000000010000",
    "0700000003000000800002000a0002003333000000010000",
    "0700000003000000800002000a00020001005e0000010000",
    "0700000004000000c00002010a000200020000000003000008000100c6124d0306000600270f000008000700070000\
     0014000300000000002d0000002d00000000000000",
    "0700000004000000c00002010a000200020000000002000008000100c6124d0214000300000000002e0000002e0000\
     0000000000",
];

#[test]
fn forwarding_entries_to_remote_endpoints() {
    let peers: Vec<(u32, FdbPeer)> = FDB
        .iter()
        .map(|text| NeighbourMessage::parse(&hex(&text.replace(' ', ""))).expect("a neighbour"))
        .filter_map(|message| decode::fdb_peer(&message))
        .collect();
    assert_eq!(
        peers,
        [
            (
                4,
                FdbPeer {
                    mac: [2, 0, 0, 0, 0, 3],
                    dst: IpAddr::V4(Ipv4Addr::new(198, 18, 77, 3)),
                    port: Some(9999),
                    vni: Some(7),
                }
            ),
            (
                4,
                FdbPeer {
                    mac: [2, 0, 0, 0, 0, 2],
                    dst: IpAddr::V4(Ipv4Addr::new(198, 18, 77, 2)),
                    port: None,
                    vni: None,
                }
            ),
        ]
    );
    assert_eq!(peers[1].1.mac_text(), "02:00:00:00:00:02");
}

#[test]
fn an_ipv6_endpoint_and_entries_of_other_families() {
    let dst: Ipv6Addr = "2001:2:0:18::2".parse().expect("address");
    let mut bytes = hex("0700000004000000c0000201");
    bytes.extend(nla(2, &[2, 0, 0, 0, 0, 9]));
    bytes.extend(nla(1, &dst.octets()));
    let message = NeighbourMessage::parse(&bytes).expect("a neighbour");
    let (_, peer) = decode::fdb_peer(&message).expect("a peer");
    assert_eq!(peer.dst, IpAddr::V6(dst));
    // The same entry in an AF_INET dump is an ARP entry, not a forwarding entry.
    bytes[0] = 2;
    bytes.truncate(12);
    bytes.extend(nla(2, &[2, 0, 0, 0, 0, 9]));
    bytes.extend(nla(1, &[198, 18, 77, 2]));
    let message = NeighbourMessage::parse(&bytes).expect("a neighbour");
    assert_eq!(decode::fdb_peer(&message), None);
}

#[test]
fn ports_are_the_defaults_without_devices() {
    assert_eq!(udp_ports(&VXLAN_DEFAULT_PORTS, []), [4789, 8472]);
    assert_eq!(udp_ports(&GENEVE_DEFAULT_PORTS, []), [6081]);
}

#[test]
fn ports_are_sorted_and_deduplicated_and_zero_is_none() {
    assert_eq!(
        udp_ports(&VXLAN_DEFAULT_PORTS, [48879, 8472, 0, 4790, 48879]),
        [4789, 4790, 8472, 48879]
    );
}

#[test]
fn ports_beyond_the_kernels_array_leave_out_the_last_given() {
    let used = [9000, 9001, 9002, 9003, 9004, 9005, 9006, 9007];
    let ports = udp_ports(&VXLAN_DEFAULT_PORTS, used);
    assert_eq!(ports.len(), MAX_OVERLAY_PORTS);
    assert_eq!(ports, [4789, 8472, 9000, 9001, 9002, 9003, 9004, 9005]);
}

#[test]
fn each_kind_names_its_link_kind_and_module() {
    let names: Vec<&str> = OverlayKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        [
            "vxlan",
            "geneve",
            "ipip",
            "sit",
            "ip6tnl",
            "gre",
            "gretap",
            "ip6gre",
            "ip6gretap",
            "wireguard"
        ]
    );
    for kind in OverlayKind::ALL {
        let json = serde_json::to_string(&kind).expect("json");
        assert_eq!(json, format!("\"{}\"", kind.name()));
    }
    assert_eq!(OverlayKind::Gretap.module(), "ip_gre");
    assert_eq!(OverlayKind::Ip6tnl.module(), "ip6_tunnel");
}
