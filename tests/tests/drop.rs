//! Where packets die: drops with the kernel's reason as the packet's last hop.

use std::{net::SocketAddr, time::Duration};

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    trace::{self, Packet, place},
    tracer::{Tracer, drop_reason},
};

fn syn_from<'a>(packets: &'a [Packet], netns: &str) -> &'a Packet {
    packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == netns)
        .unwrap_or_else(|| panic!("no SYN from {netns}: {packets:#?}"))
}

/// A DROP rule in the host's FORWARD chain: the SYN's last hop is `kfree_skb` on docker0 in
/// the host namespace, with netfilter's drop reason, and it never reaches the uplink.
#[test]
fn forward_drop_is_the_last_hop_with_its_reason() -> anyhow::Result<()> {
    let port = 10031;
    let testbed = Testbed::up(1)?;
    testbed.host.exec(
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ],
    )?;
    let ctr = &testbed.containers[0];
    let (attempt, packets) = trace_connect(&testbed, port, Duration::from_millis(300), &[])?;
    assert!(attempt.is_err(), "the SYN must be dropped");
    let syn = syn_from(&packets, &ctr.netns.name);
    let host = &testbed.host.name;
    let last = syn.hops.last().expect("hops");
    assert_eq!(
        syn.places().last(),
        Some(&place(host, "docker0", "kfree_skb")),
        "{:#?}",
        syn.places()
    );
    assert_eq!(last["drop_reason"], drop_reason("NETFILTER_DROP"));
    // The function depends on the iptables backend (nft_do_chain, ipt_do_table, nf_hook_slow).
    let location = trace::text(&last["drop_location"]);
    assert!(
        location.contains("+0x") && !location.starts_with("0x"),
        "{location}"
    );
    assert!(syn.hop_at(host, "eth0", "net_dev_queue").is_none());
    // Hops before the drop carry no drop fields.
    assert!(
        syn.hops[..syn.hops.len() - 1]
            .iter()
            .all(|h| h["drop_reason"].is_null())
    );
    Ok(())
}

