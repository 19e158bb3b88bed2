//! `cargo xtask fixtures`: records the kernel event stream the decoder and golden tests
//! replay, from a real trace of one connection on the testbed. Run it after changing the
//! event layout, then regenerate the golden files (see the README).

use std::net::SocketAddr;

use anyhow::Context as _;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use crate::util::{require_root, use_tracer_build, workspace};

const PORT: u16 = 10001;

pub fn run() -> anyhow::Result<()> {
    require_root("recording fixtures")?;
    use_tracer_build(false)?;
    let dir = workspace().join("tests/data/golden");
    let recording = dir.join("snat-handshake.events");
    let testbed = Testbed::up(1).context("failed to create the testbed")?;
    let server = SocketAddr::from((SERVER_ADDR, PORT));
    let listener = traffic::listen(&testbed.remote, server)?;
    let tracer = Tracer::start(&[
        "--port",
        &PORT.to_string(),
        "--hooks",
        "stack",
        "--record",
        &recording.to_string_lossy(),
    ])?;
    traffic::exchange(&testbed.containers[0].netns, None, server, &listener)?;
    tracer.stop()?;
    let mut names = String::from(
        "# netns inode, name of the namespaces in snat-handshake.events (`cargo xtask fixtures`)\n",
    );
    for (netns, name) in [
        (&testbed.host, "host"),
        (&testbed.remote, "remote"),
        (&testbed.containers[0].netns, "ctr1"),
    ] {
        names += &format!("{} {name}\n", netns.inode()?);
    }
    std::fs::write(dir.join("snat-handshake.names"), names)?;
    eprintln!(
        "xtask: wrote {}; now run `UPDATE_GOLDEN=1 cargo test -p tracer --test golden`",
        recording.display()
    );
    Ok(())
}
