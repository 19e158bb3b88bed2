//! Names for what the kernel identifies by number: network namespaces, containers and pods.
//!
//! The kernel programs report a namespace by inode. Outputs show the pod or container that owns
//! it when one is known, and the namespace's name otherwise (`ip netns` names); the namespace
//! tracer itself runs in is called `host`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use rustc_hash::FxHashMap;
use tracer_common::event::DROP_REASON_UNREPORTED;

use crate::{
    decode::Process,
    workload::{Runtime, Workload},
};

/// What a drop's reason reads on a kernel whose drop tracepoint carries none.
pub const UNREPORTED: &str = "reason not reported by this kernel";

/// Names by namespace inode, drop reason value and code address.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    netns: FxHashMap<u64, String>,
    workloads: FxHashMap<u64, Workload>,
    /// Containers by the id of their cgroup (v2), for naming processes.
    cgroups: FxHashMap<u64, Workload>,
    /// What each interface is on the container path, by namespace inode and ifindex.
    roles: FxHashMap<(u64, u32), Role>,
    drop_reasons: HashMap<u32, String>,
    symbols: HashMap<u64, String>,
    /// The code addresses are another kernel's (a recording made on another boot): this
    /// machine's kallsyms would name the wrong functions, so they stay addresses.
    kernel_elsewhere: bool,
    /// Changes whenever a namespace or container is named, in this table or any other, so that
    /// an output may keep what it rendered of the names of a place until this changes.
    places_version: u64,
}

/// The source of [`NameTable::places_version`]: unique across tables.
static PLACES_VERSION: AtomicU64 = AtomicU64::new(1);

impl NameTable {
    /// Names the namespace with `inode`.
    pub fn set_netns(&mut self, inode: u64, name: impl Into<String>) {
        self.netns.insert(inode, name.into());
        self.places_version = PLACES_VERSION.fetch_add(1, Ordering::Relaxed);
    }

    /// Names the container or pod whose network namespace has `inode`.
    pub fn set_workload(&mut self, inode: u64, workload: Workload) {
        self.workloads.insert(inode, workload);
        self.places_version = PLACES_VERSION.fetch_add(1, Ordering::Relaxed);
    }

    /// Names the Docker container whose network namespace has `inode`.
    #[cfg(test)]
    pub fn set_container(&mut self, inode: u64, name: impl Into<String>) {
        let workload = Workload {
            runtime: Runtime::Docker,
            pod: None,
            containers: vec![name.into()],
        };
        self.set_workload(inode, workload);
    }

    /// Says what the interface `ifindex` in namespace `inode` is on the container path.
    pub fn set_role(&mut self, inode: u64, ifindex: u32, role: Role) {
        self.roles.insert((inode, ifindex), role);
    }

    /// What an interface is on the container path ([`Role::Other`] when unknown).
    pub fn role(&self, inode: u64, ifindex: u32) -> Role {
        self.roles
            .get(&(inode, ifindex))
            .copied()
            .unwrap_or(Role::Other)
    }

    /// Names the container whose processes are in the cgroup with `id`.
    pub fn set_cgroup(&mut self, id: u64, workload: Workload) {
        self.cgroups.insert(id, workload);
    }

    /// The container or pod of a process: by its cgroup, or else by the namespace its socket
    /// was seen in (`netns_inode`), the namespace it created the socket in.
    pub fn process_workload(&self, process: &Process, netns_inode: u64) -> Option<&Workload> {
        self.cgroups
            .get(&process.cgroup_id)
            .or_else(|| self.workloads.get(&netns_inode))
    }

    /// The same while the names of namespaces and containers stay the same.
    pub fn places_version(&self) -> u64 {
        self.places_version
    }

    /// Names `enum skb_drop_reason` values.
    pub fn set_drop_reasons(&mut self, reasons: HashMap<u32, String>) {
        self.drop_reasons = reasons;
    }

    /// Adds the names a recording carries (its first record names the drop reasons, later
    /// ones drop locations), or those `tracer merge` gave what JSON inputs named.
    pub fn learn(&mut self, names: crate::recording::Names) {
        self.drop_reasons.extend(names.drop_reasons);
        self.symbols.extend(names.drop_locations);
    }

    /// Says the code addresses are another kernel's: they are not looked up here.
    pub fn set_kernel_elsewhere(&mut self) {
        self.kernel_elsewhere = true;
    }

    /// Whether code addresses may be named from this machine's kallsyms.
    pub fn kernel_is_here(&self) -> bool {
        !self.kernel_elsewhere
    }

    /// Names a code address (`function+0xoffset`).
    pub fn set_symbol(&mut self, address: u64, symbol: impl Into<String>) {
        self.symbols.insert(address, symbol.into());
    }

    /// Whether drop reasons are named (a recording read back names none).
    pub fn knows_drop_reasons(&self) -> bool {
        !self.drop_reasons.is_empty()
    }

