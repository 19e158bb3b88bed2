//! A client outside the machine, made from a namespace: how a test reaches a port that a
//! container runtime published on the host (`docker run -p`, `podman run -p`, CNI `portmap`)
//! without sending anything to an address outside the namespaces it created.
//!
//! ```text
//!  client netns              veth pair      machine's own namespace
//!  eth0 198.18.X.Y+2/30  ─────────────────  trcc<id> 198.18.X.Y+1/30
//!                                           PREROUTING DNAT hostPort -> container
//! ```
//!
//! The connection arrives on the host's veth from outside, so it takes the runtime's
//! PREROUTING DNAT and is forwarded to the container, as a connection from another machine
//! would be. The replies go back through the same veth: the client's address is on the link.
//! (Connecting from the machine's own namespace to the bridge's gateway address, as
//! `tests/docker_rules.rs` does, takes the runtimes' OUTPUT DNAT instead.)

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::{
    busybox,
    netns::{Netns, run},
    testbed::{self, PREFIX},
};

/// The client namespace and its veth into the machine's namespace; both deleted on drop.
#[derive(Debug)]
pub struct HostClient {
    /// The host end of the veth pair, in the machine's own namespace.
    pub host_veth: String,
    /// Address of the host end: where the client sends connections to published ports.
    pub host_addr: Ipv4Addr,
    /// Address of the client's `eth0`.
    pub addr: Ipv4Addr,
    /// The client's namespace (`trc-<id>-client`, so `cargo xtask testbed down` removes one
    /// left by a killed test).
    pub netns: Netns,
}

impl HostClient {
    /// Creates the namespace and the veth pair, on a /30 of 198.18.128.0/17 unique to this
    /// process and client.
    pub fn create() -> anyhow::Result<HostClient> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = testbed::unique_id();
        let netns = Netns::create(&format!("{PREFIX}{id}-client"))?;
        // 4096 /30 networks; the process id spreads concurrent test binaries over them.
        let slot =
            (std::process::id().wrapping_mul(16) + NEXT.fetch_add(1, Ordering::Relaxed)) % 4096;
        let (third, fourth) = (128 + slot / 64, (slot % 64) * 4);
        let octet = |n: u32| u8::try_from(n).context("address out of range");
        let host_addr = Ipv4Addr::new(198, 18, octet(third)?, octet(fourth + 1)?);
        let addr = Ipv4Addr::new(198, 18, octet(third)?, octet(fourth + 2)?);
        let client = HostClient {
            host_veth: format!("trcc{id}"),
            host_addr,
            addr,
            netns,
        };
        client
            .plug()
            .with_context(|| format!("failed to connect {} to the host", client.netns.name))?;
        Ok(client)
    }

    fn plug(&self) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.netns.name,
            ],
        )?;
        let host = format!("{}/30", self.host_addr);
        run("ip", &["addr", "add", &host, "dev", &self.host_veth])?;
        run("ip", &["link", "set", &self.host_veth, "up"])?;
        let own = format!("{}/30", self.addr);
        self.netns.ip(&["addr", "add", &own, "dev", "eth0"])?;
        self.netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// [`busybox::get_page`] from the client to the host's `port` (a published port).
    pub fn get_page(&self, port: u16) -> anyhow::Result<()> {
        busybox::get_page(Some(&self.netns), SocketAddr::from((self.host_addr, port)))
    }
}

impl Drop for HostClient {
    fn drop(&mut self) {
        // Deleting the namespace would take the pair too, but only once nothing holds it.
        let _ = run("ip", &["link", "del", &self.host_veth]);
    }
}
