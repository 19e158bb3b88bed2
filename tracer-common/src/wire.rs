//! Numbers and offsets from the packet formats and the kernel that both sides read: EtherTypes,
//! header offsets, IP protocol numbers, TCP flag bits and conntrack's packet states. The kernel
//! programs parse with them and the collector names and interprets what they found with them.

/// Link-layer (Ethernet) framing, as TC programs see a packet (include/uapi/linux/if_ether.h).
pub mod ether {
    /// `ETH_HLEN`: destination and source MAC and the EtherType.
    pub const HEADER_LEN: u32 = 14;
    /// Offset of the EtherType in the Ethernet header (after two 6-byte MAC addresses).
    pub const TYPE_OFFSET: u32 = 12;
    /// `VLAN_HLEN`: one 802.1Q tag (TCI and the inner EtherType).
    pub const VLAN_HEADER_LEN: u32 = 4;
    /// Offset of the inner EtherType in a VLAN tag.
    pub const VLAN_TYPE_OFFSET: u32 = 2;
    /// `ETH_P_IP`
    pub const P_IP: u16 = 0x0800;
    /// `ETH_P_IPV6`
    pub const P_IPV6: u16 = 0x86dd;
    /// `ETH_P_8021Q`
    pub const P_8021Q: u16 = 0x8100;
    /// `ETH_P_8021AD`
    pub const P_8021AD: u16 = 0x88a8;
    /// `ETH_P_TEB`: transparent Ethernet bridging, an Ethernet frame inside GRE or Geneve.
    pub const P_TEB: u16 = 0x6558;
}

/// ICMP and ICMPv6 errors (RFC 792, RFC 4443): the types that quote the packet they are about.
pub mod icmp {
    /// ICMP destination unreachable (code 4: fragmentation needed, with the next-hop MTU).
    pub const DEST_UNREACH: u8 = 3;
    /// ICMP destination unreachable's "fragmentation needed and DF set".
    pub const FRAG_NEEDED: u8 = 4;
    /// ICMP destination unreachable's "port unreachable".
    pub const PORT_UNREACH: u8 = 3;
    /// ICMP time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// ICMP parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// ICMPv6 destination unreachable.
    pub const V6_DEST_UNREACH: u8 = 1;
    /// ICMPv6 destination unreachable's "port unreachable".
    pub const V6_PORT_UNREACH: u8 = 4;
    /// ICMPv6 packet too big (with the MTU).
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    /// ICMPv6 time exceeded.
    pub const V6_TIME_EXCEEDED: u8 = 3;
    /// ICMPv6 parameter problem.
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    /// The ICMP header before the quoted packet: type, code, checksum and four more bytes.
    pub const HEADER_LEN: u32 = 8;

    /// Whether an ICMP (`v6` false) or ICMPv6 message of `kind` is an error that quotes a packet.
    pub const fn is_error(v6: bool, kind: u8) -> bool {
        if v6 {
            matches!(
                kind,
                V6_DEST_UNREACH | V6_PACKET_TOO_BIG | V6_TIME_EXCEEDED | V6_PARAMETER_PROBLEM
            )
        } else {
            matches!(kind, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM)
        }
    }
}

/// Tunnel headers (RFC 7348 VXLAN, RFC 8926 Geneve, RFC 2784/2890 GRE).
pub mod tunnel {
    /// The VXLAN header and the Geneve base header: 8 bytes after the UDP header.
    pub const UDP_TUNNEL_HEADER_LEN: u32 = 8;
    /// VXLAN's I flag (first byte): the VNI is valid.
    pub const VXLAN_FLAG_VNI: u8 = 0x08;
    /// Geneve's version, the top two bits of its first byte; only 0 is defined.
    pub const GENEVE_VERSION_SHIFT: u32 = 6;
    /// Geneve's option length, in 4-byte words, the low six bits of its first byte.
    pub const GENEVE_OPT_LEN_MASK: u8 = 0x3f;
    /// GRE flags (the header's first 16 bits): a checksum word follows.
    pub const GRE_CHECKSUM: u16 = 0x8000;
    /// GRE flags: a key word follows.
    pub const GRE_KEY: u16 = 0x2000;
    /// GRE flags: a sequence number word follows.
    pub const GRE_SEQUENCE: u16 = 0x1000;
    /// GRE's version (low three bits); only 0 carries these fields.
    pub const GRE_VERSION_MASK: u16 = 0x0007;
    /// The UDP port IANA gave VXLAN.
    pub const VXLAN_PORT: u16 = 4789;
    /// The UDP port Linux used for VXLAN before IANA's, which flannel keeps.
    pub const VXLAN_LINUX_PORT: u16 = 8472;
    /// The UDP port of Geneve.
    pub const GENEVE_PORT: u16 = 6081;
}

