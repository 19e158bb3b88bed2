//! Decoder tests on byte fixtures: valid records, and truncated, oversized, unknown ones.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tracer_common::{
    event::{FAMILY_IPV4, FAMILY_IPV6, FLAG_L4, FLAG_TC, PacketEvent},
    hook::Hook,
};

use super::*;

/// A SYN as the kernel program writes it at the uplink's `net_dev_queue`, after MASQUERADE.
fn syn_event() -> PacketEvent {
    let mut e = PacketEvent::zeroed();
    e.hook = Hook::NetDevQueue as u8;
    e.family = FAMILY_IPV4;
    e.l4_proto = 6;
    e.tcp_flags = 0x02;
    e.flags = FLAG_L4;
    e.ct_state = tracer_common::wire::conntrack::encode_state(2);
    e.ttl = 63;
    e.ts_ns = 1_000_000;
    e.skb = 0xffff_8881_2096_6000;
    e.skb_head = 0xffff_8881_0000_0000;
    e.ct = 0xffff_8881_03f3_d900;
    e.ifindex = 3;
    e.netns_inode = 4_026_532_177;
    e.len = 74;
    e.tcp_seq = 1_535_892_551;
    e.ip_id = 55_243;
    e.src_port = 51_116;
    e.dst_port = 10_001;
    e.ip_len = 60;
    e.ifname[..4].copy_from_slice(b"eth0");
    e.src_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
    e.dst_addr[..4].copy_from_slice(&[198, 19, 0, 252]);
    e.ct_orig.family = FAMILY_IPV4;
    e.ct_orig.protonum = 6;
    e.ct_orig.src_addr[..4].copy_from_slice(&[172, 17, 0, 2]);
    e.ct_orig.dst_addr[..4].copy_from_slice(&[198, 19, 0, 252]);
    e.ct_orig.src_port = 51_116;
    e.ct_orig.dst_port = 10_001;
    e.ct_reply.family = FAMILY_IPV4;
    e.ct_reply.protonum = 6;
    e.ct_reply.src_addr[..4].copy_from_slice(&[198, 19, 0, 252]);
    e.ct_reply.dst_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
    e.ct_reply.src_port = 10_001;
    e.ct_reply.dst_port = 51_116;
    e
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn decodes_a_masqueraded_syn() {
    let event = decode(&encode(&syn_event())).expect("valid record");
    assert_eq!(event.hook, Hook::NetDevQueue);
    assert_eq!(event.ifname.as_str(), "eth0");
    assert_eq!(event.netns_inode, 4_026_532_177);
    assert_eq!(
        event.tuple,
        Tuple {
            proto: Proto::TCP,
            src: v4(198, 18, 0, 2),
            src_port: 51_116,
            dst: v4(198, 19, 0, 252),
            dst_port: 10_001,
        }
    );
    assert!(event.has_l4 && !event.fragment && !event.nonlinear && !event.tc);
    assert_eq!(
        (event.tcp_flags, event.tcp_seq, event.ip_id),
        (0x02, 1_535_892_551, 55_243)
    );
    let ct = event.conntrack.expect("conntrack entry");
    assert_eq!(ct.info, 2);
    assert_eq!(ct.orig.src, v4(172, 17, 0, 2));
    assert_eq!(ct.reply, event.tuple.reversed());
}

#[test]
fn a_decoder_shares_an_entry_while_it_stays_the_same() {
    let mut decoder = Decoder::new();
    let raw = syn_event();
    let first = decoder.decode(&encode(&raw)).unwrap().conntrack.unwrap();
    let again = decoder.decode(&encode(&raw)).unwrap().conntrack.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the same entry is shared");
    // The state and the tuples are part of the entry: a change is a new one.
    let mut reply = raw;
    reply.ct_state = tracer_common::wire::conntrack::encode_state(3);
    let changed = decoder.decode(&encode(&reply)).unwrap().conntrack.unwrap();
    assert!(!Arc::ptr_eq(&first, &changed));
    assert_eq!(changed.info, 3);
    let mut renamed = raw;
    renamed.ct_reply.dst_port = 40_000;
    let changed = decoder
        .decode(&encode(&renamed))
        .unwrap()
        .conntrack
        .unwrap();
    assert_eq!(changed.reply.dst_port, 40_000);
    assert_eq!(first.reply.dst_port, 51_116);
}

#[test]
fn decodes_ipv6_and_tc_events() {
    let mut raw = syn_event();
    raw.family = FAMILY_IPV6;
    raw.src_addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets();
    raw.dst_addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0xfc).octets();
    raw.flags |= FLAG_TC;
    raw.ct = 0;
    let event = decode(&encode(&raw)).expect("valid record");
    assert_eq!(
        event.tuple.src,
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2))
    );
    assert!(event.tc);
    assert_eq!(event.conntrack, None);
}

