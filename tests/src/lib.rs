//! Support for tracer's integration tests: a Docker-like testbed built from network
//! namespaces ([`testbed`]), traffic between its namespaces ([`traffic`]), and a running tracer
//! process with a ready signal ([`tracer`]).
//!
//! Real container runtimes have harnesses of their own: Docker ([`docker`]), Podman
//! ([`podman`]) and a Kubernetes-style pod on containerd and the CNI plugins ([`pod`], built
//! from [`containerd`] and [`cni`]). They run busybox containers ([`busybox`]), are reached
//! from a namespace outside the machine ([`host_client`]), and put the machine's own network
//! state back when they are done ([`machine`]), its firewall with the tools that wrote it
//! ([`firewall`]).
//!
//! A test whose prerequisite is missing fails; only one that does not apply to this machine
//! returns early, and is recorded ([`skip`]).
//!
//! Everything a test creates lives in namespaces the test created, except what real runtimes
//! add to the machine's own namespace (bridges, chains, forwarding), which their harnesses
//! remove again; everything is torn down when the owning value is dropped, also when a test
//! panics.

pub mod bpf;
pub mod browser;
pub mod busybox;
pub mod cni;
pub mod containerd;
pub mod docker;
pub mod firewall;
pub mod host_client;
pub mod machine;
pub mod netns;
pub mod overlay;
pub mod pod;
pub mod podman;
pub mod probe;
pub mod prometheus;
pub mod skip;
pub mod testbed;
pub mod trace;
pub mod tracer;
pub mod traffic;
