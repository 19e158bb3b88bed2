//! What owns a network namespace, as the container runtimes name it: a container, or the
//! containers of one pod. Plain names, shared by the topology (which finds them) and the
//! outputs (which show them).

/// A container runtime tracer can ask for names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
        }
    }
}

/// What owns one network namespace: a container, or the containers of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub runtime: Runtime,
    pub pod: Option<String>,
    /// The names of the containers in it, sandboxes left out, sorted.
    pub containers: Vec<String>,
}

impl Workload {
    /// The container, where the namespace is one container's view.
    pub fn container(&self) -> Option<&str> {
        match self.containers.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// The name a place in it is shown with: the pod, or the container.
    pub fn name(&self) -> String {
        match (&self.pod, self.container()) {
            (Some(pod), _) => pod.clone(),
            (None, Some(container)) => container.to_owned(),
            (None, None) => self.containers.join(","),
        }
    }
}
