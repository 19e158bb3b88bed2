//! `tracer probe`: "why can't this container reach that service", answered in one command.
//!
//! The one place tracer sends a packet itself: from inside the chosen network namespace it
//! opens one TCP connection (or sends one UDP datagram and waits for a reply), while a trace
//! filtered on exactly that connection (its local port is chosen first) follows its packets;
//! then it prints their path and the flow's verdict, and exits 0 when the far end answered, 1
//! when not.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, bind, connect, getsockname,
        getsockopt, recv, send, socket, sockopt,
    },
};
use tokio::sync::watch;

use crate::{
    cli::{Format as FormatArg, ProbeArgs},
    correlate::verdict::Kind,
    error::{Negative, UsageError},
    kernel::hooks::HookSet,
    rules::Detail,
    session::{
        follow::Follower,
        live::{Options, Trace},
        select::{Place, Selection},
    },
};

/// How long the trace goes on after the probe ended, so that the last packets (a reset, an
/// ICMP error) are seen and complete.
const SETTLE: Duration = Duration::from_millis(300);

/// What the probe's socket saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Connected(Duration),
    Answered(Duration),
    Refused(Duration),
    NoAnswer,
    Failed(nix::errno::Errno),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        match self {
            Outcome::Connected(d) => write!(f, "connected in {:.2} ms", ms(d)),
            Outcome::Answered(d) => write!(f, "answered in {:.2} ms", ms(d)),
            Outcome::Refused(d) => write!(f, "refused in {:.2} ms", ms(d)),
            Outcome::NoAnswer => write!(f, "no answer"),
            Outcome::Failed(errno) => write!(f, "failed: {}", errno.desc()),
        }
    }
}

/// `tracer probe`.
pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    crate::privileges::check()?;
    let target = parse_target(&args.target)?;
    let selection = Selection {
        containers: args.container.iter().cloned().collect(),
        pods: args.pod.iter().cloned().collect(),
        netns: args.netns.iter().cloned().collect(),
        ..Selection::default()
    };
    let path = namespace_path(&selection).await?;
    let socket = std::thread::scope(|scope| {
        scope
            .spawn(|| open_socket(path.as_deref(), target, args.udp))
            .join()
            .expect("the socket thread does not panic")
    })?;
    let local = local_port(&socket)?;
    let proto = if args.udp { "udp" } else { "tcp" };
    let expression = format!(
        "{proto} and host {} and port {} and port {local}",
        target.ip(),
        target.port()
    );
    let (done, until) = watch::channel(false);
    let options = Options {
        expression: Some(expression),
        selection: Selection::default(),
        hooks: HookSet::parse("default").expect("the default hooks parse"),
        tc_mode: crate::kernel::tc::TcMode::Auto,
        count: None,
        duration: None,
        format: match args.output {
            FormatArg::Text => crate::output::Format::Text,
            FormatArg::Json => crate::output::Format::Json,
        },
        ring_bytes: 1 << 22,
        packet_timeout: Duration::from_millis(100),
        max_flows: 1024,
        pcapng: None,
        snap_len: None,
        kernel_btf: args.kernel_btf.clone(),
        record: None,
        html: None,
        ready_file: None,
        rules: args.rules.then_some(Detail::Acting),
        sample: 1,
        metrics: None,
        until: Some(until),
    };
    let mut trace = Trace::start(options).await?;
    eprintln!(
        "tracer: probe: sending {} to {target} from {} (port {local})",
        if args.udp {
            "one UDP datagram"
        } else {
            "one TCP connection"
        },
        describe(&selection),
    );
    let timeout = args.timeout;
    let udp = args.udp;
    let size = args.size;
    let probe = tokio::task::spawn_blocking(move || {
        let outcome = if udp {
            datagram(&socket, target, size, timeout)
        } else {
            connection(&socket, target, timeout)
        };
        // A connection closes now; its FIN and the answer are part of the trace.
        drop(socket);
        std::thread::sleep(SETTLE);
        let _ = done.send(true);
        outcome
    });
    trace.run().await?;
    let outcome = probe.await.context("the probe did not finish")?;
    let stats = trace.finish().await?;
    eprintln!("tracer: probe: {target}: {outcome}");
    if stats.verdicts.contains(&Kind::Delivered) {
        Ok(())
    } else {
        let verdict = stats
            .verdicts
            .first()
            .map_or("no packet of the probe was traced", |kind| kind.name());
        Err(Negative(format!("probe: not delivered: {verdict}")).into())
    }
}

/// `HOST:PORT` as an address: a literal IPv4 or IPv6 address, a port that is not 0.
fn parse_target(text: &str) -> Result<SocketAddr, UsageError> {
    let target: SocketAddr = text.parse().map_err(|_| {
        UsageError(format!(
            "{text:?} is not an address and port: write HOST:PORT with an IP address \
             (10.96.0.10:80, [fd00::1]:80)"
        ))
    })?;
    if target.port() == 0 {
        return Err(UsageError(format!(
            "{text}: port 0 cannot be reached: name the service's port"
        )));
    }
    Ok(target)
}

/// The path of the one namespace the selection names; none for tracer's own.
async fn namespace_path(selection: &Selection) -> anyhow::Result<Option<PathBuf>> {
    if selection.is_empty() {
        return Ok(None);
    }
    let follower = Follower::start(selection, HookSet::global()).await?;
    let inodes: Vec<u64> = follower
        .places
        .iter()
        .map(|place| match place {
            Place::Netns(inode) | Place::Interface(inode, _) => *inode,
        })
        .collect();
    let [inode] = inodes[..] else {
        return Err(UsageError(format!(
            "{} is {} network namespaces: name one",
            describe(selection),
            inodes.len()
        ))
        .into());
    };
    let namespace = follower
        .topology
        .namespaces
        .iter()
        .find(|ns| ns.inode == inode)
        .context("the selected namespace is gone")?;
    Ok((!namespace.own).then(|| namespace.path.clone()))
}