/// A recording carries the recording kernel's names of drop reasons: its replay names the
/// dropped SYN's reason as the live trace did, where a recording without them could only give
/// the number (whose meaning changes between kernel versions).
#[test]
fn a_replayed_drop_keeps_its_reason() -> anyhow::Result<()> {
    let port = 10033;
    let testbed = Testbed::up(1)?;
    testbed.drop_forward(port)?;
    let dir = tracer_tests::machine::TempDir::new("tracer-drop-record")?;
    let recording = dir.path().join("drop.events");
    let recording_arg = recording.to_str().expect("a UTF-8 path");
    let (attempt, live) = trace_connect(
        &testbed,
        port,
        Duration::from_millis(300),
        &["--record", recording_arg],
    )?;
    assert!(attempt.is_err(), "the SYN must be dropped");
    let replay = tracer_tests::tracer::run(&["replay", recording_arg, "--output", "json"])?;
    assert!(replay.status.success(), "{}", replay.stderr);
    assert!(replay.stderr.contains(" 0 malformed"), "{}", replay.stderr);
    let replayed = trace::packets(&replay.json()?);
    let ctr = &testbed.containers[0].netns.name;
    let dropped = |packets: &[Packet]| {
        let syn = packets
            .iter()
            .find(|p| p.flags() == "S")
            .unwrap_or_else(|| panic!("no SYN: {packets:#?}"));
        syn.hops.last().expect("hops")["drop_reason"].clone()
    };
    assert_eq!(
        syn_from(&live, ctr).hops.last().expect("hops")["drop_reason"],
        drop_reason("NETFILTER_DROP")
    );
    assert_eq!(dropped(&replayed), drop_reason("NETFILTER_DROP"));
    // Made in this boot, the drop's location is named as the live trace named it.
    let location = |packets: &[Packet]| {
        let syn = packets.iter().find(|p| p.flags() == "S").expect("a SYN");
        trace::text(&syn.hops.last().expect("hops")["drop_location"])
    };
    let live_location =
        trace::text(&syn_from(&live, ctr).hops.last().expect("hops")["drop_location"]);
    assert!(live_location.contains("+0x"), "{live_location}");
    assert_eq!(location(&replayed), live_location);

    // The live trace named the location in the recording too, once, in a names record of
    // its own after the first.
    let bytes = std::fs::read(&recording)?;
    let (records, rest) = tracer::recording::split(&bytes);
    assert!(rest.is_empty());
    let mut names = tracer::recording::read_names(records[0]).expect("a names record first")?;
    assert_eq!(names.boot_id, tracer::recording::this_boot());
    assert!(names.drop_locations.is_empty(), "{names:?}");
    let later: Vec<_> = records[1..]
        .iter()
        .filter_map(|record| tracer::recording::read_names(record))
        .collect::<Result<_, _>>()?;
    let recorded: Vec<&String> = later
        .iter()
        .flat_map(|names| names.drop_locations.values())
        .collect();
    assert_eq!(recorded, [&live_location], "{later:?}");

    // The same recording said to come from another boot: its code addresses are another
    // kernel's, so this machine's kallsyms does not name them; the recording's own names do.
    names.boot_id = Some("f1e2d3c4-0000-4000-8000-000000000001".to_owned());
    let replay_elsewhere = |keep_locations: bool| -> anyhow::Result<Vec<Packet>> {
        let mut moved = Vec::new();
        tracer::recording::write_names(&mut moved, &names)?;
        for &record in &records[1..] {
            if keep_locations || tracer::recording::read_names(record).is_none() {
                tracer::recording::write(&mut moved, record)?;
            }
        }
        let path = dir.path().join("elsewhere.events");
        std::fs::write(&path, moved)?;
        let replay = tracer_tests::tracer::run(&[
            "replay",
            path.to_str().expect("a UTF-8 path"),
            "--output",
            "json",
        ])?;
        assert!(replay.status.success(), "{}", replay.stderr);
        assert!(
            replay.stderr.contains("made in another boot"),
            "{}",
            replay.stderr
        );
        let replayed = trace::packets(&replay.json()?);
        assert_eq!(dropped(&replayed), drop_reason("NETFILTER_DROP"));
        Ok(replayed)
    };
    assert_eq!(location(&replay_elsewhere(true)?), live_location);
    // A recording without the names of its locations (as made before they were recorded)
    // shows them as addresses.
    let unnamed = location(&replay_elsewhere(false)?);
    assert!(unnamed.starts_with("0x"), "{unnamed}");
    Ok(())
}

/// A connection to a closed port: the SYN dies in the remote for want of a socket, and the
/// RST travels back through the NAT to the container, in the same flow.
#[test]
fn closed_port_shows_the_rst_path() -> anyhow::Result<()> {
    let port = 10032;
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let (attempt, packets) = trace_connect(&testbed, port, Duration::from_secs(5), &[])?;
    assert_eq!(
        attempt.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let syn = syn_from(&packets, &ctr.netns.name);
    let remote = &testbed.remote.name;
    assert_eq!(
        syn.places().last(),
        Some(&place(remote, "eth0", "kfree_skb"))
    );
    assert_eq!(
        syn.hops.last().expect("hops")["drop_reason"],
        drop_reason("NO_SOCKET")
    );

    let rst = packets
        .iter()
        .find(|p| p.flags() == "R." && p.first()["netns"] == remote.as_str())
        .expect("the RST");
    assert_eq!(rst.flow_id(), syn.flow_id());
    assert_eq!(rst.first()["direction"], "reply");
    let places = rst.places();
    assert_eq!(
        places.last(),
        Some(&place(&ctr.netns.name, "eth0", "netif_receive_skb"))
    );
    let delivered = rst.hops.last().expect("hops");
    assert_eq!(delivered["dst_ip"], ctr.addr.to_string());
    assert_eq!(delivered["dst_port"], syn.first()["src_port"]);
    Ok(())
}

/// Traces the default hooks on `port` while the first container tries to connect to the server
/// address on it; the outcome of the attempt and the traced packets.
fn trace_connect(
    testbed: &Testbed,
    port: u16,
    timeout: Duration,
    extra: &[&str],
) -> anyhow::Result<(std::io::Result<std::net::TcpStream>, Vec<Packet>)> {
    let tracer = Tracer::json(port, extra)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let attempt = testbed.containers[0]
        .netns
        .enter(|| std::net::TcpStream::connect_timeout(&server, timeout))?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok((attempt, trace::packets(&finished.json()?)))
}
