//! Why a connection failed, for each kind of failure built for real in the testbed, through
//! `tracer probe` from a container's namespace: the verdict's kind, place, reason and rule,
//! and the probe's exit code.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use tracer_tests::{
    probe::{self, Probed, place},
    testbed::{SERVER_ADDR, Testbed},
    trace, tracer, traffic,
};

/// `tracer probe` from the testbed's container to `target`, waiting 2 s for an answer.
fn probe(testbed: &Testbed, target: SocketAddr, extra: &[&str]) -> anyhow::Result<Probed> {
    probe_for(testbed, target, "2s", extra)
}

fn probe_for(
    testbed: &Testbed,
    target: SocketAddr,
    timeout: &str,
    extra: &[&str],
) -> anyhow::Result<Probed> {
    let netns = testbed.containers[0].netns.name.clone();
    let target = target.to_string();
    let mut args = vec!["--netns", &netns, "--timeout", timeout];
    args.extend_from_slice(extra);
    args.push(&target);
    probe::run(&args)
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::from((SERVER_ADDR, port))
}

#[test]
fn an_answered_connection_and_an_answered_datagram_are_delivered() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let port = 10_201;
    let listener = traffic::listen(&testbed.remote, server(port))?;
    let accept = std::thread::spawn(move || traffic::accept(&listener).map(drop));
    let tcp = probe(&testbed, server(port), &[])?;
    accept.join().expect("accept")?;
    assert!(tcp.status.success(), "{}", tcp.stderr);
    assert_eq!(tcp.verdict["kind"], "delivered", "{}", tcp.verdict);
    assert_eq!(tcp.verdict["retransmitted"], 0);

    let echo = testbed
        .remote
        .enter(|| UdpSocket::bind(server(port + 1)))??;
    let echoed = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = [0u8; 64];
        let (len, from) = echo.recv_from(&mut buf)?;
        echo.send_to(&buf[..len], from)?;
        Ok(())
    });
    let udp = probe(&testbed, server(port + 1), &["--udp"])?;
    echoed.join().expect("echo")?;
    assert!(udp.status.success(), "{}", udp.stderr);
    assert_eq!(udp.verdict["kind"], "delivered", "{}", udp.verdict);
    Ok(())
}

/// Nothing listens: the far end's stack frees the SYN (NO_SOCKET) and answers with a reset.
#[test]
fn a_closed_port_is_refused() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let refused = probe(&testbed, server(10_202), &[])?;
    assert_eq!(refused.status.code(), Some(1), "{}", refused.stderr);
    let verdict = &refused.verdict;
    assert_eq!(refused.at().0, "refused", "{verdict}");
    assert_eq!(trace::text(&verdict["netns"]), testbed.remote.name);
    assert_eq!(verdict["reason"], "NO_SOCKET");
    assert!(
        trace::text(&verdict["advice"]).contains("10202"),
        "{verdict}"
    );
    assert!(
        refused.stderr.contains("not delivered: refused"),
        "{}",
        refused.stderr
    );
    Ok(())
}

/// A FORWARD rule drops the SYN on the host: dropped there, by that rule, the SYN sent again
/// and dropped again.
#[test]
fn a_forward_rule_drop_is_dropped_by_that_rule() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let port = 10_203;
    testbed.drop_forward(port)?;
    let dropped = probe(&testbed, server(port), &["--rules"])?;
    assert_eq!(dropped.status.code(), Some(1), "{}", dropped.stderr);
    let verdict = &dropped.verdict;
    assert_eq!(
        dropped.at(),
        place("dropped", &testbed.host.name, "docker0", "kfree_skb"),
        "{verdict}"
    );
    assert_eq!(verdict["reason"], "NETFILTER_DROP");
    assert_eq!(verdict["rule"]["chain"], "FORWARD", "{verdict}");
    assert!(
        trace::text(&verdict["rule"]["text"]).contains(&format!("tcp dport {port}")),
        "{verdict}"
    );
    // The SYN was sent twice in 2 s (the first retransmission comes after 1 s).
    assert_eq!(verdict["packets"], 2, "{verdict}");
    assert_eq!(verdict["retransmitted"], 1, "{verdict}");
    assert_eq!(
        verdict["advice"],
        "a netfilter rule drops it: see the rule above"
    );
    Ok(())
}

