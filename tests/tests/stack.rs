//! The stack tracepoints on the Docker-like testbed: a SYN from a container, hop by hop.

use std::net::SocketAddr;

use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

#[test]
fn syn_crosses_veth_bridge_nat_and_uplink() -> anyhow::Result<()> {
    let port = 10001;
    let testbed = Testbed::up(2)?;
    let listener = traffic::listen(&testbed.remote, SocketAddr::from((SERVER_ADDR, port)))?;
    let tracer = Tracer::start(&["--port", &port.to_string(), "--output", "json"])?;
    traffic::exchange(
        &testbed.containers[0].netns,
        None,
        SocketAddr::from((SERVER_ADDR, port)),
        &listener,
    )?;
    let finished = tracer.stop()?;
    println!("{}", finished.stdout);
    eprintln!("{}", finished.stderr);
    Ok(())
}
