//! The stack tracepoints on the Docker-like testbed: a SYN from a container, hop by hop, with
//! every stack hook, with the default set (one egress and one ingress point per device), and
//! with each opt-in tracepoint added to the default set.

use std::net::SocketAddr;

use tracer_tests::{
    machine::TempDir,
    testbed::{SERVER_ADDR, Testbed, UPLINK_ADDR},
    trace::{self, place},
    tracer::Tracer,
    traffic,
};

/// Every stack tracepoint.
const STACK: &[&str] = &[
    "net_dev_queue",
    "net_dev_start_xmit",
    "netif_rx",
    "netif_receive_skb",
];
/// The default set's device hooks.
const DEFAULT: &[&str] = &["net_dev_queue", "netif_receive_skb"];

/// The SYN leaves the container's eth0, crosses its veth to the host, goes up through docker0,
/// is masqueraded, leaves the uplink, and arrives in the remote namespace: every hop in
/// order, in the right namespace, with the source rewritten only after the bridge.
#[test]
fn syn_crosses_veth_bridge_nat_and_uplink() -> anyhow::Result<()> {
    syn_takes_the_docker_path("stack", STACK, 10001)
}

/// The default hooks show every device once in each direction: the container's eth0, the
/// host's veth, docker0, the uplink and the remote, with the NAT between docker0 and the
/// uplink.
#[test]
fn default_hooks_show_every_device_once() -> anyhow::Result<()> {
    syn_takes_the_docker_path("default", DEFAULT, 10005)
}

/// `+xmit` adds the driver's transmit hop on every sending device, `+rx` the backlog hop on
/// every veth receiver, and nothing else.
#[test]
fn opt_in_hooks_add_their_hops() -> anyhow::Result<()> {
    syn_takes_the_docker_path(
        "+xmit",
        &["net_dev_queue", "net_dev_start_xmit", "netif_receive_skb"],
        10008,
    )?;
    syn_takes_the_docker_path(
        "+rx",
        &["net_dev_queue", "netif_rx", "netif_receive_skb"],
        10009,
    )
}

/// A SYN traced with `--hooks HOOKS` takes the path of [`syn_from_container`] at `shown`.
fn syn_takes_the_docker_path(hooks: &str, shown: &[&str], port: u16) -> anyhow::Result<()> {
    let testbed = Testbed::up(2)?;
    let lines = trace_exchange(&testbed, SocketAddr::from((SERVER_ADDR, port)), hooks)?;
    let ctr = &testbed.containers[0];
    let (syn, before_nat) = syn_from_container(&lines, &testbed, shown);
    let ctr_addr = ctr.addr.to_string();
    let uplink_addr = UPLINK_ADDR.to_string();
    for (index, hop) in stack_hops(&syn).iter().enumerate() {
        let expected_src = if index < before_nat {
            &ctr_addr
        } else {
            &uplink_addr
        };
        assert_eq!(hop["src_ip"], expected_src.as_str(), "hop {index}: {hop}");
        assert_eq!(hop["dst_ip"], SERVER_ADDR.to_string(), "hop {index}");
        assert_eq!(hop["dst_port"], port, "hop {index}");
        assert_eq!(hop["proto"], "tcp");
        assert_eq!(hop["tcp_flags"], "S");
        assert_eq!(hop["netns_inode"], netns_inode(&hop["netns"], &testbed));
    }
    // MASQUERADE kept the port: nothing else was connecting.
    let src_port = &syn.hops[0]["src_port"];
    assert!(syn.hops.iter().all(|hop| &hop["src_port"] == src_port));
    let snat = trace::of_type(&lines, "nat")
        .into_iter()
        .find(|n| n["flow_id"] == syn.flow_id() && n["direction"] == "original")
        .expect("the SNAT record");
    assert_eq!(snat["kind"], "snat");
    assert_eq!(snat["after"]["src_ip"], uplink_addr);
    Ok(())
}

/// The inode of the testbed namespace called `name`.
fn netns_inode(name: &serde_json::Value, testbed: &Testbed) -> u64 {
    testbed
        .namespaces()
        .find(|ns| *name == ns.name.as_str())
        .and_then(|ns| ns.inode().ok())
        .unwrap_or(0)
}

