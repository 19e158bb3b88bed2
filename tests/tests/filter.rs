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

/// A conntrack entry freed and reused by another connection is judged again: with a filter
/// that only conntrack can satisfy after the NAT (`host <ctr1>`, while the uplink hops carry
/// the uplink's address), connections from a container the filter does not select alternate
/// with connections from one it does, each entry deleted as its connection ends, so that the
/// next connection gets the freed entry. Both containers connect from the same source port in
/// a round, and MASQUERADE keeps it, so beyond the NAT the two connections have the same tuple:
/// a verdict remembered for the other container's connection matches the selected one's
/// packets by their tuple, and only the tracking generation tells it is stale. Every packet of
/// every selected connection is traced on both sides of the NAT, and at least one of them did
/// reuse an entry the kernel programs had judged not to match.
#[test]
fn a_reused_conntrack_entry_is_judged_again() -> anyhow::Result<()> {
    let port = 10043;
    let rounds = 20;
    let testbed = Testbed::up(2)?;
    let (ctr1, ctr2) = (&testbed.containers[0], &testbed.containers[1]);
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let selected = Tracer::start(&["--output", "json", "host", &ctr1.addr.to_string()])?;
    // The other container's connections, traced only to learn their entries' addresses.
    let others = Tracer::start(&["--output", "json", "host", &ctr2.addr.to_string()])?;
    let src_port = |round: u16| 42000 + round;
    for round in 0..rounds {
        for ctr in [ctr2, ctr1] {
            // Ended by a reset: no TIME_WAIT at the server keeps the next connection of the
            // same tuple from starting at once.
            traffic::exchange_then_reset(&ctr.netns, Some(src_port(round)), server, &listener)?;
            testbed
                .host
                .exec("conntrack", &["-D", "-s", &ctr.addr.to_string()])?;
        }
    }
    let (selected, others) = (selected.stop()?, others.stop()?);
    assert!(selected.status.success(), "{}", selected.stderr);

    let host = &testbed.host.name;
    let packets = trace::packets(&selected.json()?);
    let entries = |packets: &[trace::Packet]| -> std::collections::BTreeSet<String> {
        packets
            .iter()
            .flat_map(|p| p.hops.iter())
            .filter_map(|hop| hop["conntrack"]["id"].as_str().map(str::to_owned))
            .collect()
    };
    let mut flows = std::collections::BTreeSet::new();
    for packet in &packets {
        let start = trace::text(&packet.first()["netns"]);
        let (uplink_hook, end) = if start == ctr1.netns.name {
            (
                "net_dev_queue",
                (testbed.remote.name.as_str(), "netif_receive_skb"),
            )
        } else if start == testbed.remote.name {
            (
                "netif_receive_skb",
                (ctr1.netns.name.as_str(), "netif_receive_skb"),
            )
        } else {
            continue;
        };
        let uplink = packet.hop_at(host, "eth0", uplink_hook);
        assert!(
            uplink.is_some() && packet.hop_at(end.0, "eth0", end.1).is_some(),
            "a packet of a selected connection lost hops: {:#?}",
            packet.places()
        );
        // Beyond the NAT, the container's port: the tuple the other container's connection
        // of the round had there too.
        if start == ctr1.netns.name {
            let uplink = uplink.expect("asserted above");
            assert_eq!(
                uplink["src_port"],
                packet.first()["src_port"],
                "MASQUERADE changed the port: {uplink}"
            );
        }
        flows.insert(packet.flow_id());
    }
    assert_eq!(flows.len(), usize::from(rounds), "{}", selected.stderr);
    let reused: Vec<String> = entries(&packets)
        .intersection(&entries(&trace::packets(&others.json()?)))
        .cloned()
        .collect();
    assert!(
        !reused.is_empty(),
        "no selected connection reused an entry of the other container's, so this test showed nothing"
    );
    Ok(())
}
