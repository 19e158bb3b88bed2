//! Network namespaces: names for inodes, and running code inside a namespace.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd},
        unix::fs::MetadataExt,
    },
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

/// Cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+), which is
/// how TC programs name namespaces.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, and a buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
