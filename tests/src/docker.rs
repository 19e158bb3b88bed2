//! A real Docker engine for end-to-end tests: started if it is not running (without touching
//! iptables or forwarding, unless asked to make its rules), a busybox image imported from the
//! busybox-static package (there is no registry), and containers removed on drop. An engine
//! that cannot start fails the test.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{machine::which, netns::run, skip::missing};

/// Image built from `/bin/busybox`.
pub const IMAGE: &str = "tracer-busybox:latest";

/// The engine; stops what it started when dropped.
pub struct Engine {
    daemon: Option<Child>,
    /// Whether docker0 existed before, so a bridge the test's daemon created is removed.
    had_bridge: bool,
}

impl Engine {
    /// Connects to a running engine or starts one that leaves the firewall and forwarding
    /// alone. Fails where dockerd is not installed or does not start.
    pub fn ensure() -> anyhow::Result<Engine> {
        Self::ensure_with(&["--iptables=false", "--ip-forward=false"])
    }

    /// [`Engine::ensure`], a daemon it starts making its iptables rules as Docker does by
    /// default (MASQUERADE, DNAT of published ports, its FORWARD chains) in the machine's own
    /// ruleset, which the caller restores (see [`crate::firewall::RulesetGuard`]), but leaving
    /// forwarding alone.
    pub fn ensure_with_iptables() -> anyhow::Result<Engine> {
        Self::ensure_with(&["--iptables=true", "--ip-forward=false"])
    }

    /// [`Engine::ensure`], a daemon it starts set up as Docker is by default: its iptables
    /// rules, IPv4 forwarding on and the FORWARD policy DROP. The caller restores the
    /// firewall and forwarding (see [`crate::firewall::RulesetGuard`]).
    pub fn ensure_as_installed() -> anyhow::Result<Engine> {
        Self::ensure_with(&["--iptables=true"])
    }

    /// Whether the engine makes its iptables rules (its DOCKER chain is in the nat table).
    pub fn makes_iptables_rules(&self) -> bool {
        run("iptables", &["-t", "nat", "-S", "DOCKER"]).is_ok()
    }

    /// Whether the engine was started here (and so is stopped on drop).
    pub fn started_here(&self) -> bool {
        self.daemon.is_some()
    }

    fn ensure_with(options: &[&str]) -> anyhow::Result<Engine> {
        let had_bridge = Path::new("/sys/class/net/docker0").exists();
        if responds() {
            return Ok(Engine {
                daemon: None,
                had_bridge: true,
            });
        }
        if which("dockerd").is_none() {
            return Err(missing("dockerd is not installed (Debian's docker.io)"));
        }
        let log_path = std::env::temp_dir().join("tracer-test-dockerd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let daemon = Command::new("dockerd")
            .args(options)
            .arg("--ip6tables=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start dockerd")?;
        let mut engine = Engine {
            daemon: Some(daemon),
            had_bridge,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !responds() {
            if let Some(status) = engine
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                engine.daemon = None;
                return Err(missing(format!(
                    "dockerd exited with {status} as it started (log: {})",
                    log_path.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(missing(format!(
                    "dockerd did not answer within 60 s (log: {})",
                    log_path.display()
                )));
            }
            // `docker info` is the readiness check; it fails fast while the socket is absent.
            std::thread::yield_now();
        }
        Ok(engine)
    }

    /// Imports [`IMAGE`] from busybox-static unless it is there.
    pub fn ensure_image(&self) -> anyhow::Result<()> {
        if run("docker", &["image", "inspect", IMAGE]).is_ok() {
            return Ok(());
        }
        let rootfs = tempdir("tracer-busybox-rootfs")?;
        std::fs::create_dir_all(rootfs.join("bin"))?;
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .context("busybox-static is needed (cargo xtask setup installs it)")?;
        for applet in ["sh", "httpd", "wget", "sleep", "nc"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        let tar = Command::new("tar")
            .args(["-C", &rootfs.to_string_lossy(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let status = Command::new("docker")
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.context("tar output")?)
            .stdout(Stdio::null())
            .status()?;
        std::fs::remove_dir_all(&rootfs)?;
        if !status.success() {
            bail!("docker import failed: {status}");
        }
        Ok(())
    }

    /// Starts a container running `command` from [`IMAGE`].
    pub fn run(&self, name: &str, command: &[&str]) -> anyhow::Result<Container> {
        self.run_with(name, &[], command)
    }

    /// Starts a container from [`IMAGE`] with `docker run` options (`-p 8080:80`) running
    /// `command`.
    pub fn run_with(
        &self,
        name: &str,
        options: &[&str],
        command: &[&str],
    ) -> anyhow::Result<Container> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        run("docker", &args)?;
        let container = Container {
            name: name.to_owned(),
        };
        let ip = container.ip()?;
        if ip.is_empty() {
            bail!("container {name} has no address");
        }
        Ok(container)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = daemon.wait();
            if !self.had_bridge {
                let _ = run("ip", &["link", "del", "docker0"]);
            }
        }
    }
}

/// A container, removed on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// Address on the default bridge.
    pub fn ip(&self) -> anyhow::Result<String> {
        Ok(run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                &self.name,
            ],
        )?
        .trim()
        .to_owned())
    }

    /// The process id of the container's first process, in the machine's PID namespace.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let pid = run("docker", &["inspect", "-f", "{{.State.Pid}}", &self.name])?;
        match pid.trim().parse() {
            Ok(0) | Err(_) => bail!("container {} is not running (pid {pid:?})", self.name),
            Ok(pid) => Ok(pid),
        }
    }

    /// Runs a command in the container; its output, or an error if it failed.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(command);
        run("docker", &args)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.name]);
    }
}

fn responds() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tempdir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
