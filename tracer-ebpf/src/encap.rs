//! Encapsulated packets: VXLAN and Geneve over UDP, IP in IP, GRE and GRETAP.
//!
//! After the outer headers are parsed, [`detect`] says whether they carry a tunnel and where
//! the inner IP header starts, and keeps the outer headers in an [`Encap`]. The caller parses
//! the inner headers from there; the packet is then matched and described by its inner
//! headers, with the outer ones beside them, so that the underlay hops of a pod's packet join
//! the pod's trace. One level only: a tunnel inside a tunnel is described by the first.

use tracer_common::{
    event::{ENCAP_HAS_ID, Encap, FLAG_FRAGMENT, FLAG_L4, encap_kind},
    wire::{ether, header, ipproto, tunnel},
};

use crate::{
    config::conf,
    conntrack::copy16,
    packet::{Bytes, Headers},
    words,
};

/// Where an inner packet's IP header starts, and its EtherType.
#[derive(Clone, Copy)]
pub struct Inner {
    pub proto: u16,
    pub l3: u32,
}

/// Whether `outer` (parsed from `l3` in `bytes`) carries a tunnel the programs look into;
/// fills `encap` with its outer headers and says where the inner IP header is. `None` for a
/// packet that is not encapsulated (or not in a way looked into), with `encap` untouched.
#[inline(always)]
pub fn detect(bytes: &impl Bytes, l3: u32, outer: &Headers, encap: &mut Encap) -> Option<Inner> {
    if conf!(encap) == 0 || outer.flags & FLAG_FRAGMENT != 0 || outer.l4_off == 0 {
        return None;
    }
    let l4 = l3 + u32::from(outer.l4_off);
    let (kind, id, has_id, inner) = match outer.l4_proto {
        ipproto::UDP if outer.flags & FLAG_L4 != 0 => udp_tunnel(bytes, l4, outer.dst_port)?,
        ipproto::IPIP => (
            encap_kind::IP_IN_IP,
            0,
            false,
            Inner {
                proto: ether::P_IP,
                l3: l4,
            },
        ),
        ipproto::IPV6 => (
            encap_kind::IP_IN_IP,
            0,
            false,
            Inner {
                proto: ether::P_IPV6,
                l3: l4,
            },
        ),
        ipproto::GRE => gre(bytes, l4)?,
        _ => return None,
    };
    // SAFETY: `encap` is one whole `Encap`.
    unsafe { words::zero_raw(core::ptr::from_mut(encap)) };
    // SAFETY: both are 16-byte arrays of `encap`.
    unsafe {
        copy16(&outer.src_addr, &raw mut encap.src_addr);
        copy16(&outer.dst_addr, &raw mut encap.dst_addr);
    }
    encap.id = id;
    if kind == encap_kind::VXLAN || kind == encap_kind::GENEVE {
        encap.src_port = outer.src_port;
        encap.dst_port = outer.dst_port;
    }
    encap.ip_id = outer.ip_id;
    encap.ip_len = outer.ip_len;
    encap.kind = kind;
    encap.proto = outer.l4_proto;
    encap.family = outer.family;
    encap.ttl = outer.ttl;
    encap.flags = if has_id { ENCAP_HAS_ID } else { 0 };
    encap.inner_offset = inner.l3.wrapping_sub(l3) as u16;
    Some(inner)
}

/// VXLAN on one of the configured ports, or Geneve on its port.
#[inline(always)]
fn udp_tunnel(bytes: &impl Bytes, l4: u32, port: u16) -> Option<(u8, u32, bool, Inner)> {
    let at = l4 + u32::from(header::UDP_LEN);
    let h = bytes.load::<[u8; 8]>(at)?;
    let vni = u32::from_be_bytes([0, h[4], h[5], h[6]]);
    let payload = at + tunnel::UDP_TUNNEL_HEADER_LEN;
    if is_vxlan_port(port) {
        if h[0] & tunnel::VXLAN_FLAG_VNI == 0 {
            return None;
        }
        return Some((encap_kind::VXLAN, vni, true, ethernet(bytes, payload)?));
    }
    let geneve = conf!(geneve_port);
    if geneve == 0 || port != geneve || h[0] >> tunnel::GENEVE_VERSION_SHIFT != 0 {
        return None;
    }
    let options = u32::from(h[0] & tunnel::GENEVE_OPT_LEN_MASK) * 4;
    let inner = match u16::from_be_bytes([h[2], h[3]]) {
        ether::P_TEB => ethernet(bytes, payload + options)?,
        proto @ (ether::P_IP | ether::P_IPV6) => Inner {
            proto,
            l3: payload + options,
        },
        _ => return None,
    };
    Some((encap_kind::GENEVE, vni, true, inner))
}

/// Whether `port` is one a VXLAN device uses (the collector lists them).
#[inline(always)]
pub fn is_vxlan_port(port: u16) -> bool {
    let ports = conf!(vxlan_ports);
    let mut found = false;
    for configured in ports {
        found |= configured != 0 && configured == port;
    }
    found
}

/// GRE carrying IP or an Ethernet frame, with its key when it has one.
#[inline(always)]
fn gre(bytes: &impl Bytes, l4: u32) -> Option<(u8, u32, bool, Inner)> {
    let h = bytes.load::<[u8; 4]>(l4)?;
    let flags = u16::from_be_bytes([h[0], h[1]]);
    if flags & tunnel::GRE_VERSION_MASK != 0 {
        return None;
    }
    let mut at = l4 + 4;
    if flags & tunnel::GRE_CHECKSUM != 0 {
        at += 4;
    }
    let has_key = flags & tunnel::GRE_KEY != 0;
    let mut key = 0;
    if has_key {
        key = u32::from_be_bytes(bytes.load::<[u8; 4]>(at)?);
        at += 4;
    }
    if flags & tunnel::GRE_SEQUENCE != 0 {
        at += 4;
    }
    match u16::from_be_bytes([h[2], h[3]]) {
        ether::P_TEB => Some((encap_kind::GRETAP, key, has_key, ethernet(bytes, at)?)),
        proto @ (ether::P_IP | ether::P_IPV6) => {
            Some((encap_kind::GRE, key, has_key, Inner { proto, l3: at }))
        }
        _ => None,
    }
}

/// The IP packet inside an Ethernet frame at `at` (one VLAN tag followed).
#[inline(always)]
fn ethernet(bytes: &impl Bytes, at: u32) -> Option<Inner> {
    let mut proto = u16::from_be_bytes(bytes.load::<[u8; 2]>(at + ether::TYPE_OFFSET)?);
    let mut l3 = at + ether::HEADER_LEN;
    if proto == ether::P_8021Q || proto == ether::P_8021AD {
        proto = u16::from_be_bytes(bytes.load::<[u8; 2]>(l3 + ether::VLAN_TYPE_OFFSET)?);
        l3 += ether::VLAN_HEADER_LEN;
    }
    (proto == ether::P_IP || proto == ether::P_IPV6).then_some(Inner { proto, l3 })
}
