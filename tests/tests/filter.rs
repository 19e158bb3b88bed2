//! tcpdump filter expressions, evaluated in the kernel, on both sides of a NAT.

use std::net::SocketAddr;

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::{self, Tracer},
    traffic,
};

/// Three connections; `tcp port A and host <ctr1>` selects exactly the first, including its
/// hops after the NAT (where the source is the uplink's address) and its replies.
#[test]
fn expression_selects_exactly_the_intended_flow() -> anyhow::Result<()> {
    let (port_a, port_b) = (10041, 10042);
    let testbed = Testbed::up(2)?;
    let (ctr1, ctr2) = (&testbed.containers[0], &testbed.containers[1]);
    let listener_a = traffic::listen(&testbed.remote, SocketAddr::from((SERVER_ADDR, port_a)))?;
    let listener_b = traffic::listen(&testbed.remote, SocketAddr::from((SERVER_ADDR, port_b)))?;
    let expression = format!("tcp port {port_a} and host {}", ctr1.addr);
    let tracer = Tracer::start(&["--output", "json", "--hooks", "stack", &expression])?;
    traffic::exchange(
        &ctr1.netns,
        None,
        SocketAddr::from((SERVER_ADDR, port_a)),
        &listener_a,
    )?;
    traffic::exchange(
        &ctr2.netns,
        None,
        SocketAddr::from((SERVER_ADDR, port_a)),
        &listener_a,
    )?;
    traffic::exchange(
        &ctr1.netns,
        None,
        SocketAddr::from((SERVER_ADDR, port_b)),
        &listener_b,
    )?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.stderr.contains(&format!("filter '{expression}'")));
    let lines = finished.json()?;

    let flows = trace::of_type(&lines, "flow");
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0]["orig"]["src_ip"], ctr1.addr.to_string());
    assert_eq!(flows[0]["orig"]["dst_port"], port_a);
    let packets = trace::packets(&lines);
    assert!(packets.len() >= 5, "handshake, data and close");
    let remote = &testbed.remote.name;
    for packet in &packets {
        assert_eq!(packet.flow_id(), flows[0]["flow_id"].as_u64().unwrap_or(0));
        // Every packet was followed across the NAT to (or from) the remote namespace.
        assert!(
            packet.hops.iter().any(|h| h["netns"] == remote.as_str()),
            "{:#?}",
            packet.places()
        );
    }
    Ok(())
}

/// A malformed expression is one line on stderr, exit code 2, and nothing is loaded.
#[test]
fn bad_expression_is_a_usage_error() -> anyhow::Result<()> {
    let finished = tracer::run(&["tcp", "port", "http"])?;
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    assert!(finished.stderr.contains("bad filter expression"));
    assert!(finished.stderr.contains("service names are not supported"));
    Ok(())
}
