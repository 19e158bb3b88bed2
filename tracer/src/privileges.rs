//! What tracer needs from the machine: the capabilities to load BPF programs, read kernel
//! memory from them, attach TC programs and enter other network namespaces, and the host
//! paths it reads where it runs in a container of its own (`deploy/daemonset.yaml` mounts
//! exactly these; `tracer doctor` checks them).

use anyhow::bail;

/// A capability tracer uses.
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    /// Its number (include/uapi/linux/capability.h).
    pub bit: u32,
    /// Its name without `CAP_`, as Kubernetes spells it.
    pub name: &'static str,
    pub why: &'static str,
    /// Whether tracer refuses to start without it (root has all of them).
    pub required: bool,
}

/// Every capability tracer uses, and nothing more.
pub const CAPABILITIES: [Capability; 5] = [
    Capability {
        bit: 12,
        name: "NET_ADMIN",
        why: "TC programs, netlink, the nf_tables table of --rules",
        required: true,
    },
    Capability {
        bit: 19,
        name: "SYS_PTRACE",
        why: "the network namespaces of other processes (/proc/PID/ns/net)",
        required: false,
    },
    Capability {
        bit: 21,
        name: "SYS_ADMIN",
        why: "entering other network namespaces (setns), cgroup program links",
        required: true,
    },
    Capability {
        bit: 38,
        name: "PERFMON",
        why: "tracepoint programs and their reads of kernel memory",
        required: true,
    },
    Capability {
        bit: 39,
        name: "BPF",
        why: "loading programs and maps",
        required: true,
    },
];

/// A host path tracer reads, where it runs in a container.
#[derive(Debug, Clone, Copy)]
pub struct HostPath {
    pub path: &'static str,
    pub why: &'static str,
}

/// Every host path tracer reads besides `/proc` (which a container sees with the host's
/// process namespace), and nothing more. tracer never writes through them.
pub const HOST_PATHS: [HostPath; 6] = [
    HostPath {
        path: "/sys/kernel/btf",
        why: "the kernel's BTF: structure offsets, the typed tracepoints",
    },
    HostPath {
        path: "/sys/fs/cgroup",
        why: "the cgroup v2 root the socket programs attach to (the sending process)",
    },
    HostPath {
        path: "/var/run/netns",
        why: "named network namespaces, CNI's pods (cni-*) among them",
    },
    HostPath {
        path: "/var/run/docker/netns",
        why: "Docker's container namespaces",
    },
    HostPath {
        path: "/var/run/docker.sock",
        why: "Docker's API: container names",
    },
    HostPath {
        path: "/run/containerd/containerd.sock",
        why: "containerd's API: containers and Kubernetes pods",
    },
];

/// The effective capability set of this process.
pub fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Fails with one line saying what to do when the process lacks a capability it needs.
pub fn check() -> anyhow::Result<()> {
    let effective = effective();
    let missing: Vec<String> = CAPABILITIES
        .iter()
        .filter(|cap| cap.required && effective & (1 << cap.bit) == 0)
        .map(|cap| format!("CAP_{}", cap.name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "tracer needs root (missing {}): run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
}
