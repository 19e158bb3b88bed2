//! Which workload owns a network namespace, as the container runtimes name it.
//!
//! Each runtime is asked in its own way, and each is optional and silent when it is not there:
//! - Docker through its API socket ([`docker`]),
//! - Podman through its command line, which reads its state without a service ([`podman`]),
//! - containerd through its API socket, every containerd namespace ([`containerd`]); where the
//!   labels kubelet sets are present, containers are grouped into their pod (`namespace/pod`).
//!
//! Namespaces made by CNI plugins (`/var/run/netns/cni-*`) need nothing of their own: the
//! runtime's task lives in them, so they are tied to their pod by the task's namespace inode.
//! A runtime that is installed but does not answer is reported once, as a warning.

pub mod containerd;
pub mod docker;
pub mod podman;

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::Path};

pub use crate::workload::{Runtime, Workload};

/// One running container as its runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub runtime: Runtime,
    /// The runtime's id (64 hex digits for Docker and Podman, free-form for containerd).
    pub id: String,
    /// The name users give it: Docker's and Podman's name; for containerd the
    /// `io.kubernetes.container.name` label, or the id.
    pub name: String,
    /// Its pod: `namespace/name` from the Kubernetes labels, or Podman's pod name.
    pub pod: Option<String>,
    /// A pod's sandbox (the pause or infra container), which holds the namespaces only.
    pub sandbox: bool,
    /// The inode of its network namespace.
    pub netns_inode: u64,
}

/// Every container the runtimes report, and the workload of each namespace.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    pub containers: Vec<Container>,
    by_netns: HashMap<u64, Workload>,
}

impl Workloads {
    /// Asks every runtime present. One that is installed but does not answer is left out with a
    /// warning (through `warn`), so that a trace still runs.
    pub async fn discover(warn: impl Fn(String)) -> Workloads {
        // Asked at once: Podman's command line alone takes tens of milliseconds.
        let (docker, podman, containerd) = tokio::join!(
            docker::containers(),
            podman::containers(),
            containerd::containers()
        );
        let mut containers = Vec::new();
        for (runtime, found) in [
            ("Docker", docker),
            ("Podman", podman),
            ("containerd", containerd),
        ] {
            match found {
                Ok(found) => containers.extend(found),
                Err(err) => warn(format!("could not list {runtime} containers: {err:#}")),
            }
        }
        Workloads::from_containers(containers)
    }

    /// Groups `containers` by network namespace. A namespace claimed by two runtimes (Docker's
    /// containers also show in its containerd's `moby` namespace) keeps the first runtime's.
    pub fn from_containers(mut containers: Vec<Container>) -> Workloads {
        containers.sort_by(|a, b| (a.runtime, &a.pod, &a.name).cmp(&(b.runtime, &b.pod, &b.name)));
        let mut by_netns: HashMap<u64, Workload> = HashMap::new();
        for container in &containers {
            let workload = by_netns
                .entry(container.netns_inode)
                .or_insert_with(|| Workload {
                    runtime: container.runtime,
                    pod: container.pod.clone(),
                    containers: Vec::new(),
                });
            if workload.runtime != container.runtime {
                continue;
            }
            if workload.pod.is_none() {
                workload.pod.clone_from(&container.pod);
            }
            if !container.sandbox && !workload.containers.contains(&container.name) {
                workload.containers.push(container.name.clone());
                workload.containers.sort();
            }
        }
        Workloads {
            containers,
            by_netns,
        }
    }

    /// The workload whose network namespace has `inode`.
    pub fn of_netns(&self, inode: u64) -> Option<&Workload> {
        self.by_netns.get(&inode)
    }

    /// The container whose id appears in a cgroup path (`/docker/ID`, `docker-ID.scope`,
    /// `libpod-ID.scope`, `/k8s.io/ID`, ...).
    pub fn of_cgroup(&self, path: &str) -> Option<&Container> {
        self.containers.iter().find(|container| {
            path.rsplit('/').any(|part| {
                part.strip_suffix(".scope")
                    .unwrap_or(part)
                    .rsplit(['-', ':'])
                    .next()
                    .is_some_and(|tail| tail == container.id)
            })
        })
    }

