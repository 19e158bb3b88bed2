//! The other layer of a packet's headers, decoded from an `Encap` record section: the outer
//! headers of an encapsulated packet ([`Encap`]), or the packet an ICMP error quotes
//! ([`IcmpError`]).

use tracer_common::{
    event::{ENCAP_HAS_ID, Encap as RawEncap, FAMILY_IPV6, encap_kind},
    wire::{icmp, ipproto},
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

/// An ICMP or ICMPv6 error, and the packet it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpError {
    pub v6: bool,
    /// ICMP type and code.
    pub kind: u8,
    pub code: u8,
    /// The MTU a "fragmentation needed" or "packet too big" names.
    pub mtu: Option<u32>,
    /// The quoted packet's tuple (ports where it has them and they were quoted).
    pub quoted: Tuple,
    /// The quoted packet's IPv4 identification (IPv6 flow label's low bits) and length.
    pub ip_id: u16,
    pub ip_len: u16,
}

impl IcmpError {
    /// `fragmentation needed (mtu 1450)`, `port unreachable`, `time exceeded`, ...
    pub fn describe(&self) -> String {
        let mtu = self
            .mtu
            .map(|mtu| format!(" (mtu {mtu})"))
            .unwrap_or_default();
        match (self.v6, self.kind, self.code) {
            (false, icmp::DEST_UNREACH, icmp::FRAG_NEEDED) => format!("fragmentation needed{mtu}"),
            (true, icmp::V6_PACKET_TOO_BIG, _) => format!("packet too big{mtu}"),
            (false, icmp::DEST_UNREACH, icmp::PORT_UNREACH)
            | (true, icmp::V6_DEST_UNREACH, icmp::V6_PORT_UNREACH) => "port unreachable".into(),
            (false, icmp::DEST_UNREACH, 0) => "network unreachable".into(),
            (false, icmp::DEST_UNREACH, 1) | (true, icmp::V6_DEST_UNREACH, 3) => {
                "host unreachable".into()
            }
            (false, icmp::DEST_UNREACH, 13) | (true, icmp::V6_DEST_UNREACH, 1) => {
                "administratively prohibited".into()
            }
            (false, icmp::DEST_UNREACH, code) | (true, icmp::V6_DEST_UNREACH, code) => {
                format!("destination unreachable (code {code})")
            }
            (false, icmp::TIME_EXCEEDED, _) | (true, icmp::V6_TIME_EXCEEDED, _) => {
                "time exceeded".into()
            }
            (_, _, code) => format!("parameter problem (code {code})"),
        }
    }

    /// Whether the error says the packet was too big for a link on its way.
    pub fn too_big(&self) -> bool {
        matches!(
            (self.v6, self.kind, self.code),
            (false, icmp::DEST_UNREACH, icmp::FRAG_NEEDED) | (true, icmp::V6_PACKET_TOO_BIG, _)
        )
    }
}

/// What an `Encap` section says.
pub enum Layer {
    Outer(Encap),
    Quoted(IcmpError),
}

/// The layer in `raw`, beside a packet of family `family` (the inner packet of a tunnel, or
/// the ICMP error itself); `None` for an unknown kind.
pub fn decode(raw: &RawEncap, family: u8) -> Option<Layer> {
    if raw.kind == encap_kind::ICMP_ERROR {
        let v6 = family == FAMILY_IPV6;
        let too_big =
            (!v6 && raw.icmp_type == icmp::DEST_UNREACH && raw.icmp_code == icmp::FRAG_NEEDED)
                || (v6 && raw.icmp_type == icmp::V6_PACKET_TOO_BIG);
        let mtu = if v6 { raw.id } else { raw.id & 0xffff };
        return Some(Layer::Quoted(IcmpError {
            v6,
            kind: raw.icmp_type,
            code: raw.icmp_code,
            mtu: too_big.then_some(mtu),
            quoted: Tuple {
                proto: Proto(raw.proto),
                src: address(raw.family, &raw.src_addr),
                src_port: raw.src_port,
                dst: address(raw.family, &raw.dst_addr),
                dst_port: raw.dst_port,
            },
            ip_id: raw.ip_id,
            ip_len: raw.ip_len,
        }));
    }
    outer(raw, family).map(Layer::Outer)
}

/// The outer headers in `raw`, for an inner packet of family `inner_family`; `None` for an
/// unknown kind.
fn outer(raw: &RawEncap, inner_family: u8) -> Option<Encap> {
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
