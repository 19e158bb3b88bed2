//! A real rootful Podman, run as a user runs it: containers and pods on Podman's default
//! bridge network (`podman`, 10.88.0.0/16) from a busybox image imported from the
//! busybox-static package (there is no registry), removed again on drop.
//!
//! Podman networks through netavark (bridge `podman0`, chains `NETAVARK-*`) or, on older
//! set-ups, the CNI plugins (bridge `cni-podman0`, chains `CNI-*`); [`Backend`] picks one. Either
//! way each container gets a namespace `/run/netns/netns-<uuid>` (the `SandboxKey` that
//! `podman inspect` reports). Both leave chains, forwarding and (CNI) the bridge behind; the
//! harness removes its containers and pods, deletes a bridge that was not there before and
//! restores the firewall and forwarding through a [`MachineGuard`]. Connections to published
//! ports get through FORWARD also where its policy is DROP, by rules of the harness's own
//! ([`ForwardAllowance`]).
//!
//! Every `podman` command of the harness reads a `containers.conf` of its own
//! (`CONTAINERS_CONF`): this sandbox refuses Podman's default rlimits, and a pod's infra
//! container takes no `--ulimit`, so `default_ulimits` is set there.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, bail};

use crate::{
    busybox,
    firewall::ForwardAllowance,
    machine::{MachineGuard, TempDir, which},
    netns::run,
    skip::missing,
};

/// The image every container runs: busybox with [`busybox::APPLETS`], `/index.html`, and
/// `/bin/sleep 3600` as its command, which makes it a pod's infra ("pause") image too.
pub const IMAGE: &str = "localhost/tracer-busybox:latest";
/// Label on [`IMAGE`] whose value says which version of the harness built it.
const IMAGE_LABEL: &str = "io.tracer.test-image";
/// Raised whenever what [`Podman::ensure_image`] puts into the image changes.
const IMAGE_VERSION: &str = "1";
/// Podman's default network.
pub const NETWORK: &str = "podman";
/// What `podman run` gets on top of its defaults: the rlimits this sandbox accepts.
const ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];
/// CNI's host-local state, which Podman's CNI backend creates.
const CNI_STATE: &str = "/var/lib/cni";

/// The network backend Podman runs containers with. Both give the default network
/// 10.88.0.0/16, so harnesses of different backends must not run at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Whatever this machine's Podman uses (`podman info`: `networkBackend`).
    Configured,
    /// netavark: bridge `podman0`, `NETAVARK-*` chains.
    Netavark,
    /// The CNI plugins: bridge `cni-podman0`, `CNI-*` chains.
    Cni,
}

/// The Podman harness. Dropping it removes every container and pod it made, then restores
/// the machine.
pub struct Podman {
    /// `netavark` or `cni`.
    backend: String,
    /// The default network's bridge.
    bridge: String,
    /// Whether the bridge existed before, so one that Podman creates is deleted.
    had_bridge: bool,
    /// Whether CNI's host-local state existed before.
    had_cni_state: bool,
    /// Names made through the harness, removed on drop (newest first).
    made: Mutex<Vec<Made>>,
    /// The harness's containers.conf.
    conf: PathBuf,
    // Field order is drop order: the FORWARD rules and the configuration, then the machine
    // is restored.
    _forward: ForwardAllowance,
    _conf_dir: TempDir,
    _machine: MachineGuard,
}

#[derive(Debug)]
enum Made {
    Container(String),
    Pod(String),
}

impl Podman {
    /// [`Podman::ensure_with`] the backend this machine's Podman is configured with.
    pub fn ensure() -> anyhow::Result<Podman> {
        Self::ensure_with(Backend::Configured)
    }

