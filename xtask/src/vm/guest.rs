//! `xtask vm-node NAME`: one node of the two-node test, inside its guest.
//!
//! The node builds a flannel-style overlay end: its uplink `eth0` on the virtual wire
//! (198.18.50.N/24), a pod namespace behind a veth on bridge `cni0` (10.244.N.0/24), and a
//! VXLAN device `flannel.1` (VNI 1, port 8472) towards the other node, with a route, a static
//! neighbour and the peer as the device's remote. It starts tracer with `--record` (and JSON
//! beside it) on `tcp port 10001`, says it is ready, and then does what the host tells it on
//! the console, one command a line:
//!
//! - `clock`: prints its `CLOCK_MONOTONIC` (the clock tracer stamps hops with);
//! - `go` (node a, the client): connects from its pod to node b's pod, exchanges
//!   [`ROUNDS`] messages, reads the server's close and closes with `SO_LINGER`, so that when
//!   it prints [`DONE`] the last packet of the connection (node b's acknowledgement of the
//!   FIN) has reached node a and every packet has passed both nodes' hooks;
//! - `stop`: stops tracer and writes its recording and JSON to the second disk (`/dev/vda`).
//!
//! Node b's pod serves the connection from the moment it is ready: it answers every message
//! and closes first.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    process::Stdio,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sys::socket::{setsockopt, sockopt};
use tracer_tests::{
    netns::{Netns, run},
    tracer::Tracer,
    traffic,
};

/// The pods' port, which tracer's filter names.
pub const PORT: u16 = 10001;
/// Request/response rounds of the connection.
pub const ROUNDS: usize = 20;
/// Bytes of each message.
const MESSAGE: usize = 48;
/// Printed once tracer is ready (and node b's pod listens).
pub const READY: &str = "TRACER-NODE-READY";
/// Printed by node a when the connection is over.
pub const DONE: &str = "TRACER-NODE-DONE";
/// Followed by the node's CLOCK_MONOTONIC in nanoseconds.
pub const CLOCK: &str = "TRACER-NODE-CLOCK";
/// Printed when the trace is on the disk.
pub const WRITTEN: &str = "TRACER-NODE-WRITTEN";
/// What the disk starts with: this, then the lengths of the recording and the JSON (u64, little
/// endian), then both.
pub const DISK_MAGIC: &[u8; 8] = b"TRCNODE1";
/// How long node b's pod waits for the connection.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which node this is: `a` (the client) or `b` (the server).
    node: String,
}

/// Node `a` is 1 and `b` is 2 in every address.
fn number(node: &str) -> anyhow::Result<u8> {
    match node {
        "a" => Ok(1),
        "b" => Ok(2),
        other => bail!("unknown node {other:?}"),
    }
}

/// The address of node `n`'s pod.
pub fn pod_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 244, n, 2], PORT))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, and so of tracer's hops.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to, and CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub fn run_node(args: &Args) -> anyhow::Result<()> {
    let me = number(&args.node)?;
    let peer = 3 - me;
    let pod = overlay(me, peer).context("failed to build the node's network")?;
    let record = format!("/tmp/{}.rec", args.node);
    let json = format!("/tmp/{}.json", args.node);
    let out = std::fs::File::create(&json)?;
    let tracer = Tracer::start_with_stdout(
        &["--record", &record, "-o", "json", "tcp", "port", "10001"],
        Stdio::from(out),
    )?;
    let server = if me == 2 {
        let listener = traffic::listen(&pod, pod_addr(me))?;
        Some(std::thread::spawn(move || serve(&listener)))
    } else {
        None
    };
    println!("{READY}");
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "clock" => println!("{CLOCK} {}", monotonic_ns()),
            "go" if me == 1 => {
                converse(&pod, pod_addr(peer))?;
                println!("{DONE}");
            }
            "stop" => break,
            _ => {}
        }
    }
    let finished = tracer.stop()?;
    eprint!("{}", finished.stderr);
    if !finished.status.success() {
        bail!("tracer failed: {}", finished.status);
    }
    if let Some(server) = server {
        join(server)?;
    }
    let written = write_disk(&std::fs::read(&record)?, &std::fs::read(&json)?)?;
    println!("{WRITTEN} {written} bytes");
    drop(pod);
    Ok(())
}

