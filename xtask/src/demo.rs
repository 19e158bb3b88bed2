//! `cargo xtask demo`: the original tcpdump experiment, done by tracer.
//!
//! Builds tracer, creates the testbed, listens on port 10001 in the remote namespace, runs
//! `tracer --port 10001`, connects from a container, prints the trace and cleans up.

use std::net::SocketAddr;

use anyhow::Context as _;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use crate::util::{require_root, use_tracer_build};

const PORT: u16 = 10001;

pub fn run() -> anyhow::Result<()> {
    require_root("the demo")?;
    use_tracer_build(false)?;

    let testbed = Testbed::up(2).context("failed to create the testbed")?;
    let server = SocketAddr::from((SERVER_ADDR, PORT));
    let listener = traffic::listen(&testbed.remote, server)?;
    eprintln!(
        "xtask: testbed {}: containers {} ({}), {} ({}); server {server} in {}",
        testbed.id,
        testbed.containers[0].netns.name,
        testbed.containers[0].addr,
        testbed.containers[1].netns.name,
        testbed.containers[1].addr,
        testbed.remote.name,
    );
    eprintln!("xtask: running tracer --port {PORT}");
    let tracer = Tracer::start(&["--port", &PORT.to_string()])?;
    eprintln!(
        "xtask: connecting from {} to {server}",
        testbed.containers[0].netns.name
    );
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    let finished = tracer.stop()?;
    print!("{}", finished.stdout);
    if !finished.status.success() {
        anyhow::bail!("tracer failed: {}", finished.stderr.trim());
    }
    Ok(())
}