    /// The containers' cgroups (v2) below `root`, by id: each names the container alone (its
    /// pod's sandbox names only the pod).
    pub fn by_cgroup(&self, root: &Path) -> HashMap<u64, Workload> {
        if self.containers.is_empty() {
            return HashMap::new();
        }
        crate::cgroup::paths(root, |path| self.of_cgroup(path).is_some())
            .into_iter()
            .filter_map(|(id, path)| {
                let container = self.of_cgroup(&path)?;
                let workload = Workload {
                    runtime: container.runtime,
                    pod: container.pod.clone(),
                    containers: if container.sandbox {
                        Vec::new()
                    } else {
                        vec![container.name.clone()]
                    },
                };
                Some((id, workload))
            })
            .collect()
    }

    /// Every pod name, sorted.
    pub fn pods(&self) -> Vec<&str> {
        let mut pods: Vec<&str> = self
            .containers
            .iter()
            .filter_map(|c| c.pod.as_deref())
            .collect();
        pods.sort_unstable();
        pods.dedup();
        pods
    }

    /// Every container name, sorted.
    pub fn container_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.sandbox)
            .map(|c| c.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The inode of the network namespace of process `pid`.
fn netns_of_pid(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let path = format!("/proc/{pid}/ns/net");
    std::fs::metadata(Path::new(&path)).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(
        runtime: Runtime,
        id: &str,
        name: &str,
        pod: Option<&str>,
        sandbox: bool,
        netns: u64,
    ) -> Container {
        Container {
            runtime,
            id: id.to_owned(),
            name: name.to_owned(),
            pod: pod.map(str::to_owned),
            sandbox,
            netns_inode: netns,
        }
    }

    #[test]
    fn a_pod_is_named_by_the_pod_and_its_one_container() {
        let workloads = Workloads::from_containers(vec![
            container(Runtime::Containerd, "a", "a", Some("default/web"), true, 7),
            container(
                Runtime::Containerd,
                "b",
                "httpd",
                Some("default/web"),
                false,
                7,
            ),
        ]);
        let pod = workloads.of_netns(7).expect("pod");
        assert_eq!(pod.name(), "default/web");
        assert_eq!(pod.container(), Some("httpd"));
        assert_eq!(pod.runtime, Runtime::Containerd);
        assert_eq!(workloads.container_names(), ["httpd"]);
        assert_eq!(workloads.pods(), ["default/web"]);
    }

    #[test]
    fn a_pod_of_two_containers_names_no_one_container() {
        let workloads = Workloads::from_containers(vec![
            container(Runtime::Podman, "a", "app", Some("shop"), false, 7),
            container(Runtime::Podman, "b", "sidecar", Some("shop"), false, 7),
        ]);
        let pod = workloads.of_netns(7).expect("pod");
        assert_eq!(pod.container(), None);
        assert_eq!(pod.name(), "shop");
    }

    #[test]
    fn docker_keeps_its_namespace_from_its_containerd() {
        let workloads = Workloads::from_containers(vec![
            container(Runtime::Containerd, "abc", "abc", None, false, 7),
            container(Runtime::Docker, "abc", "web", None, false, 7),
        ]);
        let web = workloads.of_netns(7).expect("web");
        assert_eq!(
            (web.runtime, web.name()),
            (Runtime::Docker, "web".to_owned())
        );
    }

    #[test]
    fn containers_are_found_by_their_cgroup() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let workloads =
            Workloads::from_containers(vec![container(Runtime::Docker, id, "web", None, false, 7)]);
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/k8s.io/{id}"),
        ] {
            assert_eq!(
                workloads.of_cgroup(&path).map(|c| c.name.as_str()),
                Some("web"),
                "{path}"
            );
        }
        assert!(workloads.of_cgroup("/docker/0123").is_none());
        assert!(workloads.of_cgroup("/").is_none());
    }
}