#[test]
fn rejects_empty_records() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn rejects_truncated_records() {
    let bytes = encode(&syn_event());
    for len in [1, 8, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(
            decode(&bytes[..len]),
            Err(DecodeError::Size {
                kind: 1,
                actual: len,
                expected: bytes.len()
            })
        );
    }
}

#[test]
fn rejects_oversized_records() {
    let mut bytes = encode(&syn_event());
    bytes.extend_from_slice(&[0; 8]);
    assert!(
        matches!(decode(&bytes), Err(DecodeError::Size { actual, .. }) if actual == bytes.len())
    );
}

#[test]
fn rejects_unknown_kinds_and_hooks() {
    let mut bytes = encode(&syn_event());
    bytes[0] = 0xee;
    assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(0xee)));
    let mut bytes = encode(&syn_event());
    bytes[1] = 0;
    assert_eq!(decode(&bytes), Err(DecodeError::UnknownHook(0)));
}

#[test]
fn non_ip_families_decode_to_unspecified_addresses() {
    let mut raw = syn_event();
    raw.family = 0;
    let event = decode(&encode(&raw)).expect("valid record");
    assert_eq!(event.tuple.src, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

#[test]
fn interface_names_are_nul_terminated_and_lossy() {
    let mut raw = syn_event();
    raw.ifname = *b"veth0123456789ab";
    assert_eq!(
        decode(&encode(&raw)).unwrap().ifname.as_str(),
        "veth0123456789ab"
    );
    raw.ifname = [0xff; 16];
    let name = decode(&encode(&raw)).unwrap().ifname.as_str().into_owned();
    assert!(name.contains('\u{fffd}'));
}

/// The layout is the contract with the kernel programs: the recording made from the kernel
/// (tests/data/golden/snat-handshake.events, `cargo xtask fixtures`) must keep decoding, and
/// its SYN at the uplink must read as the masqueraded SYN it was.
#[test]
fn decodes_records_captured_from_the_kernel() {
    let recording = include_bytes!("../../../tests/data/golden/snat-handshake.events");
    let records = crate::recording::read_recording(&recording[..]).expect("recording");
    assert!(records.len() > 50);
    let events: Vec<HopEvent> = records
        .iter()
        .map(|r| decode(r).expect("every recorded event decodes"))
        .collect();
    let event = events
        .iter()
        .find(|e| {
            e.hook == Hook::NetDevQueue && e.tcp_flags == 0x02 && e.tuple.src == v4(198, 18, 0, 2)
        })
        .expect("the SYN at the uplink");
    assert_eq!(event.ifname.as_str(), "eth0");
    assert_eq!(event.tuple.dst, v4(198, 19, 0, 252));
    assert_eq!(event.tuple.dst_port, 10_001);
    let ct = event.conntrack.clone().expect("conntrack entry");
    assert_eq!(ct.orig.src, v4(172, 17, 0, 2));
    assert_eq!(ct.reply.dst, v4(198, 18, 0, 2));
}

fn socket_record(kind: EventKind, cookie: u64, tgid: u32, comm: &str) -> Vec<u8> {
    let mut name = [0u8; 16];
    name[..comm.len()].copy_from_slice(comm.as_bytes());
    let event = SocketEvent {
        kind: kind as u8,
        _pad: [0; 3],
        tgid,
        cookie,
        cgroup_id: 99,
        comm: name,
    };
    // SAFETY: `SocketEvent` is plain integers and arrays without implicit padding.
    unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<SocketEvent>()) }
        .to_vec()
}

#[test]
fn packets_carry_the_process_that_created_their_socket() {
    let mut decoder = Decoder::new();
    let created = decoder.record(&socket_record(EventKind::SocketCreated, 7, 4242, "wget"));
    assert_eq!(created, Ok(None));
    let mut raw = syn_event();
    raw.sock_cookie = 7;
    let event = decoder.record(&encode(&raw)).unwrap().expect("a packet");
    let process = event.process.expect("the socket's owner");
    assert_eq!(
        (process.pid, process.comm.as_str(), process.cgroup_id),
        (4242, "wget", 99)
    );
    // Another socket, or none: no process, never a guess.
    raw.sock_cookie = 8;
    assert_eq!(decoder.decode(&encode(&raw)).unwrap().process, None);
    raw.sock_cookie = 0;
    assert_eq!(decoder.decode(&encode(&raw)).unwrap().process, None);
    // A released socket's owner stays for its last packets, then goes.
    decoder
        .record(&socket_record(EventKind::SocketReleased, 7, 4242, "wget"))
        .unwrap();
    raw.sock_cookie = 7;
    assert!(decoder.decode(&encode(&raw)).unwrap().process.is_some());
    for cookie in 100..100 + RELEASED_KEPT as u64 {
        decoder
            .record(&socket_record(EventKind::SocketCreated, cookie, 1, "x"))
            .unwrap();
        decoder
            .record(&socket_record(EventKind::SocketReleased, cookie, 1, "x"))
            .unwrap();
    }
    assert_eq!(decoder.decode(&encode(&raw)).unwrap().process, None);
    assert_eq!(decoder.owners(), RELEASED_KEPT);
    // A socket record is not a packet.
    assert_eq!(
        decoder.decode(&socket_record(EventKind::SocketCreated, 9, 1, "x")),
        Err(DecodeError::NotPacket(EventKind::SocketCreated as u8))
    );
}