fn describe(selection: &Selection) -> String {
    let named = |kind: &str, names: &[String]| names.first().map(|n| format!("{kind} {n}"));
    named("container", &selection.containers)
        .or_else(|| named("pod", &selection.pods))
        .or_else(|| named("netns", &selection.netns))
        .unwrap_or_else(|| "tracer's own namespace".to_owned())
}

/// A socket of the probe's kind, made in the namespace at `path` (where it stays, whichever
/// thread uses it) and bound to a port the kernel chooses, so that the trace's filter can name
/// it before anything is sent.
fn open_socket(
    path: Option<&std::path::Path>,
    target: SocketAddr,
    udp: bool,
) -> anyhow::Result<OwnedFd> {
    let make = || -> anyhow::Result<OwnedFd> {
        let family = match target {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let kind = if udp {
            SockType::Datagram
        } else {
            SockType::Stream
        };
        let fd = socket(
            family,
            kind,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("failed to open the probe's socket")?;
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
        };
        bind(fd.as_raw_fd(), &SockaddrStorage::from(any))
            .context("failed to bind the probe's socket")?;
        Ok(fd)
    };
    match path {
        Some(path) => crate::netns::run_in(path, make)
            .with_context(|| format!("failed to enter {}", path.display()))?,
        None => make(),
    }
}

fn local_port(socket: &OwnedFd) -> anyhow::Result<u16> {
    let address: SockaddrStorage = getsockname(socket.as_raw_fd())?;
    address
        .as_sockaddr_in()
        .map(nix::sys::socket::SockaddrIn::port)
        .or_else(|| {
            address
                .as_sockaddr_in6()
                .map(nix::sys::socket::SockaddrIn6::port)
        })
        .context("the probe's socket has no port")
}

/// Waits until the socket is ready for `flags`, at most `timeout`; whether it is.
fn ready(socket: &OwnedFd, flags: PollFlags, timeout: Duration) -> bool {
    use std::os::fd::AsFd as _;
    let mut fds = [PollFd::new(socket.as_fd(), flags)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    poll(&mut fds, timeout).is_ok_and(|n| n > 0)
}

/// One TCP connection attempt.
fn connection(socket: &OwnedFd, target: SocketAddr, timeout: Duration) -> Outcome {
    let start = Instant::now();
    match connect(socket.as_raw_fd(), &SockaddrStorage::from(target)) {
        Ok(()) => return Outcome::Connected(start.elapsed()),
        Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(errno) => return Outcome::Failed(errno),
    }
    if !ready(socket, PollFlags::POLLOUT, timeout) {
        return Outcome::NoAnswer;
    }
    match getsockopt(socket, sockopt::SocketError) {
        Ok(0) => Outcome::Connected(start.elapsed()),
        Ok(code) if code == libc::ECONNREFUSED => Outcome::Refused(start.elapsed()),
        Ok(code) => Outcome::Failed(nix::errno::Errno::from_raw(code)),
        Err(errno) => Outcome::Failed(errno),
    }
}

/// One UDP datagram (of `size` bytes, with DF, when given), and a reply to it.
fn datagram(socket: &OwnedFd, target: SocketAddr, size: Option<u16>, timeout: Duration) -> Outcome {
    let start = Instant::now();
    if let Err(errno) = connect(socket.as_raw_fd(), &SockaddrStorage::from(target)) {
        return Outcome::Failed(errno);
    }
    let mut payload = b"tracer probe\n".to_vec();
    if let Some(size) = size {
        payload.resize(usize::from(size), b'.');
        // DF, and no fragmenting by the sender: a router refuses the datagram instead.
        if let Err(errno) = set_df(socket, target) {
            return Outcome::Failed(errno);
        }
    }
    if let Err(errno) = send(socket.as_raw_fd(), &payload, MsgFlags::empty()) {
        return Outcome::Failed(errno);
    }
    if !ready(socket, PollFlags::POLLIN, timeout) {
        return Outcome::NoAnswer;
    }
    let mut buf = [0u8; 2048];
    match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        Ok(_) => Outcome::Answered(start.elapsed()),
        // A connected UDP socket hears of an ICMP port unreachable.
        Err(nix::errno::Errno::ECONNREFUSED) => Outcome::Refused(start.elapsed()),
        Err(errno) => Outcome::Failed(errno),
    }
}

/// Sets DF on the socket's datagrams and lets it send past a path MTU it learned
/// (`IP_PMTUDISC_PROBE`), so that every probe meets the refusing router again. (nix has no
/// wrapper for this option.)
fn set_df(socket: &OwnedFd, target: SocketAddr) -> Result<(), nix::errno::Errno> {
    let (level, name, value) = match target {
        SocketAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        ),
        SocketAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        ),
    };
    // SAFETY: an open socket, and a c_int option value that lives across the call, with its
    // size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_an_address_and_a_port_that_is_not_0() {
        assert_eq!(
            parse_target("10.96.0.10:80").unwrap(),
            "10.96.0.10:80".parse().unwrap()
        );
        assert_eq!(
            parse_target("[fd00::1]:443").unwrap(),
            "[fd00::1]:443".parse().unwrap()
        );
        for bad in [
            "web:80",
            "10.96.0.10",
            "10.96.0.10:0",
            "10.96.0.10:99999",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(
            parse_target("10.0.0.1:0")
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
    }
}
