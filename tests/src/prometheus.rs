//! A Prometheus server of the test's own (Debian's `prometheus`), scraping every second with
//! the scrape configuration the test gives; stopped and its data removed on drop.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    busybox::http_get,
    machine::{TempDir, which},
    skip::missing,
};

pub struct Prometheus {
    child: Child,
    /// Where its HTTP API listens.
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with its API on 127.0.0.1:`port` and `scrape_configs` (YAML, the
    /// list under `scrape_configs:`, indented by two spaces), and waits until it is ready.
    pub fn start(port: u16, scrape_configs: &str) -> anyhow::Result<Prometheus> {
        let binary = which("prometheus")
            .ok_or_else(|| missing("prometheus is not installed (Debian's prometheus)"))?;
        let dir = TempDir::new("tracer-test-prometheus")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
                 {scrape_configs}"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start prometheus")?;
        let prometheus = Prometheus { child, port, dir };
        wait_until("Prometheus is ready", || {
            Ok(get(port, "/-/ready").is_ok_and(|r| r.starts_with("HTTP/1.0 200")))
        })?;
        Ok(prometheus)
    }

    /// The directory of its configuration, data and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The value of an instant query that yields one number, if it yields one.
    pub fn scalar(&self, query: &str) -> anyhow::Result<Option<f64>> {
        let response = get(self.port, &format!("/api/v1/query?query={}", encode(query)))?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let value: Value = serde_json::from_str(body).with_context(|| response.clone())?;
        if value["status"] != "success" {
            bail!("query {query} failed: {value}");
        }
        Ok(value["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok()))
    }

    /// The health and last error of the scrape targets, from its API.
    pub fn targets(&self) -> anyhow::Result<Value> {
        let response = get(self.port, "/api/v1/targets")?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).with_context(|| response.clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` from 127.0.0.1:`port`: the whole response.
pub fn get(port: u16, path: &str) -> anyhow::Result<String> {
    http_get(None, SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// Percent-encodes a query for a URL.
pub fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `check` until it is true, for at most 30 s.
pub fn wait_until(
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check()? {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
