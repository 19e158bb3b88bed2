//! The netfilter rule behind a hop, as data: the rule a packet met, and the identity by which
//! the kernel's nf_tables trace reports are joined to traced packets.
//!
//! Data only, no I/O: the pure stages (`correlate`, `output`) carry these values, and `rules`
//! (which opens netlink sockets and runs `nft`) finds them. Both ways of reading a packet's
//! identity, from a hop and from the headers a trace report carries, live here side by side
//! so that they cannot drift apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::wire::{ipv4, ipv6, l4};

use crate::decode::{HopEvent, Proto, Tuple};

/// A rule (or a chain's policy) that acted on a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// The rule's handle; none when the chain's policy acted.
    pub handle: Option<u64>,
    /// The rule as `nft` prints it (`policy drop` for a policy), when it could be had.
    pub text: Option<String>,
    pub verdict: String,
}

impl Rule {
    /// `ip nat POSTROUTING: oifname != "docker0" ... masquerade`.
    pub fn describe(&self) -> String {
        let text = match (&self.text, self.handle) {
            (Some(text), _) => text.clone(),
            (None, Some(handle)) => format!("rule handle {handle}"),
            (None, None) => format!("policy {}", self.verdict),
        };
        format!("{} {} {}: {text}", self.family, self.table, self.chain)
    }
}

/// A packet as far as both a hop and a trace report can tell, from fields that no NAT
/// rewrites: the protocol, a 16-bit id (IPv4's identification; for IPv6, which has none, the
/// low 16 bits of the flow label) and a 32-bit number (TCP's sequence number; for other
/// protocols the IP length, which tells apart the packets of a flow that differ in size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketKey {
    pub proto: u8,
    pub id: u16,
    pub seq: u32,
}

impl PacketKey {
    /// The identity of the packet a hop saw.
    pub fn of(e: &HopEvent) -> PacketKey {
        PacketKey {
            proto: e.tuple.proto.0,
            id: e.ip_id,
            seq: if e.tuple.proto == Proto::TCP {
                if e.has_l4 { e.tcp_seq } else { 0 }
            } else {
                u32::from(e.ip_len)
            },
        }
    }

    /// The identity and tuple of the outer packet of an encapsulated hop (what the kernel's
    /// reports of a tunnel's datagram carry); `None` for a hop that is not encapsulated.
    pub fn outer_of(e: &HopEvent) -> Option<(PacketKey, Tuple)> {
        let encap = e.encap.as_deref()?;
        Some((
            PacketKey {
                proto: encap.outer.proto.0,
                id: encap.ip_id,
                seq: u32::from(encap.ip_len),
            },
            encap.outer,
        ))
    }

    /// The identity and tuple of a packet from its IP header and the start of its transport
    /// header (as nf_tables trace reports carry them); `None` when the IP header is short or
    /// not IP. Ports are 0 where the transport header is short or has none, and a TCP
    /// sequence number 0 where it is cut off, as [`PacketKey::of`] reads a hop without L4.
    pub fn from_headers(network: &[u8], transport: &[u8]) -> Option<(PacketKey, Tuple)> {
        let be16 = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
        let (proto, id, ip_len, src, dst) = match network.first()? >> 4 {
            4 if network.len() >= ipv4::MIN_LEN => (
                network[ipv4::PROTOCOL],
                be16(network, ipv4::ID)?,
                be16(network, ipv4::TOTAL_LEN)?,
                IpAddr::V4(Ipv4Addr::from(address::<4>(network, ipv4::SRC)?)),
                IpAddr::V4(Ipv4Addr::from(address::<4>(network, ipv4::DST)?)),
            ),
            6 if network.len() >= ipv6::LEN => (
                network[ipv6::NEXT_HEADER],
                be16(network, ipv6::FLOW_LABEL_LOW)?,
                be16(network, ipv6::PAYLOAD_LEN)?.saturating_add(ipv6::LEN as u16),
                IpAddr::V6(Ipv6Addr::from(address::<16>(network, ipv6::SRC)?)),
                IpAddr::V6(Ipv6Addr::from(address::<16>(network, ipv6::DST)?)),
            ),
            _ => return None,
        };
        let proto = Proto(proto);
        let (src_port, dst_port) = if tracer_common::wire::ipproto::has_ports(proto.0) {
            be16(transport, l4::SRC_PORT)
                .zip(be16(transport, l4::DST_PORT))
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        let seq = if proto == Proto::TCP {
            transport
                .get(l4::TCP_SEQ..l4::TCP_SEQ + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            u32::from(ip_len)
        };
        Some((
            PacketKey {
                proto: proto.0,
                id,
                seq,
            },
            Tuple {
                proto,
                src,
                src_port,
                dst,
                dst_port,
            },
        ))
    }
}

fn address<const N: usize>(header: &[u8], at: usize) -> Option<[u8; N]> {
    header.get(at..at + N)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 UDP header with flow label `label`, payload length `payload`.
    fn ipv6_udp(label: u32, payload: u16) -> Vec<u8> {
        let mut h = vec![0u8; ipv6::LEN];
        h[..4].copy_from_slice(&((6 << 28) | label).to_be_bytes());
        h[ipv6::PAYLOAD_LEN..ipv6::PAYLOAD_LEN + 2].copy_from_slice(&payload.to_be_bytes());
        h[ipv6::NEXT_HEADER] = 17;
        h[ipv6::SRC..ipv6::SRC + 16].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h[ipv6::DST..ipv6::DST + 16].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h
    }

    #[test]
    fn ipv6_packets_other_than_tcp_have_keys_of_their_own() {
        let udp = [0x9c, 0x40, 0x27, 0x11];
        let (a, tuple) = PacketKey::from_headers(&ipv6_udp(0xa_bcde, 100), &udp).unwrap();
        let (b, _) = PacketKey::from_headers(&ipv6_udp(0xa_bcde, 200), &udp).unwrap();
        let (c, _) = PacketKey::from_headers(&ipv6_udp(0x1_2345, 100), &udp).unwrap();
        assert_eq!(
            a,
            PacketKey {
                proto: 17,
                id: 0xbcde,
                seq: 140
            }
        );
        assert_ne!(a, b, "packets of one flow that differ in size");
        assert_ne!(a, c, "packets of two flows");
        assert_eq!((tuple.src_port, tuple.dst_port), (40000, 10001));
    }

    #[test]
    fn short_or_foreign_headers_are_no_packet() {
        assert!(PacketKey::from_headers(&[0x45; 19], &[]).is_none());
        assert!(PacketKey::from_headers(&ipv6_udp(1, 8)[..39], &[]).is_none());
        assert!(PacketKey::from_headers(&[0x20; 40], &[]).is_none());
        // A cut transport header leaves the ports 0.
        let (_, tuple) = PacketKey::from_headers(&ipv6_udp(1, 8), &[0x9c]).unwrap();
        assert_eq!((tuple.src_port, tuple.dst_port), (0, 0));
    }
}
