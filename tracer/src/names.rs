//! Names for what the kernel identifies by number: network namespaces and containers.
//!
//! The kernel programs report a namespace by inode. Outputs show the container that owns it
//! when one is known, and the namespace's name otherwise (`ip netns` names); the namespace
//! tracer itself runs in is called `host`.

use std::collections::HashMap;

/// Names by namespace inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    netns: HashMap<u64, String>,
    containers: HashMap<u64, String>,
}

impl NameTable {
    /// Names the namespace with `inode`.
    pub fn set_netns(&mut self, inode: u64, name: impl Into<String>) {
        self.netns.insert(inode, name.into());
    }

    /// Names the container whose network namespace has `inode`.
    pub fn set_container(&mut self, inode: u64, name: impl Into<String>) {
        self.containers.insert(inode, name.into());
    }

    pub fn netns(&self, inode: u64) -> Option<&str> {
        self.netns.get(&inode).map(String::as_str)
    }

    pub fn container(&self, inode: u64) -> Option<&str> {
        self.containers.get(&inode).map(String::as_str)
    }

    /// The most useful name for a place: container, namespace name, or `netns:<inode>`.
    pub fn place(&self, inode: u64) -> String {
        self.container(inode)
            .or_else(|| self.netns(inode))
            .map_or_else(|| format!("netns:{inode}"), str::to_owned)
    }

    /// Whether `inode` has any name.
    pub fn knows(&self, inode: u64) -> bool {
        self.netns.contains_key(&inode) || self.containers.contains_key(&inode)
    }
}
