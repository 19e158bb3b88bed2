//! Network namespaces: names for inodes, and running code inside a namespace.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` binds named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// Inode of the calling thread's network namespace.
pub fn current_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Names of the namespaces under [`NAMED_NETNS_DIR`], by inode.
pub fn named() -> HashMap<u64, String> {
    let mut names = HashMap::new();
    let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return names;
    };
    for entry in entries.flatten() {
        if let (Ok(meta), Some(name)) = (entry.metadata(), entry.file_name().to_str()) {
            names.insert(meta.ino(), name.to_owned());
        }
    }
    names
}

/// Path of the named namespace `name`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NAMED_NETNS_DIR).join(name)
}

/// Runs `f` with the calling thread inside the network namespace at `path`, then returns to
/// the namespace it was in. Only this thread moves; sockets and links created by `f` belong to
/// the target namespace.
pub fn run_in<T>(path: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let result = f();
    // Not being able to go back would leave this thread in the wrong namespace for good.
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
        .expect("failed to return to the original network namespace");
    Ok(result)
}
