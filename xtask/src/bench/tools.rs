//! The outside programs the benchmarks drive inside the testbed's namespaces: an iperf3 server
//! and client, and tcpdump (started once it listens, stopped with SIGINT like Ctrl-C, its own
//! drop count read back); and tracer's closing count of lost events.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tracer_tests::{netns::Netns, testbed::SERVER_ADDR};

/// The port iperf3 listens on in the remote namespace.
pub const IPERF_PORT: u16 = 5201;

/// Lost events from tracer's closing line on stderr (`tracer: N events, M lost, ...`).
pub fn lost_from(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix("tracer: ")?;
            let (_, rest) = rest.split_once(" events, ")?;
            rest.split(" lost").next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Peak memory in MiB from tracer's closing line (`...; peak memory 22.7 MiB`).
pub fn peak_mib(stderr: &str) -> Option<f64> {
    stderr.lines().find_map(|line| {
        line.split_once("; peak memory ")?
            .1
            .strip_suffix(" MiB")?
            .parse::<f64>()
            .ok()
    })
}

/// Packets traced, from tracer's closing line (`...; 3 packets in 1 flows; ...`).
pub fn packets_from(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let (before, _) = line.split_once(" packets in ")?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// Runs `iperf3 -c SERVER_ADDR -p IPERF_PORT -J ARGS` in `client` and returns its report.
pub fn iperf3(client: &Netns, args: &[&str]) -> anyhow::Result<Value> {
    let (server, port) = (SERVER_ADDR.to_string(), IPERF_PORT.to_string());
    let mut full = vec!["-c", &server, "-p", &port, "-J"];
    full.extend_from_slice(args);
    let output = client.exec("iperf3", &full)?;
    let report: Value =
        serde_json::from_str(&output).context("failed to parse the iperf3 -J report")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 failed: {error}");
    }
    Ok(report)
}

/// iperf3 server in a namespace, killed on drop.
pub struct IperfServer(Child);

impl IperfServer {
    pub fn start(netns: &Netns) -> anyhow::Result<IperfServer> {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "iperf3", "-s", "-B"])
            .arg(SERVER_ADDR.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start the iperf3 server")?;
        let server = IperfServer(child);
        // Ready when it accepts a connection.
        let addr = SocketAddr::from((SERVER_ADDR, IPERF_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        while netns
            .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)))?
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("iperf3 server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump on one interface of a namespace. Dropping it stops it too (for the error paths).
pub struct Tcpdump {
    child: Option<Child>,
    iface: String,
    stderr: Option<JoinHandle<String>>,
}

impl Tcpdump {
    /// Starts `tcpdump -i IFACE ARGS` in `netns` and returns once it says it is listening.
    pub fn start(netns: &Netns, iface: &str, args: &[&str]) -> anyhow::Result<Tcpdump> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "tcpdump", "-i", iface])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        // Keeps reading stderr so tcpdump never blocks on it, and keeps it for the drop count.
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut tcpdump = Tcpdump {
            child: Some(child),
            iface: iface.to_owned(),
            stderr: Some(stderr),
        };
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            let said = tcpdump.stop().unwrap_or_default();
            bail!("tcpdump on {iface} did not start: {}", said.stderr.trim());
        }
        Ok(tcpdump)
    }

    /// Stops tcpdump with SIGINT and returns what it said, with its drop count.
    pub fn stop(&mut self) -> anyhow::Result<Stopped> {
        let mut child = self.child.take().context("tcpdump already stopped")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .context("failed to signal tcpdump")?;
        child.wait().context("failed to wait for tcpdump")?;
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Ok(Stopped {
            dropped: dropped_by_kernel(&stderr),
            stderr,
        })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// A stopped tcpdump's stderr and the drops it reported.
#[derive(Debug, Default)]
pub struct Stopped {
    pub stderr: String,
    /// "N packets dropped by kernel"; `None` if tcpdump did not say.
    pub dropped: Option<u64>,
}

/// The count of tcpdump's closing "N packets dropped by kernel" line.
fn dropped_by_kernel(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        line.trim()
            .strip_suffix(" packets dropped by kernel")
            .or_else(|| line.trim().strip_suffix(" packet dropped by kernel"))?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tracer_closing_line() {
        let stderr = "tracer: ready\ntracer: 1234 events, 56 lost, 7 packets\n";
        assert_eq!(lost_from(stderr), 56);
        assert_eq!(lost_from("tracer: ready\n"), 0);
        let closing = "tracer: ready\ntracer: 9 events, 0 lost, 0 malformed; 3 packets in 1 flows; peak memory 22.7 MiB\n";
        assert_eq!(peak_mib(closing), Some(22.7));
        assert_eq!(packets_from(closing), Some(3));
        assert_eq!(peak_mib("tracer: ready\n"), None);
        assert_eq!(packets_from("tracer: ready\n"), None);
    }

    #[test]
    fn reads_tcpdump_drops() {
        let stderr = "tcpdump: listening on eth0, link-type EN10MB (Ethernet), snapshot length 128 bytes\n\
                      3035 packets captured\n3040 packets received by filter\n5 packets dropped by kernel\n";
        assert_eq!(dropped_by_kernel(stderr), Some(5));
        assert_eq!(dropped_by_kernel("1 packet dropped by kernel\n"), Some(1));
        assert_eq!(dropped_by_kernel("tcpdump: listening\n"), None);
    }
}
