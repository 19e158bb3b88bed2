//! The machine's own network state that real container runtimes change, and putting it back.
//!
//! Podman (netavark or CNI) and the CNI plugins of a Kubernetes-style pod add iptables chains
//! (`NETAVARK-*`, `CNI-*`, and the `ip`/`ip6` `nat` and `filter` tables that hold them), turn on
//! IPv4 forwarding and create bridges in the machine's own namespace, and leave most of it
//! behind when their containers go. A [`MachineGuard`] records the firewall and forwarding
//! setting before the first runtime harness of the process starts and restores them after the
//! last one has gone (see [`crate::firewall`]); a [`Snapshot`] taken before and after a test
//! shows what was left.

use std::{
    collections::BTreeSet,
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    firewall::{IP_FORWARD, Ruleset, RulesetGuard},
    netns::run,
};

/// Where `ip netns` (and CRI, and Podman) keep named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// How often a condition is checked again while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// A value shared by every holder in this process: made by the first, dropped with the last.
///
/// Runtime harnesses share what only one of them may own (the saved ruleset, a containerd
/// they started, the pods' bridge network), so parallel tests of one binary do not restore
/// the machine under each other's feet.
pub(crate) struct Shared<T: 'static> {
    value: Option<Arc<T>>,
    slot: &'static Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    /// The live value of `slot`, or a new one from `make`, whose error is the caller's.
    pub(crate) fn get_or_try_init(
        slot: &'static Mutex<Weak<T>>,
        make: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Shared<T>> {
        let mut live = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let value = match live.upgrade() {
            Some(value) => value,
            None => {
                let value = Arc::new(make()?);
                *live = Arc::downgrade(&value);
                value
            }
        };
        Ok(Shared {
            value: Some(value),
            slot,
        })
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
            .as_deref()
            .expect("a shared value is present until dropped")
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Dropping the last holder under the lock: a new holder cannot start from the state
        // the last one is still tearing down.
        let _live = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.value.take());
    }
}

/// The firewall and IPv4 forwarding of the machine's own namespace as they were before the
/// first guard of this process, put back when the last guard is dropped (see
/// [`RulesetGuard`]: the iptables tables that changed are restored with iptables, those that
/// iptables-nft created for the runtimes' chains are deleted).
pub struct MachineGuard {
    _saved: Shared<RulesetGuard>,
}

impl MachineGuard {
    /// Joins the process's guard, saving the firewall first if there is none yet. Fails where
    /// the firewall cannot be read as iptables and nft write it.
    pub fn acquire() -> anyhow::Result<MachineGuard> {
        static SAVED: Mutex<Weak<RulesetGuard>> = Mutex::new(Weak::new());
        let saved = Shared::get_or_try_init(&SAVED, RulesetGuard::save)?;
        Ok(MachineGuard { _saved: saved })
    }
}

/// What a runtime harness may change in the machine's own namespace, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every nf_tables table, as iptables (its tables) and nft (the others) print it.
    pub ruleset: Ruleset,
    /// `/proc/sys/net/ipv4/ip_forward`, trimmed.
    pub ip_forward: String,
    /// Every link's name.
    pub links: BTreeSet<String>,
    /// Every named network namespace (`/run/netns`).
    pub netns: BTreeSet<String>,
}

impl Snapshot {
    /// Reads the state now.
    pub fn take() -> anyhow::Result<Snapshot> {
        let links = run("ip", &["-o", "link", "show"])?
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect();
        let netns = match std::fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(err) => return Err(err).with_context(|| format!("failed to list {NETNS_DIR}")),
        };
        Ok(Snapshot {
            ruleset: Ruleset::read()?,
            ip_forward: std::fs::read_to_string(IP_FORWARD)
                .with_context(|| format!("failed to read {IP_FORWARD}"))?
                .trim()
                .to_owned(),
            links,
            netns,
        })
    }

    /// How this (later) snapshot differs from `before`, one line per difference; empty when
    /// the machine is as it was.
    pub fn changes_since(&self, before: &Snapshot) -> Vec<String> {
        let mut changes = Vec::new();
        for name in self.netns.difference(&before.netns) {
            changes.push(format!("network namespace {name} was added"));
        }
        for name in before.netns.difference(&self.netns) {
            changes.push(format!("network namespace {name} was removed"));
        }
        for name in self.links.difference(&before.links) {
            changes.push(format!("link {name} was added"));
        }
        for name in before.links.difference(&self.links) {
            changes.push(format!("link {name} was removed"));
        }
        if self.ip_forward != before.ip_forward {
            changes.push(format!(
                "ip_forward is {}, was {}",
                self.ip_forward, before.ip_forward
            ));
        }
        changes.extend(self.ruleset.changes_since(&before.ruleset));
        changes
    }
}

/// Calls `check` until it returns `Some`, at most until `timeout`; `what` names the condition
/// in the error. Used instead of sleeping for a fixed time before using something.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// The path of `program` on `PATH`, if it is installed.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// A directory under the temporary directory, removed with what it holds on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>`, empty.
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("failed to remove the stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A random UUID in its usual text form, from the kernel.
pub fn uuid() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("failed to read a UUID from the kernel")?
        .trim()
        .to_owned())
}
