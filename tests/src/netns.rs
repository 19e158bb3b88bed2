//! Named network namespaces (`ip netns`) and running code inside them.

use std::{
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let netns = Netns {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Inode of the namespace, as tracer reports it.
    pub fn inode(&self) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(self.path())?.ino())
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl under /proc/sys/net for this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("failed to set {key} in {}", self.name))
    }

    /// Runs `f` on the calling thread inside the namespace, then returns.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(self.path())
            .with_context(|| format!("no network namespace {}", self.name))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)?;
        let result = f();
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
            .expect("failed to return to the original network namespace");
        Ok(result)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Runs a command, returning its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
