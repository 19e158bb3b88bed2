//! A burst into a deliberately tiny ring buffer: events are lost, tracer says how many, and
//! what was read plus what was lost adds up to every hop of every packet sent.

use std::net::SocketAddr;

use serde_json::Value;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::Tracer,
    traffic,
};

/// Hops a datagram makes from a container to the remote with the stack hooks: queue and
/// transmit on the container's eth0, backlog and receive on the host veth, receive on docker0,
/// queue and transmit on the uplink, backlog and receive in the remote.
const HOPS_PER_DATAGRAM: u64 = 9;
const STACK_HOOKS: [&str; 4] = [
    "net_dev_queue",
    "net_dev_start_xmit",
    "netif_rx",
    "netif_receive_skb",
];

#[test]
fn tiny_ring_buffer_loses_events_and_says_so() -> anyhow::Result<()> {
    let port = 10061;
    let datagrams = 2_000u64;
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let server = SocketAddr::from((SERVER_ADDR, port));
    let receiver = traffic::udp_bind(&testbed.remote, server)?;
    let sender = traffic::udp_bind(&ctr.netns, SocketAddr::from((ctr.addr, 0)))?;
    // Resolve every neighbour first, so no datagram waits in (or is dropped from) a queue.
    sender.send_to(b"warm-up", server)?;
    receiver.recv(&mut [0u8; 16])?;

    let tracer = Tracer::stack_json(port, &["--ring-size", "4096"])?;
    for _ in 0..datagrams {
        sender.send_to(&[0u8; 32], server)?;
    }
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let stats = trace::of_type(&lines, "stats")[0].clone();
    let number = |v: &Value| v.as_u64().expect("counter");
    let lost = number(&stats["lost"]);
    let events = number(&stats["events"]);
    assert!(lost > 0, "a 4 KiB ring must overflow: {stats}");

    let hooks = stats["hooks"].as_array().expect("per-hook counters");
    let per_hook = |hook: &str| hooks.iter().find(|h| h["hook"] == hook).cloned();
    let mut stack_matched = 0;
    for hook in STACK_HOOKS {
        let counters = per_hook(hook).unwrap_or_else(|| panic!("no counters for {hook}"));
        let (seen, filtered) = (number(&counters["seen"]), number(&counters["filtered"]));
        let (emitted, lost) = (number(&counters["emitted"]), number(&counters["lost"]));
        assert_eq!(seen - filtered, emitted + lost, "{hook}: {counters}");
        stack_matched += emitted + lost;
    }
    // Every datagram made every hop: read + lost accounts for each of them exactly.
    assert_eq!(stack_matched, datagrams * HOPS_PER_DATAGRAM, "{stats}");
    let emitted: u64 = hooks.iter().map(|h| number(&h["emitted"])).sum();
    assert_eq!(events, emitted, "every event the kernel wrote was read");
    let hop_objects = trace::of_type(&lines, "hop").len() as u64;
    assert_eq!(
        hop_objects, events,
        "every event read was reported in a packet"
    );
    Ok(())
}