/// The first SYN is dropped, the second goes through: delivered, one retransmission.
#[test]
fn a_connection_that_needed_a_retransmission_is_delivered_with_it() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let port = 10_204;
    testbed.host.exec(
        "iptables",
        &[
            "-I",
            "FORWARD",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port.to_string(),
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            "2",
            "--packet",
            "0",
            "-j",
            "DROP",
        ],
    )?;
    let listener = traffic::listen(&testbed.remote, server(port))?;
    let accept = std::thread::spawn(move || traffic::accept(&listener).map(drop));
    let probed = probe(&testbed, server(port), &[])?;
    accept.join().expect("accept")?;
    assert!(probed.status.success(), "{}", probed.stderr);
    assert_eq!(probed.verdict["kind"], "delivered", "{}", probed.verdict);
    assert_eq!(probed.verdict["retransmitted"], 1, "{}", probed.verdict);
    Ok(())
}

/// A datagram with DF bigger than the uplink's MTU: refused where the host forwards it, and
/// the ICMP error names the MTU.
#[test]
fn a_datagram_too_big_for_the_uplink_is_mtu() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    for ns in [&testbed.host, &testbed.remote] {
        ns.ip(&["link", "set", "eth0", "mtu", "1280"])?;
    }
    let probed = probe(&testbed, server(10_205), &["--udp", "--size", "1400"])?;
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    let verdict = &probed.verdict;
    assert_eq!(probed.at().0, "mtu", "{verdict}");
    assert_eq!(
        trace::text(&verdict["netns"]),
        testbed.host.name,
        "{verdict}"
    );
    assert_eq!(verdict["reason"], "PKT_TOO_BIG");
    assert_eq!(verdict["mtu"], 1280, "{verdict}");
    assert!(
        trace::text(&verdict["advice"]).contains("1280"),
        "{verdict}"
    );
    Ok(())
}

/// A datagram the far end takes and never answers: it reached the remote's socket, and
/// nothing came back.
#[test]
fn a_datagram_nobody_answers_is_unanswered() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let port = 10_206;
    let silent = testbed.remote.enter(|| UdpSocket::bind(server(port)))??;
    let probed = probe(&testbed, server(port), &["--udp"])?;
    let mut buf = [0u8; 64];
    silent.set_nonblocking(true)?;
    assert!(silent.recv(&mut buf).is_ok(), "the datagram did not arrive");
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    assert_eq!(
        probed.at(),
        place(
            "unanswered",
            &testbed.remote.name,
            "eth0",
            "netif_receive_skb"
        ),
        "{}",
        probed.verdict
    );
    assert_eq!(probed.verdict["packets"], 1, "{}", probed.verdict);
    Ok(())
}

/// No route at all (a blackhole route): the host refuses to forward.
#[test]
fn a_blackhole_route_is_no_route() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    testbed
        .host
        .ip(&["route", "add", "blackhole", "198.19.6.0/24"])?;
    let target = SocketAddr::from((Ipv4Addr::new(198, 19, 6, 6), 10_207));
    let probed = probe(&testbed, target, &[])?;
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    assert_eq!(
        probed.at(),
        place("no_route", &testbed.host.name, "docker0", "kfree_skb"),
        "{}",
        probed.verdict
    );
    // A blackhole route discards (in `ip_error`, for a forwarded packet) without a reason of
    // its own.
    assert_eq!(
        probed.verdict["reason"], "NOT_SPECIFIED",
        "{}",
        probed.verdict
    );
    assert!(
        trace::text(&probed.verdict["function"]).starts_with("ip_error"),
        "{}",
        probed.verdict
    );
    Ok(())
}