    /// Checks that rootful Podman works here with `backend`. Fails where it is not installed,
    /// `podman info` fails or its default network cannot be used.
    pub fn ensure_with(backend: Backend) -> anyhow::Result<Podman> {
        if which("podman").is_none() {
            return Err(missing("podman is not installed"));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(missing("root (the tests run rootful Podman)"));
        }
        let configured = run("podman", &["info", "--format", "{{.Host.NetworkBackend}}"])
            .map_err(|err| missing(format!("a working Podman (podman info: {err:#})")))?;
        let configured = configured.trim().to_owned();
        let backend = match backend {
            Backend::Configured => configured,
            Backend::Netavark => "netavark".to_owned(),
            Backend::Cni => "cni".to_owned(),
        };
        // Saved before Podman touches anything.
        let machine = MachineGuard::acquire()?;
        let conf_dir = TempDir::new("tracer-podman")?;
        let conf = conf_dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"{backend}\"\n"
            ),
        )
        .context("failed to write containers.conf")?;
        let had_cni_state = Path::new(CNI_STATE).exists();
        let network = podman(
            &conf,
            &[
                "network",
                "inspect",
                NETWORK,
                "--format",
                "{{.NetworkInterface}} {{(index .Subnets 0).Subnet}}",
            ],
        )
        .map_err(|err| {
            missing(format!(
                "Podman's {NETWORK} network with {backend} ({err:#})"
            ))
        })?;
        let (bridge, subnet) = network
            .trim()
            .split_once(' ')
            .with_context(|| format!("podman network inspect printed {network:?}"))?;
        // Podman's own FORWARD rules accept what its containers send and the replies, not a
        // connection to a published port: where the policy is DROP (Docker sets it so), that
        // needs rules of the test's own.
        let forward = ForwardAllowance::insert(subnet, "tracer-test-podman")
            .context("failed to let Podman's network through FORWARD")?;
        Ok(Podman {
            backend,
            bridge: bridge.to_owned(),
            had_bridge: Path::new("/sys/class/net").join(bridge).exists(),
            had_cni_state,
            made: Mutex::new(Vec::new()),
            conf,
            _forward: forward,
            _conf_dir: conf_dir,
            _machine: machine,
        })
    }

    /// The network backend in use: `netavark` or `cni`.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The bridge of Podman's default network (`podman0`, `cni-podman0`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The gateway of Podman's default network: the bridge's address, a local address of
    /// the machine through which published ports are reached from the machine itself.
    pub fn gateway(&self) -> anyhow::Result<Ipv4Addr> {
        let gateway = self.podman(&[
            "network",
            "inspect",
            NETWORK,
            "--format",
            "{{(index .Subnets 0).Gateway}}",
        ])?;
        gateway
            .trim()
            .parse()
            .with_context(|| format!("podman network inspect printed {gateway:?}"))
    }

    /// Runs `podman ARGS` with the harness's configuration; its stdout.
    pub fn podman(&self, args: &[&str]) -> anyhow::Result<String> {
        podman(&self.conf, args)
    }

    /// Imports [`IMAGE`] (`podman import`) unless this version of it is there.
    pub fn ensure_image(&self) -> anyhow::Result<()> {
        let label = format!("{{{{index .Config.Labels \"{IMAGE_LABEL}\"}}}}");
        if self
            .podman(&["image", "inspect", "--format", &label, IMAGE])
            .is_ok_and(|version| version.trim() == IMAGE_VERSION)
        {
            return Ok(());
        }
        let rootfs = TempDir::new("tracer-podman-rootfs")?;
        busybox::rootfs(rootfs.path())?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs.path())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to run tar")?;
        let output = Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args([
                "import",
                "--change",
                r#"CMD ["/bin/sleep", "3600"]"#,
                "--change",
                &format!("LABEL {IMAGE_LABEL}={IMAGE_VERSION}"),
                "-",
                IMAGE,
            ])
            .stdin(tar.stdout.take().context("tar has no output")?)
            .output()
            .context("failed to run podman import")?;
        let tarred = tar.wait().context("failed to wait for tar")?;
        if !tarred.success() || !output.status.success() {
            bail!(
                "podman import of {IMAGE} failed ({tarred}, {}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts container `name` from [`IMAGE`] running `command` on Podman's default network,
    /// publishing `(host_port, container_port)` if given. With a port published, returns once
    /// the container listens on it.
    pub fn run(
        &self,
        name: &str,
        publish: Option<(u16, u16)>,
        command: &[&str],
    ) -> anyhow::Result<PodmanContainer> {
        let port = publish.map(|(host, container)| format!("{host}:{container}"));
        let mut options = Vec::new();
        if let Some(port) = &port {
            options.extend(["-p", port.as_str()]);
        }
        self.start(name, &options, publish.map(|(_, c)| c), command)
    }

    /// Creates pod `name`, its infra container from [`IMAGE`], publishing
    /// `(host_port, container_port)` if given (ports of a pod are published on the pod).
    pub fn pod(&self, name: &str, publish: Option<(u16, u16)>) -> anyhow::Result<PodmanPod> {
        let mut args = vec!["pod", "create", "--name", name, "--infra-image", IMAGE];
        let port = publish.map(|(host, container)| format!("{host}:{container}"));
        if let Some(port) = &port {
            args.extend(["-p", port.as_str()]);
        }
        self.remember(Made::Pod(name.to_owned()));
        self.podman(&args)?;
        Ok(PodmanPod {
            name: name.to_owned(),
            container_port: publish.map(|(_, c)| c),
            conf: self.conf.clone(),
        })
    }

    /// Starts container `name` in `pod` (which starts the pod's infra container first),
    /// running `command`. Returns once it listens on the pod's published port, if any.
    pub fn run_in_pod(
        &self,
        pod: &PodmanPod,
        name: &str,
        command: &[&str],
    ) -> anyhow::Result<PodmanContainer> {
        self.start(name, &["--pod", &pod.name], pod.container_port, command)
    }

    fn start(
        &self,
        name: &str,
        options: &[&str],
        listens_on: Option<u16>,
        command: &[&str],
    ) -> anyhow::Result<PodmanContainer> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(ULIMITS);
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.remember(Made::Container(name.to_owned()));
        self.podman(&args)
            .with_context(|| format!("failed to start container {name}"))?;
        let container = PodmanContainer {
            name: name.to_owned(),
            conf: self.conf.clone(),
        };
        if let Some(port) = listens_on {
            busybox::wait_listening(container.pid()?, port)
                .with_context(|| format!("container {name} does not serve port {port}"))?;
        }
        Ok(container)
    }

    fn remember(&self, made: Made) {
        self.made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(made);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let made = std::mem::take(self.made.get_mut().unwrap_or_else(PoisonError::into_inner));
        // `-t 0`: busybox as PID 1 ignores SIGTERM, and Podman would wait 10 s for it.
        for made in made.iter().rev() {
            let _ = match made {
                Made::Container(name) => self.podman(&["rm", "-f", "-t", "0", "--ignore", name]),
                Made::Pod(name) => self.podman(&["pod", "rm", "-f", "-t", "0", "--ignore", name]),
            };
        }
        // Only when no container of anyone else still uses the network.
        let unused = self
            .podman(&["ps", "-a", "-q", "--filter", &format!("network={NETWORK}")])
            .is_ok_and(|ids| ids.trim().is_empty());
        if unused {
            if !self.had_bridge && Path::new("/sys/class/net").join(&self.bridge).exists() {
                let _ = run("ip", &["link", "del", &self.bridge]);
            }
            if !self.had_cni_state {
                let _ = std::fs::remove_dir_all(CNI_STATE);
            }
        }
    }
}