/// The same SYN over IPv6, masqueraded by NAT66, with the default hooks: every device, with
/// IPv6 addresses, and one flow for the handshake.
#[test]
fn ipv6_syn_is_traced_end_to_end() -> anyhow::Result<()> {
    use tracer_tests::testbed::{SERVER_ADDR6, UPLINK_ADDR6};
    let port = 10007;
    let testbed = Testbed::up(1)?;
    let lines = trace_exchange(&testbed, SocketAddr::from((SERVER_ADDR6, port)), "default")?;
    let ctr = &testbed.containers[0];
    let (syn, before_nat) = syn_from_container(&lines, &testbed, DEFAULT);
    for (index, hop) in stack_hops(&syn).iter().enumerate() {
        let expected_src = if index < before_nat {
            ctr.addr6
        } else {
            UPLINK_ADDR6
        };
        assert_eq!(hop["src_ip"], expected_src.to_string(), "hop {index}");
        assert_eq!(hop["dst_ip"], SERVER_ADDR6.to_string(), "hop {index}");
    }
    let remote_ns = &testbed.remote.name;
    let syn_ack = trace::packets(&lines)
        .into_iter()
        .find(|p| p.flags() == "S." && p.first()["netns"] == remote_ns.as_str())
        .expect("the SYN-ACK");
    assert_eq!(syn_ack.flow_id(), syn.flow_id());
    assert_eq!(
        syn_ack.hops.last().expect("hops")["dst_ip"],
        ctr.addr6.to_string()
    );
    let snat = trace::of_type(&lines, "nat")
        .into_iter()
        .find(|n| n["flow_id"] == syn.flow_id() && n["direction"] == "original")
        .expect("NAT66 record");
    assert_eq!(snat["kind"], "snat");
    assert_eq!(snat["after"]["src_ip"], UPLINK_ADDR6.to_string());
    Ok(())
}

/// Traces `server`'s port with `--hooks HOOKS` while the first container exchanges a message
/// with `server` in the remote namespace; the tracer's JSON lines.
fn trace_exchange(
    testbed: &Testbed,
    server: SocketAddr,
    hooks: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let listener = traffic::listen(&testbed.remote, server)?;
    let port = server.port().to_string();
    let tracer = Tracer::start(&["--port", &port, "--output", "json", "--hooks", hooks])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    finished.json()
}

/// The SYN that starts in the first container, asserted to take the Docker path hop by hop at
/// the hooks in `shown`; with the number of its hops before the NAT.
fn syn_from_container(
    lines: &[serde_json::Value],
    testbed: &Testbed,
    shown: &[&str],
) -> (trace::Packet, usize) {
    let ctr = &testbed.containers[0];
    let (ctr_ns, host_ns, remote_ns) = (&ctr.netns.name, &testbed.host.name, &testbed.remote.name);
    let syn = trace::packets(lines)
        .into_iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == ctr_ns.as_str())
        .expect("a SYN starting in the container");
    // The NAT function's own hop exists only where fentry or kprobes reach it; the kernel
    // test asserts it, here it is left out.
    let path: Vec<trace::Place> = [
        place(ctr_ns, "eth0", "net_dev_queue"),
        place(ctr_ns, "eth0", "net_dev_start_xmit"),
        place(host_ns, &ctr.host_veth, "netif_rx"),
        place(host_ns, &ctr.host_veth, "netif_receive_skb"),
        place(host_ns, "docker0", "netif_receive_skb"),
        place(host_ns, "eth0", "net_dev_queue"),
        place(host_ns, "eth0", "net_dev_start_xmit"),
        place(remote_ns, "eth0", "netif_rx"),
        place(remote_ns, "eth0", "netif_receive_skb"),
    ]
    .into_iter()
    .filter(|(_, _, hook)| shown.contains(&hook.as_str()))
    .collect();
    assert_eq!(without_nat_function(syn.places()), path);
    let bridge = path
        .iter()
        .position(|p| *p == place(host_ns, "docker0", "netif_receive_skb"))
        .expect("the bridge is on the path");
    (syn, bridge + 1)
}

/// The packet's hops at the stack tracepoints, without the NAT function's hop.
fn stack_hops(packet: &trace::Packet) -> Vec<&serde_json::Value> {
    packet
        .hops
        .iter()
        .filter(|h| h["hook"] != "nf_nat_manip_pkt")
        .collect()
}

/// Places without the NAT function's hop.
fn without_nat_function(places: Vec<trace::Place>) -> Vec<trace::Place> {
    places
        .into_iter()
        .filter(|(_, _, hook)| hook != "nf_nat_manip_pkt")
        .collect()
}

