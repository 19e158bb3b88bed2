//! Generated event streams for the collector benchmarks, in the `--record` format.
//!
//! [`mixed`] is shaped like a Docker host's traffic: TCP flows masqueraded through `docker0`
//! to the uplink, container-to-container flows without NAT, UDP request and answer pairs;
//! mostly short flows, some of tens of packets and a few long ones; 5, 10 or 15 hops per
//! packet (the default hooks, with `xmit,rx`, with TC); conntrack tuples on every hop past
//! conntrack; about one packet in a hundred dropped on the host. Flows overlap in time and
//! the events come in time order, as the ring buffer hands them over.
//!
//! [`handshakes`] holds many flows open at once for the memory rows: a masqueraded SYN and its
//! SYN-ACK per flow, 5 hops each, 100k flows a second, all still open when the stream ends.

use std::io::{self, Write};

use tracer_common::{
    event::{CtTuple, FAMILY_IPV4, FLAG_L4, FLAG_TC, PacketEvent},
    hook::Hook,
    wire::{conntrack, ipproto, tcp},
};

use super::stats::Rng;

/// What a stream held.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub events: u64,
    pub packets: u64,
    pub flows: u64,
}

/// Namespaces of the generated host: a container, the host, the remote.
const CTR: u32 = 4_026_532_300;
const CTR2: u32 = 4_026_532_301;
const HOST: u32 = 4_026_531_840;
const REMOTE: u32 = 4_026_532_400;

/// Addresses: the containers on docker0 and the remote. Masqueraded flows leave from
/// 198.18.x.2 (one address per 60,000 ports, so that no two flows share a translated tuple).
const CTR_ADDR: [u8; 4] = [172, 17, 0, 2];
const CTR2_ADDR: [u8; 4] = [172, 17, 0, 3];
const REMOTE_ADDR: [u8; 4] = [198, 19, 0, 252];

/// One place on a path: hook, namespace, interface, whether a TC program saw it, and
/// whether conntrack has seen the packet by then.
#[derive(Clone, Copy)]
struct Place {
    hook: Hook,
    netns: u32,
    ifindex: u32,
    ifname: &'static str,
    tc: bool,
    tracked: bool,
}

const fn place(hook: Hook, netns: u32, ifindex: u32, ifname: &'static str) -> Place {
    Place {
        hook,
        netns,
        ifindex,
        ifname,
        tc: false,
        tracked: netns == HOST,
    }
}

/// The TC program next to a stack hook: ingress before `netif_receive_skb`, egress before
/// `net_dev_queue`.
const fn tc(mut place: Place) -> Place {
    place.tc = true;
    place.hook = match place.hook {
        Hook::NetifReceiveSkb => Hook::TcIngress,
        _ => Hook::TcEgress,
    };
    place
}

/// The container's way out to the remote, every hook; NAT between docker0 and the uplink.
const OUT: [Place; 15] = [
    tc(place(Hook::NetDevQueue, CTR, 2, "eth0")),
    place(Hook::NetDevQueue, CTR, 2, "eth0"),
    place(Hook::NetDevStartXmit, CTR, 2, "eth0"),
    place(Hook::NetifRx, HOST, 5, "veth1a2b3c"),
    tc(place(Hook::NetifReceiveSkb, HOST, 5, "veth1a2b3c")),
    place(Hook::NetifReceiveSkb, HOST, 5, "veth1a2b3c"),
    place(Hook::NetifReceiveSkb, HOST, 3, "docker0"),
    tc(place(Hook::NetDevQueue, HOST, 2, "eth0")),
    place(Hook::NetDevQueue, HOST, 2, "eth0"),
    place(Hook::NetDevStartXmit, HOST, 2, "eth0"),
    place(Hook::NetifRx, REMOTE, 2, "eth0"),
    tc(place(Hook::NetifReceiveSkb, REMOTE, 2, "eth0")),
    place(Hook::NetifReceiveSkb, REMOTE, 2, "eth0"),
    place(Hook::NetDevQueue, REMOTE, 2, "eth0"),
    place(Hook::NetDevStartXmit, REMOTE, 2, "eth0"),
];
/// Which hops of a 15-hop path a packet shows with the default hooks (5) and with
/// `xmit,rx` (10). The last two entries of `OUT` stand in for the way back's first hops.
const DEFAULT: [usize; 5] = [1, 5, 6, 8, 12];
const XMIT_RX: [usize; 10] = [1, 2, 3, 5, 6, 8, 9, 10, 12, 13];
const EVERY: [usize; 15] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

