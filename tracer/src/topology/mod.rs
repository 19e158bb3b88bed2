//! What is connected to what: every network namespace tracer can find, its links and
//! addresses, veth peers across namespaces, bridge membership, and container names.
//!
//! Namespaces are found where they are named (`ip netns` in `/var/run/netns`, Docker's in
//! `/var/run/docker/netns`) and through every process (`/proc/*/ns/net`), and deduplicated by
//! inode. Links come from route netlink inside each namespace ([`netlink`]), tunnel devices with
//! what they encapsulate into ([`overlay`]); the containers and pods that own them from the
//! container runtimes ([`runtime`]).

pub mod netlink;
pub mod overlay;
pub mod runtime;

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::IpAddr,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::{
    names::{NameTable, Role},
    netns,
};

use overlay::{GENEVE_DEFAULT_PORTS, Overlay, OverlayKind, VXLAN_DEFAULT_PORTS};
use runtime::{Workload, Workloads};

/// Directory where Docker keeps its containers' namespaces.
pub const DOCKER_NETNS_DIR: &str = "/var/run/docker/netns";

/// The kind of a link, as far as tracer cares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Veth,
    Bridge,
    Loopback,
    /// Another kind (`vxlan`, `dummy`, a physical NIC with an empty kind, ...).
    #[serde(untagged)]
    Other(String),
}

/// A network interface in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    /// Ifindex of the bridge (or bond) this link is enslaved to.
    pub master: Option<u32>,
    /// For a veth: the peer's ifindex, in the namespace given by `peer_netnsid`.
    pub peer_ifindex: Option<u32>,
    /// For a veth whose peer is in another namespace: that namespace's id here.
    pub peer_netnsid: Option<i32>,
    pub up: bool,
    pub addresses: Vec<(IpAddr, u8)>,
    /// Whether a default route leaves through this link (an uplink).
    pub default_route: bool,
    /// For a tunnel device (VXLAN, Geneve, IP-in-IP, GRE, WireGuard): what it encapsulates
    /// into, and where to.
    pub overlay: Option<Overlay>,
}

/// A network namespace and what is in it.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub inode: u64,
    /// A path that opens the namespace.
    pub path: PathBuf,
    /// `ip netns` names.
    pub names: Vec<String>,
    /// The container or pod whose namespace this is.
    pub workload: Option<Workload>,
    /// A process in the namespace and its command name, when it was found through `/proc`.
    pub process: Option<(u32, String)>,
    /// Whether tracer itself runs in this namespace.
    pub own: bool,
    pub links: Vec<Link>,
    /// Namespaces by the ids this namespace gives them (`link-netnsid`).
    pub nsids: HashMap<i32, u64>,
}

impl Namespace {
    /// The name users know this namespace by: pod or container, `ip netns` name, `host` for
    /// tracer's own, or `pid N (comm)`.
    pub fn display_name(&self) -> String {
        if let Some(workload) = &self.workload {
            return workload.name();
        }
        if let Some(name) = self.names.first() {
            return name.clone();
        }
        if self.own {
            return "host".to_owned();
        }
        match &self.process {
            Some((pid, comm)) => format!("pid {pid} ({comm})"),
            None => format!("netns:{}", self.inode),
        }
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// Every namespace found, with links.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub namespaces: Vec<Namespace>,
}

impl Topology {
    /// Finds every namespace and reads its links; `workloads` says which container or pod owns
    /// which. Namespaces that vanish while being read are skipped.
    pub fn discover(workloads: &Workloads) -> Topology {
        let mut namespaces: Vec<Namespace> = find_namespaces()
            .into_values()
            .filter_map(|mut ns| {
                ns.links = netlink::Netlink::open_in(&ns.path).ok()?.links().ok()?;
                ns.workload = workloads.of_netns(ns.inode).cloned();
                Some(ns)
            })
            .collect();
        resolve_nsids(&mut namespaces);
        namespaces.sort_by_key(|ns| (!ns.own, ns.display_name()));
        Topology { namespaces }
    }