#[test]
fn records_from_before_the_socket_cookie_still_decode() {
    let mut raw = syn_event();
    raw.sock_cookie = 0;
    let bytes = encode(&raw);
    let old: Vec<u8> = bytes[..UNOWNED_EVENT].to_vec();
    assert_eq!(decode(&old), decode(&bytes));
}

/// A SYN from pod 10.244.1.2 to pod 10.244.2.2 inside VXLAN, as the kernel program writes it
/// at the sending node's uplink.
fn vxlan_record() -> tracer_common::event::PacketEncap {
    use tracer_common::event::{
        ENCAP_HAS_ID, Encap as RawEncap, EventKind, FLAG_ENCAP, PacketEncap, encap_kind,
    };
    let mut event = syn_event();
    event.kind = EventKind::PacketEncap as u8;
    event.flags |= FLAG_ENCAP;
    event.ct = 0;
    event.src_addr[..4].copy_from_slice(&[10, 244, 1, 2]);
    event.dst_addr[..4].copy_from_slice(&[10, 244, 2, 2]);
    let mut encap = RawEncap {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        id: 1,
        src_port: 41_234,
        dst_port: 8472,
        ip_id: 77,
        ip_len: 110,
        kind: encap_kind::VXLAN,
        family: FAMILY_IPV4,
        ttl: 64,
        flags: ENCAP_HAS_ID,
        inner_offset: 50,
        proto: 17,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 3],
    };
    encap.src_addr[..4].copy_from_slice(&[198, 18, 50, 1]);
    encap.dst_addr[..4].copy_from_slice(&[198, 18, 50, 2]);
    PacketEncap { event, encap }
}

#[test]
fn an_encapsulated_packet_is_its_inner_headers_with_the_outer_ones_beside() {
    let record = vxlan_record();
    let event = decode(&encode_record(&record)).unwrap();
    assert_eq!(
        event.tuple,
        Tuple {
            proto: Proto::TCP,
            src: v4(10, 244, 1, 2),
            src_port: 51_116,
            dst: v4(10, 244, 2, 2),
            dst_port: 10_001,
        }
    );
    assert!(event.conntrack.is_none());
    let encap = event.encap.as_deref().unwrap();
    assert_eq!((encap.kind, encap.id), (EncapKind::Vxlan, Some(1)));
    assert_eq!(
        encap.outer,
        Tuple {
            proto: Proto::UDP,
            src: v4(198, 18, 50, 1),
            src_port: 41_234,
            dst: v4(198, 18, 50, 2),
            dst_port: 8472,
        }
    );
    assert_eq!((encap.ip_id, encap.ip_len, encap.ttl), (77, 110, 64));
    // A plain event has none.
    assert!(decode(&encode(&syn_event())).unwrap().encap.is_none());
}

#[test]
fn tunnels_are_named_by_their_kind_and_families() {
    use tracer_common::event::{FAMILY_IPV6, encap_kind};
    let named = |kind: u8, outer: u8, inner: u8, flags: u8| {
        let mut record = vxlan_record();
        record.encap.kind = kind;
        record.encap.family = outer;
        record.encap.flags = flags;
        record.event.family = inner;
        decode(&encode_record(&record))
            .unwrap()
            .encap
            .map(|e| (e.kind, e.id, e.outer.proto))
    };
    assert_eq!(
        named(encap_kind::IP_IN_IP, FAMILY_IPV4, FAMILY_IPV6, 0),
        Some((EncapKind::Sit, None, Proto(41)))
    );
    assert_eq!(
        named(encap_kind::IP_IN_IP, FAMILY_IPV4, FAMILY_IPV4, 0),
        Some((EncapKind::Ipip, None, Proto(4)))
    );
    assert_eq!(
        named(encap_kind::IP_IN_IP, FAMILY_IPV6, FAMILY_IPV4, 0),
        Some((EncapKind::Ip6tnl, None, Proto(4)))
    );
    assert_eq!(
        named(encap_kind::GRE, FAMILY_IPV4, FAMILY_IPV4, 1),
        Some((EncapKind::Gre, Some(1), Proto(47)))
    );
    assert_eq!(
        named(encap_kind::GRETAP, FAMILY_IPV6, FAMILY_IPV4, 0),
        Some((EncapKind::Ip6gretap, None, Proto(47)))
    );
    assert_eq!(named(99, FAMILY_IPV4, FAMILY_IPV4, 0), None);
}

