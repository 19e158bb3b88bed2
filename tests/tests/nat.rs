//! Flow traces across NAT on the Docker-like testbed: MASQUERADE with and without a port
//! rewrite, DNAT of a published port, and container-to-container traffic without NAT.

use std::net::SocketAddr;

use serde_json::Value;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed, UPLINK_ADDR},
    trace::{self, Packet, place},
    tracer::Tracer,
    traffic,
};

/// The handshake's three packets: the SYN by its flags and the namespace it starts in, the
/// SYN-ACK and the ACK by their sequence numbers, which NAT leaves alone. All three must be in
/// one flow.
fn handshake(packets: &[Packet], client_ns: &str, server_ns: &str) -> [Packet; 3] {
    let seq = |p: &Packet, field: &str| p.first()[field].as_u64().unwrap_or(0);
    let find = |what: &str, test: &dyn Fn(&Packet) -> bool| {
        packets
            .iter()
            .find(|p| test(p))
            .unwrap_or_else(|| panic!("no {what}: {packets:#?}"))
            .clone()
    };
    let syn = find("SYN", &|p| {
        p.flags() == "S" && p.first()["netns"] == client_ns
    });
    let isn = seq(&syn, "tcp_seq");
    let syn_ack = find("SYN-ACK", &|p| {
        p.flags() == "S."
            && p.first()["netns"] == server_ns
            && seq(p, "tcp_ack") == (isn + 1) % (1 << 32)
    });
    let ack = find("ACK", &|p| {
        p.flags() == "."
            && p.first()["netns"] == client_ns
            && seq(p, "tcp_ack") == (seq(&syn_ack, "tcp_seq") + 1) % (1 << 32)
    });
    let flow_id = syn.flow_id();
    assert!(flow_id > 0, "the SYN has no flow");
    assert_eq!(syn_ack.flow_id(), flow_id, "the SYN-ACK is in another flow");
    assert_eq!(ack.flow_id(), flow_id, "the ACK is in another flow");
    [syn, syn_ack, ack]
}

/// Every hop after the first has a positive gap, and the gaps add up to the total.
fn assert_latencies_add_up(packet: &Packet) {
    let mut sum = 0;
    for (index, hop) in packet.hops.iter().enumerate() {
        let since_prev = hop["since_prev_ns"].as_u64().expect("since_prev_ns");
        if index == 0 {
            assert_eq!(since_prev, 0);
        } else {
            assert!(since_prev > 0, "hop {index} of packet {}: {hop}", packet.id);
        }
        sum += since_prev;
        assert_eq!(
            hop["since_first_ns"].as_u64(),
            Some(sum),
            "packet {}",
            packet.id
        );
    }
}

fn nat_records(lines: &[Value], flow_id: u64) -> Vec<&Value> {
    trace::of_type(lines, "nat")
        .into_iter()
        .filter(|n| n["flow_id"] == flow_id)
        .collect()
}

fn endpoint(tuple: &Value, side: &str) -> (String, u64) {
    (
        trace::text(&tuple[format!("{side}_ip")]),
        tuple[format!("{side}_port")].as_u64().unwrap_or(0),
    )
}