/// Container to container over docker0: no NAT, no uplink.
const C2C: [Place; 6] = [
    place(Hook::NetDevQueue, CTR, 2, "eth0"),
    place(Hook::NetifReceiveSkb, HOST, 5, "veth1a2b3c"),
    place(Hook::NetifReceiveSkb, HOST, 3, "docker0"),
    place(Hook::NetDevQueue, HOST, 3, "docker0"),
    place(Hook::NetDevQueue, HOST, 6, "veth4d5e6f"),
    place(Hook::NetifReceiveSkb, CTR2, 2, "eth0"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP from the container to the remote, masqueraded.
    Masqueraded,
    /// TCP between two containers.
    Local,
    /// A UDP request and its answer, masqueraded.
    Udp,
}

/// A flow of a stream.
struct Flow {
    kind: Kind,
    /// The client's address and port, and the address it is masqueraded to (same port).
    client: [u8; 4],
    masq: [u8; 4],
    port: u16,
    packets: u32,
    /// Which hops of a path the packets show: an index into [`DEFAULT`], [`XMIT_RX`], [`EVERY`].
    hooks: u8,
    start_ns: u64,
    gap_ns: u64,
    ct: u64,
    /// The flow's initial sequence number and first IP id, random as in real traffic (two
    /// flows' packets must not look alike).
    isn: u32,
}

/// A packet of a flow, and when it starts.
#[derive(Clone, Copy)]
struct Departure {
    ts_ns: u64,
    flow: u32,
    seq: u32,
}

/// Writes about `events` events of the mixed stream; returns what it wrote.
pub fn mixed(out: &mut impl Write, events: u64, seed: u64) -> io::Result<Written> {
    let mut rng = Rng::new(seed);
    let mut flows = Vec::new();
    let mut departures = Vec::new();
    let mut planned = 0u64;
    // Flows start over one simulated second; their packets follow every 20 us to 2 ms.
    let span_ns = 1_000_000_000;
    while planned < events {
        let kind = match rng.below(10) {
            0..=5 => Kind::Masqueraded,
            6..=7 => Kind::Local,
            _ => Kind::Udp,
        };
        let packets = match (kind, rng.below(100)) {
            (Kind::Udp, _) => 2,
            (_, 0..=59) => 3 + rng.below(4) as u32,
            (_, 60..=94) => 10 + rng.below(21) as u32,
            _ => 200 + rng.below(101) as u32,
        };
        let hooks = match rng.below(10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        };
        let id = flows.len() as u32;
        let (port, masq) = masquerade(u64::from(id));
        let flow = Flow {
            kind,
            client: CTR_ADDR,
            masq,
            port,
            packets,
            hooks,
            start_ns: rng.next_u64() % span_ns,
            gap_ns: 20_000 + rng.next_u64() % 2_000_000,
            ct: 0xffff_8880_1000_0000 + u64::from(id) * 0x140,
            isn: rng.next_u64() as u32,
        };
        for seq in 0..packets {
            departures.push(Departure {
                ts_ns: flow.start_ns + u64::from(seq) * flow.gap_ns,
                flow: id,
                seq,
            });
            planned += hops_of(&flow).len() as u64;
        }
        flows.push(flow);
    }
    departures.sort_unstable_by_key(|d| (d.ts_ns, d.flow, d.seq));
    // Each packet's hops are 1-4 us apart; packets in flight at once interleave.
    let mut pending: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32, u32, u8)>> =
        std::collections::BinaryHeap::new();
    let mut written = Written {
        flows: flows.len() as u64,
        ..Written::default()
    };
    let mut next = 0;
    let mut skb_pool = 0u64;
    let mut skbs = std::collections::HashMap::new();
    loop {
        let due = pending.peek().map(|p| p.0.0);
        let departing = departures.get(next).map(|d| d.ts_ns);
        match (due, departing) {
            (None, None) => break,
            (_, Some(ts)) if due.is_none_or(|due| ts <= due) => {
                let d = departures[next];
                next += 1;
                pending.push(std::cmp::Reverse((d.ts_ns, d.flow, d.seq, 0)));
                written.packets += 1;
                skb_pool = (skb_pool + 1) % 8192;
                skbs.insert((d.flow, d.seq), 0xffff_8881_0000_0000 + skb_pool * 0x100);
            }
            _ => {
                let std::cmp::Reverse((ts, flow_id, seq, hop)) =
                    pending.pop().expect("peeked above");
                let flow = &flows[flow_id as usize];
                let path = hops_of(flow);
                let skb = skbs[&(flow_id, seq)];
                let event = event(flow, seq, &path, usize::from(hop), ts, skb);
                write_record(out, &event)?;
                written.events += 1;
                if usize::from(hop) + 1 < path.len() {
                    let step = 1_000 + (u64::from(seq) * 7 + u64::from(hop) * 13) % 3_000;
                    pending.push(std::cmp::Reverse((ts + step, flow_id, seq, hop + 1)));
                } else {
                    skbs.remove(&(flow_id, seq));
                }
            }
        }
    }
    out.flush()?;
    Ok(written)
}

