//! Traffic between testbed namespaces: sockets created inside a namespace stay in it, so a
//! test thread enters the namespace only for the `socket`/`bind`/`connect` call.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
    sockopt::{Linger, ReuseAddr, TcpUserTimeout},
};

use crate::netns::Netns;

/// Bounds every blocking socket call, so a broken path fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener on `addr` inside `netns`.
pub fn listen(netns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = netns
        .enter(|| TcpListener::bind(addr))?
        .with_context(|| format!("failed to listen on {addr} in {}", netns.name))?;
    Ok(listener)
}

/// A TCP connection from `netns` to `dst`, from source port `src_port` if given.
pub fn connect_from(
    netns: &Netns,
    src_port: Option<u16>,
    dst: SocketAddr,
) -> anyhow::Result<TcpStream> {
    let stream = netns
        .enter(|| -> anyhow::Result<TcpStream> {
            let family = match dst {
                SocketAddr::V4(_) => AddressFamily::Inet,
                SocketAddr::V6(_) => AddressFamily::Inet6,
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            // Bounds the handshake too: a lost SYN fails the test in IO_TIMEOUT, not after
            // the two minutes of the kernel's SYN retries.
            let user_timeout = u32::try_from(IO_TIMEOUT.as_millis())?;
            setsockopt(&fd, TcpUserTimeout, &user_timeout)?;
            if let Some(port) = src_port {
                setsockopt(&fd, ReuseAddr, &true)?;
                let any: SocketAddr = match dst {
                    SocketAddr::V4(_) => ([0, 0, 0, 0], port).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
                };
                bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &SockaddrStorage::from(any),
                )?;
            }
            connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrStorage::from(dst),
            )?;
            Ok(TcpStream::from(fd))
        })?
        .with_context(|| format!("failed to connect from {} to {dst}", netns.name))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// A TCP connection from `netns` to `dst` that must complete within `within`: the connect is
/// started without blocking and its socket polled for the outcome, so a connection whose SYN
/// is dropped fails after `within` (the kernel's retransmissions in between), not after its
/// two minutes of retries.
pub fn connect_within(
    netns: &Netns,
    dst: SocketAddr,
    within: Duration,
) -> anyhow::Result<TcpStream> {
    let stream = netns.enter(|| -> anyhow::Result<TcpStream> {
        let family = match dst {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(dst),
        ) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(err) => return Err(err.into()),
        }
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLOUT,
        )];
        let timeout =
            nix::poll::PollTimeout::try_from(within).unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut fds, timeout)? == 0 {
            anyhow::bail!("no answer from {dst} within {within:?}");
        }
        let error = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)?;
        if error != 0 {
            anyhow::bail!(
                "connecting to {dst}: {}",
                std::io::Error::from_raw_os_error(error)
            );
        }
        let stream = TcpStream::from(fd);
        stream.set_nonblocking(false)?;
        Ok(stream)
    })??;
    Ok(stream)
}

/// Accepts one connection on `listener`, failing after [`IO_TIMEOUT`].
pub fn accept(listener: &TcpListener) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(false)?;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    // `accept` has no timeout; poll(2) on the listener gives one without sleeping.
    let fd = std::os::fd::AsFd::as_fd(listener);
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let remaining = deadline.saturating_duration_since(std::time::Instant::now());
    let timeout =
        nix::poll::PollTimeout::try_from(remaining).unwrap_or(nix::poll::PollTimeout::MAX);
    if nix::poll::poll(&mut fds, timeout)? == 0 {
        anyhow::bail!("no connection arrived within {IO_TIMEOUT:?}");
    }
    let (stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One full TCP exchange: connect from `client` to `dst` (listened on by `listener`), accept,
/// send a line each way, close. When it returns, the handshake and data have crossed every hop.
pub fn exchange(
    client: &Netns,
    src_port: Option<u16>,
    dst: SocketAddr,
    listener: &TcpListener,
) -> anyhow::Result<()> {
    let mut outgoing = connect_from(client, src_port, dst)?;
    let mut incoming = accept(listener)?;
    outgoing.write_all(b"ping\n")?;
    let mut buf = [0u8; 5];
    incoming.read_exact(&mut buf)?;
    incoming.write_all(b"pong\n")?;
    outgoing.read_exact(&mut buf)?;
    Ok(())
}

/// [`exchange`], ended by a reset from the client (`SO_LINGER` 0) instead of a close: neither
/// end keeps the connection in TIME_WAIT, so the same source port can connect to `dst` again
/// at once, and with the same tuple beyond a MASQUERADE that keeps the port. Returns once the
/// server has seen the reset (so has every hop and conntrack on its way).
pub fn exchange_then_reset(
    client: &Netns,
    src_port: Option<u16>,
    dst: SocketAddr,
    listener: &TcpListener,
) -> anyhow::Result<()> {
    let mut outgoing = connect_from(client, src_port, dst)?;
    let mut incoming = accept(listener)?;
    outgoing.write_all(b"ping\n")?;
    let mut buf = [0u8; 5];
    incoming.read_exact(&mut buf)?;
    incoming.write_all(b"pong\n")?;
    outgoing.read_exact(&mut buf)?;
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&outgoing, Linger, &abort)?;
    drop(outgoing);
    match incoming.read(&mut buf) {
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => anyhow::bail!("the server read {other:?} where the client's reset was due"),
    }
}

/// A UDP socket bound to `addr` inside `netns`.
pub fn udp_bind(netns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = netns
        .enter(|| UdpSocket::bind(addr))?
        .with_context(|| format!("failed to bind {addr} in {}", netns.name))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(socket)
}
