//! The outer headers of an encapsulated packet, decoded from an [`Encap`] record section.

use tracer_common::{
    event::{ENCAP_HAS_ID, Encap as RawEncap, FAMILY_IPV6, encap_kind},
    wire::ipproto,
};

use super::{Proto, Tuple, address};

/// How a packet was encapsulated, named as `ip link` names the device kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncapKind {
    Vxlan,
    Geneve,
    /// IPv4 in IPv4.
    Ipip,
    /// IPv6 in IPv4.
    Sit,
    /// IPv4 or IPv6 in IPv6.
    Ip6tnl,
    /// GRE over IPv4.
    Gre,
    /// GRE over IPv6.
    Ip6gre,
    /// Ethernet in GRE over IPv4.
    Gretap,
    /// Ethernet in GRE over IPv6.
    Ip6gretap,
}

impl EncapKind {
    pub fn name(self) -> &'static str {
        match self {
            EncapKind::Vxlan => "vxlan",
            EncapKind::Geneve => "geneve",
            EncapKind::Ipip => "ipip",
            EncapKind::Sit => "sit",
            EncapKind::Ip6tnl => "ip6tnl",
            EncapKind::Gre => "gre",
            EncapKind::Ip6gre => "ip6gre",
            EncapKind::Gretap => "gretap",
            EncapKind::Ip6gretap => "ip6gretap",
        }
    }

    /// Whether the kind has a VNI (rather than a GRE key) in [`Encap::id`].
    pub fn has_vni(self) -> bool {
        matches!(self, EncapKind::Vxlan | EncapKind::Geneve)
    }
}

/// The outer headers of an encapsulated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encap {
    pub kind: EncapKind,
    /// The VNI (VXLAN, Geneve) or GRE key, when the packet has one.
    pub id: Option<u32>,
    /// The outer packet's tuple: UDP with its ports for VXLAN and Geneve; for IP in IP and
    /// GRE, their IP protocol and no ports.
    pub outer: Tuple,
    /// The outer packet's IPv4 identification (or IPv6 flow label's low bits) and length:
    /// what joins it to the kernel's reports of the outer packet (`--rules`).
    pub ip_id: u16,
    pub ip_len: u16,
    pub ttl: u8,
}

/// The outer headers in `raw`, for an inner packet of family `inner_family`; `None` for an
/// unknown kind.
pub fn decode(raw: &RawEncap, inner_family: u8) -> Option<Encap> {
    let v6 = raw.family == FAMILY_IPV6;
    let (kind, proto) = match raw.kind {
        encap_kind::VXLAN => (EncapKind::Vxlan, ipproto::UDP),
        encap_kind::GENEVE => (EncapKind::Geneve, ipproto::UDP),
        encap_kind::IP_IN_IP => {
            let inner_v6 = inner_family == FAMILY_IPV6;
            let kind = match (v6, inner_v6) {
                (true, _) => EncapKind::Ip6tnl,
                (false, true) => EncapKind::Sit,
                (false, false) => EncapKind::Ipip,
            };
            let proto = if inner_v6 {
                ipproto::IPV6
            } else {
                ipproto::IPIP
            };
            (kind, proto)
        }
        encap_kind::GRE if v6 => (EncapKind::Ip6gre, ipproto::GRE),
        encap_kind::GRE => (EncapKind::Gre, ipproto::GRE),
        encap_kind::GRETAP if v6 => (EncapKind::Ip6gretap, ipproto::GRE),
        encap_kind::GRETAP => (EncapKind::Gretap, ipproto::GRE),
        _ => return None,
    };
    Some(Encap {
        kind,
        id: (raw.flags & ENCAP_HAS_ID != 0).then_some(raw.id),
        outer: Tuple {
            proto: Proto(proto),
            src: address(raw.family, &raw.src_addr),
            src_port: raw.src_port,
            dst: address(raw.family, &raw.dst_addr),
            dst_port: raw.dst_port,
        },
        ip_id: raw.ip_id,
        ip_len: raw.ip_len,
        ttl: raw.ttl,
    })
}