/// Whether this machine's Podman can network through the CNI plugins ([`Backend::Cni`]):
/// Podman 5 removed that backend. Fails where Podman is not installed.
pub fn has_cni_backend() -> anyhow::Result<bool> {
    if which("podman").is_none() {
        return Err(missing("podman is not installed"));
    }
    let version = run("podman", &["version", "--format", "{{.Client.Version}}"])?;
    let major: u32 = version
        .trim()
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("podman version printed {version:?}"))?;
    Ok(major < 5)
}

/// A Podman container, removed (`podman rm -f`) on drop.
#[derive(Debug)]
pub struct PodmanContainer {
    name: String,
    conf: PathBuf,
}

impl PodmanContainer {
    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman inspect --format TEMPLATE`, trimmed.
    pub fn inspect(&self, template: &str) -> anyhow::Result<String> {
        Ok(
            podman(&self.conf, &["inspect", "--format", template, &self.name])?
                .trim()
                .to_owned(),
        )
    }

    /// Address on Podman's network (in a pod: the pod's).
    pub fn ip(&self) -> anyhow::Result<Ipv4Addr> {
        let ip = self.inspect("{{.NetworkSettings.IPAddress}}")?;
        ip.parse()
            .with_context(|| format!("container {} has no address ({ip:?})", self.name))
    }

    /// The process id of the container's first process, in the machine's PID namespace.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let pid = self.inspect("{{.State.Pid}}")?;
        match pid.parse() {
            Ok(0) | Err(_) => bail!("container {} is not running (pid {pid:?})", self.name),
            Ok(pid) => Ok(pid),
        }
    }

    /// The path of the container's network namespace (`/run/netns/netns-<uuid>`).
    pub fn sandbox_key(&self) -> anyhow::Result<String> {
        self.inspect("{{.NetworkSettings.SandboxKey}}")
    }

    /// Runs `command` in the container (`podman exec`); its stdout, or an error if it failed.
    pub fn exec(&self, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(command);
        podman(&self.conf, &args)
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = podman(&self.conf, &["rm", "-f", "-t", "0", "--ignore", &self.name]);
    }
}

/// A Podman pod, removed with its containers (`podman pod rm -f`) on drop.
#[derive(Debug)]
pub struct PodmanPod {
    name: String,
    /// The container port of the pod's published port.
    container_port: Option<u16>,
    conf: PathBuf,
}

impl PodmanPod {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the pod's infra container.
    pub fn infra_name(&self) -> anyhow::Result<String> {
        let id = podman(
            &self.conf,
            &[
                "pod",
                "inspect",
                "--format",
                "{{.InfraContainerID}}",
                &self.name,
            ],
        )?;
        Ok(
            podman(&self.conf, &["inspect", "--format", "{{.Name}}", id.trim()])?
                .trim()
                .to_owned(),
        )
    }
}

impl Drop for PodmanPod {
    fn drop(&mut self) {
        let _ = podman(
            &self.conf,
            &["pod", "rm", "-f", "-t", "0", "--ignore", &self.name],
        );
    }
}

/// Runs `podman ARGS` reading `conf`; its stdout, or an error with its stderr.
fn podman(conf: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("failed to run podman")?;
    if !output.status.success() {
        bail!(
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
