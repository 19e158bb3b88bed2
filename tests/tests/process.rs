//! The process behind a packet: a connection made by a known command inside a container names
//! that command and its pid on every hop of the packets it sent, and nothing on the packets
//! the kernel sent or forwarded for no process (the replies); `--comm` and `--pid` select by it.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;
use serde_json::Value;
use tracer_tests::{
    netns::Netns,
    testbed::{SERVER_ADDR, Testbed},
    trace::{self, Packet},
    tracer::Tracer,
    traffic,
};

/// `socat` in `netns`, sending nothing to `server` and closing: one short connection. The
/// command replaces `ip netns exec`, so the child's pid is socat's.
fn socat(netns: &Netns, server: SocketAddr) -> anyhow::Result<Child> {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "socat",
            "-u",
            "OPEN:/dev/null",
        ])
        .arg(format!("TCP:{server}"))
        .stdin(Stdio::null())
        .spawn()
        .context("socat is needed (cargo xtask setup installs it)")
}

/// Accepts one connection and reads it to its end; then waits for `client` to exit.
fn serve_one(listener: &TcpListener, mut client: Child) -> anyhow::Result<()> {
    let mut accepted = traffic::accept(listener)?;
    let mut rest = Vec::new();
    accepted.read_to_end(&mut rest)?;
    let status = client.wait()?;
    anyhow::ensure!(status.success(), "socat failed: {status}");
    Ok(())
}

fn process_of(hop: &Value) -> &Value {
    &hop["process"]
}

/// The packets of the flow whose SYN left `netns`.
fn flow_from<'a>(packets: &'a [Packet], netns: &str) -> Vec<&'a Packet> {
    let syn = packets
        .iter()
        .find(|p| p.flags() == "S" && p.first()["netns"] == netns)
        .unwrap_or_else(|| panic!("no SYN from {netns}: {packets:#?}"));
    packets
        .iter()
        .filter(|p| p.flow_id() == syn.flow_id())
        .collect()
}

#[test]
fn packets_name_the_process_that_sent_them() -> anyhow::Result<()> {
    let port = 10031;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::json(port, &[])?;
    let ctr = &testbed.containers[0];
    let client = socat(&ctr.netns, server)?;
    let pid = u64::from(client.id());
    serve_one(&listener, client)?;
    let lines = tracer.stop()?.json()?;
    let packets = trace::packets(&lines);
    let flow = flow_from(&packets, &ctr.netns.name);

    let sent: Vec<&&Packet> = flow
        .iter()
        .filter(|p| p.first()["direction"] == "original")
        .collect();
    let received: Vec<&&Packet> = flow
        .iter()
        .filter(|p| p.first()["direction"] == "reply")
        .collect();
    assert!(sent.len() >= 3 && !received.is_empty(), "{flow:#?}");
    for packet in &sent {
        // Every hop: the container's eth0, where the socket is, and the host's hops after the
        // veth, where the kernel has detached it.
        assert!(packet.hops.len() >= 3, "{packet:#?}");
        for hop in &packet.hops {
            let process = process_of(hop);
            assert_eq!(process["pid"].as_u64(), Some(pid), "{hop}");
            assert_eq!(process["comm"], "socat", "{hop}");
            assert!(process["cgroup_id"].as_u64() > Some(0), "{hop}");
        }
    }
    // The server's packets come from a listener's request and an accepted socket, which no
    // process created, and reach the container forwarded by the host: no process.
    for packet in &received {
        for hop in &packet.hops {
            assert!(process_of(hop).is_null(), "{hop}");
        }
    }
    Ok(())
}

#[test]
fn comm_and_pid_select_a_process_s_connections() -> anyhow::Result<()> {
    let port = 10032;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let ctr = &testbed.containers[0];

    let tracer = Tracer::start(&["--port", &port.to_string(), "--comm", "socat"])?;
    // The test's own connection first, from the same namespace: not socat's.
    traffic::exchange(&ctr.netns, Some(43000), server, &listener)?;
    let client = socat(&ctr.netns, server)?;
    let pid = client.id();
    serve_one(&listener, client)?;
    let finished = tracer.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let text = &finished.stdout;
    let headers: Vec<&str> = text.lines().filter(|l| l.contains("(packet ")).collect();
    let syn = headers
        .iter()
        .find(|l| l.contains(" [S] "))
        .unwrap_or_else(|| panic!("no SYN shown:\n{text}"));
    assert!(
        syn.contains(&format!("from pid {pid} (socat)")),
        "the SYN's header names socat: {syn}"
    );
    assert!(
        !text.contains(":43000 "),
        "the test's own connection is shown:\n{text}"
    );
    // Replies are shown with the connection, and say no process.
    let reply = headers
        .iter()
        .find(|l| l.contains(" [S.] "))
        .unwrap_or_else(|| panic!("no SYN-ACK shown:\n{text}"));
    assert!(!reply.contains("from pid"), "{reply}");

    // --pid of a process that made no connection shows nothing; a long --comm is refused.
    let tracer = Tracer::json(port, &["--pid", "1"])?;
    traffic::exchange(&ctr.netns, Some(43001), server, &listener)?;
    let lines = tracer.stop()?.json()?;
    assert!(trace::packets(&lines).is_empty(), "{lines:#?}");
    let refused = tracer_tests::tracer::run(&["--comm", "a-command-name-too-long"])?;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("15 bytes"),
        "one clear line: {}",
        refused.stderr
    );
    Ok(())
}
