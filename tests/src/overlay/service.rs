//! A Kubernetes Service as kube-proxy's iptables mode writes it into a node: a ClusterIP and a
//! NodePort, load-balanced over endpoint chains, with kube-proxy's masquerade marking.
//!
//! The rule text, chain names and their order follow kube-proxy's own sync
//! (kubernetes/kubernetes `pkg/proxy/iptables/proxier.go`, `syncProxyRules`, and the
//! `iptablesJumpChains` it links its chains from), in its iptables-nft form, with the settings
//! of a kubeadm cluster running flannel: cluster CIDR 10.244.0.0/16 (traffic from outside it
//! to a ClusterIP is masqueraded), `--nodeport-addresses` unset (NodePorts on every local
//! address), external traffic policy `Cluster`, `--random-fully` available. The chain names
//! are computed as kube-proxy computes them, so that `KUBE-SVC-...` here is the name a real
//! cluster would show for the same Service.
//!
//! Left out, as a node with this one Service has them empty: load balancer and external IP
//! rules (`KUBE-FW-*`, `KUBE-PROXY-FIREWALL` rules), session affinity, `KUBE-SVL-*` (local
//! traffic policy), the canary and hint chains.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{CLUSTER_CIDR, NodeId, Overlay};
use crate::netns::Netns;

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const MASQUERADE_MARK: &str = "0x4000";

/// A Service of type NodePort (which has a ClusterIP too) with TCP endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Kubernetes namespace of the Service.
    pub namespace: String,
    pub name: String,
    /// Name of the Service port.
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    /// Port of the ClusterIP.
    pub port: u16,
    /// Port on every local address of the node.
    pub node_port: u16,
    /// Port the endpoints listen on.
    pub target_port: u16,
    /// Addresses of the ready endpoints (pods).
    pub endpoints: Vec<Ipv4Addr>,
}

/// Which pods back the Service [`Overlay::web_service`] installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Only the pod of the other node: every connection goes to it, over the overlay.
    PeerPod,
    /// Both pods, each chosen with probability 1/2 (`-m statistic --mode random`).
    BothPods,
}

impl Service {
    /// `default/web:http`: ClusterIP 10.96.0.10:80, NodePort 30080, endpoints on port 8080.
    pub fn web(endpoints: Vec<Ipv4Addr>) -> Service {
        Service {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
            port_name: "http".to_owned(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            node_port: 30080,
            target_port: 8080,
            endpoints,
        }
    }

    /// `namespace/name:port`, as kube-proxy names a Service port in comments and hashes.
    pub fn port_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// The ClusterIP and its port.
    pub fn cluster_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.cluster_ip, self.port)
    }

    /// `KUBE-SVC-...`: the chain that picks an endpoint.
    pub fn svc_chain(&self) -> anyhow::Result<String> {
        Ok(format!("KUBE-SVC-{}", chain_hash(&self.hash_base())?))
    }

    /// `KUBE-EXT-...`: the chain external traffic (the NodePort) goes through.
    pub fn ext_chain(&self) -> anyhow::Result<String> {
        Ok(format!("KUBE-EXT-{}", chain_hash(&self.hash_base())?))
    }

    /// `KUBE-SEP-...`: the chain that DNATs to `endpoint`.
    pub fn sep_chain(&self, endpoint: Ipv4Addr) -> anyhow::Result<String> {
        let base = format!("{}{}", self.hash_base(), self.endpoint(endpoint));
        Ok(format!("KUBE-SEP-{}", chain_hash(&base)?))
    }

    /// What kube-proxy hashes for the Service's chains: port name and lower-case protocol.
    fn hash_base(&self) -> String {
        format!("{}tcp", self.port_name())
    }

    fn endpoint(&self, addr: Ipv4Addr) -> SocketAddrV4 {
        SocketAddrV4::new(addr, self.target_port)
    }

    /// The rules, as `iptables-restore --noflush` input, in kube-proxy's order: chain
    /// declarations, the jumps from the built-in chains (inserted at the top, as kube-proxy's
    /// `EnsureRule(Prepend, ...)` does, so they end up in reverse order), then the chains'
    /// rules. Endpoints are sorted as kube-proxy sorts them.
    pub fn restore_input(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        let filter_chains = [
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
        ];
        open_table(&mut out, "filter", filter_chains.map(str::to_owned))?;
        let mark = format!("{MASQUERADE_MARK}/{MASQUERADE_MARK}");
        out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
        writeln!(
            out,
            "-A KUBE-FORWARD -m comment --comment \"{FORWARDING}\" -m mark --mark {mark} \
             -j ACCEPT"
        )?;
        out.push_str(
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
             -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
        );

        let (svc, ext) = (self.svc_chain()?, self.ext_chain()?);
        let mut endpoints = self.endpoints.clone();
        endpoints.sort_by_key(|e| self.endpoint(*e).to_string());
        let mut nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING"]
            .into_iter()
            .chain(["KUBE-MARK-MASQ", &svc, &ext])
            .map(str::to_owned)
            .collect::<Vec<_>>();
        for endpoint in &endpoints {
            nat_chains.push(self.sep_chain(*endpoint)?);
        }
        open_table(&mut out, "nat", nat_chains)?;
        writeln!(out, "-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN")?;
        writeln!(
            out,
            "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"
        )?;
        out.push_str(
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring \
             SNAT\" -j MASQUERADE --random-fully\n",
        );
        writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}")?;

        let name = self.port_name();
        let (ip, port, node_port) = (self.cluster_ip, self.port, self.node_port);
        let cluster_ip = format!(
            "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp \
                                  -d {ip} --dport {port}"
        );
        writeln!(
            out,
            "-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {node_port} \
             -j {ext}"
        )?;
        writeln!(out, "-A KUBE-SERVICES {cluster_ip} -j {svc}")?;
        out.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
             be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        writeln!(
            out,
            "-A {ext} -m comment --comment \"masquerade traffic for {name} external \
             destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}"
        )?;
        writeln!(
            out,
            "-A {svc} {cluster_ip} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        )?;
        for (index, endpoint) in endpoints.iter().enumerate() {
            let target = self.endpoint(*endpoint);
            let sep = self.sep_chain(*endpoint)?;
            // The first n-1 endpoints are picked with probability 1/(endpoints left); the last
            // takes what remains.
            let left = endpoints.len() - index;
            let statistic = if left > 1 {
                let probability = 1.0 / f64::from(u32::try_from(left)?);
                format!("-m statistic --mode random --probability {probability:.10} ")
            } else {
                String::new()
            };
            writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {target}\" {statistic}-j {sep}"
            )?;
        }
        for endpoint in &endpoints {
            let sep = self.sep_chain(*endpoint)?;
            let target = self.endpoint(*endpoint);
            writeln!(
                out,
                "-A {sep} -m comment --comment {name} -s {endpoint} -j KUBE-MARK-MASQ\n\
                 -A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination \
                 {target}"
            )?;
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }
}