/// The places a flow's packets go through (the same both ways; the reply's are reversed when
/// the event is made).
fn hops_of(flow: &Flow) -> Vec<Place> {
    let chosen: &[usize] = match flow.hooks {
        0 => &DEFAULT,
        1 => &XMIT_RX,
        _ => &EVERY,
    };
    match flow.kind {
        Kind::Local => C2C.to_vec(),
        Kind::Masqueraded | Kind::Udp => chosen.iter().map(|&i| OUT[i]).collect(),
    }
}

/// The port and address flow `id` is masqueraded to.
fn masquerade(id: u64) -> (u16, [u8; 4]) {
    (
        1024 + (id % 60_000) as u16,
        [198, 18, (id / 60_000) as u8, 2],
    )
}

/// Whether a hop of a masqueraded path is past the masquerade: on the uplink or beyond.
fn translated(flow: &Flow, place: &Place) -> bool {
    flow.kind != Kind::Local
        && (place.netns == REMOTE || (place.netns == HOST && place.ifname == "eth0"))
}

/// The event of hop `hop` of packet `seq` of `flow`.
fn event(flow: &Flow, seq: u32, path: &[Place], hop: usize, ts_ns: u64, skb: u64) -> PacketEvent {
    let reply = seq % 2 == 1;
    // The reply goes the path backwards.
    let place = if reply {
        path[path.len() - 1 - hop]
    } else {
        path[hop]
    };
    let proto = if flow.kind == Kind::Udp {
        ipproto::UDP
    } else {
        ipproto::TCP
    };
    let server = if flow.kind == Kind::Local {
        CTR2_ADDR
    } else {
        REMOTE_ADDR
    };
    let server_port = if flow.kind == Kind::Udp { 53 } else { 10001 };
    let client = if translated(flow, &place) {
        flow.masq
    } else {
        flow.client
    };
    let mut e = PacketEvent::zeroed();
    e.hook = place.hook as u8;
    e.family = FAMILY_IPV4;
    e.l4_proto = proto;
    e.flags = FLAG_L4 | if place.tc { FLAG_TC } else { 0 };
    e.ts_ns = ts_ns;
    if !place.tc {
        e.skb = skb;
        e.skb_head = skb + 0x80;
        e.netns_inode = place.netns;
        e.ifname[..place.ifname.len()].copy_from_slice(place.ifname.as_bytes());
    }
    e.ifindex = place.ifindex;
    e.ttl = 64;
    e.len = 60 + (seq % 5) * 100;
    e.ip_len = e.len as u16;
    e.ip_id = ((flow.isn >> 16) as u16).wrapping_add((seq / 2) as u16);
    let (src, src_port, dst, dst_port) = if reply {
        (server, server_port, client, flow.port)
    } else {
        (client, flow.port, server, server_port)
    };
    e.src_addr[..4].copy_from_slice(&src);
    e.dst_addr[..4].copy_from_slice(&dst);
    e.src_port = src_port;
    e.dst_port = dst_port;
    if proto == ipproto::TCP {
        e.tcp_flags = match seq {
            0 => tcp::SYN,
            1 => tcp::SYN | tcp::ACK,
            s if s + 2 >= flow.packets => tcp::FIN | tcp::ACK,
            _ => tcp::PSH | tcp::ACK,
        };
        e.tcp_seq = flow.isn.wrapping_add(seq * 100);
        e.tcp_ack = if seq == 0 {
            0
        } else {
            flow.isn.wrapping_add(1_000_000 + seq * 100)
        };
    }
    if place.tracked && !place.tc {
        e.ct = flow.ct;
        e.ct_state = conntrack::encode_state(if seq == 0 {
            2
        } else if reply {
            3
        } else {
            0
        });
        let masq = if flow.kind == Kind::Local {
            flow.client
        } else {
            flow.masq
        };
        e.ct_orig = ct_tuple(flow.client, flow.port, server, server_port, proto);
        e.ct_reply = ct_tuple(server, server_port, masq, flow.port, proto);
    }
    // About one packet in a hundred is dropped: its last event is kfree_skb.
    let last = hop + 1 == path.len();
    if last && !reply && (u32::from(flow.port) * 31 + seq).is_multiple_of(100) {
        e.hook = Hook::KfreeSkb as u8;
        e.drop_reason = 6;
        e.location = 0xffff_ffff_8180_0000 + u64::from(seq % 16) * 0x40;
    }
    e
}