    /// The drop reason's name, or its number; a kernel that reports none is said to.
    pub fn drop_reason(&self, reason: u32) -> String {
        if reason == DROP_REASON_UNREPORTED {
            return UNREPORTED.to_owned();
        }
        self.drop_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// The code address as `function+0xoffset`, or in hex.
    pub fn symbol(&self, address: u64) -> String {
        self.symbols
            .get(&address)
            .cloned()
            .unwrap_or_else(|| format!("{address:#x}"))
    }

    pub fn has_symbol(&self, address: u64) -> bool {
        self.symbols.contains_key(&address)
    }

    pub fn netns(&self, inode: u64) -> Option<&str> {
        self.netns.get(&inode).map(String::as_str)
    }

    /// The container whose namespace has `inode`, where it is one container's.
    pub fn container(&self, inode: u64) -> Option<&str> {
        self.workloads.get(&inode).and_then(Workload::container)
    }

    /// The container or pod whose namespace has `inode`.
    pub fn workload(&self, inode: u64) -> Option<&Workload> {
        self.workloads.get(&inode)
    }

    /// The pod whose namespace has `inode`.
    pub fn pod(&self, inode: u64) -> Option<&str> {
        self.workloads.get(&inode).and_then(|w| w.pod.as_deref())
    }

    /// The runtime of the container or pod whose namespace has `inode`.
    pub fn runtime(&self, inode: u64) -> Option<Runtime> {
        self.workloads.get(&inode).map(|w| w.runtime)
    }

    /// The most useful name for a place: pod or container, namespace name, or `netns:<inode>`.
    pub fn place(&self, inode: u64) -> String {
        if let Some(workload) = self.workloads.get(&inode) {
            return workload.name();
        }
        self.netns(inode)
            .map_or_else(|| format!("netns:{inode}"), str::to_owned)
    }

    /// Keeps the drop reasons and symbols of `other` (they do not change with the topology).
    pub fn keep_kernel_names(&mut self, other: &NameTable) {
        self.drop_reasons = other.drop_reasons.clone();
        self.symbols = other.symbols.clone();
        self.kernel_elsewhere = other.kernel_elsewhere;
    }

    /// Adds the drop reasons and code addresses `other` names and this one does not.
    pub fn add_kernel_names(&mut self, other: &NameTable) {
        for (reason, name) in &other.drop_reasons {
            self.drop_reasons
                .entry(*reason)
                .or_insert_with(|| name.clone());
        }
        for (address, name) in &other.symbols {
            self.symbols.entry(*address).or_insert_with(|| name.clone());
        }
    }
}

/// What an interface is on a container's path, for naming places by role rather than by
/// every veth's name (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An interface inside a container or pod (its `eth0`).
    Container,
    /// The host's end of a container's veth pair.
    HostVeth,
    Bridge,
    /// An interface with a default route.
    Uplink,
    /// A tunnel device (VXLAN, Geneve, IP-in-IP, GRE, WireGuard): where packets to other
    /// nodes are encapsulated, so that `overlay:...` to `uplink:...` is node-to-node time.
    Overlay,
    Loopback,
    Other,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Container => "container",
            Role::HostVeth => "host_veth",
            Role::Bridge => "bridge",
            Role::Uplink => "uplink",
            Role::Overlay => "overlay",
            Role::Loopback => "loopback",
            Role::Other => "other",
        }
    }
}

/// Finds the kernel functions containing `addresses` in one read of `/proc/kallsyms`, as
/// `function+0xoffset`; `None` for an address in no function (or when kallsyms is hidden).
pub fn kernel_symbols(addresses: &[u64]) -> Vec<Option<String>> {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return vec![None; addresses.len()];
    };
    let mut best: Vec<Option<(u64, &str)>> = vec![None; addresses.len()];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        for (address, best) in addresses.iter().zip(&mut best) {
            if addr <= *address && best.is_none_or(|(b, _)| addr > b) {
                *best = Some((addr, name));
            }
        }
    }
    addresses
        .iter()
        .zip(best)
        .map(|(address, best)| {
            let (start, name) = best.filter(|(start, _)| *start != 0)?;
            Some(format!("{name}+{:#x}", address - start))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_without_the_kernels_reason_says_so_and_others_are_named_or_numbered() {
        let mut names = NameTable::default();
        names.set_drop_reasons(HashMap::from([(5, "NETFILTER_DROP".to_owned())]));
        assert_eq!(names.drop_reason(5), "NETFILTER_DROP");
        assert_eq!(names.drop_reason(6), "6");
        assert_eq!(names.drop_reason(DROP_REASON_UNREPORTED), UNREPORTED);
        // A recording read back knows no names, but still what the kernel did not report.
        assert_eq!(
            NameTable::default().drop_reason(DROP_REASON_UNREPORTED),
            UNREPORTED
        );
    }

    /// A recording's first names record names the drop reasons; a later one only drop
    /// locations, which leaves the reasons as they were.
    #[test]
    fn a_later_names_record_adds_locations_and_keeps_the_reasons() {
        let mut names = NameTable::default();
        names.learn(crate::recording::Names {
            drop_reasons: HashMap::from([(5, "NETFILTER_DROP".to_owned())]),
            ..Default::default()
        });
        names.learn(crate::recording::Names::of_locations([(
            0xffff_ffff_8100_0010,
            "nf_hook_slow+0x10".to_owned(),
        )]));
        assert_eq!(names.drop_reason(5), "NETFILTER_DROP");
        assert_eq!(names.symbol(0xffff_ffff_8100_0010), "nf_hook_slow+0x10");
        assert_eq!(names.symbol(0xffff_ffff_8100_0020), "0xffffffff81000020");
    }
}
