//! A real Docker engine for end-to-end tests: started if it is not running (without touching
//! iptables or forwarding), a busybox image imported from the busybox-static package (there is
//! no registry), and containers removed on drop.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::run;

/// Image built from `/bin/busybox`.
pub const IMAGE: &str = "tracer-busybox:latest";

/// The engine; stops what it started when dropped.
pub struct Engine {
    daemon: Option<Child>,
    /// Whether docker0 existed before, so a bridge the test's daemon created is removed.
    had_bridge: bool,
}

impl Engine {
    /// Connects to a running engine or starts one. `Ok(None)` with the reason printed when
    /// dockerd cannot run here, so the caller can skip.
    pub fn ensure() -> anyhow::Result<Option<Engine>> {
        Self::ensure_with(false)
    }

    /// [`Engine::ensure`], a daemon it starts making its iptables rules as Docker does by
    /// default (MASQUERADE, DNAT of published ports, its FORWARD chains): in the machine's own
    /// ruleset, which the caller restores (see [`RulesetGuard`]).
    pub fn ensure_with_iptables() -> anyhow::Result<Option<Engine>> {
        Self::ensure_with(true)
    }

    fn ensure_with(iptables: bool) -> anyhow::Result<Option<Engine>> {
        let had_bridge = Path::new("/sys/class/net/docker0").exists();
        if responds() {
            return Ok(Some(Engine {
                daemon: None,
                had_bridge: true,
            }));
        }
        if which("dockerd").is_none() {
            eprintln!("skipped: dockerd is not installed (cargo xtask setup installs docker.io)");
            return Ok(None);
        }
        let log = std::fs::File::create(std::env::temp_dir().join("tracer-test-dockerd.log"))?;
        let daemon = Command::new("dockerd")
            .args([
                if iptables {
                    "--iptables=true"
                } else {
                    "--iptables=false"
                },
                "--ip6tables=false",
                "--ip-forward=false",
            ])
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
                eprintln!(
                    "skipped: dockerd exited with {status} (see {})",
                    std::env::temp_dir()
                        .join("tracer-test-dockerd.log")
                        .display()
                );
                engine.daemon = None;
                return Ok(None);
            }
            if Instant::now() > deadline {
                eprintln!("skipped: dockerd did not answer within 60 s");
                return Ok(None);
            }
            // `docker info` is the readiness check; it fails fast while the socket is absent.
            std::thread::yield_now();
        }
        Ok(Some(engine))
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

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.exists())
    })
}

fn tempdir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The machine's nf_tables ruleset and IPv4 forwarding as they were, put back on drop: Docker
/// with iptables leaves its rules behind when it stops.
pub struct RulesetGuard {
    ruleset: String,
    forwarding: String,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl RulesetGuard {
    pub fn save() -> anyhow::Result<RulesetGuard> {
        Ok(RulesetGuard {
            ruleset: run("nft", &["-s", "list", "ruleset"])?,
            forwarding: std::fs::read_to_string(IP_FORWARD)?,
        })
    }
}

impl Drop for RulesetGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(IP_FORWARD, &self.forwarding);
        if run("nft", &["-s", "list", "ruleset"]).is_ok_and(|now| now == self.ruleset) {
            return;
        }
        // `flush ruleset` leaves tables with an owner (a running tracer's) alone.
        let _ = run("nft", &["flush", "ruleset"]);
        if self.ruleset.trim().is_empty() {
            return;
        }
        let path = std::env::temp_dir().join(format!("tracer-ruleset-{}", std::process::id()));
        if std::fs::write(&path, &self.ruleset).is_ok() {
            let _ = run("nft", &["-f", &path.to_string_lossy()]);
            let _ = std::fs::remove_file(&path);
        }
    }
}