/// MASQUERADE of a container's connection: one flow for the whole handshake, one SNAT record
/// per direction, placed at the uplink (out) and the uplink's receive hop (back).
#[test]
fn masquerade_is_stitched_into_one_flow() -> anyhow::Result<()> {
    let port = 10011;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::start(&["--port", &port.to_string(), "--output", "json"])?;
    traffic::exchange(&testbed.containers[0].netns, Some(41000), server, &listener)?;
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let ctr = &testbed.containers[0];
    let [syn, syn_ack, ack] = handshake(&packets, &ctr.netns.name, &testbed.remote.name);

    let flow_id = syn.flow_id();
    assert_eq!(syn.first()["direction"], "original");
    assert_eq!(syn_ack.first()["direction"], "reply");
    for packet in [&syn, &syn_ack, &ack] {
        assert_latencies_add_up(packet);
    }

    let nat = nat_records(&lines, flow_id);
    assert_eq!(nat.len(), 2, "{nat:#?}");
    let out = nat
        .iter()
        .find(|n| n["direction"] == "original")
        .expect("outbound NAT");
    assert_eq!(out["kind"], "snat");
    assert_eq!(out["source"], "observed");
    assert_eq!(
        endpoint(&out["before"], "src"),
        (ctr.addr.to_string(), 41000)
    );
    assert_eq!(
        endpoint(&out["after"], "src"),
        (UPLINK_ADDR.to_string(), 41000)
    );
    assert_eq!(out["ifname"], "eth0");
    assert_eq!(out["at"]["netns"], testbed.host.name.as_str());
    let back = nat
        .iter()
        .find(|n| n["direction"] == "reply")
        .expect("return NAT");
    assert_eq!(back["kind"], "snat");
    assert_eq!(
        endpoint(&back["before"], "dst"),
        (UPLINK_ADDR.to_string(), 41000)
    );
    assert_eq!(
        endpoint(&back["after"], "dst"),
        (ctr.addr.to_string(), 41000)
    );

    let flow = trace::of_type(&lines, "flow")
        .into_iter()
        .find(|f| f["flow_id"] == flow_id)
        .expect("flow summary");
    assert_eq!(
        endpoint(&flow["orig"], "src"),
        (ctr.addr.to_string(), 41000)
    );
    assert_eq!(
        endpoint(&flow["reply"], "dst"),
        (UPLINK_ADDR.to_string(), 41000)
    );
    assert!(flow["packets_original"].as_u64() >= Some(3));
    assert!(flow["packets_reply"].as_u64() >= Some(2));
    let hops = flow["hops"].as_array().expect("hop pairs");
    assert!(!hops.is_empty());
    for pair in hops {
        let (min, p50, p99, max) = (
            &pair["min_ns"],
            &pair["p50_ns"],
            &pair["p99_ns"],
            &pair["max_ns"],
        );
        assert!(
            min.as_u64() > Some(0) && min.as_u64() <= p50.as_u64(),
            "{pair}"
        );
        assert!(
            p50.as_u64() <= p99.as_u64() && p99.as_u64() <= max.as_u64(),
            "{pair}"
        );
    }
    Ok(())
}

/// Two containers connect from the same source port to the same server: MASQUERADE must give
/// the second a different port, and tracer must still stitch both sides of that flow.
#[test]
fn masquerade_port_rewrite_is_followed() -> anyhow::Result<()> {
    let port = 10012;
    let src_port = 42000;
    let testbed = Testbed::up(2)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::start(&["--port", &port.to_string(), "--output", "json"])?;
    // The first connection stays open, so its masqueraded tuple stays taken.
    let first = traffic::connect_from(&testbed.containers[0].netns, Some(src_port), server)?;
    let _first_accepted = traffic::accept(&listener)?;
    traffic::exchange(
        &testbed.containers[1].netns,
        Some(src_port),
        server,
        &listener,
    )?;
    drop(first);
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let ctr2 = &testbed.containers[1];
    let [syn, syn_ack, _ack] = handshake(&packets, &ctr2.netns.name, &testbed.remote.name);
    let flow_id = syn.flow_id();

    let out = nat_records(&lines, flow_id)
        .into_iter()
        .find(|n| n["direction"] == "original")
        .expect("outbound NAT")
        .clone();
    let (after_addr, after_port) = endpoint(&out["after"], "src");
    assert_eq!(after_addr, UPLINK_ADDR.to_string());
    assert_ne!(
        after_port,
        u64::from(src_port),
        "MASQUERADE had to pick another port"
    );
    // The SYN-ACK arrives for the rewritten port and reaches the container on the original one.
    let host = &testbed.host.name;
    let arriving = syn_ack
        .hop_at(host, "eth0", "netif_receive_skb")
        .expect("uplink hop");
    assert_eq!(arriving["dst_port"].as_u64(), Some(after_port));
    let delivered = syn_ack
        .hop_at(&ctr2.netns.name, "eth0", "netif_receive_skb")
        .expect("container hop");
    assert_eq!(delivered["dst_port"].as_u64(), Some(u64::from(src_port)));
    // The other container's connection is a different flow.
    let [other_syn, ..] = handshake(
        &packets,
        &testbed.containers[0].netns.name,
        &testbed.remote.name,
    );
    assert_ne!(other_syn.flow_id(), flow_id);
    Ok(())
}

