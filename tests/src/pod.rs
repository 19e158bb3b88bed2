//! A Kubernetes-style pod without Kubernetes, made the way kubelet and containerd's CRI
//! plugin make one:
//!
//! 1. a network namespace `cni-<uuid>` (`ip netns add`, so `/var/run/netns/cni-<uuid>` as
//!    CRI's), its loopback brought up by the `loopback` plugin (network `cni-loopback`,
//!    as CRI does);
//! 2. the pod network added by the reference CNI plugins as libcni runs a conflist (see
//!    [`crate::cni`]): `bridge` (`cni0`, gateway, masquerade, `host-local` addresses from
//!    [`SUBNET`]) then `portmap` (the pod's host port);
//! 3. a sandbox container (`/bin/sleep 3600` standing in for pause) and the app container
//!    (busybox `httpd`), both in containerd namespace `k8s.io`, both joined to the pod's
//!    network namespace, labelled as kubelet and CRI label them.
//!
//! The pod network lets its subnet through the machine's FORWARD chain with rules of its own
//! ([`ForwardAllowance`]), so pods are reached where the FORWARD policy is DROP (as Docker
//! sets it) as well as where it accepts.
//!
//! Dropping the [`Pod`] undoes it in reverse: tasks killed and deleted, containers deleted,
//! CNI `DEL` (portmap, bridge, loopback), the namespace deleted; after the last pod of the
//! process, `cni0` (unless it was there before) and the FORWARD rules are removed, the
//! firewall and forwarding are restored and a containerd started for the pods is stopped.
//! Where containerd or the CNI plugins are missing or do not start, the test fails.
//!
//! The pod's published port is reached from outside through a
//! [`HostClient`](crate::host_client::HostClient) (PREROUTING DNAT by portmap).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Mutex, Weak,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    busybox,
    cni::{self, Attachment, NetworkList, PortMapping},
    containerd::Containerd,
    firewall::ForwardAllowance,
    machine::{MachineGuard, Shared, TempDir, uuid},
    netns::{Netns, run},
    skip::missing,
};

/// The pod network's name (`name` of the conflist).
pub const NETWORK: &str = "tracer-test-pod";
/// The pod network's bridge.
pub const BRIDGE: &str = "cni0";
/// Where pod addresses come from: private, and apart from Podman's 10.88.0.0/16.
pub const SUBNET: &str = "10.85.0.0/24";
/// The labels kubelet and CRI put on a pod's containers.
pub mod label {
    /// The pod's name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// The pod's Kubernetes namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// The pod's UID.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// The container's name in the pod spec (app containers only).
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// `sandbox` or `container`.
    pub const KIND: &str = "io.cri-containerd.kind";
}

/// The pod network, shared by the pods of the process: its conflists, the `host-local`
/// state, and the machine's state from before the first pod.
struct PodNetwork {
    /// bridge, then portmap.
    list: NetworkList,
    /// The loopback plugin alone, as CRI runs it.
    loopback: NetworkList,
    had_bridge: bool,
    // Field order is drop order: the FORWARD rules and host-local's state, then the machine
    // is restored.
    _forward: ForwardAllowance,
    _data_dir: TempDir,
    _machine: MachineGuard,
}

impl PodNetwork {
    fn make() -> anyhow::Result<PodNetwork> {
        let plugins = ["bridge", "host-local", "portmap", "loopback"];
        if let Some(plugin) = plugins
            .iter()
            .find(|plugin| !Path::new(cni::PLUGIN_DIR).join(plugin).exists())
        {
            return Err(missing(format!(
                "the CNI plugin {plugin} is not in {} (Debian's containernetworking-plugins)",
                cni::PLUGIN_DIR
            )));
        }
        let cni_version = cni::common_version(&plugins)?;
        let machine = MachineGuard::acquire()?;
        let forward = ForwardAllowance::insert(SUBNET, NETWORK)
            .context("failed to let the pod network through FORWARD")?;
        let data_dir = TempDir::new("tracer-pod-ipam")?;
        let list = NetworkList {
            name: NETWORK.to_owned(),
            cni_version: cni_version.clone(),
            plugins: vec![
                json!({
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": SUBNET }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": data_dir.path(),
                    },
                }),
                json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
            ],
        };
        let loopback = NetworkList {
            name: "cni-loopback".to_owned(),
            cni_version,
            plugins: vec![json!({ "type": "loopback" })],
        };
        Ok(PodNetwork {
            list,
            loopback,
            had_bridge: Path::new("/sys/class/net").join(BRIDGE).exists(),
            _forward: forward,
            _data_dir: data_dir,
            _machine: machine,
        })
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // The bridge plugin's DEL leaves the bridge.
        if !self.had_bridge {
            let _ = run("ip", &["link", "del", BRIDGE]);
        }
    }
}