fn ct_tuple(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, proto: u8) -> CtTuple {
    let mut t = CtTuple {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port,
        dst_port,
        family: FAMILY_IPV4,
        protonum: proto,
        _pad: [0; 2],
    };
    t.src_addr[..4].copy_from_slice(&src);
    t.dst_addr[..4].copy_from_slice(&dst);
    t
}

/// Writes `flows` masqueraded handshakes, all open when the stream ends; returns what it
/// wrote.
pub fn handshakes(out: &mut impl Write, flows: u64) -> io::Result<Written> {
    let mut written = Written {
        flows,
        ..Written::default()
    };
    let path: Vec<Place> = DEFAULT.iter().map(|&i| OUT[i]).collect();
    for id in 0..flows {
        let (port, masq) = masquerade(id);
        let flow = Flow {
            kind: Kind::Masqueraded,
            // Distinct clients, so that every flow is its own.
            client: [10, (id >> 16) as u8, (id >> 8) as u8, id as u8],
            masq,
            port,
            packets: 2,
            hooks: 0,
            start_ns: 0,
            gap_ns: 0,
            ct: 0xffff_8880_1000_0000 + id * 0x140,
            isn: (id as u32).wrapping_mul(0x9e37_79b9),
        };
        for seq in 0..2u32 {
            let skb = 0xffff_8881_0000_0000 + ((id * 2 + u64::from(seq)) % 8192) * 0x100;
            for hop in 0..path.len() {
                // 1 us between events, 10 us per flow: 100k flows open in one simulated
                // second (packets complete 100 ms after their last hop, as on a busy host),
                // a million in ten, within the 30 s a flow stays open without packets.
                let ts = 1_000_000_000 + (id * 10 + u64::from(seq) * 5 + hop as u64) * 1_000;
                write_record(out, &event(&flow, seq, &path, hop, ts, skb))?;
                written.events += 1;
            }
            written.packets += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

/// One record as the kernel writes it, in the `--record` format (length, bytes).
fn write_record(out: &mut impl Write, event: &PacketEvent) -> io::Result<()> {
    // SAFETY: PacketEvent is repr(C) plain data with explicit padding fields.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(event).cast::<u8>(),
            size_of::<PacketEvent>(),
        )
    };
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}