#[test]
fn a_truncated_encapsulated_record_is_rejected() {
    let bytes = encode_record(&vxlan_record());
    assert_eq!(
        decode(&bytes[..bytes.len() - 8]),
        Err(DecodeError::Size {
            kind: tracer_common::event::EventKind::PacketEncap as u8,
            actual: bytes.len() - 8,
            expected: bytes.len()
        })
    );
}

/// A compact hop of `base` (which must be its CPU's base) at docker0's `net_dev_queue`.
fn compact_of(base: &PacketEvent, cpu: u32, conntrack: bool) -> tracer_common::event::CompactHop {
    let mut ifname = [0; 16];
    ifname[..7].copy_from_slice(b"docker0");
    tracer_common::event::CompactHop {
        kind: EventKind::CompactHop as u8,
        hook: Hook::NetDevQueue as u8,
        ttl: base.ttl - 1,
        flags: if conntrack {
            tracer_common::event::HOP_CONNTRACK
        } else {
            0
        },
        cpu,
        ts_ns: base.ts_ns + 1_500,
        skb: base.skb,
        ifindex: 2,
        netns_inode: 4_026_532_178,
        len: 60,
        mark: 7,
        ifname,
        sock_cookie: 0,
    }
}

#[test]
fn a_compact_hop_is_its_base_with_its_own_place_and_time() {
    let mut base = syn_event();
    base.ct_state = tracer_common::wire::conntrack::encode_state(0);
    base.base = 2;
    let mut decoder = Decoder::new();
    let first = decoder.decode(&encode(&base)).unwrap();
    for conntrack in [true, false] {
        let hop = compact_of(&base, 1, conntrack);
        let decoded = decoder.decode(&encode_record(&hop)).unwrap();
        // What a whole event of this hop would have said.
        let mut whole = base;
        (whole.hook, whole.ttl, whole.ts_ns) = (hop.hook, hop.ttl, hop.ts_ns);
        (whole.ifindex, whole.netns_inode, whole.len, whole.mark) = (2, 4_026_532_178, 60, 7);
        whole.ifname = hop.ifname;
        if !conntrack {
            whole.ct = 0;
            whole.ct_state = 0;
            whole.ct_orig = CtTuple::default();
            whole.ct_reply = CtTuple::default();
        }
        assert_eq!(decoded, Decoder::new().decode(&encode(&whole)).unwrap());
        assert_eq!(decoded.conntrack.is_some(), conntrack);
        assert_eq!(decoded.ifname.as_str(), "docker0");
    }
    // The base itself decodes as any event does.
    assert_eq!(first.ifname.as_str(), "eth0");
}

#[test]
fn a_compact_hop_without_its_base_is_rejected() {
    let mut base = syn_event();
    base.base = 1;
    // No base yet on any CPU.
    let hop = compact_of(&base, 0, false);
    assert_eq!(
        Decoder::new().decode(&encode_record(&hop)),
        Err(DecodeError::NoBase { cpu: 0 })
    );
    // A base on another CPU, or of another skb, is not this hop's.
    let mut decoder = Decoder::new();
    decoder.decode(&encode(&base)).unwrap();
    assert_eq!(
        decoder.decode(&encode_record(&compact_of(&base, 1, false))),
        Err(DecodeError::NoBase { cpu: 1 })
    );
    let mut other = hop;
    other.skb += 0x100;
    assert_eq!(
        decoder.decode(&encode_record(&other)),
        Err(DecodeError::NoBase { cpu: 0 })
    );
    assert!(decoder.decode(&encode_record(&hop)).is_ok());
    // An event that is no base (a TC program's, a nested run's, a recording from before
    // compact hops) leaves the CPU's base as it was.
    let mut plain = syn_event();
    plain.skb += 0x200;
    decoder.decode(&encode(&plain)).unwrap();
    assert!(decoder.decode(&encode_record(&hop)).is_ok());
    // A record naming a CPU no kernel has is no base.
    let mut beyond = syn_event();
    beyond.base = u16::MAX;
    decoder.decode(&encode(&beyond)).unwrap();
    assert!(decoder.bases.len() <= MAX_CPUS);
    // A truncated compact hop is rejected by its size.
    let bytes = encode_record(&hop);
    assert!(matches!(
        decoder.decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Size { .. })
    ));
}
