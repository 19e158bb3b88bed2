//! What the overlay's tests send and read besides [`crate::traffic`]: UDP datagrams with DF
//! set, a connection accepted on whichever of several listeners gets it, and the kernel's
//! counters that say where a packet went (iptables rules, link statistics, SNMP).

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, bail, ensure};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{
    netns::{Netns, run},
    traffic::IO_TIMEOUT,
};

/// Bytes of IPv4 and UDP headers in front of a datagram's payload.
pub const UDP_HEADERS: usize = 28;

/// Sends one UDP datagram of `payload` bytes from `netns` to `dst` with DF set and path MTU
/// discovery on (`IP_PMTUDISC_DO`): the sender never fragments it, and neither may a router.
pub fn send_df(netns: &Netns, dst: SocketAddr, payload: usize) -> anyhow::Result<()> {
    let socket = netns
        .enter(|| UdpSocket::bind(("0.0.0.0", 0)))?
        .with_context(|| format!("failed to open a UDP socket in {}", netns.name))?;
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: the descriptor is an open socket owned by `socket`, and the option value is a
    // c_int that lives across the call, with its size passed along.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>())?,
        )
    };
    ensure!(
        set == 0,
        "failed to set IP_MTU_DISCOVER: {}",
        std::io::Error::last_os_error()
    );
    let sent = socket
        .send_to(&vec![0x5a; payload], dst)
        .with_context(|| format!("failed to send {payload} bytes to {dst}"))?;
    ensure!(sent == payload, "sent {sent} of {payload} bytes");
    Ok(())
}

/// The size of the next datagram `socket` receives, failing after its read timeout.
pub fn recv_len(socket: &UdpSocket) -> anyhow::Result<usize> {
    let mut buf = vec![0u8; 65536];
    let (len, _) = socket.recv_from(&mut buf).context("no datagram arrived")?;
    Ok(len)
}

/// Accepts one connection on whichever of `listeners` has one first, within
/// [`IO_TIMEOUT`]: the listener's index and the connection.
pub fn accept_any(listeners: &[&TcpListener]) -> anyhow::Result<(usize, TcpStream)> {
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(IO_TIMEOUT).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, timeout)? == 0 {
        bail!("no connection arrived within {IO_TIMEOUT:?}");
    }
    let index = fds
        .iter()
        .position(|fd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
        .context("poll returned without a ready listener")?;
    let (stream, _) = listeners[index].accept()?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok((index, stream))
}

/// Whether a connection is waiting on `listener` to be accepted (without waiting for one).
pub fn pending(listener: &TcpListener) -> anyhow::Result<bool> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    Ok(poll(&mut fds, PollTimeout::ZERO)? > 0)
}

/// Packets counted by the first rule of `chain` in `table` (in `netns`) whose
/// `iptables-save` text contains `needle`.
pub fn rule_packets(netns: &Netns, table: &str, chain: &str, needle: &str) -> anyhow::Result<u64> {
    let saved = netns.exec("iptables-save", &["-c", "-t", table])?;
    let start = format!("-A {chain} ");
    for line in saved.lines() {
        // `[PACKETS:BYTES] -A CHAIN ...`
        let Some((counters, rule)) = line.split_once("] ") else {
            continue;
        };
        if rule.starts_with(&start) && rule.contains(needle) {
            let packets = counters
                .trim_start_matches('[')
                .split(':')
                .next()
                .context("no packet counter")?;
            return Ok(packets.parse()?);
        }
    }
    bail!(
        "no rule in {table} {chain} with {needle:?} in {}",
        netns.name
    )
}

/// Statistics of one link, as `ip -s link` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// The statistics of link `dev` in `netns`.
pub fn link_stats(netns: &Netns, dev: &str) -> anyhow::Result<LinkStats> {
    let json = run(
        "ip",
        &["-n", &netns.name, "-j", "-s", "link", "show", "dev", dev],
    )?;
    let links: serde_json::Value = serde_json::from_str(&json)?;
    let stats = &links[0]["stats64"];
    let read = |dir: &str, field: &str| {
        stats[dir][field]
            .as_u64()
            .with_context(|| format!("no {dir} {field} for {dev} in {}", netns.name))
    };
    Ok(LinkStats {
        rx_packets: read("rx", "packets")?,
        rx_dropped: read("rx", "dropped")?,
        tx_packets: read("tx", "packets")?,
        tx_dropped: read("tx", "dropped")?,
    })
}

/// One counter of `/proc/net/snmp` in `netns`, e.g. `("Ip", "FragFails")`.
pub fn snmp(netns: &Netns, group: &str, field: &str) -> anyhow::Result<u64> {
    // thread-self: /proc/self/net would show the namespace of the process' main thread.
    let text = netns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|line| line.starts_with(&prefix));
    let (names, values) = (rows.next(), rows.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no {group} counters in {}", netns.name);
    };
    let position = names
        .split_whitespace()
        .position(|name| name == field)
        .with_context(|| format!("no {group} {field} counter"))?;
    Ok(values
        .split_whitespace()
        .nth(position)
        .context("short counter row")?
        .parse()?)
}
