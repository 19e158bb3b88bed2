//! The TC program's parser on hand-built packets, run in the kernel with BPF_PROG_TEST_RUN:
//! IP options, VLAN tags, IPv6 extension headers, fragments, truncated and non-IP frames. The
//! verifier already proved the program safe on any input; these show it reads the right
//! fields, stays passive (TC_ACT_UNSPEC) and emits nothing for what it cannot parse.
//!
//! Needs root, like every test that loads programs; run through `cargo xtask test`.

use aya::maps::{MapData, RingBuf};
use tracer::{
    decode::{HopEvent, decode},
    filter,
    kernel::{LoadOptions, Programs, Tunnels, hooks::HookSet, tc::TcMode},
};
use tracer_common::hook::Hook;

const TC_ACT_UNSPEC: i32 = -1;

fn programs() -> (Programs, RingBuf<MapData>) {
    let mut programs = Programs::load(&LoadOptions {
        hooks: HookSet::all(),
        filter: filter::compile(None).expect("empty filter"),
        ring_bytes: 1 << 16,
        snap_len: 0,
        snap_headers_only: true,
        kernel_btf: None,
        tc_mode: TcMode::Auto,
        sample_every: 1,
        tunnels: Tunnels::default(),
    })
    .expect("programs load (run as root)");
    let ring = programs.take_events().expect("ring buffer");
    (programs, ring)
}

/// Runs `frame` through tc_ingress: the verdict and the events it emitted.
fn run(programs: &mut Programs, ring: &mut RingBuf<MapData>, frame: &[u8]) -> Vec<HopEvent> {
    let verdict = programs
        .test_run_tc(Hook::TcIngress, frame)
        .expect("test run");
    assert_eq!(
        verdict, TC_ACT_UNSPEC,
        "the program must let every packet pass"
    );
    let mut events = Vec::new();
    while let Some(record) = ring.next() {
        events.push(decode(&record).expect("a valid record"));
    }
    events
}

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn ipv4(options: usize, proto: u8, frag_offset: u16, payload: &[u8]) -> Vec<u8> {
    let header_len = 20 + options;
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&0x1234u16.to_be_bytes());
    ip.extend_from_slice(&frag_offset.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0, 172, 17, 0, 2, 198, 19, 0, 252]);
    ip.extend(std::iter::repeat_n(1u8, options)); // NOP options
    ip.extend_from_slice(payload);
    ip
}

fn tcp_syn(src: u16, dst: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&src.to_be_bytes());
    tcp.extend_from_slice(&dst.to_be_bytes());
    tcp.extend_from_slice(&1000u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    tcp
}

fn udp(src: u16, dst: u16) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.to_be_bytes());
    udp.extend_from_slice(&dst.to_be_bytes());
    udp.extend_from_slice(&[0, 12, 0, 0, b'h', b'i', b'!', b'\n']);
    udp
}

#[test]
fn parses_what_it_should_and_nothing_else() {
    let (mut programs, mut ring) = programs();

    // Plain IPv4 TCP SYN.
    let mut frame = ethernet(0x0800);
    frame.extend(ipv4(0, 6, 0, &tcp_syn(40000, 10001)));
    let events = run(&mut programs, &mut ring, &frame);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert!(e.tc && e.has_l4);
    assert_eq!(
        (e.tuple.src_port, e.tuple.dst_port, e.tcp_flags),
        (40000, 10001, 0x02)
    );
    assert_eq!(e.tuple.src.to_string(), "172.17.0.2");

    // IPv4 with 12 bytes of options: the TCP header is found after them.
    let mut frame = ethernet(0x0800);
    frame.extend(ipv4(12, 6, 0, &tcp_syn(40001, 10001)));
    let events = run(&mut programs, &mut ring, &frame);
    assert_eq!((events[0].tuple.src_port, events[0].tcp_seq), (40001, 1000));

    // 802.1Q-tagged UDP.
    let mut frame = ethernet(0x8100);
    frame.extend_from_slice(&[0, 42, 0x08, 0x00]);
    frame.extend(ipv4(0, 17, 0, &udp(5353, 53)));
    let events = run(&mut programs, &mut ring, &frame);
    assert_eq!(
        (events[0].tuple.src_port, events[0].tuple.dst_port),
        (5353, 53)
    );

    // IPv6 with a hop-by-hop options header before TCP.
    let mut frame = ethernet(0x86dd);
    let tcp = tcp_syn(40002, 443);
    let mut ip6 = vec![0x60, 0, 0, 0];
    ip6.extend_from_slice(&((8 + tcp.len()) as u16).to_be_bytes());
    ip6.extend_from_slice(&[0, 64]); // next header: hop-by-hop
    ip6.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip6.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0x19, 0, 0, 0, 0, 0, 0, 0, 0xfc]);
    ip6.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next: TCP, 8 bytes, PadN
    ip6.extend(tcp);
    frame.extend(ip6);
    let events = run(&mut programs, &mut ring, &frame);
    assert_eq!(events[0].tuple.src.to_string(), "2001:2:0:17::2");
    assert_eq!(
        (events[0].tuple.src_port, events[0].tuple.dst_port),
        (40002, 443)
    );

    // A non-first fragment: the IP header is read, no ports are invented.
    let mut frame = ethernet(0x0800);
    frame.extend(ipv4(0, 17, 185, &[0xaa; 32]));
    let events = run(&mut programs, &mut ring, &frame);
    assert!(events[0].fragment && !events[0].has_l4);
    assert_eq!(events[0].tuple.src_port, 0);

    // TCP header cut off: the IP header is read, the ports are not.
    let mut frame = ethernet(0x0800);
    frame.extend(ipv4(0, 6, 0, &[0x9c, 0x40]));
    frame.truncate(14 + 20 + 2);
    let events = run(&mut programs, &mut ring, &frame);
    assert!(!events[0].has_l4);

    // Nothing for frames that are not IP, or not a whole IP header.
    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0; 28]);
    assert!(run(&mut programs, &mut ring, &arp).is_empty());
    // An IPv4 header claiming 60 bytes of options it does not have: no L4 header is made up.
    let mut lying = ethernet(0x0800);
    let mut ip = ipv4(0, 6, 0, &[]);
    ip[0] = 0x4f;
    lying.extend(ip);
    let events = run(&mut programs, &mut ring, &lying);
    assert!(!events[0].has_l4 && events[0].nonlinear);
    let mut garbage = ethernet(0x0800);
    garbage.extend_from_slice(&[0xff; 1400]);
    assert!(run(&mut programs, &mut ring, &garbage).is_empty());
    assert!(run(&mut programs, &mut ring, &[0u8; 14]).is_empty());
}
