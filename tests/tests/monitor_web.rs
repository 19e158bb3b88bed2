//! `tracer monitor --web-config`: the endpoint over TLS with basic authentication, as the README
//! sets it up, scraped by a real Prometheus (Debian's) over HTTPS with a password; refused to
//! plain HTTP, to no password and to a wrong one; the file read again when it changes; bad
//! files refused before anything is served. And the accept loop when the process runs out of
//! file descriptors: it does not spin, and serves again once descriptors are free.

use std::{
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tracer_tests::{
    machine::{TempDir, which},
    prometheus::{Prometheus, get, wait_until},
    skip::missing,
    tracer::{self, Tracer},
};

const METRICS: u16 = 19_591;
const PROMETHEUS: u16 = 19_592;

/// A certificate for `localhost` and 127.0.0.1, and its key, made with openssl.
fn certificate(dir: &Path) -> anyhow::Result<()> {
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .map_err(|err| missing(format!("openssl: {err}")))?;
    if !made.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&made.stderr));
    }
    Ok(())
}

/// `htpasswd -nbB USER PASSWORD`'s bcrypt hash, as a user would make it.
fn bcrypt(user: &str, password: &str) -> anyhow::Result<String> {
    let htpasswd = which("htpasswd")
        .ok_or_else(|| missing("htpasswd is not installed (Debian's apache2-utils)"))?;
    let made = Command::new(htpasswd)
        .args(["-nbB", user, password])
        .output()?;
    let line = String::from_utf8(made.stdout)?;
    let (_, hash) = line
        .trim()
        .split_once(':')
        .context("htpasswd wrote no user:hash")?;
    Ok(hash.to_owned())
}

/// The status code curl gets for `url`, with `extra` arguments.
fn status(url: &str, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(extra)
        .arg(url)
        .output()
        .map_err(|err| missing(format!("curl: {err}")))?;
    Ok(String::from_utf8(out.stdout)?)
}

/// Headers and body curl gets for `url`.
fn fetch(url: &str, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "5"])
        .args(extra)
        .arg(url)
        .output()?;
    Ok(String::from_utf8(out.stdout)?)
}

fn web_config(dir: &Path, hash: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS12\n\
         basic_auth_users:\n  prometheus: {hash}\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

#[test]
fn prometheus_scrapes_over_tls_with_a_password_and_nothing_else_gets_in() -> anyhow::Result<()> {
    let dir = TempDir::new("tracer-test-web")?;
    certificate(dir.path())?;
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        web_config(dir.path(), &bcrypt("prometheus", "s3cret")?),
    )?;
    let address = format!("127.0.0.1:{METRICS}");
    let monitor = Tracer::start(&[
        "monitor",
        "--metrics",
        &address,
        "--web-config",
        config.to_str().context("path")?,
    ])?;
    let ca = dir.path().join("cert.pem");
    let ca = ca.to_str().context("path")?;
    let https = |path: &str| format!("https://localhost:{METRICS}{path}");
    let tls = ["--cacert", ca];

    let good = fetch(
        &https("/metrics"),
        &["--cacert", ca, "-u", "prometheus:s3cret"],
    )?;
    assert!(good.starts_with("HTTP/1.1 200"), "{good}");
    assert!(good.contains("tracer_ready 1"), "{good}");
    assert!(
        good.to_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{good}"
    );
    for path in ["/metrics", "/ready", "/healthz"] {
        assert_eq!(
            status(&https(path), &tls)?,
            "401",
            "{path} without a password"
        );
        assert_eq!(
            status(&https(path), &["--cacert", ca, "-u", "prometheus:wrong"])?,
            "401",
            "{path} with a wrong password"
        );
        assert_eq!(
            status(&https(path), &["--cacert", ca, "-u", "someone:s3cret"])?,
            "401",
            "{path} as an unknown user"
        );
    }
    assert_eq!(
        status(
            &https("/ready"),
            &["--cacert", ca, "-u", "prometheus:s3cret"]
        )?,
        "200"
    );
    // Plain HTTP is refused, with the reason.
    let plain = get(METRICS, "/metrics")?;
    assert!(plain.starts_with("HTTP/1.0 400"), "{plain}");
    assert!(plain.contains("HTTPS server"), "{plain}");

    // Prometheus, configured as the README shows, scrapes it.
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret")?;
    let prometheus = Prometheus::start(
        PROMETHEUS,
        &format!(
            "  - job_name: tracer\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
             \x20   basic_auth:\n      username: prometheus\n      password_file: {}\n\
             \x20   static_configs:\n      - targets: ['localhost:{METRICS}']\n",
            password.display()
        ),
    )?;
    wait_until("Prometheus has scraped the monitor over TLS", || {
        Ok(prometheus.scalar("tracer_ready{job=\"tracer\"}")? == Some(1.0))
    })
    .with_context(|| format!("targets: {:?}", prometheus.targets()))?;
    assert_eq!(prometheus.scalar("up{job=\"tracer\"}")?, Some(1.0));

    // A new password in the file takes over without a restart.
    std::fs::write(
        &config,
        web_config(dir.path(), &bcrypt("prometheus", "n3w")?),
    )?;
    wait_until("the monitor reads its new web configuration", || {
        Ok(status(
            &https("/metrics"),
            &["--cacert", ca, "-u", "prometheus:n3w"],
        )? == "200")
    })?;
    assert_eq!(
        status(
            &https("/metrics"),
            &["--cacert", ca, "-u", "prometheus:s3cret"]
        )?,
        "401"
    );
    drop(prometheus);
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}

