//! L3/L4 header parsing shared by every hook, into a small [`Headers`] on the stack: the
//! filter decides on it, and only a packet that matches becomes an event.
//!
//! The parser reads through [`Bytes`], so the same code serves tracepoints (which read the
//! `sk_buff`'s linear data with `bpf_probe_read_kernel`, once for the usual headers: see
//! `skb::Window`) and TC programs (which read the packet with `bpf_skb_load_bytes`). It never
//! reads past the limit the source reports, follows IPv4 options and up to [`MAX_IPV6_EXT`]
//! IPv6 extension headers, and stops at non-first fragments.

use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use tracer_common::{
    event::{FAMILY_IPV4, FAMILY_IPV6, FLAG_FRAGMENT, FLAG_L4, FLAG_NONLINEAR},
    wire::{ether, header, ipproto},
};

use crate::words;

/// What the parser finds in a packet's headers; the fields mean what the [`PacketEvent`]
/// fields of the same names mean.
///
/// [`PacketEvent`]: tracer_common::event::PacketEvent
#[repr(C, align(8))]
pub struct Headers {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub ip_id: u16,
    pub ip_len: u16,
    pub headers_len: u16,
    /// Bytes from the IP header to the L4 header (past IPv4 options and IPv6 extension
    /// headers).
    pub l4_off: u16,
    pub family: u8,
    pub l4_proto: u8,
    pub tcp_flags: u8,
    pub flags: u8,
    pub ttl: u8,
    pub _pad: [u8; 7],
}

impl Headers {
    /// Zeroes every field.
    #[inline(always)]
    pub fn zero(&mut self) {
        // SAFETY: `self` is one whole `Headers`.
        unsafe { words::zero_raw(core::ptr::from_mut(self)) };
    }
}

/// IPv6 extension headers followed before giving up on finding the L4 header.
const MAX_IPV6_EXT: usize = 4;

/// A packet's bytes, addressed by offset.
pub trait Bytes {
    /// One value of `T` at `offset`, or `None` when it is not all readable.
    fn load<T: Copy>(&self, offset: u32) -> Option<T>;

    /// Copies as many bytes from `offset` on as `dst` holds and the packet has; returns how
    /// many were copied.
    fn copy(&self, offset: u32, dst: &mut [u8]) -> usize;
}

/// Outcome of parsing: whether the L4 header was out of reach.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not an IP packet we understand; nothing was filled in.
    NotIp,
    /// IP header filled in (and the L4 header when `FLAG_L4` is set).
    Ip,
}

/// Fills the IP and L4 fields of `event` from the header at `l3` with EtherType `proto`.
#[inline(always)]
pub fn parse_l3(bytes: &impl Bytes, proto: u16, l3: u32, event: &mut Headers) -> Parsed {
    match proto {
        ether::P_IP => parse_ipv4(bytes, l3, event),
        ether::P_IPV6 => parse_ipv6(bytes, l3, event),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(bytes: &impl Bytes, l3: u32, event: &mut Headers) -> Parsed {
    let Some(ip) = bytes.load::<Ipv4Hdr>(l3) else {
        event.flags |= FLAG_NONLINEAR;
        return Parsed::NotIp;
    };
    let header_len = u32::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN as u32 {
        return Parsed::NotIp;
    }
    event.family = FAMILY_IPV4;
    event.src_addr[..4].copy_from_slice(&ip.src_addr);
    event.dst_addr[..4].copy_from_slice(&ip.dst_addr);
    event.ttl = ip.ttl;
    event.ip_id = u16::from_be_bytes(ip.id);
    event.ip_len = u16::from_be_bytes(ip.tot_len);
    event.l4_proto = ip.proto;
    let frag_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
    event.headers_len = header_len as u16;
    event.l4_off = header_len as u16;
    if frag_offset != 0 {
        event.flags |= FLAG_FRAGMENT;
        return Parsed::Ip;
    }
    parse_l4(bytes, ip.proto, l3 + header_len, event);
    Parsed::Ip
}

#[inline(always)]
fn parse_ipv6(bytes: &impl Bytes, l3: u32, event: &mut Headers) -> Parsed {
    let Some(ip) = bytes.load::<Ipv6Hdr>(l3) else {
        event.flags |= FLAG_NONLINEAR;
        return Parsed::NotIp;
    };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::NotIp;
    }
    event.family = FAMILY_IPV6;
    event.src_addr = ip.src_addr;
    event.dst_addr = ip.dst_addr;
    event.ttl = ip.hop_limit;
    event.ip_id = u16::from_be_bytes([ip.vcf[2], ip.vcf[3]]);
    event.ip_len = u16::from_be_bytes(ip.payload_len).saturating_add(Ipv6Hdr::LEN as u16);

    let mut next = ip.next_hdr;
    let mut offset = l3 + Ipv6Hdr::LEN as u32;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS => {
                let Some(ext) = bytes.load::<[u8; 2]>(offset) else {
                    event.flags |= FLAG_NONLINEAR;
                    return Parsed::Ip;
                };
                next = ext[0];
                offset += (u32::from(ext[1]) + 1) * 8;
            }
            ipproto::FRAGMENT => {
                let Some(frag) = bytes.load::<[u8; 4]>(offset) else {
                    event.flags |= FLAG_NONLINEAR;
                    return Parsed::Ip;
                };
                next = frag[0];
                offset += 8;
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    event.l4_proto = next;
                    event.headers_len = (offset - l3) as u16;
                    event.flags |= FLAG_FRAGMENT;
                    return Parsed::Ip;
                }
            }
            _ => break,
        }
    }
    event.l4_proto = next;
    event.headers_len = (offset - l3) as u16;
    event.l4_off = event.headers_len;
    parse_l4(bytes, next, offset, event);
    Parsed::Ip
}

/// Fills ports (TCP, UDP, SCTP) and TCP sequence numbers and flags, and extends
/// `headers_len` (which covers the IP headers on entry) over the L4 header.
#[inline(always)]
fn parse_l4(bytes: &impl Bytes, proto: u8, l4: u32, event: &mut Headers) {
    match proto {
        ipproto::TCP => {
            // Up to and including the flags byte; options are not needed.
            let Some(tcp) = bytes.load::<[u8; header::TCP_FLAGS_END]>(l4) else {
                event.flags |= FLAG_NONLINEAR;
                return;
            };
            const _: () = assert!(TcpHdr::LEN >= header::TCP_FLAGS_END);
            event.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
            event.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
            event.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            event.tcp_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            event.tcp_flags = tcp[13];
            event.headers_len += u16::from(tcp[12] >> 4) * 4;
            event.flags |= FLAG_L4;
        }
        ipproto::UDP | ipproto::SCTP => {
            let Some(ports) = bytes.load::<[u8; 4]>(l4) else {
                event.flags |= FLAG_NONLINEAR;
                return;
            };
            event.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            event.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            event.headers_len += if proto == ipproto::SCTP {
                header::SCTP_LEN
            } else {
                header::UDP_LEN
            };
            event.flags |= FLAG_L4;
        }
        _ => event.headers_len += header::ICMP_LEN,
    }
}