/// A running pod; torn down on drop.
pub struct Pod {
    namespace: String,
    name: String,
    uid: String,
    sandbox_id: String,
    app_id: String,
    ip: Ipv4Addr,
    app_pid: u32,
    /// The pod network's and the loopback's attachments, and their `ADD` results; `Some`
    /// once an `ADD` was tried, so a failed one is deleted too (as CRI does).
    pod_net: Option<(Attachment, Option<Value>)>,
    loopback: Option<(Attachment, Option<Value>)>,
    /// Containers created, in order.
    containers: Vec<String>,
    netns: Option<Netns>,
    next_exec: AtomicU32,
    // Field order is drop order: the root file systems and logs, then containerd and the
    // pod network if this was their last pod.
    dir: TempDir,
    containerd: Containerd,
    network: Shared<PodNetwork>,
}

impl Pod {
    /// Starts pod `namespace/name` whose app container `container_name` serves HTTP on
    /// `container_port`, published on the host's `host_port` if given. Returns once the app
    /// listens. Fails where containerd or the CNI plugins are missing or containerd does not
    /// start.
    pub fn start(
        namespace: &str,
        name: &str,
        container_name: &str,
        host_port: Option<u16>,
        container_port: u16,
    ) -> anyhow::Result<Pod> {
        static NETWORK: Mutex<Weak<PodNetwork>> = Mutex::new(Weak::new());
        if !nix::unistd::geteuid().is_root() {
            return Err(missing(
                "root (a pod's network is made in the machine's namespace)",
            ));
        }
        let network = Shared::get_or_try_init(&NETWORK, PodNetwork::make)?;
        let containerd = Containerd::ensure()?;
        let uid = uuid()?;
        let mut pod = Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.clone(),
            sandbox_id: container_id()?,
            app_id: container_id()?,
            ip: Ipv4Addr::UNSPECIFIED,
            app_pid: 0,
            pod_net: None,
            loopback: None,
            containers: Vec::new(),
            netns: None,
            next_exec: AtomicU32::new(0),
            dir: TempDir::new("tracer-pod")?,
            containerd,
            network,
        };
        let ports = host_port.map(|host_port| PortMapping {
            host_port,
            container_port,
        });
        pod.network_up(ports)
            .with_context(|| format!("failed to set up the network of pod {namespace}/{name}"))?;
        let labels = |extra: &[(&str, &str)]| -> Vec<String> {
            [
                (label::POD_NAME, name),
                (label::POD_NAMESPACE, namespace),
                (label::POD_UID, uid.as_str()),
            ]
            .iter()
            .chain(extra)
            .map(|(key, value)| format!("{key}={value}"))
            .collect()
        };
        let sandbox_labels = labels(&[(label::KIND, "sandbox")]);
        let app_labels = labels(&[
            (label::KIND, "container"),
            (label::CONTAINER_NAME, container_name),
        ]);
        let (sandbox_id, app_id) = (pod.sandbox_id.clone(), pod.app_id.clone());
        pod.run_container(&sandbox_id, &sandbox_labels, &["/bin/sleep", "3600"])
            .context("failed to start the pod's sandbox")?;
        let httpd = busybox::httpd(container_port);
        let command: Vec<&str> = httpd.iter().map(String::as_str).collect();
        pod.run_container(&app_id, &app_labels, &command)
            .with_context(|| format!("failed to start container {container_name}"))?;
        pod.app_pid = pod.task_pid(&app_id)?;
        busybox::wait_listening(pod.app_pid, container_port)
            .with_context(|| format!("container {container_name} does not serve"))?;
        Ok(pod)
    }

    /// The namespace, loopback and pod network, as CRI's RunPodSandbox sets them up.
    fn network_up(&mut self, ports: Option<PortMapping>) -> anyhow::Result<()> {
        let netns = Netns {
            name: format!("cni-{}", uuid()?),
        };
        run("ip", &["netns", "add", &netns.name])?;
        let path = netns.path();
        self.netns = Some(netns);
        let args = vec![
            ("IgnoreUnknown".to_owned(), "1".to_owned()),
            ("K8S_POD_NAMESPACE".to_owned(), self.namespace.clone()),
            ("K8S_POD_NAME".to_owned(), self.name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".to_owned(),
                self.sandbox_id.clone(),
            ),
            ("K8S_POD_UID".to_owned(), self.uid.clone()),
        ];
        let loopback = Attachment {
            container_id: self.sandbox_id.clone(),
            netns: path,
            ifname: "lo".to_owned(),
            args,
            port_mappings: Vec::new(),
        };
        let pod_net = Attachment {
            ifname: "eth0".to_owned(),
            port_mappings: ports.into_iter().collect(),
            ..loopback.clone()
        };
        let added = self.network.loopback.add(&loopback);
        self.loopback = Some((loopback, added.as_ref().ok().cloned()));
        added.context("failed to bring the pod's loopback up")?;
        let added = self.network.list.add(&pod_net);
        self.pod_net = Some((pod_net, added.as_ref().ok().cloned()));
        self.ip = cni::first_ipv4(&added?)?;
        Ok(())
    }

    /// `ctr run -d` of a container in the pod's network namespace, from a root file system
    /// of its own (no image), its output logged to a file.
    fn run_container(
        &mut self,
        id: &str,
        labels: &[String],
        command: &[&str],
    ) -> anyhow::Result<()> {
        let rootfs = self.dir.path().join(id);
        busybox::rootfs(&rootfs)?;
        let netns = format!("network:{}", self.netns_path()?.display());
        let log = format!(
            "file://{}",
            self.dir.path().join(format!("{id}.log")).display()
        );
        let rootfs = rootfs.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "-d",
            "--rootfs",
            "--with-ns",
            &netns,
            "--log-uri",
            &log,
        ];
        for label in labels {
            args.extend(["--label", label.as_str()]);
        }
        args.extend([rootfs.as_str(), id]);
        args.extend_from_slice(command);
        self.containers.push(id.to_owned());
        self.containerd.ctr(&args)?;
        Ok(())
    }

    /// The pid of container `id`'s task (`ctr task ls`).
    fn task_pid(&self, id: &str) -> anyhow::Result<u32> {
        let tasks = self.containerd.ctr(&["task", "ls"])?;
        let pid = tasks
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(id)).then(|| fields.next()).flatten()
            })
            .next()
            .with_context(|| format!("no task for container {id}: {tasks}"))?;
        pid.parse()
            .with_context(|| format!("task {id} has pid {pid:?}"))
    }

    /// The pod's network namespace's name (`cni-<uuid>`).
    pub fn netns_name(&self) -> anyhow::Result<&str> {
        Ok(&self
            .netns
            .as_ref()
            .context("the pod has no namespace")?
            .name)
    }

    /// The pod's network namespace's path (`/var/run/netns/cni-<uuid>`).
    pub fn netns_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self
            .netns
            .as_ref()
            .context("the pod has no namespace")?
            .path())
    }

    /// The pod's address on the pod network.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's `namespace/name`, as tracer names it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The containerd ids of the sandbox and the app container.
    pub fn container_ids(&self) -> (&str, &str) {
        (&self.sandbox_id, &self.app_id)
    }

    /// The process id of the app container's task, in the machine's PID namespace.
    pub fn app_pid(&self) -> u32 {
        self.app_pid
    }

    /// Runs `command` in the app container (`ctr task exec`); its stdout, or an error.
    pub fn exec_in_app(&self, command: &[&str]) -> anyhow::Result<String> {
        let exec_id = format!("exec-{}", self.next_exec.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, &self.app_id];
        args.extend_from_slice(command);
        self.containerd.ctr(&args)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for id in self.containers.iter().rev() {
            // Kills with SIGKILL and waits; fails harmlessly where no task was started.
            let _ = self.containerd.ctr(&["task", "delete", "--force", id]);
            if let Err(err) = self.containerd.ctr(&["container", "delete", id]) {
                eprintln!("pod teardown: {err:#}");
            }
        }
        if let Some((attachment, result)) = &self.pod_net
            && let Err(err) = self.network.list.del(attachment, result.as_ref())
        {
            eprintln!("pod teardown: {err:#}");
        }
        if let Some((attachment, result)) = &self.loopback
            && let Err(err) = self.network.loopback.del(attachment, result.as_ref())
        {
            eprintln!("pod teardown: {err:#}");
        }
        drop(self.netns.take());
    }
}

/// A container id as CRI makes them: 64 hex digits.
fn container_id() -> anyhow::Result<String> {
    let id = format!("{}{}", uuid()?, uuid()?).replace('-', "");
    if id.len() != 64 {
        bail!("unexpected UUID form: {id}");
    }
    Ok(id)
}