/// A route through a next hop that does not exist: ARP fails on the uplink.
#[test]
fn an_unresolvable_next_hop_is_neighbour() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    testbed.host.ip(&[
        "route",
        "add",
        "198.19.5.0/24",
        "via",
        "198.18.0.99",
        "dev",
        "eth0",
    ])?;
    let target = SocketAddr::from((Ipv4Addr::new(198, 19, 5, 5), 10_208));
    // ARP gives up after three tries a second apart.
    let probed = probe_for(&testbed, target, "5s", &[])?;
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    let verdict = &probed.verdict;
    assert_eq!(
        probed.at(),
        place("neighbour", &testbed.host.name, "eth0", "kfree_skb"),
        "{verdict}"
    );
    assert!(
        trace::text(&verdict["reason"]).starts_with("NEIGH_"),
        "{verdict}"
    );
    Ok(())
}

/// A packet that arrives on another interface than the route back to its source: with
/// `rp_filter=1` the far end drops it (an asymmetric route).
#[test]
fn an_asymmetric_route_with_rp_filter_is_rp_filter() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    let remote = &testbed.remote;
    let port = 10_209;
    // The remote's route back to the host's uplink address leaves through a veth of its own,
    // not through the uplink the SYN arrives on.
    remote.ip(&["link", "add", "rpa", "type", "veth", "peer", "name", "rpb"])?;
    remote.ip(&["link", "set", "rpa", "up"])?;
    remote.ip(&["link", "set", "rpb", "up"])?;
    remote.ip(&["route", "add", "198.18.0.2/32", "dev", "rpa"])?;
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.eth0.rp_filter",
    ] {
        remote.exec("sysctl", &["-qw", &format!("{key}=1")])?;
    }
    // The remote no longer answers ARP from that address either (the same check): the host
    // knows its MAC already.
    let mac = remote.exec("cat", &["/sys/class/net/eth0/address"])?;
    testbed.host.ip(&[
        "neigh",
        "replace",
        "198.18.0.1",
        "lladdr",
        mac.trim(),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    let listener = traffic::listen(remote, server(port))?;
    let probed = probe(&testbed, server(port), &[])?;
    drop(listener);
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    assert_eq!(
        probed.at(),
        place("rp_filter", &remote.name, "eth0", "kfree_skb"),
        "{}",
        probed.verdict
    );
    assert_eq!(probed.verdict["reason"], "IP_RPFILTER");
    Ok(())
}

#[test]
fn bad_input_is_one_line_and_exit_2() -> anyhow::Result<()> {
    for (args, says) in [
        (
            &["probe", "--netns", "trc-no-such-netns", "198.19.0.252:80"][..],
            "no network namespace named trc-no-such-netns",
        ),
        (
            &[
                "probe",
                "--container",
                "trc-no-such-container",
                "198.19.0.252:80",
            ],
            "trc-no-such-container",
        ),
        (&["probe", "web:80"], "is not an address and port"),
        (&["probe", "198.19.0.252:0"], "port 0"),
    ] {
        let finished = tracer::run(args)?;
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{args:?}: {}",
            finished.stderr
        );
        let lines: Vec<&str> = finished.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", finished.stderr);
        assert!(lines[0].contains(says), "{args:?}: {}", finished.stderr);
    }
    Ok(())
}

/// The host does not forward (`ip_forward=0` in its namespace): it drops the container's SYN
/// where it would route it on.
#[test]
fn a_host_that_does_not_forward_is_forwarding_disabled() -> anyhow::Result<()> {
    let testbed = Testbed::up(1)?;
    testbed
        .host
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
    let probed = probe(&testbed, server(10_210), &[])?;
    assert_eq!(probed.status.code(), Some(1), "{}", probed.stderr);
    assert_eq!(
        probed.at(),
        place(
            "forwarding_disabled",
            &testbed.host.name,
            "docker0",
            "kfree_skb"
        ),
        "{}",
        probed.verdict
    );
    assert_eq!(probed.verdict["reason"], "IP_INADDRERRORS");
    assert!(
        trace::text(&probed.verdict["function"]).starts_with("ip_error"),
        "{}",
        probed.verdict
    );
    Ok(())
}