/// `docker run -p 8080:80`: a connection from the remote to the uplink's port 8080 reaches the
/// container's port 80. Tracing `--port 8080` follows it into the container, where only port
/// 80 is visible, and back.
#[test]
fn published_port_dnat_is_followed_into_the_container() -> anyhow::Result<()> {
    let (host_port, container_port) = (8080, 80);
    let testbed = Testbed::up(1)?;
    testbed.publish(host_port, 0, container_port)?;
    let ctr = &testbed.containers[0];
    let listener = traffic::listen(&ctr.netns, SocketAddr::from((ctr.addr, container_port)))?;
    let tracer = Tracer::json(host_port, &[])?;
    traffic::exchange(
        &testbed.remote,
        None,
        SocketAddr::from((UPLINK_ADDR, host_port)),
        &listener,
    )?;
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let [syn, syn_ack, ack] = handshake(&packets, &testbed.remote.name, &ctr.netns.name);
    let flow_id = syn.flow_id();

    let host = &testbed.host.name;
    let places = syn.places();
    assert_eq!(
        places.first(),
        Some(&place(&testbed.remote.name, "eth0", "net_dev_queue"))
    );
    assert!(
        places.contains(&place(host, "docker0", "net_dev_queue")),
        "{places:#?}"
    );
    assert_eq!(
        places.last(),
        Some(&place(&ctr.netns.name, "eth0", "netif_receive_skb"))
    );
    let last = syn.hops.last().expect("hops");
    assert_eq!(
        endpoint(last, "dst"),
        (ctr.addr.to_string(), u64::from(container_port))
    );

    let nat = nat_records(&lines, flow_id);
    let inbound = nat
        .iter()
        .find(|n| n["direction"] == "original")
        .expect("DNAT");
    assert_eq!(inbound["kind"], "dnat");
    assert_eq!(
        endpoint(&inbound["before"], "dst"),
        (UPLINK_ADDR.to_string(), u64::from(host_port))
    );
    assert_eq!(
        endpoint(&inbound["after"], "dst"),
        (ctr.addr.to_string(), u64::from(container_port))
    );
    let outbound = nat
        .iter()
        .find(|n| n["direction"] == "reply")
        .expect("reply un-DNAT");
    assert_eq!(outbound["kind"], "dnat");
    assert_eq!(
        endpoint(&outbound["after"], "src"),
        (UPLINK_ADDR.to_string(), u64::from(host_port))
    );
    for packet in [&syn, &syn_ack, &ack] {
        assert_latencies_add_up(packet);
    }
    Ok(())
}

/// Container to container over the bridge: forwarded by docker0 without NAT, and not mistaken
/// for NAT.
#[test]
fn container_to_container_has_no_nat() -> anyhow::Result<()> {
    let port = 10013;
    let testbed = Testbed::up(2)?;
    let (ctr1, ctr2) = (&testbed.containers[0], &testbed.containers[1]);
    let listener = traffic::listen(&ctr2.netns, SocketAddr::from((ctr2.addr, port)))?;
    let tracer = Tracer::stack_json(port, &[])?;
    traffic::exchange(
        &ctr1.netns,
        None,
        SocketAddr::from((ctr2.addr, port)),
        &listener,
    )?;
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let [syn, syn_ack, ack] = handshake(&packets, &ctr1.netns.name, &ctr2.netns.name);
    let flow_id = syn.flow_id();

    let host = &testbed.host.name;
    let places = syn.places();
    assert_eq!(
        places,
        vec![
            place(&ctr1.netns.name, "eth0", "net_dev_queue"),
            place(&ctr1.netns.name, "eth0", "net_dev_start_xmit"),
            place(host, &ctr1.host_veth, "netif_rx"),
            place(host, &ctr1.host_veth, "netif_receive_skb"),
            place(host, &ctr2.host_veth, "net_dev_queue"),
            place(host, &ctr2.host_veth, "net_dev_start_xmit"),
            place(&ctr2.netns.name, "eth0", "netif_rx"),
            place(&ctr2.netns.name, "eth0", "netif_receive_skb"),
        ]
    );
    for packet in [&syn, &syn_ack, &ack] {
        let first = (
            endpoint(packet.first(), "src"),
            endpoint(packet.first(), "dst"),
        );
        for hop in &packet.hops {
            assert_eq!((endpoint(hop, "src"), endpoint(hop, "dst")), first, "{hop}");
        }
        assert_latencies_add_up(packet);
    }
    assert!(nat_records(&lines, flow_id).is_empty());
    Ok(())
}