    pub fn namespace(&self, inode: u64) -> Option<&Namespace> {
        self.namespaces.iter().find(|ns| ns.inode == inode)
    }

    /// The other end of a veth: its namespace and link.
    pub fn peer<'a>(&'a self, ns: &'a Namespace, link: &Link) -> Option<(&'a Namespace, &'a Link)> {
        let peer_ifindex = link.peer_ifindex?;
        let peer_ns = match link.peer_netnsid {
            Some(id) => self.namespace(*ns.nsids.get(&id)?)?,
            None => ns,
        };
        let peer = peer_ns.link(peer_ifindex)?;
        (peer.kind == LinkKind::Veth).then_some((peer_ns, peer))
    }

    /// The underlay device of a tunnel: its namespace and link.
    pub fn underlay<'a>(
        &'a self,
        ns: &'a Namespace,
        link: &Link,
    ) -> Option<(&'a Namespace, &'a Link)> {
        let overlay = link.overlay.as_ref()?;
        let underlay_ns = match overlay.underlay_netnsid {
            Some(id) => self.namespace(*ns.nsids.get(&id)?)?,
            None => ns,
        };
        Some((underlay_ns, underlay_ns.link(overlay.underlay?)?))
    }

    /// Every tunnel device, in every namespace.
    pub fn overlays(&self) -> impl Iterator<Item = (&Namespace, &Link, &Overlay)> {
        self.namespaces.iter().flat_map(|ns| {
            ns.links
                .iter()
                .filter_map(move |link| Some((ns, link, link.overlay.as_ref()?)))
        })
    }

    /// The UDP ports the kernel programs must treat as VXLAN: the defaults
    /// ([`VXLAN_DEFAULT_PORTS`]), then the port of every VXLAN device on the machine, then
    /// ports its forwarding entries send to; sorted, at most
    /// [`MAX_OVERLAY_PORTS`](overlay::MAX_OVERLAY_PORTS).
    pub fn vxlan_ports(&self) -> Vec<u16> {
        self.udp_ports(OverlayKind::Vxlan, &VXLAN_DEFAULT_PORTS)
    }

    /// The UDP ports the kernel programs must treat as Geneve, as [`Topology::vxlan_ports`].
    pub fn geneve_ports(&self) -> Vec<u16> {
        self.udp_ports(OverlayKind::Geneve, &GENEVE_DEFAULT_PORTS)
    }

    fn udp_ports(&self, kind: OverlayKind, defaults: &[u16]) -> Vec<u16> {
        let devices = || {
            self.overlays()
                .map(|(_, _, o)| o)
                .filter(|o| o.kind == kind)
        };
        let mut used: Vec<u16> = devices().filter_map(|o| o.port).collect();
        used.sort_unstable();
        let mut peers: Vec<u16> = devices()
            .flat_map(|o| o.peers.iter().filter_map(|p| p.port))
            .collect();
        peers.sort_unstable();
        used.extend(peers);
        overlay::udp_ports(defaults, used)
    }

    /// The bridge a link is enslaved to, in the link's namespace.
    pub fn bridge_of<'a>(&self, ns: &'a Namespace, link: &Link) -> Option<&'a Link> {
        ns.link(link.master?)
            .filter(|master| master.kind == LinkKind::Bridge)
    }

    /// What a link is on the container path: a bridge, a tunnel device (also one on a bridge or
    /// with the default route), an uplink, the host's end of a veth pair (on a bridge), or the
    /// container's end (its peer is on a bridge, or it is in a runtime's namespace).
    pub fn role(&self, ns: &Namespace, link: &Link) -> Role {
        match link.kind {
            LinkKind::Bridge => return Role::Bridge,
            LinkKind::Loopback => return Role::Loopback,
            _ => {}
        }
        if link.overlay.is_some() {
            return Role::Overlay;
        }
        if self.bridge_of(ns, link).is_some() {
            return Role::HostVeth;
        }
        // A container's eth0 carries its default route too: the bridge on the other end of
        // its veth says what it is.
        if link.kind == LinkKind::Veth
            && let Some((peer_ns, peer)) = self.peer(ns, link)
            && self.bridge_of(peer_ns, peer).is_some()
        {
            return Role::Container;
        }
        if ns.workload.is_some() {
            Role::Container
        } else if link.default_route {
            Role::Uplink
        } else {
            Role::Other
        }
    }

    /// Names for the outputs.
    pub fn names(&self) -> NameTable {
        let mut table = NameTable::default();
        for ns in &self.namespaces {
            for link in &ns.links {
                table.set_role(ns.inode, link.ifindex, self.role(ns, link));
            }
            if let Some(workload) = &ns.workload {
                table.set_workload(ns.inode, workload.clone());
            }
            let netns = ns
                .names
                .first()
                .cloned()
                .or_else(|| ns.own.then(|| "host".to_owned()));
            if let Some(name) = netns {
                table.set_netns(ns.inode, name);
            } else if ns.workload.is_none()
                && let Some((pid, comm)) = &ns.process
            {
                table.set_netns(ns.inode, format!("pid {pid} ({comm})"));
            }
        }
        table
    }
}