/// The node's end of the overlay; returns its pod's namespace.
fn overlay(me: u8, peer: u8) -> anyhow::Result<Netns> {
    let ip = |args: &[&str]| run("ip", args);
    let vtep_mac = |n: u8| format!("02:00:00:00:00:0{n}");
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["addr", "add", &format!("198.18.50.{me}/24"), "dev", "eth0"])?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    ip(&["link", "add", "cni0", "type", "bridge"])?;
    ip(&["addr", "add", &format!("10.244.{me}.1/24"), "dev", "cni0"])?;
    ip(&["link", "set", "cni0", "up"])?;
    let pod = Netns::create("pod")?;
    ip(&[
        "link", "add", "veth0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu",
        "1450", "netns", "pod",
    ])?;
    ip(&["link", "set", "veth0", "master", "cni0", "up"])?;
    pod.ip(&["addr", "add", &format!("10.244.{me}.2/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &format!("10.244.{me}.1")])?;
    ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &format!("198.18.50.{me}"),
        "remote",
        &format!("198.18.50.{peer}"),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])?;
    ip(&["link", "set", "flannel.1", "address", &vtep_mac(me)])?;
    ip(&[
        "addr",
        "add",
        &format!("10.244.{me}.0/32"),
        "dev",
        "flannel.1",
    ])?;
    ip(&["link", "set", "flannel.1", "up"])?;
    let peer_vtep = format!("10.244.{peer}.0");
    ip(&[
        "route",
        "add",
        &format!("10.244.{peer}.0/24"),
        "via",
        &peer_vtep,
        "dev",
        "flannel.1",
        "onlink",
    ])?;
    ip(&[
        "neigh",
        "replace",
        &peer_vtep,
        "lladdr",
        &vtep_mac(peer),
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ])?;
    Ok(pod)
}

/// Node b's pod: answers [`ROUNDS`] messages, then closes first.
fn serve(listener: &TcpListener) -> anyhow::Result<()> {
    let fd = listener.as_fd();
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let timeout = nix::poll::PollTimeout::try_from(ACCEPT_TIMEOUT)?;
    if nix::poll::poll(&mut fds, timeout)? == 0 {
        bail!("no connection within {ACCEPT_TIMEOUT:?}");
    }
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(traffic::IO_TIMEOUT))?;
    let mut message = [0u8; MESSAGE];
    for _ in 0..ROUNDS {
        stream.read_exact(&mut message)?;
        stream.write_all(&message)?;
    }
    Ok(())
}

/// Node a's pod: the connection, from the SYN to the acknowledgement of its FIN.
fn converse(pod: &Netns, server: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stream: TcpStream = traffic::connect_from(pod, None, server)?;
    stream.set_nodelay(true)?;
    let mut echo = [0u8; MESSAGE];
    for round in 0..ROUNDS {
        let message = [round as u8; MESSAGE];
        stream.write_all(&message)?;
        stream.read_exact(&mut echo)?;
        if echo != message {
            bail!("round {round}: the echo differs");
        }
    }
    // The server closes first; then this side's close waits for its FIN to be acknowledged.
    if stream.read(&mut echo)? != 0 {
        bail!("the server sent more than the echoes");
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 60,
    };
    setsockopt(&stream, sockopt::Linger, &linger)?;
    drop(stream);
    eprintln!(
        "tracer-vm: {ROUNDS} rounds with {server} in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn join(server: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
        .context("the pod's server failed")
}

/// Writes the trace to the second disk: [`DISK_MAGIC`], the two lengths, the two files.
fn write_disk(record: &[u8], json: &[u8]) -> anyhow::Result<usize> {
    let mut bytes = DISK_MAGIC.to_vec();
    bytes.extend_from_slice(&(record.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(record);
    bytes.extend_from_slice(json);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/vda")
        .context("no second disk at /dev/vda")?;
    disk.write_all(&bytes)?;
    disk.sync_all()?;
    Ok(bytes.len())
}