const PORTALS: &str = "kubernetes service portals";
const EXTERNAL: &str = "kubernetes externally-visible service portals";
const HEALTH_CHECKS: &str = "kubernetes health check service ports";
const FORWARDING: &str = "kubernetes forwarding rules";
const FIREWALL: &str = "kubernetes load balancer firewall";
const POSTROUTING: &str = "kubernetes postrouting rules";

/// The jumps from the built-in chains to kube-proxy's, in the order of its
/// `iptablesJumpChains`: table, built-in chain, kube-proxy's chain, comment, and whether only
/// new connections jump (`-m conntrack --ctstate NEW`).
const JUMPS: [(&str, &str, &str, &str, bool); 12] = [
    ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", EXTERNAL, true),
    (
        "filter",
        "FORWARD",
        "KUBE-EXTERNAL-SERVICES",
        EXTERNAL,
        true,
    ),
    ("filter", "INPUT", "KUBE-NODEPORTS", HEALTH_CHECKS, false),
    ("filter", "FORWARD", "KUBE-SERVICES", PORTALS, true),
    ("filter", "OUTPUT", "KUBE-SERVICES", PORTALS, true),
    ("filter", "FORWARD", "KUBE-FORWARD", FORWARDING, false),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    ("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", FIREWALL, true),
    ("nat", "OUTPUT", "KUBE-SERVICES", PORTALS, false),
    ("nat", "PREROUTING", "KUBE-SERVICES", PORTALS, false),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", POSTROUTING, false),
];

/// Starts `table` in restore input: declares (and so flushes) `chains`, and inserts the
/// table's jumps from the built-in chains.
fn open_table(
    out: &mut String,
    table: &str,
    chains: impl IntoIterator<Item = String>,
) -> anyhow::Result<()> {
    writeln!(out, "*{table}")?;
    for chain in chains {
        writeln!(out, ":{chain} - [0:0]")?;
    }
    for (_, from, to, comment, new_only) in JUMPS.iter().filter(|jump| jump.0 == table) {
        let new = if *new_only {
            "-m conntrack --ctstate NEW "
        } else {
            ""
        };
        writeln!(
            out,
            "-I {from} {new}-m comment --comment \"{comment}\" -j {to}"
        )?;
    }
    Ok(())
}

impl Overlay {
    /// Installs `service`'s rules in `node`'s namespace (iptables-nft, through
    /// `iptables-restore --noflush`, as kube-proxy writes them). Once per node: a second
    /// Service would need the jumps from the built-in chains only once.
    pub fn install_service(&self, node: NodeId, service: &Service) -> anyhow::Result<()> {
        let netns = &self.node(node).netns;
        restore(netns, &service.restore_input()?).with_context(|| {
            format!(
                "failed to install {} in {}",
                service.port_name(),
                netns.name
            )
        })
    }

    /// Installs [`Service::web`] in `node`, backed by `endpoints`, and returns it.
    pub fn web_service(&self, node: NodeId, endpoints: Endpoints) -> anyhow::Result<Service> {
        let mut pods = vec![self.pod(node.peer()).addr];
        if endpoints == Endpoints::BothPods {
            pods.push(self.pod(node).addr);
        }
        let service = Service::web(pods);
        self.install_service(node, &service)?;
        Ok(service)
    }
}

/// kube-proxy's chain-name hash: the first 16 characters of the base32 (RFC 4648, with the
/// standard alphabet) of the SHA-256 of `input`. SHA-256 comes from coreutils' `sha256sum`.
pub fn chain_hash(input: &str) -> anyhow::Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run sha256sum")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    let text = String::from_utf8(output.stdout)?;
    let hex = text.get(..64).context("short sha256sum output")?;
    let digest = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()?;
    // 16 characters of 5 bits are exactly the first 10 bytes.
    Ok(base32(&digest[..10]))
}

/// Base32 with the standard alphabet, without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Feeds `input` to `iptables-restore --noflush` inside `netns`.
fn restore(netns: &Netns, input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "iptables-restore",
            "--noflush",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run iptables-restore")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