/// Later hops of a packet whose headers did not change reach the collector as compact hops
/// (64 bytes instead of 224), which it rebuilds whole from its CPU's last full event of the
/// packet. Read from the recording in the order the kernel wrote it, each CPU's records obey
/// the rule exactly: a hop is compact when, and only when, the skb, its data buffer, the
/// headers (TTL aside) and the conntrack entry (none, or the base's, established) are those of
/// the CPU's base. The rebuilt hops' fields are checked with every other hop's by the tests
/// above; here, that the recording replays to the same trace as the live one.
#[test]
fn unchanged_hops_travel_compact() -> anyhow::Result<()> {
    use tracer_common::{
        event::{CompactHop, EventKind, PacketEvent},
        hook::Hook,
    };

    let testbed = Testbed::up(1)?;
    let port = 10036;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let dir = TempDir::new("tracer-compact")?;
    let recording = dir.path().join("exchange.events");
    let recording_arg = recording.to_str().expect("a UTF-8 path");
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--output",
        "json",
        "--record",
        recording_arg,
    ])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let live = tracer.stop()?;
    assert!(live.status.success(), "{}", live.stderr);

    let mut records = tracer::recording::Recording::new(std::fs::File::open(&recording)?);
    let mut bases: std::collections::HashMap<u32, PacketEvent> = Default::default();
    let (mut whole, mut compact) = (0, 0);
    let mut record = Vec::new();
    while records.next_into(&mut record)? {
        if record[0] == EventKind::Packet as u8 {
            // SAFETY: a packet record has a `PacketEvent`'s size; every bit pattern is valid.
            let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<PacketEvent>()) };
            if event.base == 0 {
                continue;
            }
            whole += 1;
            let cpu = u32::from(event.base) - 1;
            if event.hook != Hook::KfreeSkb as u8
                && let Some(base) = bases.get(&cpu)
            {
                assert!(
                    !covers(base, &event),
                    "a whole event the CPU's base covers: {event:?}"
                );
            }
            bases.insert(cpu, event);
        } else if record[0] == EventKind::CompactHop as u8 {
            // SAFETY: as above, for a `CompactHop`.
            let hop = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<CompactHop>()) };
            let base = bases.get(&hop.cpu).expect("its CPU's base before the hop");
            assert_eq!(base.skb, hop.skb);
            compact += 1;
        }
    }
    assert!(whole > 0 && compact > 0, "{whole} whole, {compact} compact");
    let lines = live.json()?;
    assert_eq!(trace::packets(&lines).len(), 10, "five packets each way");

    // The recording replays to the trace tracer wrote live, but for what only a live trace
    // knows: the names of namespaces, containers, pods and runtimes. (The names of drop
    // reasons travel in the recording: `drop.rs`.)
    let replay = tracer_tests::tracer::run(&["replay", recording_arg, "--output", "json"])?;
    assert!(replay.status.success(), "{}", replay.stderr);
    let unnamed = |lines: Vec<serde_json::Value>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|line| line["type"] != "stats")
            .map(|line| without_names(line).to_string())
            .collect()
    };
    let (replayed, live) = (unnamed(replay.json()?), unnamed(lines));
    if let Some((replayed, live)) = replayed.iter().zip(&live).find(|(a, b)| a != b) {
        panic!("replayed: {replayed}\nlive:     {live}");
    }
    assert_eq!(replayed.len(), live.len());
    Ok(())
}

/// `value` without the names a live trace gives from the machine's topology and kernel, at any
/// depth.
fn without_names(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(key, _)| !["netns", "container", "pod", "runtime"].contains(&key.as_str()))
            .map(|(key, value)| (key, without_names(value)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(without_names).collect(),
        other => other,
    }
}

/// Whether `event` could have been written as a compact hop of `base`: the kernel's rule, on
/// the fields a whole event carries.
fn covers(
    base: &tracer_common::event::PacketEvent,
    event: &tracer_common::event::PacketEvent,
) -> bool {
    let settled = matches!(
        tracer_common::wire::conntrack::decode_state(event.ct_state),
        Some(0 | 3)
    );
    let same_entry =
        event.ct == 0 || (event.ct == base.ct && event.ct_state == base.ct_state && settled);
    let headers = |e: &tracer_common::event::PacketEvent| {
        (
            e.src_addr,
            e.dst_addr,
            e.src_port,
            e.dst_port,
            e.tcp_seq,
            e.tcp_ack,
            e.ip_id,
            e.ip_len,
            e.headers_len,
            (e.family, e.l4_proto, e.tcp_flags, e.flags),
        )
    };
    base.skb == event.skb
        && base.skb_head == event.skb_head
        && same_entry
        && headers(base) == headers(event)
}
