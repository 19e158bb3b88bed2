//! A packet's second layer of headers: a tunnel's inner packet ([`crate::encap`]) or the packet
//! an ICMP error quotes ([`crate::icmp`]).
//!
//! Most packets have neither, and pay only for [`candidate`], a few comparisons on what the
//! parser already found; the reading itself is a BPF function of its own ([`read`]), so that
//! it does not make the common path too large for LLVM to keep it inline in each program.

use tracer_common::{
    event::{Encap, FLAG_FRAGMENT, FLAG_L4},
    wire::ipproto,
};

use crate::{
    config::conf,
    encap, icmp,
    packet::{Bytes, Headers, Parsed, parse_l3},
};

/// What a packet's second layer is. (A number, not a richer type: it is the return value of a BPF
/// function.)
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    None = 0,
    /// An encapsulated packet: its inner headers in [`Layers::inner`], the outer ones in
    /// [`Layers::encap`].
    Tunnel = 1,
    /// An ICMP error: the packet it quotes in [`Layers::encap`].
    Quote = 2,
}

/// Where [`tunnel`], [`inner`] and [`quote`] put what they find.
#[repr(C, align(8))]
pub struct Layers {
    pub inner: Headers,
    pub encap: Encap,
    /// Where a tunnel's inner packet starts, and its EtherType.
    pub inner_l3: u32,
    pub inner_proto: u16,
    pub _pad: u16,
}

/// Whether the packet may have a second layer: a datagram to a tunnel's UDP port, IP in IP,
/// GRE (when tunnels are looked into), or ICMP.
#[inline(always)]
pub fn candidate(h: &Headers) -> bool {
    if h.flags & FLAG_FRAGMENT != 0 || h.l4_off == 0 {
        return false;
    }
    match h.l4_proto {
        ipproto::ICMP | ipproto::ICMPV6 => true,
        ipproto::IPIP | ipproto::IPV6 | ipproto::GRE => conf!(encap) != 0,
        ipproto::UDP => {
            h.flags & FLAG_L4 != 0
                && conf!(encap) != 0
                && (encap::is_vxlan_port(h.dst_port) || h.dst_port == conf!(geneve_port))
        }
        _ => false,
    }
}

/// Finds a tunnel in `outer` (parsed from `l3` in `bytes`): its outer headers in
/// [`Layers::encap`], where its inner packet starts in [`Layers::inner_l3`], to be parsed
/// with [`inner`].
#[inline(always)]
pub fn tunnel(bytes: &impl Bytes, l3: u32, outer: &Headers, layers: &mut Layers) -> bool {
    match encap::detect(bytes, l3, outer, &mut layers.encap) {
        Some(at) => {
            layers.inner_l3 = at.l3;
            layers.inner_proto = at.proto;
            true
        }
        None => false,
    }
}

/// Reads the packet an ICMP error quotes into [`Layers::encap`]; whether `packet` is one.
#[inline(always)]
pub fn quote(bytes: &impl Bytes, l3: u32, packet: &Headers, layers: &mut Layers) -> bool {
    icmp::quoted(bytes, l3, packet, &mut layers.encap)
}

/// Parses the inner packet of the tunnel [`tunnel`] found; whether it is IP.
#[inline(always)]
pub fn inner(bytes: &impl Bytes, layers: &mut Layers) -> bool {
    layers.inner.zero();
    parse_l3(
        bytes,
        layers.inner_proto,
        layers.inner_l3,
        &mut layers.inner,
    ) == Parsed::Ip
}