/// IP protocol numbers (include/uapi/linux/in.h, in6.h).
pub mod ipproto {
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    /// IPv4 in IP (IPIP, and IPv4 in an IPv6 tunnel).
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6 in IP (SIT, ip6tnl).
    pub const IPV6: u8 = 41;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// GRE.
    pub const GRE: u8 = 47;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;

    /// Whether the protocol's header starts with 16-bit source and destination ports.
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | SCTP)
    }
}

/// Offsets of the fields read from an IPv4 header (include/uapi/linux/ip.h, `struct iphdr`).
pub mod ipv4 {
    /// `tot_len`: the whole packet's length, 16 bits.
    pub const TOTAL_LEN: usize = 2;
    /// `id`: the identification, 16 bits.
    pub const ID: usize = 4;
    /// `protocol`.
    pub const PROTOCOL: usize = 9;
    /// `saddr`, 4 bytes.
    pub const SRC: usize = 12;
    /// `daddr`, 4 bytes.
    pub const DST: usize = 16;
    /// A header without options.
    pub const MIN_LEN: usize = 20;
}

/// Offsets of the fields read from an IPv6 header (include/uapi/linux/ipv6.h, `struct ipv6hdr`).
pub mod ipv6 {
    /// The low 16 bits of the 20-bit flow label.
    pub const FLOW_LABEL_LOW: usize = 2;
    /// `payload_len`, 16 bits.
    pub const PAYLOAD_LEN: usize = 4;
    /// `nexthdr`.
    pub const NEXT_HEADER: usize = 6;
    /// `saddr`, 16 bytes.
    pub const SRC: usize = 8;
    /// `daddr`, 16 bytes.
    pub const DST: usize = 24;
    /// The fixed header.
    pub const LEN: usize = 40;
}

/// Offsets in the transport headers: ports where a protocol has them ([`ipproto::has_ports`]),
/// and TCP's sequence number.
pub mod l4 {
    /// Source port, 16 bits.
    pub const SRC_PORT: usize = 0;
    /// Destination port, 16 bits.
    pub const DST_PORT: usize = 2;
    /// TCP's sequence number, 32 bits.
    pub const TCP_SEQ: usize = 4;
}

/// Header lengths the parser and the capture length use.
pub mod header {
    /// A UDP header.
    pub const UDP_LEN: u16 = 8;
    /// SCTP's common header.
    pub const SCTP_LEN: u16 = 12;
    /// ICMP and ICMPv6: type, code, checksum and the 4-byte rest of header.
    pub const ICMP_LEN: u16 = 8;
    /// A TCP header up to and including the flags byte (what the parser reads).
    pub const TCP_FLAGS_END: usize = 14;
}

/// TCP flag bits in the flags byte (byte 13 of the header), FIN first, as tcpdump orders them.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Conntrack's view of a packet: `skb->_nfct` holds the `nf_conn` pointer with
/// `enum ip_conntrack_info` in its low bits (include/linux/skbuff.h,
/// include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod conntrack {
    /// `NFCT_INFOMASK`
    pub const INFO_MASK: u64 = 7;
    /// `IP_CT_UNTRACKED`: the packet is explicitly not tracked.
    pub const UNTRACKED: u64 = 7;
    /// `AF_INET` as stored in `nf_conntrack_tuple.src.l3num`.
    pub const AF_INET: u16 = 2;
    /// `AF_INET6` as stored in `nf_conntrack_tuple.src.l3num`.
    pub const AF_INET6: u16 = 10;
    /// `sizeof(struct nf_conntrack_tuple)`: the programs copy this many bytes, and the
    /// collector checks the running kernel's BTF agrees before it loads them.
    pub const TUPLE_SIZE: usize = 40;

    /// `PacketEvent::ct_state` for a packet whose entry has `info` (`enum ip_conntrack_info`):
    /// the state plus one, so that 0 can mean "no entry".
    #[inline(always)]
    pub const fn encode_state(info: u8) -> u8 {
        info + 1
    }

    /// The `enum ip_conntrack_info` that [`encode_state`] stored, or `None` for "no entry".
    #[inline(always)]
    pub const fn decode_state(state: u8) -> Option<u8> {
        state.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::conntrack::{decode_state, encode_state};

    #[test]
    fn conntrack_states_round_trip() {
        for info in 0..=6 {
            assert_eq!(decode_state(encode_state(info)), Some(info));
        }
        assert_eq!(decode_state(0), None);
    }
}
