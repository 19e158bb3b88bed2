//! Support for tracer's integration tests: a Docker-like testbed built from network
//! namespaces ([`testbed`]), traffic between its namespaces ([`traffic`]), and a running tracer
//! process with a ready signal ([`tracer`]).
//!
//! Everything a test creates lives in namespaces the test created; nothing is added to the
//! machine's own namespace, and everything is torn down when the owning value is dropped,
//! also when a test panics.

pub mod bpf;
pub mod docker;
pub mod netns;
pub mod testbed;
pub mod trace;
pub mod tracer;
pub mod traffic;
