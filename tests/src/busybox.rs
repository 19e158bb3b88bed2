//! The busybox containers that the runtime harnesses run: their root file system (from the
//! busybox-static package; there is no registry), the web server in them, and the checks a
//! test makes against it (the port listening in the container's namespace, an HTTP GET).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{machine::wait_for, netns::Netns, traffic};

/// The busybox applets linked into every root file system.
pub const APPLETS: &[&str] = &["sh", "httpd", "wget", "sleep", "nc"];
/// The page the web server serves at `/` (`/index.html` in the root file system).
pub const PAGE: &str = "tracer test page\n";
/// How long a server may take to listen after its container started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Fills `dir` with a root file system: `/bin/busybox`, its [`APPLETS`] as symlinks, and
/// `/index.html` holding [`PAGE`].
pub fn rootfs(dir: &Path) -> anyhow::Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("failed to create {}", bin.display()))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("failed to copy /bin/busybox (busybox-static is needed: cargo xtask setup)")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("failed to link the {applet} applet"))?;
    }
    std::fs::write(dir.join("index.html"), PAGE).context("failed to write index.html")?;
    Ok(())
}

/// The command that serves the root file system over HTTP on `port`, in the foreground.
pub fn httpd(port: u16) -> Vec<String> {
    ["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/"]
        .map(str::to_owned)
        .to_vec()
}

/// Whether a TCP socket of process `pid`'s network namespace listens on `port` (IPv4 or
/// IPv6, any address), from `/proc/PID/net/tcp{,6}`: no need to enter the namespace.
pub fn listening(pid: u32, port: u16) -> anyhow::Result<bool> {
    let port = format!("{port:04X}");
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        // sl local_address rem_address st ...: local "ADDR:PORT" in hex, state 0A is LISTEN.
        let found = text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&"0A")
                && fields
                    .get(1)
                    .and_then(|local| local.rsplit(':').next())
                    .is_some_and(|p| p == port)
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Waits until something in process `pid`'s network namespace listens on `port`. Fails at
/// once if the process is gone, and after [`READY_TIMEOUT`] otherwise.
pub fn wait_listening(pid: u32, port: u16) -> anyhow::Result<()> {
    wait_for(
        &format!("port {port} listening in the namespace of process {pid}"),
        READY_TIMEOUT,
        || match listening(pid, port) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(err) => Some(Err(err)),
        },
    )?
    .with_context(|| format!("process {pid} is gone"))
}

/// `GET path` over HTTP/1.0 to `server`, from namespace `from` (or the calling thread's own
/// when `None`); the whole response, status line first.
pub fn http_get(from: Option<&Netns>, server: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = match from {
        Some(netns) => traffic::connect_from(netns, None, server)?,
        None => {
            let stream = TcpStream::connect_timeout(&server, traffic::IO_TIMEOUT)
                .with_context(|| format!("failed to connect to {server}"))?;
            stream.set_read_timeout(Some(traffic::IO_TIMEOUT))?;
            stream.set_write_timeout(Some(traffic::IO_TIMEOUT))?;
            stream
        }
    };
    // One write: `write!` on the stream would send each piece of the format on its own, and
    // a server that answers the first bytes and closes (an HTTPS server refusing plain HTTP)
    // would then reset the connection under the rest.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {server}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("failed to send a request to {server}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("failed to read the response from {server}"))?;
    if !response.starts_with("HTTP/") {
        bail!("{server} answered something other than HTTP: {response:?}");
    }
    Ok(response)
}

/// [`http_get`] of `/`, checked to be `200 OK` with [`PAGE`] as its body.
pub fn get_page(from: Option<&Netns>, server: SocketAddr) -> anyhow::Result<()> {
    let response = http_get(from, server, "/")?;
    let ok = response
        .lines()
        .next()
        .is_some_and(|status| status.contains(" 200 "));
    if !ok || !response.ends_with(PAGE) {
        bail!("{server} did not serve the test page: {response:?}");
    }
    Ok(())
}
