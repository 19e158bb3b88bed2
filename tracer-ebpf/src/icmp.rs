//! ICMP and ICMPv6 errors: the packet they quote.
//!
//! A router that refuses a packet (too big for the next hop, no route, TTL exceeded) or a host
//! without a listener on a UDP port answers with an ICMP error that carries the refused
//! packet's headers. [`quoted`] reads them into an [`Encap`] of kind `ICMP_ERROR`, so that the
//! filter can match the error by the packet it is about (`--port 10001` keeps the
//! "fragmentation needed" sent back to a container) and the collector can put it in that
//! packet's flow.

use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use tracer_common::{
    event::{Encap, FAMILY_IPV4, FAMILY_IPV6, FLAG_FRAGMENT, encap_kind},
    wire::{icmp, ipproto},
};

use crate::{
    conntrack::copy16,
    packet::{Bytes, Headers},
    words,
};

/// Whether `packet` (parsed from `l3` in `bytes`) is an ICMP error; fills `quote` with the
/// packet it quotes (addresses, protocol, ports when they were quoted) and the error's type,
/// code and MTU.
#[inline(always)]
pub fn quoted(bytes: &impl Bytes, l3: u32, packet: &Headers, quote: &mut Encap) -> bool {
    let v6 = match packet.l4_proto {
        ipproto::ICMP => false,
        ipproto::ICMPV6 => true,
        _ => return false,
    };
    if packet.flags & FLAG_FRAGMENT != 0 || packet.l4_off == 0 {
        return false;
    }
    let l4 = l3 + u32::from(packet.l4_off);
    let Some(header) = bytes.load::<[u8; 8]>(l4) else {
        return false;
    };
    if !icmp::is_error(v6, header[0]) {
        return false;
    }
    let at = l4 + icmp::HEADER_LEN;
    // SAFETY: `quote` is one whole `Encap`.
    unsafe { words::zero_raw(core::ptr::from_mut(quote)) };
    let ports_at = match bytes.load::<u8>(at).map(|b| b >> 4) {
        Some(4) => {
            let Some(ip) = bytes.load::<Ipv4Hdr>(at) else {
                return false;
            };
            quote.family = FAMILY_IPV4;
            quote.proto = ip.proto;
            quote.ip_id = u16::from_be_bytes(ip.id);
            quote.ip_len = u16::from_be_bytes(ip.tot_len);
            quote.src_addr[..4].copy_from_slice(&ip.src_addr);
            quote.dst_addr[..4].copy_from_slice(&ip.dst_addr);
            at + u32::from(ip.vihl & 0x0f) * 4
        }
        Some(6) => {
            let Some(ip) = bytes.load::<Ipv6Hdr>(at) else {
                return false;
            };
            quote.family = FAMILY_IPV6;
            quote.proto = ip.next_hdr;
            quote.ip_id = u16::from_be_bytes([ip.vcf[2], ip.vcf[3]]);
            quote.ip_len = u16::from_be_bytes(ip.payload_len).saturating_add(Ipv6Hdr::LEN as u16);
            // SAFETY: both are 16-byte arrays of `quote`.
            unsafe {
                copy16(&ip.src_addr, &raw mut quote.src_addr);
                copy16(&ip.dst_addr, &raw mut quote.dst_addr);
            }
            at + Ipv6Hdr::LEN as u32
        }
        _ => return false,
    };
    if ipproto::has_ports(quote.proto)
        && let Some(ports) = bytes.load::<[u8; 4]>(ports_at)
    {
        quote.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        quote.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
    quote.kind = encap_kind::ICMP_ERROR;
    quote.icmp_type = header[0];
    quote.icmp_code = header[1];
    quote.id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    quote.inner_offset = at.wrapping_sub(l3) as u16;
    true
}