#[test]
fn a_bad_web_config_is_one_line_and_nothing_is_served() -> anyhow::Result<()> {
    let dir = TempDir::new("tracer-test-web")?;
    certificate(dir.path())?;
    let hash = bcrypt("prometheus", "s3cret")?;
    let unreadable_cert = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        dir.path().join("missing.pem").display(),
        dir.path().join("key.pem").display()
    );
    let cases = [
        ("missing", None, "cannot read"),
        (
            "yaml",
            Some("basic_auth_users: [\n".to_owned()),
            "is not a web configuration",
        ),
        (
            "key",
            Some("tls_server_config_x: {}\n".to_owned()),
            "unknown field",
        ),
        ("cert", Some(unreadable_cert), "cannot read the certificate"),
        (
            "hash",
            Some("basic_auth_users:\n  prometheus: s3cret\n".to_owned()),
            "not a bcrypt hash",
        ),
    ];
    assert!(!hash.is_empty());
    let address = format!("127.0.0.1:{}", METRICS + 10);
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.yml"));
        if let Some(text) = text {
            std::fs::write(&path, text)?;
        }
        let run = tracer::run(&[
            "monitor",
            "--metrics",
            &address,
            "--web-config",
            path.to_str().context("path")?,
        ])?;
        assert_eq!(run.status.code(), Some(2), "{name}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{name}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
        assert!(
            TcpStream::connect(&address).is_err(),
            "{name}: something listens on {address}"
        );
    }
    Ok(())
}

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = (fields[11].parse::<u64>()? + fields[12].parse::<u64>()?) as f64;
    // SAFETY: sysconf has no memory effects.
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

#[test]
fn out_of_descriptors_the_endpoint_waits_instead_of_spinning_and_recovers() -> anyhow::Result<()> {
    let address = format!("127.0.0.1:{}", METRICS + 20);
    let monitor = Tracer::start(&["monitor", "--metrics", &address])?;
    let pid = monitor.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    // A few descriptors to spare, then more connections than that, held open.
    let limit = format!("--nofile={0}:{0}", open + 4);
    let set = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .output()
        .map_err(|err| missing(format!("prlimit (util-linux): {err}")))?;
    assert!(
        set.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    let held: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(&address))
        .collect::<Result<_, _>>()?;
    monitor.wait_for_line(Duration::from_secs(10), |line| {
        line.contains("cannot accept connections")
    })?;
    // Over two seconds of descriptors exhausted, the accept loop waits between tries.
    let (before, start) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid)? - before;
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        used < 0.25 * elapsed,
        "the monitor used {used:.2} s of CPU in {elapsed:.2} s while out of descriptors"
    );
    drop(held);
    monitor.wait_for_line(Duration::from_secs(10), |line| {
        line.contains("accepts connections again")
    })?;
    wait_until("the endpoint answers again", || {
        Ok(get(METRICS + 20, "/healthz").is_ok_and(|r| r.starts_with("HTTP/1.0 200")))
    })?;
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}
