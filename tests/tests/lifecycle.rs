//! Starting and stopping: every way a trace ends detaches every link tracer attached.

use std::net::SocketAddr;

use nix::sys::signal::Signal;
use tracer_tests::{
    bpf,
    testbed::{SERVER_ADDR, Testbed},
    trace,
    tracer::Tracer,
    traffic,
};

/// Starts a tracer with TC programs on the testbed's uplink, returns it with its link ids.
fn start(testbed: &Testbed, extra: &[&str]) -> anyhow::Result<(Tracer, Vec<u32>)> {
    let mut args = vec![
        "-i",
        "eth0",
        "--netns",
        &testbed.host.name,
        "--hooks",
        "all",
    ];
    args.extend_from_slice(extra);
    let tracer = Tracer::start(&args)?;
    let links = bpf::links_of(tracer.pid());
    // Five tracepoints (four stack hooks and kfree_skb), two TCX links, and the two socket
    // programs' cgroup links (sock_create, sock_release).
    assert_eq!(links.len(), 9, "links held: {links:?}");
    assert!(links.iter().all(|&id| bpf::link_exists(id)));
    Ok((tracer, links))
}

fn assert_gone(links: &[u32]) {
    for &id in links {
        assert!(!bpf::link_exists(id), "link {id} is still attached");
    }
}

#[test]
fn ctrl_c_and_sigterm_detach_everything() -> anyhow::Result<()> {
    assert!(
        bpf::bpftool_available(),
        "bpftool is installed by `cargo xtask setup`"
    );
    let testbed = Testbed::up(0)?;
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let (tracer, links) = start(&testbed, &["--port", "10004"])?;
        tracer.signal(signal)?;
        let mut tracer = tracer;
        let finished = tracer.wait()?;
        assert!(finished.status.success(), "{signal}: {}", finished.stderr);
        // The whole summary line: nothing reached the filter's port, nothing was lost.
        assert_eq!(
            finished.stdout.lines().last(),
            Some("0 events, 0 lost, 0 malformed; 0 packets in 0 flows"),
            "{signal}: {}",
            finished.stdout
        );
        assert_gone(&links);
    }
    Ok(())
}

/// `-c 2` prints exactly two packets, then exits by itself and detaches.
#[test]
fn count_ends_the_trace_after_n_packets() -> anyhow::Result<()> {
    let port = 10005;
    let testbed = Testbed::up(1)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let (mut tracer, links) = start(
        &testbed,
        &["--port", &port.to_string(), "-c", "2", "--output", "json"],
    )?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.wait()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let packets = trace::packets(&finished.json()?);
    assert_eq!(packets.len(), 2);
    assert_eq!(packets[0].flags(), "S");
    assert_eq!(packets[1].flags(), "S.");
    assert_gone(&links);
    Ok(())
}

/// `--duration` ends an idle trace by itself.
#[test]
fn duration_ends_the_trace() -> anyhow::Result<()> {
    let testbed = Testbed::up(0)?;
    let (mut tracer, links) = start(&testbed, &["--port", "10006", "--duration", "300ms"])?;
    let finished = tracer.wait()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_gone(&links);
    Ok(())
}
