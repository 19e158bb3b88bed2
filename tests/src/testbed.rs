//! A replica of Docker's default bridge network, built from network namespaces only.
//!
//! ```text
//!  ctr1 (eth0 172.17.0.2) ─┐                          ┌─ remote (eth0 198.18.0.1,
//!  ctr2 (eth0 172.17.0.3) ─┤ host: vethXXX ─ docker0  │   198.19.0.252 on lo)
//!                          │   172.17.0.1/16, MASQUERADE, eth0 198.18.0.2 ──┘
//! ```
//!
//! Every testbed has its own namespaces (so addresses repeat safely between testbeds) and
//! unique names, so tests can run in parallel. Dropping a [`Testbed`] deletes its namespaces,
//! which takes every link, address, route and rule inside with them.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;

use crate::netns::{Netns, run};

/// Prefix of every namespace a testbed creates.
pub const PREFIX: &str = "trc-";
/// Address of the bridge, the containers' gateway.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// docker0's own MAC (locally administered), fixed so it never follows its ports.
const BRIDGE_MAC: &str = "02:42:ac:11:00:01";

/// Host side of the uplink: the address MASQUERADE rewrites container sources to.
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Remote side of the uplink.
pub const REMOTE_LINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The server address, on the remote's loopback, reached through the host's uplink.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 252);

// The IPv6 plan mirrors the IPv4 one inside the benchmarking range 2001:2::/48 (RFC 5180).
/// Address of the bridge on the containers' IPv6 subnet.
pub const BRIDGE_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x17, 0, 0, 0, 1);
/// Host side of the uplink: the address IPv6 MASQUERADE rewrites container sources to.
pub const UPLINK_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x18, 0, 0, 0, 2);
/// Remote side of the uplink.
pub const REMOTE_LINK_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x18, 0, 0, 0, 1);
/// The server's IPv6 address, on the remote's loopback.
pub const SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x19, 0, 0, 0, 0xfc);

/// A container namespace.
#[derive(Debug)]
pub struct Container {
    pub netns: Netns,
    /// Address of the container's `eth0`.
    pub addr: Ipv4Addr,
    /// IPv6 address of the container's `eth0`.
    pub addr6: Ipv6Addr,
    /// Host-side end of the veth pair, enslaved to `docker0`.
    pub host_veth: String,
}

/// The testbed: host, containers and remote, torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    /// Unique part of every name in this testbed.
    pub id: String,
    // Field order is drop order: containers first, the host (with the bridge) last.
    pub containers: Vec<Container>,
    pub remote: Netns,
    /// Containers created so far; numbers are never reused, even after a removal.
    created: usize,
    pub host: Netns,
}

impl Testbed {
    /// Builds a testbed with `containers` container namespaces.
    pub fn up(containers: usize) -> anyhow::Result<Testbed> {
        Self::up_with_id(&unique_id(), containers)
    }

    /// Builds a testbed whose names contain `id`.
    pub fn up_with_id(id: &str, containers: usize) -> anyhow::Result<Testbed> {
        let host = Netns::create(&format!("{PREFIX}{id}-host"))?;
        let remote = Netns::create(&format!("{PREFIX}{id}-remote"))?;
        let mut testbed = Testbed {
            id: id.to_owned(),
            containers: Vec::new(),
            remote,
            created: 0,
            host,
        };
        testbed
            .build_host()
            .context("failed to build the host namespace")?;
        for index in 0..containers {
            testbed
                .add_container()
                .with_context(|| format!("failed to build container {}", index + 1))?;
        }
        Ok(testbed)
    }