/// Every namespace reachable through a file, by inode, links not read yet.
fn find_namespaces() -> BTreeMap<u64, Namespace> {
    let mut found: BTreeMap<u64, Namespace> = BTreeMap::new();
    let mut add = |path: PathBuf, name: Option<String>, process: Option<(u32, String)>| {
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        let ns = found.entry(meta.ino()).or_insert_with(|| Namespace {
            inode: meta.ino(),
            path: path.clone(),
            names: Vec::new(),
            workload: None,
            process: None,
            own: false,
            links: Vec::new(),
            nsids: HashMap::new(),
        });
        if let Some(name) = name {
            ns.names.push(name);
        }
        if ns.process.is_none() {
            ns.process = process;
        }
    };
    add(PathBuf::from("/proc/thread-self/ns/net"), None, None);
    for (dir, named) in [(netns::NAMED_NETNS_DIR, true), (DOCKER_NETNS_DIR, false)] {
        for entry in read_dir_sorted(Path::new(dir)) {
            let name = named.then(|| entry.file_name().map(|n| n.to_string_lossy().into_owned()));
            add(entry, name.flatten(), None);
        }
    }
    for entry in read_dir_sorted(Path::new("/proc")) {
        let Some(pid) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.join("comm")).unwrap_or_default();
        add(
            entry.join("ns/net"),
            None,
            Some((pid, comm.trim().to_owned())),
        );
    }
    if let Ok(own) = netns::current_inode()
        && let Some(ns) = found.get_mut(&own)
    {
        ns.own = true;
    }
    found
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

/// Fills each namespace's `nsids` for the ids its veths refer to.
fn resolve_nsids(namespaces: &mut [Namespace]) {
    let files: Vec<(u64, File)> = namespaces
        .iter()
        .filter_map(|ns| Some((ns.inode, File::open(&ns.path).ok()?)))
        .collect();
    for ns in namespaces.iter_mut() {
        let mut wanted: Vec<i32> = ns
            .links
            .iter()
            .flat_map(|l| {
                let underlay = l.overlay.as_ref().and_then(|o| o.underlay_netnsid);
                [l.peer_netnsid, underlay]
            })
            .flatten()
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            continue;
        }
        let Ok(mut socket) = netlink::Netlink::open_in(&ns.path) else {
            continue;
        };
        let others: Vec<_> = files
            .iter()
            .filter(|(inode, _)| *inode != ns.inode)
            .map(|(inode, file)| (*inode, file.as_fd()))
            .collect();
        ns.nsids = netlink::nsids(&mut socket, &others, &wanted);
    }
}

#[cfg(test)]
pub(crate) mod tests;
