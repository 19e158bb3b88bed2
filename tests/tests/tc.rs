//! TC programs attached to chosen interfaces: where their hops fall in a packet's path.

use std::net::SocketAddr;

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace::{self, place},
    tracer::Tracer,
    traffic,
};

/// With TC programs on the host's docker0 and uplink, the SYN shows `tc_ingress` on docker0
/// right after it enters the bridge's stack, and `tc_egress` on the uplink right before it is
/// queued there, named with the right namespace although TC programs only see an ifindex.
#[test]
fn tc_hops_sit_between_the_stack_hops_of_their_interface() -> anyhow::Result<()> {
    let port = 10002;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let host = &testbed.host.name;
    let tracer = Tracer::start(&[
        "--port",
        &port.to_string(),
        "--output",
        "json",
        "--hooks",
        "all",
        "-i",
        "docker0",
        "-i",
        "eth0",
        "--netns",
        host,
    ])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    // Every global hook is attached before the ready line, the TC programs after it.
    assert!(
        finished
            .stderr
            .contains("ready: 5 hooks attached (5 tp_btf"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("TC programs attached to 2 interfaces (tcx)"),
        "{}",
        finished.stderr
    );

    let syn = trace::packets(&finished.json()?)
        .into_iter()
        .find(|p| {
            p.flags() == "S" && p.first()["netns"] == testbed.containers[0].netns.name.as_str()
        })
        .expect("the SYN");
    let places = syn.places();
    let position = |p| places.iter().position(|x| *x == p);
    let bridge_rx = position(place(host, "docker0", "netif_receive_skb")).expect("docker0 rx");
    assert_eq!(places[bridge_rx + 1], place(host, "docker0", "tc_ingress"));
    let uplink_queue = position(place(host, "eth0", "net_dev_queue")).expect("uplink queue");
    assert_eq!(places[uplink_queue - 1], place(host, "eth0", "tc_egress"));
    // The TC egress hop already sees the masqueraded source, as the stack hop after it does.
    assert_eq!(
        syn.hops[uplink_queue - 1]["src_ip"],
        syn.hops[uplink_queue]["src_ip"]
    );
    Ok(())
}

/// An interface that does not exist is one clear error, exit code 2, and nothing attached.
#[test]
fn unknown_interface_is_a_clear_error() -> anyhow::Result<()> {
    let testbed = Testbed::up(0)?;
    let finished = tracer_tests::tracer::run(&[
        "--port",
        "10003",
        "-i",
        "nosuch0",
        "--netns",
        &testbed.host.name,
    ])?;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", finished.stderr);
    assert!(
        lines[0].contains("no interface named nosuch0"),
        "{}",
        lines[0]
    );
    Ok(())
}
