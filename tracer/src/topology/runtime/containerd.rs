//! Containers of containerd, in every containerd namespace, through its API socket.
//!
//! A container that carries the labels kubelet sets (`io.kubernetes.pod.name`,
//! `io.kubernetes.pod.namespace`, `io.kubernetes.container.name`) belongs to the pod
//! `namespace/name`; the pod's sandbox (`io.cri-containerd.kind=sandbox`) holds its namespaces.
//! Docker's own containerd namespace (`moby`) is left to Docker, which names those better.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context as _;
use containerd_client::{
    services::v1::{ListContainersRequest, ListNamespacesRequest, ListTasksRequest},
    tonic::{
        Request,
        metadata::{Ascii, MetadataValue},
    },
    types::v1::Status,
};

use super::{Container, Runtime, netns_of_pid};

/// Where containerd listens: the default socket, and k3s's.
pub const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
];

/// Docker's namespace in its containerd.
const DOCKER_NAMESPACE: &str = "moby";

/// The longest the whole listing may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Labels set by kubelet (through the CRI) on a pod's containers.
pub mod label {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// `sandbox` or `container`, set by containerd's CRI plugin.
    pub const KIND: &str = "io.cri-containerd.kind";
}

/// The containers with a running task, from every containerd found. Empty where none runs.
pub async fn containers() -> anyhow::Result<Vec<Container>> {
    let mut found = Vec::new();
    for socket in SOCKETS {
        if !Path::new(socket).exists() {
            continue;
        }
        let listed = tokio::time::timeout(TIMEOUT, list(socket))
            .await
            .with_context(|| format!("{socket} did not answer within 10 s"))?
            .with_context(|| format!("asking {socket}"))?;
        found.extend(listed);
    }
    Ok(found)
}

async fn list(socket: &str) -> anyhow::Result<Vec<Container>> {
    let client = containerd_client::Client::from_path(socket).await?;
    let namespaces = client
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await?
        .into_inner()
        .namespaces;
    let mut found = Vec::new();
    for namespace in namespaces {
        if namespace.name == DOCKER_NAMESPACE {
            continue;
        }
        let value: MetadataValue<Ascii> = namespace
            .name
            .parse()
            .with_context(|| format!("containerd namespace {:?}", namespace.name))?;
        let pids: HashMap<String, u32> = client
            .tasks()
            .list(in_namespace(ListTasksRequest::default(), &value))
            .await?
            .into_inner()
            .tasks
            .into_iter()
            .filter(|task| task.status() == Status::Running)
            // A task's id is its container's (`container_id` is left empty in listings).
            .map(|task| (task.id, task.pid))
            .collect();
        let containers = client
            .containers()
            .list(in_namespace(ListContainersRequest::default(), &value))
            .await?
            .into_inner()
            .containers;
        for container in containers {
            let Some(netns_inode) = pids.get(&container.id).and_then(|pid| netns_of_pid(*pid))
            else {
                continue;
            };
            found.push(describe(container.id, &container.labels, netns_inode));
        }
    }
    Ok(found)
}

/// `request`, addressed to one containerd namespace.
fn in_namespace<T>(request: T, namespace: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(request);
    request
        .metadata_mut()
        .insert("containerd-namespace", namespace.clone());
    request
}

/// A container from its id and labels.
fn describe(id: String, labels: &HashMap<String, String>, netns_inode: u64) -> Container {
    let get = |key: &str| labels.get(key).filter(|v| !v.is_empty());
    let pod = match (get(label::POD_NAMESPACE), get(label::POD_NAME)) {
        (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
        (None, Some(name)) => Some(name.clone()),
        _ => None,
    };
    Container {
        runtime: Runtime::Containerd,
        name: get(label::CONTAINER_NAME)
            .cloned()
            .unwrap_or_else(|| id.clone()),
        sandbox: get(label::KIND).is_some_and(|kind| kind == "sandbox"),
        id,
        pod,
        netns_inode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn kubernetes_labels_name_the_pod_and_container() {
        let app = describe(
            "f00".to_owned(),
            &labels(&[
                (label::POD_NAME, "web"),
                (label::POD_NAMESPACE, "shop"),
                (label::CONTAINER_NAME, "httpd"),
                (label::KIND, "container"),
            ]),
            9,
        );
        assert_eq!(
            (app.name.as_str(), app.pod.as_deref(), app.sandbox),
            ("httpd", Some("shop/web"), false)
        );
        let sandbox = describe(
            "ba5".to_owned(),
            &labels(&[
                (label::POD_NAME, "web"),
                (label::POD_NAMESPACE, "shop"),
                (label::KIND, "sandbox"),
            ]),
            9,
        );
        assert_eq!(
            (
                sandbox.name.as_str(),
                sandbox.pod.as_deref(),
                sandbox.sandbox
            ),
            ("ba5", Some("shop/web"), true)
        );
    }

    #[test]
    fn a_container_without_labels_is_named_by_its_id() {
        let plain = describe("redis-1".to_owned(), &HashMap::new(), 9);
        assert_eq!(
            (plain.name.as_str(), plain.pod, plain.sandbox),
            ("redis-1", None, false)
        );
    }
}