    fn build_host(&mut self) -> anyhow::Result<()> {
        let host = &self.host;
        // A bridge without an address of its own takes the lowest MAC of its ports, so
        // deleting a container's veth could change it under the other containers' ARP caches
        // (their connections then stall for a minute). Docker gives docker0 a fixed MAC too.
        host.ip(&[
            "link", "add", "docker0", "address", BRIDGE_MAC, "type", "bridge",
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{BRIDGE_ADDR}/16"),
            "dev",
            "docker0",
        ])?;
        host.ip(&["link", "set", "docker0", "up"])?;
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "172.17.0.0/16",
                "!",
                "-o",
                "docker0",
                "-j",
                "MASQUERADE",
            ],
        )?;
        // The uplink: a veth whose far end is the remote's eth0.
        host.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.remote.name,
        ])?;
        host.ip(&["addr", "add", &format!("{UPLINK_ADDR}/24"), "dev", "eth0"])?;
        host.ip(&["link", "set", "eth0", "up"])?;
        // The uplink carries the default route, as a Docker host's does (inside the host
        // namespace of the testbed only).
        host.ip(&[
            "route",
            "add",
            "default",
            "via",
            &REMOTE_LINK_ADDR.to_string(),
        ])?;

        let remote = &self.remote;
        remote.ip(&[
            "addr",
            "add",
            &format!("{REMOTE_LINK_ADDR}/24"),
            "dev",
            "eth0",
        ])?;
        remote.ip(&["link", "set", "eth0", "up"])?;
        remote.ip(&["addr", "add", &format!("{SERVER_ADDR}/32"), "dev", "lo"])?;

        // IPv6, with NAT66 like Docker's ip6tables MASQUERADE. `nodad` makes the addresses
        // usable at once instead of after duplicate address detection.
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        host.ip(&[
            "addr",
            "add",
            &format!("{BRIDGE_ADDR6}/64"),
            "dev",
            "docker0",
            "nodad",
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{UPLINK_ADDR6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        let via = REMOTE_LINK_ADDR6.to_string();
        host.ip(&["-6", "route", "add", "2001:2:0:19::/64", "via", &via])?;
        let masquerade = "-t nat -A POSTROUTING -s 2001:2:0:17::/64 ! -o docker0 -j MASQUERADE";
        host.exec("ip6tables", &masquerade.split(' ').collect::<Vec<_>>())?;
        let remote_link = format!("{REMOTE_LINK_ADDR6}/64");
        remote.ip(&["addr", "add", &remote_link, "dev", "eth0", "nodad"])?;
        remote.ip(&["addr", "add", &format!("{SERVER_ADDR6}/128"), "dev", "lo"])?;
        Ok(())
    }

    /// Adds a container namespace on its own veth pair, as `docker run` would.
    pub fn add_container(&mut self) -> anyhow::Result<&Container> {
        self.created += 1;
        let number = self.created;
        let netns = Netns::create(&format!("{PREFIX}{}-ctr{number}", self.id))?;
        let octet = u8::try_from(number + 1).context("too many containers")?;
        let container = Container {
            netns,
            addr: Ipv4Addr::new(172, 17, 0, octet),
            addr6: Ipv6Addr::new(0x2001, 2, 0, 0x17, 0, 0, 0, u16::from(octet)),
            host_veth: format!("v{}c{number}", self.id),
        };
        let mac = format!("02:42:ac:11:00:{octet:02x}");
        self.plug(&container, Some(&mac))?;
        self.containers.push(container);
        Ok(self.containers.last().expect("just pushed"))
    }

    /// Unplugs container `index` (0-based) and plugs it in again: its veth pair is deleted and
    /// created anew with the same names and addresses, as when a container's network is
    /// recreated.
    pub fn replug(&self, index: usize) -> anyhow::Result<()> {
        let container = self.containers.get(index).context("no such container")?;
        self.host.ip(&["link", "del", &container.host_veth])?;
        self.plug(container, None)
    }

    /// Creates the container's veth pair, enslaves the host end to docker0, and configures
    /// the container end (MAC, addresses, default routes).
    fn plug(&self, container: &Container, mac: Option<&str>) -> anyhow::Result<()> {
        let (host, netns, veth) = (&self.host, &container.netns, &container.host_veth);
        host.ip(&[
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ])?;
        host.ip(&["link", "set", veth, "master", "docker0", "up"])?;
        if let Some(mac) = mac {
            netns.ip(&["link", "set", "eth0", "address", mac])?;
        }
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/16", container.addr),
            "dev",
            "eth0",
        ])?;
        let addr6 = format!("{}/64", container.addr6);
        netns.ip(&["addr", "add", &addr6, "dev", "eth0", "nodad"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &BRIDGE_ADDR.to_string()])?;
        netns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_ADDR6.to_string(),
        ])?;
        Ok(())
    }

    /// Drops TCP to `port` in the host's FORWARD chain (a rule inserted first), as a firewall
    /// that blocks a service does; it goes with the testbed's host namespace.
    pub fn drop_forward(&self, port: u16) -> anyhow::Result<()> {
        self.host.exec(
            "iptables",
            &[
                "-I",
                "FORWARD",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// Publishes `container_port` of container `index` (0-based) on the uplink's `host_port`,
    /// the way `docker run -p HOST:CONTAINER` does (DNAT in PREROUTING).
    pub fn publish(&self, host_port: u16, index: usize, container_port: u16) -> anyhow::Result<()> {
        let container = self.containers.get(index).context("no such container")?;
        self.host.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &format!("{UPLINK_ADDR}/32"),
                "-p",
                "tcp",
                "--dport",
                &host_port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{container_port}", container.addr),
            ],
        )?;
        Ok(())
    }

    /// Every namespace of the testbed.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        [&self.host, &self.remote]
            .into_iter()
            .chain(self.containers.iter().map(|c| &c.netns))
    }

    /// Leaves the namespaces in place when the value is dropped (for `cargo xtask testbed up`).
    pub fn keep(self) -> Vec<String> {
        let names = self.namespaces().map(|ns| ns.name.clone()).collect();
        std::mem::forget(self);
        names
    }
}

/// A short id that is unique among the testbeds of live processes: process id and a counter.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes testbed namespaces: all of them, or those of processes that no longer run.
pub fn remove_leftovers(all: bool) -> anyhow::Result<Vec<String>> {
    let listing = run("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in listing.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner_alive = rest
            .split_once('x')
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if all || !owner_alive {
            run("ip", &["netns", "del", name])?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}
